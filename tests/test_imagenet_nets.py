"""The classic networks at full size (examples/imagenet/: AlexNet, VGG-16, GoogLeNet, ResNet-18 and
ResNet-50) against PyTorch definitions of the same networks written here from the papers:

- parameter counts and the multiply-adds of the convolutions and linear layers (PyTorch's
  FlopCounterMode on meta tensors: shapes only, no memory) equal dlc's;
- the first blocks of each (AlexNet's grouped convolution with LRN and pooling, GoogLeNet's stem
  with ceil-mode pooling, LRN and its first inception module, VGG's first block), with dlc's
  initial weights copied into PyTorch, give the same outputs and gradients in float64 (1e-10
  relative: both sides exact to rounding); ResNet's first blocks in training mode (batch
  statistics), with the running statistics after one step against PyTorch's.

The networks themselves train on ImageNet, which the project does not ship; benchmarks/
classic_nets.py measures what compiling them costs.
"""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from conftest import EXAMPLES, import_torch, import_torch_models

NETS = EXAMPLES / "imagenet"


def torch_net(name):
    """(torch, PyTorch's version of the network, its input size): benchmarks/torch_models.py."""
    torch, torch_models = import_torch_models()
    return (torch,) + torch_models.imagenet_net(name)


@pytest.mark.parametrize("name", ["alexnet", "vgg16", "googlenet", "resnet18", "resnet50"])
def test_parameters_and_multiply_adds_equal_pytorchs(name):
    torch, *_ = torch_net("resnet18")   # torch itself (a small net, built on the CPU)
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        _, net, size = torch_net(name)
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
    net = torch_net(name)[1][:layers].double()
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


# ResNet's stem and first block (layers of the nn.Sequential above: conv-bn, relu, pool, block)
RESNET_FIRST = {
    "resnet18": """
    stem = conv_bn_relu(x, 64, 7, stride = 2, padding = 3)
    pool = maxpool2d(stem, 3, stride = 2, padding = 1)
    out  = basic_block(pool)""",
    "resnet50": """
    stem = conv_bn_relu(x, 64, 7, stride = 2, padding = 3)
    pool = maxpool2d(stem, 3, stride = 2, padding = 1)
    out  = bottleneck_block_down(pool, 64, 256, stride = 1)""",
}


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnets_first_blocks_agree_with_pytorch_in_training(name):
    """In training mode (batch statistics), float64, dlc's conv weights copied into PyTorch: the
    output, the loss, the gradients of every conv weight and batch-norm gamma and beta; then after
    one step the running statistics of every batch norm against PyTorch's after its forward."""
    torch = import_torch()
    src = f"model first {{\n    input x : f32[N, 3, 224, 224]\n{RESNET_FIRST[name]}\n" \
          "    loss = mean(out * out)\n    output out\n    minimize loss with sgd(lr = 0.1)\n}"
    m = dlc.compile(src, backend="interp", float_dtype="float64", seed=7)
    net = torch_net(name)[1][:4].double().train()
    convs = [mod for mod in net.modules() if isinstance(mod, torch.nn.Conv2d)]
    bns = [mod for mod in net.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    ws = [p for p in m.params if p.endswith(".w")]
    assert len(convs) == len(bns) == len(ws) == len(m.buffers) // 2
    with torch.no_grad():
        for mod, w in zip(convs, ws):
            mod.weight.copy_(torch.tensor(np.asarray(m.params[w])))
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224))
    out = net(torch.tensor(x))      # training mode: also updates PyTorch's running statistics once
    (out * out).mean().backward()
    m.train()
    np.testing.assert_allclose(m.forward(x=x)["out"], out.detach().numpy(), rtol=1e-10, atol=1e-10)
    loss, grads = m.grad(x=x)
    assert loss == pytest.approx((out * out).mean().item(), rel=1e-10)
    # gradients to 1e-9: through a batch norm they are sums of up to 2 * 112 * 112 terms that
    # cancel (a normalized value's gradient sums to zero over the batch), which costs digits
    for mod, bn, w in zip(convs, bns, ws):
        unit = w[:-2]
        np.testing.assert_allclose(grads[w], mod.weight.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=w)
        np.testing.assert_allclose(grads[unit + ".bn.gamma"], bn.weight.grad.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grads[unit + ".bn.beta"], bn.bias.grad.numpy(), rtol=1e-9, atol=1e-12)
    m.step(x=x)
    for bn, w in zip(bns, ws):
        unit = w[:-2]
        np.testing.assert_allclose(m.buffers[unit + ".bn.mean"], bn.running_mean.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(m.buffers[unit + ".bn.var"], bn.running_var.numpy(), rtol=1e-10, atol=1e-12)


def test_resnet18_exports_to_onnx_and_onnxruntime_agrees_in_evaluation(tmp_path, onnx_runtime):
    """The full-size ResNet-18, its running statistics moved off their initial values, exported
    with `Model.export_onnx` (batch norm as BatchNormalization, reading the running statistics):
    onnxruntime's logits against the interpreter's evaluation-mode forward, float32 (1e-4 of the
    logits' scale: float32 sums of up to 4,608 products in another order, through 20 layers)."""
    onnx, ort = onnx_runtime
    m = dlc.compile(NETS / "resnet18.dln", backend="interp", seed=1)
    rng = np.random.default_rng(3)
    m.set_state({k: (rng.uniform(0.5, 1.5, m.buffers[k].shape) if k.endswith(".var") else
                     rng.normal(0, 0.1, m.buffers[k].shape)).astype(np.float32) for k in m.buffers})
    path = tmp_path / "resnet18.onnx"
    m.export_onnx(path)
    kinds = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert kinds.count("BatchNormalization") == 20 and "Identity" not in kinds
    x = rng.normal(size=(2, 3, 224, 224)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"x": x})[0]
    want = m.forward(x=x)["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
