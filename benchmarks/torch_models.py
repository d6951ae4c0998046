"""The examples' networks written in PyTorch, for side-by-side timing against dlc.

    import dlc, torch_models as tm
    m = dlc.compile("examples/mlp.dln", backend="interp")
    net = tm.build("mlp")                       # an nn.Module, PyTorch layouts
    tm.load_dlc_params(net, m.params)           # the same initial weights as dlc
    loss_fn = tm.loss_fn("mlp", net)            # (x, y) -> scalar loss, as the .dln writes it
    opt = tm.optimizer(net, m.graph.meta.optimizer)

Each network is written the way a PyTorch user would write it (nn.Linear, nn.Conv2d, pools,
F.cross_entropy, torch.optim) and computes exactly what its `.dln` file computes:

| example  | network | loss | optimizer |
|---|---|---|---|
| mlp      | 64-128(relu)-10 | cross-entropy + 1e-4 * (|w1|^2 + |w2|^2) | SGD lr 0.1, momentum 0.9, Nesterov |
| logreg   | 64-10 | cross-entropy | SGD lr 0.5 |
| xor      | 2-4(tanh)-1(sigmoid) | MSE | Adam lr 0.05 |
| deep_mlp | 64-128(relu)-64(relu)-10 | cross-entropy + 1e-4 * sum of squared weights | RMSprop lr 0.001 |
| lenet    | conv3x3(16)-pool-conv3x3(32)-pool-64-10 | cross-entropy | SGD lr 0.05, momentum 0.9 |
| alexnet_small | conv3x3(32)-LRN-pool-conv3x3(64, 2 groups)-LRN-pool-128-10 | cross-entropy | SGD lr 0.05, momentum 0.9 |
| resnet_small | conv-bn(16), basic block, strided block (32, projection), basic block, global pool, 10 | cross-entropy | SGD lr 0.05, momentum 0.9 |
| inception| stem conv, two inception modules, pools, linear | cross-entropy | Adam lr 0.005, cosine lr over 900 steps |
| transfer_base | 64-64(relu)-64(relu)-5 | cross-entropy | SGD, momentum ramp 0.5 -> 0.9, cosine lr with warm-up |
| transfer_finetune | the same, hidden layers frozen, a new head | cross-entropy | SGD with momentum, step lr |
| sine     | nn.RNN(1, 16, tanh) over 20 steps, last state, 16-1 | MSE | Adam lr 0.01, clipped to norm 1 |
| adding_elman | nn.RNN(2, 32, tanh) over 40 steps, last state, 32-1 | MSE | Adam lr 0.003, clipped to norm 1 |
| adding_lstm  | nn.LSTM(2, 32) over 40 steps, last state, 32-1 | MSE | Adam lr 0.003, clipped to norm 1 |
| charlm   | nn.Embedding(28, 16), nn.LSTM(16, 64) over 16 steps, 64-28 at every step | cross-entropy over every step | Adam lr 0.01, clipped to norm 1 |

Schedules (lr and momentum by step) are applied by `Scheduled` with dlc's formulas before each
step; frozen params have `requires_grad=False`. Clipping (`clip = c`) is
torch.nn.utils.clip_grad_norm_ before each step (`Clipped`).

Recurrent layers: dlc's Elman and LSTM layers (the prelude) have one bias, PyTorch's two
(`bias_ih` and `bias_hh`, added): `bias_ih` is dlc's bias, and `bias_hh` is fixed (no gradient)
at 0, except that an LSTM's forget-gate block holds dlc's `forget_bias` (1). The gate order of
`lstm_cell` is PyTorch's (input, forget, cell, output), so the weights copy over transposed.

The optimizer settings are read from the compiled dlc model (`graph.meta.optimizer`), so they
follow the `.dln` file. dlc stores a dense weight as [in, out] (`x @ w`); nn.Linear as
[out, in]: `load_dlc_params` transposes. A convolution bias is [out, 1, 1] in dlc, [out] here.
`tests/test_torch_equivalents.py` checks every network against dlc's interpreter on the CPU.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

EXAMPLES = ("mlp", "logreg", "xor", "deep_mlp", "lenet", "alexnet_small", "resnet_small", "inception", "transfer_base", "transfer_finetune",
            "sine", "adding_elman", "adding_lstm", "charlm")
REGRESSION = ("xor", "sine", "adding_elman", "adding_lstm")  # float targets and an MSE loss
PER_STEP = ("charlm",)  # a class per step: scores [N, T, C], labels [N, T], the mean over every step


class MLP(nn.Module):  # mlp.dln: params w1 b1 w2 b2
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(64, 128)
        self.l2 = nn.Linear(128, 10)
        self.dlc = {"w1": "l1.weight", "b1": "l1.bias", "w2": "l2.weight", "b2": "l2.bias"}
        self.decay = [self.l1.weight, self.l2.weight]

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))


class LogReg(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(64, 10)
        self.dlc = {"w": "l.weight", "b": "l.bias"}
        self.decay = []

    def forward(self, x):
        return self.l(x)


class XOR(nn.Module):
    def __init__(self):
        super().__init__()
        self.h = nn.Linear(2, 4)
        self.out = nn.Linear(4, 1)
        self.dlc = {"h.w": "h.weight", "h.b": "h.bias", "out.w": "out.weight", "out.b": "out.bias"}
        self.decay = []

    def forward(self, x):
        return torch.sigmoid(self.out(torch.tanh(self.h(x))))


class DeepMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.h1 = nn.Linear(64, 128)
        self.h2 = nn.Linear(128, 64)
        self.logits = nn.Linear(64, 10)
        self.dlc = {f"{k}.{p}": f"{k}.{'weight' if p == 'w' else 'bias'}"
                    for k in ("h1", "h2", "logits") for p in ("w", "b")}
        self.decay = [self.h1.weight, self.h2.weight, self.logits.weight]

    def forward(self, x):
        return self.logits(torch.relu(self.h2(torch.relu(self.h1(x)))))


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.h = nn.Linear(32 * 2 * 2, 64)
        self.logits = nn.Linear(64, 10)
        self.dlc = {"c1.w": "c1.weight", "c1.b": "c1.bias", "c2.w": "c2.weight", "c2.b": "c2.bias",
                    "h.w": "h.weight", "h.b": "h.bias",
                    "logits.w": "logits.weight", "logits.b": "logits.bias"}
        self.decay = []

    def forward(self, x):
        img = x.reshape(-1, 1, 8, 8)
        p1 = F.max_pool2d(torch.relu(self.c1(img)), 2)
        p2 = F.max_pool2d(torch.relu(self.c2(p1)), 2)
        h = torch.relu(self.h(p2.flatten(1)))
        return self.logits(h)


class AlexNetSmall(nn.Module):  # alexnet_small.dln: LRN (the prelude's lrn is PyTorch's definition), groups
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1, groups=2)
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.h = nn.Linear(64 * 2 * 2, 128)
        self.logits = nn.Linear(128, 10)
        self.dlc = {"c1.w": "c1.weight", "c1.b": "c1.bias", "c2.w": "c2.weight", "c2.b": "c2.bias",
                    "h.w": "h.weight", "h.b": "h.bias", "logits.w": "logits.weight", "logits.b": "logits.bias"}
        self.decay = []

    def forward(self, x):
        img = x.reshape(-1, 1, 8, 8)
        p1 = F.max_pool2d(self.lrn(torch.relu(self.c1(img))), 2)
        p2 = F.max_pool2d(self.lrn(torch.relu(self.c2(p1))), 2)
        return self.logits(torch.relu(self.h(p2.flatten(1))))


def _conv_bn(c, o, k, stride=1, padding=0):
    return nn.Sequential(nn.Conv2d(c, o, k, stride, padding, bias=False), nn.BatchNorm2d(o))


class ResNetSmall(nn.Module):  # resnet_small.dln: the prelude's conv_bn_relu, basic_block(_down)
    UNITS = {"stem": (1, 16, 3, 1, 1), "b1.c1": (16, 16, 3, 1, 1), "b1.c2": (16, 16, 3, 1, 1),
             "b2.c1": (16, 32, 3, 2, 1), "b2.c2": (32, 32, 3, 1, 1), "b2.proj": (16, 32, 1, 2, 0),
             "b3.c1": (32, 32, 3, 1, 1), "b3.c2": (32, 32, 3, 1, 1)}

    def __init__(self):
        super().__init__()
        self.units = nn.ModuleDict({k.replace(".", "_"): _conv_bn(*v) for k, v in self.UNITS.items()})
        self.logits = nn.Linear(32, 10)
        self.dlc, self.dlc_buffers = {"logits.w": "logits.weight", "logits.b": "logits.bias"}, {}
        for k in self.UNITS:
            t = f"units.{k.replace('.', '_')}"
            self.dlc |= {f"{k}.w": f"{t}.0.weight", f"{k}.bn.gamma": f"{t}.1.weight", f"{k}.bn.beta": f"{t}.1.bias"}
            self.dlc_buffers |= {f"{k}.bn.mean": f"{t}.1.running_mean", f"{k}.bn.var": f"{t}.1.running_var"}
        self.decay = []

    def unit(self, name, x, relu=True):
        y = self.units[name.replace(".", "_")](x)
        return torch.relu(y) if relu else y

    def block(self, b, x, down=False):
        h = self.unit(f"{b}.c2", self.unit(f"{b}.c1", x), relu=False)
        return torch.relu(h + (self.unit(f"{b}.proj", x, relu=False) if down else x))

    def forward(self, x):
        h = self.unit("stem", x.reshape(-1, 1, 8, 8))
        h = self.block("b3", self.block("b2", self.block("b1", h), down=True))
        return self.logits(h.mean(dim=(2, 3)))


class Inception(nn.Module):
    """The prelude's `inception(x, c1, c3r, c3, c5r, c5, cp)`."""

    def __init__(self, c, c1, c3r, c3, c5r, c5, cp):
        super().__init__()
        self.b1 = nn.Conv2d(c, c1, 1)
        self.r3 = nn.Conv2d(c, c3r, 1)
        self.b3 = nn.Conv2d(c3r, c3, 3, padding=1)
        self.r5 = nn.Conv2d(c, c5r, 1)
        self.b5 = nn.Conv2d(c5r, c5, 5, padding=2)
        self.bp = nn.Conv2d(c, cp, 1)

    def forward(self, x):
        b1 = torch.relu(self.b1(x))
        b3 = torch.relu(self.b3(torch.relu(self.r3(x))))
        b5 = torch.relu(self.b5(torch.relu(self.r5(x))))
        bp = torch.relu(self.bp(F.max_pool2d(x, 3, stride=1, padding=1)))
        return torch.cat([b1, b3, b5, bp], dim=1)


class InceptionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.i3a = Inception(16, 8, 8, 16, 4, 8, 8)
        self.i3b = Inception(40, 16, 16, 24, 4, 8, 8)
        self.logits = nn.Linear(56, 10)
        self.dlc = {"stem.w": "stem.weight", "stem.b": "stem.bias",
                    "logits.w": "logits.weight", "logits.b": "logits.bias"}
        for blk in ("i3a", "i3b"):
            for conv in ("b1", "r3", "b3", "r5", "b5", "bp"):
                self.dlc[f"{blk}.{conv}.w"] = f"{blk}.{conv}.weight"
                self.dlc[f"{blk}.{conv}.b"] = f"{blk}.{conv}.bias"
        self.decay = []

    def forward(self, x):
        img = x.reshape(-1, 1, 8, 8)
        stem = torch.relu(self.stem(img))
        pool = F.max_pool2d(self.i3a(stem), 2)
        gap = F.avg_pool2d(self.i3b(pool), 4)
        return self.logits(gap.flatten(1))


class Transfer(nn.Module):  # transfer_base.dln / transfer_finetune.dln: 64-64(relu)-64(relu)-5
    def __init__(self, head: str, frozen: bool):
        super().__init__()
        self.h1, self.h2, self.out = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 5)
        self.dlc = {"h1.w": "h1.weight", "h1.b": "h1.bias", "h2.w": "h2.weight", "h2.b": "h2.bias",
                    f"{head}.w": "out.weight", f"{head}.b": "out.bias"}
        self.decay = []
        for p in (self.h1.weight, self.h1.bias, self.h2.weight, self.h2.bias):
            p.requires_grad_(not frozen)  # `freeze`: no gradient, no update

    def forward(self, x):
        return self.out(torch.relu(self.h2(torch.relu(self.h1(x)))))


class Recurrent(nn.Module):
    """sine.dln, adding_elman.dln, adding_lstm.dln: an Elman (nn.RNN, tanh) or LSTM layer of n
    units over [N, T, F], the state after the last step, and a linear read-out to one value."""

    def __init__(self, kind: str, features: int, n: int, forget_bias: float = 1.0):
        super().__init__()
        layer = nn.LSTM if kind == "lstm" else nn.RNN
        self.rnn = layer(features, n, batch_first=True)
        self.out = nn.Linear(n, 1)
        wh = "h.s.wh" if kind == "lstm" else "h.wh"
        self.dlc = {"h.wx": "rnn.weight_ih_l0", "h.b": "rnn.bias_ih_l0", wh: "rnn.weight_hh_l0",
                    "pred.w": "out.weight", "pred.b": "out.bias"}
        self.decay = []
        with torch.no_grad():  # PyTorch's second bias: fixed, holding what dlc adds as a constant
            self.rnn.bias_hh_l0.zero_()
            if kind == "lstm":
                self.rnn.bias_hh_l0[n:2 * n] = forget_bias
        self.rnn.bias_hh_l0.requires_grad_(False)

    def forward(self, x):
        states, _ = self.rnn(x)
        return self.out(states[:, -1])


class CharLM(nn.Module):
    """charlm.dln: an embedding of the character ids (dlc's table is nn.Embedding's weight, no
    transpose), an LSTM over the steps (as `Recurrent`: bias_hh fixed, holding the forget bias),
    and one read-out applied at every step: scores [N, T, V]."""

    def __init__(self, vocab: int = 28, dim: int = 16, n: int = 64, forget_bias: float = 1.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.LSTM(dim, n, batch_first=True)
        self.out = nn.Linear(n, vocab)
        self.dlc = {"e.table": "embed.weight", "h.wx": "rnn.weight_ih_l0", "h.b": "rnn.bias_ih_l0",
                    "h.s.wh": "rnn.weight_hh_l0", "w": "out.weight", "b": "out.bias"}
        self.decay = []
        with torch.no_grad():
            self.rnn.bias_hh_l0.zero_()
            self.rnn.bias_hh_l0[n:2 * n] = forget_bias
        self.rnn.bias_hh_l0.requires_grad_(False)

    def forward(self, x):
        states, _ = self.rnn(self.embed(x))
        return self.out(states)


MODELS = {"mlp": MLP, "logreg": LogReg, "xor": XOR, "deep_mlp": DeepMLP, "lenet": LeNet, "alexnet_small": AlexNetSmall,
          "resnet_small": ResNetSmall,
          "inception": InceptionNet, "transfer_base": lambda: Transfer("digits", False),
          "transfer_finetune": lambda: Transfer("head", True), "sine": lambda: Recurrent("elman", 1, 16),
          "adding_elman": lambda: Recurrent("elman", 2, 32), "adding_lstm": lambda: Recurrent("lstm", 2, 32),
          "charlm": CharLM}

# -- the classic networks at full size (examples/imagenet/), written here from the papers -------------
# No auxiliary classifiers; dropout as in dlc. tests/test_imagenet_nets.py checks their sizes and
# first blocks against the .dln files; benchmarks/classic_nets.py times their training steps.

def _conv_relu(c, o, k, **kw):
    return nn.Sequential(nn.Conv2d(c, o, k, **kw), nn.ReLU())


def _lrn():
    return nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)


def _alexnet():
    conv = _conv_relu
    return nn.Sequential(
        conv(3, 96, 11, stride=4), _lrn(), nn.MaxPool2d(3, 2),
        conv(96, 256, 5, padding=2, groups=2), _lrn(), nn.MaxPool2d(3, 2),
        conv(256, 384, 3, padding=1), conv(384, 384, 3, padding=1, groups=2), conv(384, 256, 3, padding=1, groups=2),
        nn.MaxPool2d(3, 2), nn.Flatten(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 1000))


def _vgg16():
    def block(c, o, n):
        return [_conv_relu(c if i == 0 else o, o, 3, padding=1) for i in range(n)] + [nn.MaxPool2d(2)]
    return nn.Sequential(*block(3, 64, 2), *block(64, 128, 2), *block(128, 256, 3), *block(256, 512, 3),
                         *block(512, 512, 3), nn.Flatten(), nn.Linear(25088, 4096), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 1000))


class _InceptionModule(nn.Module):
    def __init__(self, c, c1, c3r, c3, c5r, c5, cp):
        super().__init__()
        conv = _conv_relu
        self.b1 = conv(c, c1, 1)
        self.b3 = nn.Sequential(conv(c, c3r, 1), conv(c3r, c3, 3, padding=1))
        self.b5 = nn.Sequential(conv(c, c5r, 1), conv(c5r, c5, 5, padding=2))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(c, cp, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


def _googlenet():
    conv, inc = _conv_relu, _InceptionModule
    pool = nn.MaxPool2d(3, 2, ceil_mode=True)
    return nn.Sequential(
        conv(3, 64, 7, stride=2, padding=3), pool, _lrn(), conv(64, 64, 1), conv(64, 192, 3, padding=1), _lrn(), pool,
        inc(192, 64, 96, 128, 16, 32, 32), inc(256, 128, 128, 192, 32, 96, 64), pool,
        inc(480, 192, 96, 208, 16, 48, 64), inc(512, 160, 112, 224, 24, 64, 64),
        inc(512, 128, 128, 256, 24, 64, 64), inc(512, 112, 144, 288, 32, 64, 64),
        inc(528, 256, 160, 320, 32, 128, 128), pool, inc(832, 256, 160, 320, 32, 128, 128),
        inc(832, 384, 192, 384, 48, 128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.4),
        nn.Linear(1024, 1000))


class _ResNetBlock(nn.Module):
    """ResNet's basic block (m unused) or bottleneck (1x1 to m, 3x3 with the stride as torchvision's
    v1.5, 1x1 to o), with a projection shortcut where the shape changes."""

    def __init__(self, kind, c, m, o, stride):
        super().__init__()
        if kind == "basic":
            self.body = nn.Sequential(_conv_bn(c, o, 3, stride, 1), nn.ReLU(), _conv_bn(o, o, 3, 1, 1))
        else:
            self.body = nn.Sequential(_conv_bn(c, m, 1), nn.ReLU(), _conv_bn(m, m, 3, stride, 1), nn.ReLU(),
                                      _conv_bn(m, o, 1))
        self.proj = _conv_bn(c, o, 1, stride) if stride != 1 or c != o else None

    def forward(self, x):
        return torch.relu(self.body(x) + (self.proj(x) if self.proj is not None else x))


def _resnet(kind, stages):
    expansion = 1 if kind == "basic" else 4
    layers, c = [_conv_bn(3, 64, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1)], 64
    for i, count in enumerate(stages):
        m = 64 * 2 ** i
        for j in range(count):
            layers.append(_ResNetBlock(kind, c, m, m * expansion, 2 if j == 0 and i > 0 else 1))
            c = m * expansion
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000))


class _Fire(nn.Module):
    """SqueezeNet's fire module: a 1x1 squeeze to s channels, then 1x1 and 3x3 expands concatenated."""

    def __init__(self, c, s, e1, e3):
        super().__init__()
        self.squeeze = _conv_relu(c, s, 1)
        self.e1, self.e3 = _conv_relu(s, e1, 1), _conv_relu(s, e3, 3, padding=1)

    def forward(self, x):
        x = self.squeeze(x)
        return torch.cat([self.e1(x), self.e3(x)], 1)


def _squeezenet():
    """SqueezeNet 1.1 (Iandola et al., 2016; the 1.1 layout of its reference repository): 1,235,496
    params, a 1x1 convolution as the classifier and a global average pool instead of dense layers."""
    pool = nn.MaxPool2d(3, 2, ceil_mode=True)
    return nn.Sequential(
        _conv_relu(3, 64, 3, stride=2), pool, _Fire(64, 16, 64, 64), _Fire(128, 16, 64, 64), pool,
        _Fire(128, 32, 128, 128), _Fire(256, 32, 128, 128), pool, _Fire(256, 48, 192, 192),
        _Fire(384, 48, 192, 192), _Fire(384, 64, 256, 256), _Fire(512, 64, 256, 256), nn.Dropout(0.5),
        _conv_relu(512, 1000, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


IMAGENET = {"alexnet": (_alexnet, 227), "vgg16": (_vgg16, 224), "googlenet": (_googlenet, 224),
            "resnet18": (lambda: _resnet("basic", [2, 2, 2, 2]), 224),
            "resnet50": (lambda: _resnet("bottleneck", [3, 4, 6, 3]), 224),
            "squeezenet": (_squeezenet, 224)}  # no .dln of its own: tests/test_import_classic_nets.py imports it


def imagenet_net(name: str):
    """(PyTorch's version of examples/imagenet/NAME.dln, its input's height and width)."""
    make, size = IMAGENET[name]
    return make(), size


# the weight-decay factor each .dln adds as `c * l2(...)`
L2 = {"mlp": 1e-4, "deep_mlp": 1e-4}


def build(name: str) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"no PyTorch version of example '{name}' (have: {', '.join(MODELS)})")
    return MODELS[name]()


def load_dlc_params(net: nn.Module, params) -> None:
    """Copy dlc's params (name -> array, dlc layouts) into the module, in PyTorch layouts."""
    mine = dict(net.named_parameters())
    missing = sorted(set(net.dlc) - set(params))
    extra = sorted(set(params) - set(net.dlc))
    if missing or extra:
        raise KeyError(f"param names differ from the dlc model: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for k, tname in net.dlc.items():
            p = mine[tname]
            v = torch.as_tensor(np.asarray(params[k], np.float32))
            if _transposed(net, tname):
                v = v.T
            p.copy_(v.reshape(p.shape).to(p.device))


def _transposed(net: nn.Module, tname: str) -> bool:
    """Whether a weight is stored [out, in] in PyTorch where dlc stores [in, out] (x @ w)."""
    owner = net.get_submodule(tname.rsplit(".", 1)[0])
    return isinstance(owner, nn.Linear) and tname.endswith("weight") or \
        isinstance(owner, nn.RNNBase) and ".weight_" in tname


def dlc_params(net: nn.Module) -> dict[str, np.ndarray]:
    """The module's params in dlc names and layouts (the inverse of `load_dlc_params`)."""
    mine = dict(net.named_parameters())
    out = {}
    for k, tname in net.dlc.items():
        v = mine[tname].detach().cpu()
        if _transposed(net, tname):
            v = v.T
        if isinstance(net.get_submodule(tname.rsplit(".", 1)[0]), nn.Conv2d) and tname.endswith("bias"):
            v = v.reshape(-1, 1, 1)
        out[k] = v.contiguous().numpy()
    return out


def dlc_buffers(net: nn.Module) -> dict[str, np.ndarray]:
    """The module's running statistics in dlc names (`dlc_buffers` maps them; none by default)."""
    mine = dict(net.named_buffers())
    return {k: mine[t].detach().cpu().numpy() for k, t in getattr(net, "dlc_buffers", {}).items()}


def loss_fn(name: str, net: nn.Module):
    """(x, y) -> the scalar loss the .dln minimises. y: int64 labels, or float targets for xor."""
    c = L2.get(name, 0.0)
    decay = net.decay

    if name in REGRESSION:
        def f(x, y):
            return F.mse_loss(net(x), y)
    elif name in PER_STEP:
        def f(x, y):
            scores = net(x)
            return F.cross_entropy(scores.reshape(-1, scores.shape[-1]), y.reshape(-1))
    elif c:
        def f(x, y):
            return F.cross_entropy(net(x), y) + c * sum(w.square().sum() for w in decay)
    else:
        def f(x, y):
            return F.cross_entropy(net(x), y)
    return f


def scheduled_lr(s: dict, t: int) -> float:
    """The learning rate of step t (from 0) under dlc's schedule settings (docs/language.md)."""
    import math
    kind, k = s.get("schedule", "constant"), s.get("warmup", 0)
    u = max(0, t - k)
    if kind == "step":
        lr = s["lr"] * s["gamma"] ** (u // s["step_size"])
    elif kind == "exponential":
        lr = s["lr"] * s["gamma"] ** u
    elif kind == "cosine":
        span = s["total"] - k
        lr = s["lr_min"] + (s["lr"] - s["lr_min"]) * (1 + math.cos(math.pi * min(u, span) / span)) / 2
    else:
        lr = s["lr"]
    return lr * (min(1.0, (t + 1) / k) if k else 1.0)


class Scheduled:
    """A torch optimizer whose lr (and SGD momentum) follow dlc's schedule, set before each step."""

    def __init__(self, opt, s: dict):
        self.opt, self.s, self.t = opt, s, 0

    def zero_grad(self):
        self.opt.zero_grad()

    def step(self):
        s = self.s
        for group in self.opt.param_groups:
            group["lr"] = scheduled_lr(s, self.t)
            if s.get("momentum_warmup"):
                group["momentum"] = s["momentum"] - (s["momentum"] - s["momentum_start"]) * max(
                    0.0, 1 - self.t / s["momentum_warmup"])
        self.opt.step()
        self.t += 1


def optimizer(net: nn.Module, spec):
    """torch.optim from dlc's (name, settings), e.g. graph.meta.optimizer; wrapped in `Scheduled`
    when the settings have a schedule."""
    name, s = spec
    opt = _optimizer(net, name, s)
    opt = Scheduled(opt, s) if any(k in s for k in ("schedule", "warmup", "momentum_warmup")) else opt
    return Clipped(opt, net, s["clip"]) if s.get("clip") else opt


class Clipped:
    """An optimizer that clips the gradients to a global norm before each step (`clip = c`)."""

    def __init__(self, opt, net: nn.Module, clip: float):
        self.opt, self.clip = opt, clip
        self.params = [p for p in net.parameters() if p.requires_grad]

    def zero_grad(self):
        self.opt.zero_grad()

    def step(self):
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()


def _optimizer(net, name, s):
    ps = [p for p in net.parameters() if p.requires_grad]
    wd = s.get("weight_decay") or 0.0
    if name == "sgd":
        return torch.optim.SGD(ps, lr=s["lr"], momentum=s["momentum"], nesterov=bool(s["nesterov"]), weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(ps, lr=s["lr"], alpha=s["alpha"], eps=s["eps"], weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(ps, lr=s["lr"], betas=(s["beta1"], s["beta2"]), eps=s["eps"], weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(ps, lr=s["lr"], betas=(s["beta1"], s["beta2"]), eps=s["eps"], weight_decay=wd)
    raise KeyError(f"no PyTorch optimizer for '{name}'")


def torch_batch(name: str, feeds: dict, device="cpu"):
    """dlc feeds (x float32, or int32 ids: int64; y int32 labels or float32 targets) as PyTorch tensors."""
    x = np.asarray(feeds["x"])
    x = torch.as_tensor(x.astype(np.int64) if x.dtype.kind in "iu" else x.astype(np.float32)).to(device)
    y = torch.as_tensor(np.asarray(feeds["y"]))
    y = y.float() if name in REGRESSION else y.long()
    return x, y.to(device)
