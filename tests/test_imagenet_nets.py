"""The classic networks at full size (examples/imagenet/: AlexNet, VGG-16, GoogLeNet) against
PyTorch definitions of the same networks written here from the papers:

- parameter counts and the multiply-adds of the convolutions and linear layers (PyTorch's
  FlopCounterMode on meta tensors: shapes only, no memory) equal dlc's;
- the first blocks of each (AlexNet's grouped convolution with LRN and pooling, GoogLeNet's stem
  with ceil-mode pooling, LRN and its first inception module, VGG's first block), with dlc's
  initial weights copied into PyTorch, give the same outputs and gradients in float64 (1e-10
  relative: both sides exact to rounding).

The networks themselves train on ImageNet, which the project does not ship; benchmarks/
classic_nets.py measures what compiling them costs.
"""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from conftest import EXAMPLES, import_torch

NETS = EXAMPLES / "imagenet"


def torch_nets(torch):
    """PyTorch's versions of the three networks (no auxiliary classifiers, dropout as in dlc)."""
    nn = torch.nn

    def conv(c, o, k, **kw):
        return nn.Sequential(nn.Conv2d(c, o, k, **kw), nn.ReLU())

    alexnet = nn.Sequential(
        conv(3, 96, 11, stride=4), nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0), nn.MaxPool2d(3, 2),
        conv(96, 256, 5, padding=2, groups=2), nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0), nn.MaxPool2d(3, 2),
        conv(256, 384, 3, padding=1), conv(384, 384, 3, padding=1, groups=2), conv(384, 256, 3, padding=1, groups=2),
        nn.MaxPool2d(3, 2), nn.Flatten(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 1000))

    def vgg_block(c, o, n):
        return [conv(c if i == 0 else o, o, 3, padding=1) for i in range(n)] + [nn.MaxPool2d(2)]
    vgg16 = nn.Sequential(*vgg_block(3, 64, 2), *vgg_block(64, 128, 2), *vgg_block(128, 256, 3),
                          *vgg_block(256, 512, 3), *vgg_block(512, 512, 3), nn.Flatten(),
                          nn.Linear(25088, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(),
                          nn.Dropout(0.5), nn.Linear(4096, 1000))

    class Inception(nn.Module):
        def __init__(self, c, c1, c3r, c3, c5r, c5, cp):
            super().__init__()
            self.b1 = conv(c, c1, 1)
            self.b3 = nn.Sequential(conv(c, c3r, 1), conv(c3r, c3, 3, padding=1))
            self.b5 = nn.Sequential(conv(c, c5r, 1), conv(c5r, c5, 5, padding=2))
            self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(c, cp, 1))

        def forward(self, x):
            return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)

    lrn = nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)
    pool = nn.MaxPool2d(3, 2, ceil_mode=True)
    googlenet = nn.Sequential(
        conv(3, 64, 7, stride=2, padding=3), pool, lrn, conv(64, 64, 1), conv(64, 192, 3, padding=1), lrn, pool,
        Inception(192, 64, 96, 128, 16, 32, 32), Inception(256, 128, 128, 192, 32, 96, 64), pool,
        Inception(480, 192, 96, 208, 16, 48, 64), Inception(512, 160, 112, 224, 24, 64, 64),
        Inception(512, 128, 128, 256, 24, 64, 64), Inception(512, 112, 144, 288, 32, 64, 64),
        Inception(528, 256, 160, 320, 32, 128, 128), pool, Inception(832, 256, 160, 320, 32, 128, 128),
        Inception(832, 384, 192, 384, 48, 128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.4),
        nn.Linear(1024, 1000))
    return {"alexnet": (alexnet, 227), "vgg16": (vgg16, 224), "googlenet": (googlenet, 224)}


@pytest.mark.parametrize("name", ["alexnet", "vgg16", "googlenet"])
def test_parameters_and_multiply_adds_equal_pytorchs(name):
    torch = import_torch()
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        net, size = torch_nets(torch)[name]
        counter = FlopCounterMode(display=False)
        with counter:
            out = net(torch.empty(1, 3, size, size))
    b = dlc.build(NETS / f"{name}.dln")
    g = b.forward
    assert sum(g.type(p).numel() for p in g.params) == sum(p.numel() for p in net.parameters())
    assert list(out.shape) == [1, 1000] and list(g.type(g.meta.outputs["logits"]).shape) == ["N", 1000]
    # dlc counts a multiply-add as 2 FLOPs, as PyTorch's counter does
    ours = sum(dlc.ir.ops.flops(g, n) for n in g.nx if dlc.ir.ops.OPS[g.op(n)].family in ("conv", "matmul"))
    assert ours == counter.get_total_flops()


# the first blocks of each network, as the examples write them, and PyTorch's layers for them
FIRST = {
    "alexnet": ("f32[N, 3, 227, 227]", """
    conv1 = relu(conv(x, 96, 11, stride = 4))
    norm1 = lrn(conv1, size = 5, alpha = 0.0001, beta = 0.75)
    pool1 = maxpool2d(norm1, 3, stride = 2)
    conv2 = relu(conv(pool1, 256, 5, padding = 2, groups = 2))
    out   = maxpool2d(lrn(conv2, size = 5, alpha = 0.0001, beta = 0.75), 3, stride = 2)""", 6),
    "googlenet": ("f32[N, 3, 224, 224]", """
    conv1  = relu(conv(x, 64, 7, stride = 2, padding = 3))
    pool1  = lrn(maxpool2d(conv1, 3, stride = 2, ceil_mode = true))
    conv2r = relu(conv(pool1, 64, 1))
    conv2  = lrn(relu(conv(conv2r, 192, 3, padding = 1)))
    pool2  = maxpool2d(conv2, 3, stride = 2, ceil_mode = true)
    out    = inception(pool2, 64, 96, 128, 16, 32, 32)""", 8),
    "vgg16": ("f32[N, 3, 224, 224]", """
    out = vgg_block2(x, 64)""", 3),
}


@pytest.mark.parametrize("name", ["alexnet", "googlenet", "vgg16"])
def test_the_first_blocks_agree_with_pytorch(name):
    """dlc's first blocks, run in float64 from dlc's initial weights, against PyTorch's layers with
    those weights copied in: the block's output and the gradients of sum(out^2 / size) with
    respect to every param."""
    torch = import_torch()
    shape, body, layers = FIRST[name]
    src = f"model first {{\n    input x : {shape}\n{body}\n    loss = mean(out * out)\n    output out\n" \
          "    minimize loss with sgd(lr = 0.1)\n}"
    m = dlc.compile(src, backend="interp", float_dtype="float64", seed=7)
    net = torch_nets(torch)[name][0][:layers].double()
    # dlc's params in graph order are each conv's w then b, in the order torch.nn lists them
    convs = [mod for mod in net.modules() if isinstance(mod, torch.nn.Conv2d)]
    ws = [p for p in m.params if p.endswith(".w")]
    bs = [p for p in m.params if p.endswith(".b")]
    assert len(convs) == len(ws) == len(bs)
    order = sorted(ws, key=list(m.params).index)
    with torch.no_grad():
        for mod, w in zip(convs, order):
            mod.weight.copy_(torch.tensor(np.asarray(m.params[w])))
            mod.bias.copy_(torch.tensor(np.asarray(m.params[w[:-2] + ".b"]).reshape(-1)))
    size = 227 if name == "alexnet" else 224
    x = np.random.default_rng(0).normal(size=(1, 3, size, size))
    out = net(torch.tensor(x))
    (out * out).mean().backward()
    np.testing.assert_allclose(m.forward(x=x)["out"], out.detach().numpy(), rtol=1e-10, atol=1e-12)
    loss, grads = m.grad(x=x)
    assert loss == pytest.approx((out * out).mean().item(), rel=1e-10)
    for mod, w in zip(convs, order):
        np.testing.assert_allclose(grads[w], mod.weight.grad.numpy(), rtol=1e-8, atol=1e-12, err_msg=w)
        np.testing.assert_allclose(grads[w[:-2] + ".b"].reshape(-1), mod.bias.grad.numpy(), rtol=1e-8, atol=1e-12)
