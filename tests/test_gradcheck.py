"""Gradient checks: every derivative rule against central finite differences, in float64.

Each case is a tiny `.dln` model whose loss exercises one op (or one broadcasting / fan-out
pattern); the model is compiled for the NumPy interpreter in float64, the params are set to
values away from kinks (relu, abs, sign, l1 at 0) and from the domain edges (log, sqrt, div),
and the gradient `m.grad` returns is compared with

    (L(p + eps e_i) - L(p - eps e_i)) / (2 eps)      for every element i of every param.

Tolerance (used by `assert_grad_close`): |analytic - numeric| <= ATOL * max(1, |L|) + RTOL * |numeric|

  * truncation error of the central difference is eps^2/6 * |L'''| <= 1e-10 for the smooth,
    O(1)-scaled functions used here (|L'''| stays well below 100);
  * rounding error is ~ (a few ulp of L) / (2 eps) ~ 1e-15 * |L| / 2e-6 ~ 1e-9 * |L|; losses here
    sum at most a few hundred terms, so allow 100x that: ATOL = 1e-7 (scaled by |L| when |L| > 1);
  * RTOL = 1e-6 covers the relative part of both.
A wrong rule (a missing factor, sign, transpose, broadcast sum) is off by O(1); a float32
computation somewhere in the chain is off by ~1e-3 relative at this eps. Both fail loudly.

The optimizer tests recompute sgd / momentum / nesterov / rmsprop / adam updates in NumPy from
the model's own gradients (torch.optim conventions) and compare with `m.step` in float64.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import dlc
from dlc.dsl.frontend import lower
from dlc.ir.ops import OPS
from conftest import GOLDEN, TRAINING_EXAMPLES

EPS = 1e-6
RTOL = 1e-6
ATOL = 1e-7

# The example model of the design (copied here: /tmp/mlp.dln is not part of the repo).
MLP = """\
# mlp.dln — a two-layer perceptron for 8x8 digit images
model mlp {
    input  x : f32[N, 64]            # N is a symbolic dimension
    input  y : i32[N]                # class labels

    param  w1 : f32[64, 128] = he
    param  b1 : f32[128]     = zeros
    param  w2 : f32[128, 10] = xavier
    param  b2 : f32[10]      = zeros

    h      = relu(x @ w1 + b1)
    logits = h @ w2 + b2
    loss   = softmax_xent(logits, y) + 1e-4 * l2(w1, w2)
    h2 = dense(h, 32)
    output logits
    minimize loss with sgd(lr = 0.1, momentum = 0.9, nesterov = true)
}
"""

# dsl ops that deliberately have no derivative rule (none today). A new dsl op must either get
# a gradient check below or be listed here, so nobody adds an op without deciding.
NOT_DIFFERENTIABLE: set[str] = set()
# a composite op (batch_norm) is differentiated through the ops its `lower` rule writes
DIFFERENTIABLE = sorted(k for k, d in OPS.items() if d.dsl and (d.vjp is not None or d.lower is not None))


# -- values ------------------------------------------------------------------------------------

def _rng(key: str) -> np.random.Generator:
    return np.random.default_rng([sum(map(ord, key)), len(key)])


def f32(a) -> np.ndarray:
    """Inputs are float32-representable float64 values: the cases do not depend on how a float64
    model feeds its inputs (test_float64_inputs_keep_precision checks that separately)."""
    return np.asarray(a, np.float32).astype(np.float64)


def normal(rng, *shape):
    return rng.normal(0.0, 1.0, shape)


def positive(rng, *shape):
    return rng.uniform(0.5, 2.0, shape)


def away(rng, *shape):
    """Values with |v| in [0.2, 1.5]: far from the kink at 0 compared with eps."""
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.2, 1.5, shape)


def labels(rng, n, classes):
    return rng.integers(0, classes, n).astype(np.int32)


# -- the cases -----------------------------------------------------------------------------------
# case id -> (body ending in `loss = ...`, inputs(rng) -> dict, params(rng) -> dict, extra defs,
#             input type overrides, NumPy reference for the loss or None)

def _softmax(a, axis):
    z = np.exp(a - a.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def _log_softmax(a, axis):
    z = a - a.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def _xent(logits, y):
    return -_log_softmax(logits, 1)[np.arange(len(y)), y].mean()


def _conv_ref(x, w, s=(1, 1), p=(0, 0), d=(1, 1)):
    """Direct convolution (cross-correlation), one output pixel at a time."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    ho = (h + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1
    wo = (wd + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * s[0]: i * s[0] + d[0] * (kh - 1) + 1: d[0],
                       j * s[1]: j * s[1] + d[1] * (kw - 1) + 1: d[1]]
            out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return out


def _pool_ref(x, k, s, p, mode):
    """Max or average (padding counted as zeros, PyTorch's count_include_pad) over k x k windows."""
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf if mode == "max" else 0.0)
    ho = (x.shape[2] + 2 * p - k) // s + 1
    wo = (x.shape[3] + 2 * p - k) // s + 1
    out = np.zeros(x.shape[:2] + (ho, wo))
    for i in range(ho):
        for j in range(wo):
            win = xp[:, :, i * s: i * s + k, j * s: j * s + k]
            out[:, :, i, j] = win.max(axis=(2, 3)) if mode == "max" else win.sum(axis=(2, 3)) / (k * k)
    return out


def _bn_ref(x, gamma, beta, axes, eps=1e-5):
    """Batch norm in training, from its definition: batch mean and biased variance per channel."""
    shape = [1] * x.ndim
    shape[1] = -1
    m = x.mean(axis=axes, keepdims=True)
    v = ((x - m) ** 2).mean(axis=axes, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * gamma.reshape(shape) + beta.reshape(shape)


# batch_norm's running statistics are buffers, which a function declares (make_source declares params)
_BN_DEF = """def bnorm(x: {shape}, gamma: [{c}], beta: [{c}]) {{
    buffer mean : f32[{c}] = zeros
    buffer var  : f32[{c}] = ones
    return batch_norm(x, gamma, beta, mean, var)
}}
"""


def C(shape):  # a float input named c of the given shape
    return lambda r: {"c": f32(normal(r, *shape))}


CASES = {
    # elementwise, unary
    "neg": ("loss = sum(-w * c)", C((3, 4)), lambda r: {"w": normal(r, 3, 4)},
            lambda c, w: np.sum(-w * c)),
    "exp": ("loss = sum(exp(w) * c)", C((3, 4)), lambda r: {"w": normal(r, 3, 4)},
            lambda c, w: np.sum(np.exp(w) * c)),
    "log": ("loss = sum(log(w) * c)", C((3, 4)), lambda r: {"w": positive(r, 3, 4)},
            lambda c, w: np.sum(np.log(w) * c)),
    "sqrt": ("loss = sum(sqrt(w) * c)", C((3, 4)), lambda r: {"w": positive(r, 3, 4)},
             lambda c, w: np.sum(np.sqrt(w) * c)),
    "abs": ("loss = sum(abs(w) * c)", C((3, 4)), lambda r: {"w": away(r, 3, 4)},
            lambda c, w: np.sum(np.abs(w) * c)),
    # sign has a zero derivative; the product rule must still deliver sign(w) * c through mul
    "sign": ("loss = sum(sign(w) * w * c)", C((3, 4)), lambda r: {"w": away(r, 3, 4)},
             lambda c, w: np.sum(np.sign(w) * w * c)),
    "relu": ("loss = sum(relu(w) * c)", C((3, 4)), lambda r: {"w": away(r, 3, 4)},
             lambda c, w: np.sum(np.maximum(w, 0) * c)),
    "leaky_relu": ("loss = sum(leaky_relu(w, slope = 0.2) * c)", C((3, 4)), lambda r: {"w": away(r, 3, 4)},
                   lambda c, w: np.sum(np.where(w > 0, w, 0.2 * w) * c)),
    "elu": ("loss = sum(elu(w, alpha = 0.7) * c)", C((3, 4)), lambda r: {"w": away(r, 3, 4)},
            lambda c, w: np.sum(np.where(w > 0, w, 0.7 * np.expm1(np.minimum(w, 0))) * c)),
    "sigmoid": ("loss = sum(sigmoid(w) * c)", C((3, 4)), lambda r: {"w": 2 * normal(r, 3, 4)},
                lambda c, w: np.sum(c / (1 + np.exp(-w)))),
    "tanh": ("loss = sum(tanh(w) * c)", C((3, 4)), lambda r: {"w": normal(r, 3, 4)},
             lambda c, w: np.sum(np.tanh(w) * c)),
    # issue 23's elementwise ops (ir/ops_math.py)
    "erf": ("loss = sum(erf(w) * c)", C((3, 4)), lambda r: {"w": normal(r, 3, 4)},
            lambda c, w: np.sum(np.vectorize(math.erf)(w) * c)),
    "gelu": ("loss = sum(gelu(w) * c)", C((3, 4)), lambda r: {"w": 2 * normal(r, 3, 4)},
             lambda c, w: np.sum(0.5 * w * (1 + np.vectorize(math.erf)(w / math.sqrt(2))) * c)),
    "gelu_tanh": ('loss = sum(gelu(w, approximate = "tanh") * c)', C((3, 4)), lambda r: {"w": 2 * normal(r, 3, 4)},
                  lambda c, w: np.sum(0.5 * w * (1 + np.tanh(math.sqrt(2 / math.pi) * (w + 0.044715 * w ** 3))) * c)),
    "softplus": ("loss = sum(softplus(w, beta = 2) * c)", C((3, 4)), lambda r: {"w": 2 * normal(r, 3, 4)},
                 lambda c, w: np.sum(np.log1p(np.exp(2 * w)) / 2 * c)),
    "pow": ("loss = sum(pow(w, v) * c)", C((3, 4)), lambda r: {"w": positive(r, 3, 4), "v": normal(r, 4)},
            lambda c, w, v: np.sum(w ** v * c)),
    # ties are away from the values drawn (a tie splits the adjoint: test_practitioner_ops.py)
    "max": ("loss = sum(max(w, v) * c)", C((3, 4)), lambda r: {"w": normal(r, 3, 4), "v": normal(r, 4)},
            lambda c, w, v: np.sum(np.maximum(w, v) * c)),
    "min": ("loss = sum(min(w, v) * c)", C((3, 4)), lambda r: {"w": normal(r, 3, 4), "v": normal(r, 4)},
            lambda c, w, v: np.sum(np.minimum(w, v) * c)),
    # the comparisons pass no gradient; where passes it to the branch taken
    "where_comparisons": ("loss = sum((where(w > v, w * w, v) + (w < v) * w + (w >= v) * v + (w <= v) * w * v"
                          " + (w == v) * w + (w != v) * v) * c)", C((3, 4)),
                          lambda r: {"w": normal(r, 3, 4), "v": normal(r, 3, 4)},
                          lambda c, w, v: np.sum((np.where(w > v, w * w, v) + (w < v) * w + (w >= v) * v
                                                  + (w <= v) * w * v + (w != v) * v) * c)),
    "bce_logits": ("loss = bce_logits(w, v)", lambda r: {},
                   lambda r: {"w": 3 * normal(r, 3, 4), "v": r.uniform(0.0, 1.0, (3, 4))},
                   lambda w, v: np.mean(np.maximum(w, 0) - w * v + np.log1p(np.exp(-np.abs(w))))),
    "layer_norm": ("loss = sum(layer_norm(x, w, v) * c)", C((3, 5)),
                   lambda r: {"x": normal(r, 3, 5), "w": normal(r, 5), "v": normal(r, 5)},
                   lambda c, x, w, v: np.sum(((x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
                                              * w + v) * c)),
    # elementwise, binary
    "add": ("loss = sum(tanh(w + v) * c)", C((3, 4)),
            lambda r: {"w": normal(r, 3, 4), "v": normal(r, 3, 4)},
            lambda c, w, v: np.sum(np.tanh(w + v) * c)),
    "sub": ("loss = sum(tanh(w - v) * c)", C((3, 4)),
            lambda r: {"w": normal(r, 3, 4), "v": normal(r, 3, 4)},
            lambda c, w, v: np.sum(np.tanh(w - v) * c)),
    "mul": ("loss = sum(w * v * c)", C((3, 4)),
            lambda r: {"w": normal(r, 3, 4), "v": normal(r, 3, 4)},
            lambda c, w, v: np.sum(w * v * c)),
    "div": ("loss = sum(w / v * c)", C((3, 4)),
            lambda r: {"w": normal(r, 3, 4), "v": positive(r, 3, 4)},
            lambda c, w, v: np.sum(w / v * c)),
    # matmul, with and without transposed operands
    "matmul": ("loss = sum(tanh(a @ b) * c)", C((3, 2)),
               lambda r: {"a": normal(r, 3, 4), "b": normal(r, 4, 2)},
               lambda c, a, b: np.sum(np.tanh(a @ b) * c)),
    "matmul_ta": ("loss = sum(tanh(matmul(a, b, ta = true)) * c)", C((3, 2)),
                  lambda r: {"a": normal(r, 4, 3), "b": normal(r, 4, 2)},
                  lambda c, a, b: np.sum(np.tanh(a.T @ b) * c)),
    "matmul_tb": ("loss = sum(tanh(matmul(a, b, tb = true)) * c)", C((3, 2)),
                  lambda r: {"a": normal(r, 3, 4), "b": normal(r, 2, 4)},
                  lambda c, a, b: np.sum(np.tanh(a @ b.T) * c)),
    "matmul_ta_tb": ("loss = sum(tanh(matmul(a, b, ta = true, tb = true)) * c)", C((3, 2)),
                     lambda r: {"a": normal(r, 4, 3), "b": normal(r, 2, 4)},
                     lambda c, a, b: np.sum(np.tanh(a.T @ b.T) * c)),
    # explicit transposes are folded into matmul flags by the optimized pipeline
    "matmul_of_transposes": ("loss = sum(tanh(transpose(a) @ transpose(b)) * c)", C((3, 2)),
                             lambda r: {"a": normal(r, 4, 3), "b": normal(r, 2, 4)},
                             lambda c, a, b: np.sum(np.tanh(a.T @ b.T) * c)),
    "matmul_input_left": ("loss = sum(tanh(x @ w) * c)",
                          lambda r: {"x": f32(normal(r, 5, 4)), "c": f32(normal(r, 5, 3))},
                          lambda r: {"w": normal(r, 4, 3)},
                          lambda x, c, w: np.sum(np.tanh(x @ w) * c)),
    "matmul_same_operand": ("loss = sum(tanh(w @ w) * c)", C((3, 3)), lambda r: {"w": normal(r, 3, 3)},
                            lambda c, w: np.sum(np.tanh(w @ w) * c)),
    # zeros (an initial state): no operand, nothing to differentiate, but its users still are
    "zeros": ("loss = sum(tanh(w + zeros([3, 4])) * c)", C((3, 4)), lambda r: {"w": normal(r, 3, 4)},
              lambda c, w: np.sum(np.tanh(w) * c)),
    # a batch of products sharing one matrix (a recurrent layer's input projection)
    "matmul_batched": ("loss = sum(tanh(x @ w) * c)",
                       lambda r: {"x": f32(normal(r, 2, 3, 4)), "c": f32(normal(r, 2, 3, 2))},
                       lambda r: {"w": normal(r, 4, 2)},
                       lambda x, c, w: np.sum(np.tanh(x @ w) * c)),
    # layout
    "transpose": ("loss = sum(tanh(transpose(w)) * c)", C((4, 3)), lambda r: {"w": normal(r, 3, 4)},
                  lambda c, w: np.sum(np.tanh(w.T) * c)),
    "transpose_perm": ("loss = sum(tanh(transpose(w, [2, 0, 1])) * c)", C((4, 2, 3)),
                       lambda r: {"w": normal(r, 2, 3, 4)},
                       lambda c, w: np.sum(np.tanh(np.transpose(w, (2, 0, 1))) * c)),
    "transpose_perm_kw": ("loss = sum(tanh(transpose(w, perm = [1, 2, 0])) * c)", C((3, 4, 2)),
                          lambda r: {"w": normal(r, 2, 3, 4)},
                          lambda c, w: np.sum(np.tanh(np.transpose(w, (1, 2, 0))) * c)),
    "reshape": ("loss = sum(tanh(reshape(w, [4, 3])) * c)", C((4, 3)), lambda r: {"w": normal(r, 3, 4)},
                lambda c, w: np.sum(np.tanh(w.reshape(4, 3)) * c)),
    "reshape_minus_one": ("loss = sum(tanh(reshape(w, [2, -1])) * c) + sum(reshape(w, [-1]) * d)",
                          lambda r: {"c": f32(normal(r, 2, 6)), "d": f32(normal(r, 12))},
                          lambda r: {"w": normal(r, 3, 4)},
                          lambda c, d, w: np.sum(np.tanh(w.reshape(2, 6)) * c) + np.sum(w.ravel() * d)),
    # a symbolic batch dimension through a function's shape pattern
    "reshape_symbolic": ("loss = sum(tanh(flat(x * w)) * c)",
                         lambda r: {"x": f32(normal(r, 5, 3, 4)), "c": f32(normal(r, 5, 12))},
                         lambda r: {"w": normal(r, 3, 4)},
                         lambda x, c, w: np.sum(np.tanh((x * w).reshape(5, 12)) * c),
                         "def flat(v: [B, H, W]) {\n    return reshape(v, [B, H * W])\n}\n",
                         {"x": "f32[N, 3, 4]", "c": "f32[N, 12]"}),
    "reshape_symbolic_in_model": ("loss = sum(tanh(reshape(x * w, [N, 12])) * c)",
                                  lambda r: {"x": f32(normal(r, 5, 3, 4)), "c": f32(normal(r, 5, 12))},
                                  lambda r: {"w": normal(r, 3, 4)},
                                  lambda x, c, w: np.sum(np.tanh((x * w).reshape(5, 12)) * c),
                                  "", {"x": "f32[N, 3, 4]", "c": "f32[N, 12]"}),
    # reductions
    "sum_all": ("loss = tanh(sum(w)) + sum(w * c)", C((3, 4)), lambda r: {"w": 0.3 * normal(r, 3, 4)},
                lambda c, w: np.tanh(w.sum()) + np.sum(w * c)),
    "sum_axis0": ("loss = sum(tanh(sum(w, axis = 0)) * c)", C((4,)), lambda r: {"w": normal(r, 3, 4)},
                  lambda c, w: np.sum(np.tanh(w.sum(0)) * c)),
    "sum_axis1_keepdims": ("loss = sum(tanh(sum(w, axis = 1, keepdims = true)) * c)", C((3, 1)),
                           lambda r: {"w": normal(r, 3, 4)},
                           lambda c, w: np.sum(np.tanh(w.sum(1, keepdims=True)) * c)),
    "sum_negative_axis": ("loss = sum(tanh(sum(w, axis = -1)) * c)", C((3,)), lambda r: {"w": normal(r, 3, 4)},
                          lambda c, w: np.sum(np.tanh(w.sum(-1)) * c)),
    "sum_axes_rank3": ("loss = sum(tanh(sum(w, axis = [0, 2], keepdims = true)) * c)", C((1, 3, 1)),
                       lambda r: {"w": 0.5 * normal(r, 2, 3, 4)},
                       lambda c, w: np.sum(np.tanh(w.sum((0, 2), keepdims=True)) * c)),
    "sum_none_keepdims": ("loss = sum(tanh(sum(w, keepdims = true)) * c)", C((1, 1)),
                          lambda r: {"w": 0.3 * normal(r, 3, 4)},
                          lambda c, w: np.sum(np.tanh(w.sum(keepdims=True)) * c)),
    "mean_all": ("loss = tanh(mean(w)) + mean(w * c)", C((3, 4)), lambda r: {"w": normal(r, 3, 4)},
                 lambda c, w: np.tanh(w.mean()) + np.mean(w * c)),
    "mean_axis0": ("loss = sum(tanh(mean(w, axis = 0)) * c)", C((4,)), lambda r: {"w": normal(r, 3, 4)},
                   lambda c, w: np.sum(np.tanh(w.mean(0)) * c)),
    "mean_axes_keepdims": ("loss = sum(tanh(mean(w, axis = [1, 2], keepdims = true)) * c)", C((2, 1, 1)),
                           lambda r: {"w": normal(r, 2, 3, 4)},
                           lambda c, w: np.sum(np.tanh(w.mean((1, 2), keepdims=True)) * c)),
    "mean_symbolic_batch": ("loss = sum(tanh(mean(x * w, axis = 0)) * c)",
                            lambda r: {"x": f32(normal(r, 5, 4)), "c": f32(normal(r, 4))},
                            lambda r: {"w": normal(r, 4)},
                            lambda x, c, w: np.sum(np.tanh((x * w).mean(0)) * c),
                            "", {"x": "f32[N, 4]"}),
    "sum_axis1_symbolic_batch": ("loss = sum(tanh(sum(x * w, axis = 1)) * c)",  # backward reshapes to [N, 1]
                                 lambda r: {"x": f32(normal(r, 5, 4)), "c": f32(normal(r, 5))},
                                 lambda r: {"w": normal(r, 4)},
                                 lambda x, c, w: np.sum(np.tanh((x * w).sum(1)) * c),
                                 "", {"x": "f32[N, 4]", "c": "f32[N]"}),
    "softmax_axis0": ("loss = sum(softmax(w, axis = 0) * c)", C((3, 4)), lambda r: {"w": normal(r, 3, 4)},
                      lambda c, w: np.sum(_softmax(w, 0) * c)),
    "softmax_axis1": ("loss = sum(softmax(w) * c)", C((3, 4)), lambda r: {"w": normal(r, 3, 4)},
                      lambda c, w: np.sum(_softmax(w, 1) * c)),
    "log_softmax_axis0": ("loss = sum(log_softmax(w, axis = 0) * c)", C((3, 4)),
                          lambda r: {"w": normal(r, 3, 4)},
                          lambda c, w: np.sum(_log_softmax(w, 0) * c)),
    "log_softmax_axis1": ("loss = sum(log_softmax(w, axis = 1) * c)", C((3, 4)),
                          lambda r: {"w": normal(r, 3, 4)},
                          lambda c, w: np.sum(_log_softmax(w, 1) * c)),
    # losses and penalties
    "softmax_xent": ("loss = softmax_xent(x @ w + b, y)",
                     lambda r: {"x": f32(normal(r, 6, 4)), "y": labels(r, 6, 3)},
                     lambda r: {"w": normal(r, 4, 3), "b": normal(r, 3)},
                     lambda x, y, w, b: _xent(x @ w + b, y)),
    "softmax_xent_symbolic": ("loss = softmax_xent(tanh(x @ w), y)",
                              lambda r: {"x": f32(normal(r, 7, 4)), "y": labels(r, 7, 5)},
                              lambda r: {"w": normal(r, 4, 5)},
                              lambda x, y, w: _xent(np.tanh(x @ w), y),
                              "", {"x": "f32[N, 4]", "y": "i32[N]"}),
    # a label per position: logits [3, 4, 3], labels [3, 4], the mean over the 12 positions
    "softmax_xent_per_position": ("loss = softmax_xent(x @ w, y)",
                                  lambda r: {"x": f32(normal(r, 3, 4, 5)),
                                             "y": r.integers(0, 3, (3, 4)).astype(np.int32)},
                                  lambda r: {"w": normal(r, 5, 3)},
                                  lambda x, y, w: _xent((x @ w).reshape(-1, 3), y.reshape(-1))),
    # token ids: id 2 three times (the scatter-add sums its rows), row 5 never picked (gradient 0)
    "embedding": ("loss = sum(tanh(embedding(w, y)) * c)",
                  lambda r: {"y": np.array([[0, 2, 2, 4], [1, 2, 0, 3]], np.int32), "c": f32(normal(r, 2, 4, 3))},
                  lambda r: {"w": normal(r, 6, 3)},
                  lambda y, c, w: np.sum(np.tanh(w[y]) * c)),
    "softmax_xent_scaled_fanout": ("z = x @ w\n    loss = 0.5 * softmax_xent(z, y) + softmax_xent(z * 2, y) * 3",
                                   lambda r: {"x": f32(normal(r, 6, 4)), "y": labels(r, 6, 3)},
                                   lambda r: {"w": normal(r, 4, 3)},
                                   lambda x, y, w: 0.5 * _xent(x @ w, y) + 3 * _xent(2 * (x @ w), y)),
    "mse": ("loss = mse(tanh(x @ w), t)",
            lambda r: {"x": f32(normal(r, 5, 4)), "t": f32(normal(r, 5, 2))},
            lambda r: {"w": normal(r, 4, 2)},
            lambda x, t, w: np.mean((np.tanh(x @ w) - t) ** 2)),
    "mse_both_operands": ("loss = mse(w, v * 2)", lambda r: {},
                          lambda r: {"w": normal(r, 3, 4), "v": normal(r, 3, 4)},
                          lambda w, v: np.mean((w - 2 * v) ** 2)),
    "l1": ("loss = l1(w) + sum(w * c)", C((3, 4)), lambda r: {"w": away(r, 3, 4)},
           lambda c, w: np.abs(w).sum() + np.sum(w * c)),
    "l1_several": ("loss = l1(w, v) + sum(tanh(w) * c)", C((3, 4)),
                   lambda r: {"w": away(r, 3, 4), "v": away(r, 2)},
                   lambda c, w, v: np.abs(w).sum() + np.abs(v).sum() + np.sum(np.tanh(w) * c)),
    "l2": ("loss = l2(w) + sum(tanh(w) * c)", C((3, 4)), lambda r: {"w": normal(r, 3, 4)},
           lambda c, w: np.square(w).sum() + np.sum(np.tanh(w) * c)),
    "l2_several": ("loss = 0.5 * l2(w, v, u) + sum(tanh(w) * c)", C((3, 4)),
                   lambda r: {"w": normal(r, 3, 4), "v": normal(r, 5), "u": normal(r)},
                   lambda c, w, v, u: 0.5 * (np.square(w).sum() + np.square(v).sum() + u * u)
                   + np.sum(np.tanh(w) * c)),
    # broadcasting: the autodiff pass must sum over the broadcast axes
    "bcast_bias": ("loss = sum(tanh(x @ w + b) * c)",
                   lambda r: {"x": f32(normal(r, 5, 4)), "c": f32(normal(r, 5, 3))},
                   lambda r: {"w": normal(r, 4, 3), "b": normal(r, 3)},
                   lambda x, c, w, b: np.sum(np.tanh(x @ w + b) * c)),
    "bcast_column": ("loss = sum(tanh(s * x + w) * c)",  # [N,1] with [N,C]
                     lambda r: {"x": f32(normal(r, 3, 4)), "c": f32(normal(r, 3, 4))},
                     lambda r: {"s": normal(r, 3, 1), "w": normal(r, 3, 4)},
                     lambda x, c, s, w: np.sum(np.tanh(s * x + w) * c)),
    "bcast_row_keepdims": ("loss = sum(tanh(x - s) * c)",  # [1,C] with [N,C]
                           lambda r: {"x": f32(normal(r, 3, 4)), "c": f32(normal(r, 3, 4))},
                           lambda r: {"s": normal(r, 1, 4)},
                           lambda x, c, s: np.sum(np.tanh(x - s) * c)),
    "bcast_outer": ("loss = sum(tanh(u + v) * c)",  # [3,1] + [1,4] -> [3,4], both sides broadcast
                    C((3, 4)), lambda r: {"u": normal(r, 3, 1), "v": normal(r, 1, 4)},
                    lambda c, u, v: np.sum(np.tanh(u + v) * c)),
    "bcast_denominator": ("loss = sum((x / s - s) * c)",
                          lambda r: {"x": f32(normal(r, 3, 4)), "c": f32(normal(r, 3, 4))},
                          lambda r: {"s": positive(r, 3, 1)},
                          lambda x, c, s: np.sum((x / s - s) * c)),
    "bcast_scalar_param": ("loss = sum(tanh(a * x - a) * c) + a * a",
                           lambda r: {"x": f32(normal(r, 3, 4)), "c": f32(normal(r, 3, 4))},
                           lambda r: {"a": np.float64(0.7)},
                           lambda x, c, a: np.sum(np.tanh(a * x - a) * c) + a * a),
    "bcast_scalar_consts": ("loss = sum(tanh(2 * w - 1) * c / 3) + sum(1 / w)", C((3, 4)),
                            lambda r: {"w": positive(r, 3, 4)},
                            lambda c, w: np.sum(np.tanh(2 * w - 1) * c / 3) + np.sum(1 / w)),
    "bcast_rank_promotion": ("loss = sum(tanh(x + b) * c)",  # [4] with [2,3,4]
                             lambda r: {"x": f32(normal(r, 2, 3, 4)), "c": f32(normal(r, 2, 3, 4))},
                             lambda r: {"b": normal(r, 4)},
                             lambda x, c, b: np.sum(np.tanh(x + b) * c)),
    "bcast_rank_promotion_keep": ("loss = sum(tanh(x * b) * c)",  # [3,1] with [2,3,4]
                                  lambda r: {"x": f32(normal(r, 2, 3, 4)), "c": f32(normal(r, 2, 3, 4))},
                                  lambda r: {"b": normal(r, 3, 1)},
                                  lambda x, c, b: np.sum(np.tanh(x * b) * c)),
    # convolution and pooling (NCHW), against direct loop references
    "conv2d": ("loss = sum(tanh(conv2d(x, w)) * c)", C((2, 3, 3, 3)),
               lambda r: {"x": normal(r, 2, 2, 5, 5), "w": 0.5 * normal(r, 3, 2, 3, 3)},
               lambda c, x, w: np.sum(np.tanh(_conv_ref(x, w)) * c)),
    "conv2d_stride_padding": ("loss = sum(tanh(conv2d(x, w, stride = 2, padding = 1)) * c)", C((2, 3, 3, 3)),
                              lambda r: {"x": normal(r, 2, 2, 5, 5), "w": 0.5 * normal(r, 3, 2, 3, 3)},
                              lambda c, x, w: np.sum(np.tanh(_conv_ref(x, w, (2, 2), (1, 1))) * c)),
    "conv2d_dilation_pairs": ("loss = sum(tanh(conv2d(x, w, stride = [1, 2], padding = [0, 1], dilation = 2)) * c)",
                              C((1, 2, 3, 3)),
                              lambda r: {"x": normal(r, 1, 2, 5, 5), "w": 0.5 * normal(r, 2, 2, 2, 2)},
                              lambda c, x, w: np.sum(np.tanh(_conv_ref(x, w, (1, 2), (0, 1), (2, 2))) * c)),
    "conv2d_1x1": ("loss = sum(tanh(conv2d(x, w)) * c)", C((2, 3, 4, 4)),
                   lambda r: {"x": normal(r, 2, 2, 4, 4), "w": normal(r, 3, 2, 1, 1)},
                   lambda c, x, w: np.sum(np.tanh(_conv_ref(x, w)) * c)),
    "conv2d_bias_broadcast": ("loss = sum(tanh(conv2d(x, w, padding = 1) + b) * c)",
                              lambda r: {"x": f32(normal(r, 2, 1, 4, 4)), "c": f32(normal(r, 2, 3, 4, 4))},
                              lambda r: {"w": 0.5 * normal(r, 3, 1, 3, 3), "b": normal(r, 3, 1, 1)},
                              lambda x, c, w, b: np.sum(np.tanh(_conv_ref(x, w, p=(1, 1)) + b) * c)),
    # batch norm in training (batch statistics; m.grad is a training run): through x, gamma, beta
    "batch_norm": ("loss = sum(tanh(bnorm(x, gamma, beta)) * c)", C((4, 3, 2, 2)),
                   lambda r: {"x": normal(r, 4, 3, 2, 2), "gamma": positive(r, 3), "beta": normal(r, 3)},
                   lambda c, x, gamma, beta: np.sum(np.tanh(_bn_ref(x, gamma, beta, (0, 2, 3))) * c),
                   _BN_DEF.format(shape="[B, C, H, W]", c="C")),
    "batch_norm_features": ("loss = sum(tanh(bnorm(x, gamma, beta)) * c)", C((5, 3)),
                            lambda r: {"x": normal(r, 5, 3), "gamma": positive(r, 3), "beta": normal(r, 3)},
                            lambda c, x, gamma, beta: np.sum(np.tanh(_bn_ref(x, gamma, beta, (0,))) * c),
                            _BN_DEF.format(shape="[B, C]", c="C")),
    "maxpool2d": ("loss = sum(tanh(maxpool2d(x, 2)) * c)", C((2, 2, 2, 2)),
                  lambda r: {"x": normal(r, 2, 2, 4, 4)},
                  lambda c, x: np.sum(np.tanh(_pool_ref(x, 2, 2, 0, "max")) * c)),
    "maxpool2d_overlapping_padded": ("loss = sum(tanh(maxpool2d(x, 3, stride = 1, padding = 1)) * c)",
                                     C((1, 2, 4, 4)), lambda r: {"x": normal(r, 1, 2, 4, 4)},
                                     lambda c, x: np.sum(np.tanh(_pool_ref(x, 3, 1, 1, "max")) * c)),
    "avgpool2d": ("loss = sum(tanh(avgpool2d(x, 2)) * c)", C((2, 2, 2, 2)),
                  lambda r: {"x": normal(r, 2, 2, 4, 4)},
                  lambda c, x: np.sum(np.tanh(_pool_ref(x, 2, 2, 0, "avg")) * c)),
    "avgpool2d_overlapping_padded": ("loss = sum(tanh(avgpool2d(x, kernel = 3, stride = 2, padding = 1)) * c)",
                                     C((1, 2, 3, 3)), lambda r: {"x": normal(r, 1, 2, 5, 5)},
                                     lambda c, x: np.sum(np.tanh(_pool_ref(x, 3, 2, 1, "avg")) * c)),
    # slices: one alone (its adjoint is a pad of zeros), and slices that partition their operand
    # (autodiff joins their adjoints into one concat)
    "slice": ("loss = sum(tanh(slice(a, axis = 1, start = 1, stop = 4)) * c)", C((2, 3)),
              lambda r: {"a": normal(r, 2, 5)},
              lambda c, a: np.sum(np.tanh(a[:, 1:4]) * c)),
    "slice_partition": ("loss = sum(tanh(slice(a, axis = 0, start = 0, stop = 2)) * c) + "
                        "sum(slice(a, axis = 0, start = 2, stop = 3) * slice(a, axis = 0, start = 2, stop = 3))",
                        C((2, 4)), lambda r: {"a": normal(r, 3, 4)},
                        lambda c, a: np.sum(np.tanh(a[:2]) * c) + np.sum(a[2:] ** 2)),
    "concat": ("loss = sum(tanh(concat(a, b)) * c)", C((2, 5)),
               lambda r: {"a": normal(r, 2, 3), "b": normal(r, 2, 2)},
               lambda c, a, b: np.sum(np.tanh(np.concatenate([a, b], 1)) * c)),
    "concat_axis0_repeated": ("loss = sum(tanh(concat(a, b, a, axis = 0)) * c)", C((5, 3)),
                              lambda r: {"a": normal(r, 2, 3), "b": normal(r, 1, 3)},
                              lambda c, a, b: np.sum(np.tanh(np.concatenate([a, b, a], 0)) * c)),
    "concat_negative_axis": ("loss = sum(tanh(concat(a, b, axis = -1)) * c)", C((2, 5)),
                             lambda r: {"a": normal(r, 2, 3), "b": normal(r, 2, 2)},
                             lambda c, a, b: np.sum(np.tanh(np.concatenate([a, b], -1)) * c)),
    "concat_channels": ("loss = sum(tanh(concat(x * s, x, axis = 1)) * c)",
                        lambda r: {"x": f32(normal(r, 2, 1, 2, 2)), "c": f32(normal(r, 2, 2, 2, 2))},
                        lambda r: {"s": normal(r, 1, 1, 2, 2)},
                        lambda x, c, s: np.sum(np.tanh(np.concatenate([x * s, x], 1)) * c)),
    # dropout draws a fixed mask while the step count stays put, so the loss is differentiable
    "dropout": ("loss = sum(tanh(dropout(w, 0.5)) * c)", C((4, 5)), lambda r: {"w": normal(r, 4, 5)}, None),
    "dropout_two_layers": ("h = dropout(tanh(x @ w), p = 0.3)\n    loss = sum(dropout(h, 0.2) * c)",
                           lambda r: {"x": f32(normal(r, 6, 4)), "c": f32(normal(r, 6, 5))},
                           lambda r: {"w": normal(r, 4, 5)}, None),
    # fan-out: a value used several times receives the sum of the contributions
    "fanout_value": ("h = tanh(x @ w)\n    loss = sum(h * h * c) + sum(h * c) + l2(w)",
                     lambda r: {"x": f32(normal(r, 5, 4)), "c": f32(normal(r, 5, 3))},
                     lambda r: {"w": normal(r, 4, 3)},
                     lambda x, c, w: np.sum(np.tanh(x @ w) ** 2 * c) + np.sum(np.tanh(x @ w) * c)
                     + np.square(w).sum()),
    "fanout_same_op": ("loss = sum(w * w * c)", C((3, 4)), lambda r: {"w": normal(r, 3, 4)},
                       lambda c, w: np.sum(w * w * c)),
    "fanout_param_branches": ("a1 = tanh(x @ w)\n    a2 = exp(0.1 * w)\n    loss = sum(a1 * c) + mean(a2) - sum(a1)",
                              lambda r: {"x": f32(normal(r, 5, 4)), "c": f32(normal(r, 5, 3))},
                              lambda r: {"w": normal(r, 4, 3)},
                              lambda x, c, w: np.sum(np.tanh(x @ w) * c) + np.exp(0.1 * w).mean()
                              - np.tanh(x @ w).sum()),
    "fanout_through_function": ("loss = sum(tanh(sq(x, w) + sq(x, w)) * c)",
                                lambda r: {"x": f32(normal(r, 3, 4)), "c": f32(normal(r, 3, 4))},
                                lambda r: {"w": normal(r, 3, 4)},
                                lambda x, c, w: np.sum(np.tanh(2 * (x * w) ** 2) * c),
                                "def sq(a, b) {\n    p = a * b\n    return p * p\n}\n"),
}


def _unpack(case):
    body, inputs, params, ref, *rest = case
    defs = rest[0] if rest else ""
    types = rest[1] if len(rest) > 1 else {}
    return body, inputs, params, ref, defs, types


def _type(a) -> str:
    a = np.asarray(a)
    return f"{'i32' if a.dtype.kind in 'iu' else 'f32'}[{', '.join(map(str, a.shape))}]"


def make_source(body, inputs, params, defs="", types=None, optimizer="sgd(lr = 0.1)") -> str:
    types = types or {}
    decls = [f"    input {k} : {types.get(k, _type(v))}" for k, v in inputs.items()]
    decls += [f"    param {k} : {_type(v)}" for k, v in params.items()]
    return (f"{defs}model t {{\n" + "\n".join(decls) + f"\n    {body}\n"
            f"    minimize loss with {optimizer}\n}}\n")


def build(case_id):
    body, inputs, params, ref, defs, types = _unpack(CASES[case_id])
    rng = _rng(case_id)
    feeds, values = inputs(rng), params(rng)
    src = make_source(body, feeds, values, defs, types)
    return src, feeds, values, ref


def compile64(src):
    return dlc.compile(src, backend="interp", float_dtype="float64")


def set_params(m, values):
    for k, v in values.items():
        m.params[k] = np.array(v, dtype=np.float64)


def loss_of(m, feeds) -> float:
    return m.grad(**feeds)[0]


def assert_grad_close(name, analytic, numeric, loss):
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    assert analytic.shape == numeric.shape, f"{name}: gradient shape {analytic.shape}, expected {numeric.shape}"
    err = np.abs(analytic - numeric)
    bound = ATOL * max(1.0, abs(loss)) + RTOL * np.abs(numeric)
    if not np.all(err <= bound):
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(f"gradient of {name} disagrees with finite differences at {i}: "
                             f"analytic {analytic[i]!r}, numeric {numeric[i]!r} "
                             f"(max abs error {err.max():.3g}, bound {bound[i]:.3g})\n"
                             f"analytic:\n{analytic}\nnumeric:\n{numeric}")


def numeric_grad(m, feeds, name, value):
    """Central differences of the loss w.r.t. every element of one param."""
    value = np.array(value, np.float64)
    out = np.zeros_like(value)
    for idx in np.ndindex(value.shape):
        plus, minus = value.copy(), value.copy()
        plus[idx] += EPS
        minus[idx] -= EPS
        m.params[name] = plus
        lp = loss_of(m, feeds)
        m.params[name] = minus
        lm = loss_of(m, feeds)
        out[idx] = (lp - lm) / (2 * EPS)
    m.params[name] = value
    return out


@pytest.mark.parametrize("case_id", list(CASES))
def test_gradcheck(case_id):
    src, feeds, values, ref = build(case_id)
    m = compile64(src)
    set_params(m, values)
    loss, grads = m.grad(**feeds)
    assert isinstance(loss, float) and np.isfinite(loss)
    assert set(grads) == set(values), f"gradients for {sorted(grads)}, params {sorted(values)}"
    if ref is not None:  # the forward value itself, against NumPy
        want = ref(**feeds, **values)
        assert loss == pytest.approx(float(want), rel=1e-12, abs=1e-12), src
    for name, value in values.items():
        assert grads[name].dtype == np.float64, f"{name}: gradient is {grads[name].dtype}, not float64"
        assert_grad_close(name, grads[name], numeric_grad(m, feeds, name, value), loss)


def test_every_differentiable_dsl_op_has_a_gradcheck():
    """A new op callable from .dln fails here until a case above exercises it."""
    seen = set()
    for case_id in CASES:
        src, *_ = build(case_id)
        g = lower(src, f"{case_id}.dln")
        seen |= {g.op(n) for n in g.nx}
    missing = sorted(set(DIFFERENTIABLE) - seen)
    assert not missing, f"differentiable dsl ops without a gradient check: {missing}"
    undecided = sorted(k for k, d in OPS.items() if d.dsl and k not in DIFFERENTIABLE + sorted(NOT_DIFFERENTIABLE))
    assert not undecided, f"dsl ops with no derivative rule (add one, or list in NOT_DIFFERENTIABLE): {undecided}"
    # the list is not trivially short: the design's ops are all there
    for k in ("matmul", "relu", "sigmoid", "tanh", "softmax", "log_softmax", "softmax_xent", "mse",
              "l1", "l2", "reshape", "transpose", "sum", "mean"):
        assert k in DIFFERENTIABLE


def test_frozen_param_has_no_gradient_and_others_are_right():
    body = "freeze b\n    loss = sum(tanh(x @ w + b) * c)"
    rng = _rng("frozen")
    feeds = {"x": f32(normal(rng, 5, 4)), "c": f32(normal(rng, 5, 3))}
    values = {"w": normal(rng, 4, 3), "b": normal(rng, 3)}
    m = compile64(make_source(body, feeds, values))
    set_params(m, values)
    loss, grads = m.grad(**feeds)
    assert set(grads) == {"w"}
    assert_grad_close("w", grads["w"], numeric_grad(m, feeds, "w", values["w"]), loss)
    m.step(**feeds)
    np.testing.assert_array_equal(m.params["b"], values["b"])


def test_unused_param_has_zero_gradient():
    body = "loss = sum(tanh(x @ w) * c)"
    rng = _rng("unused")
    feeds = {"x": f32(normal(rng, 5, 4)), "c": f32(normal(rng, 5, 3))}
    values = {"w": normal(rng, 4, 3), "u": normal(rng, 2, 2)}
    m = compile64(make_source(body, feeds, values))
    set_params(m, values)
    loss, grads = m.grad(**feeds)
    np.testing.assert_array_equal(grads["u"], np.zeros((2, 2)))
    assert_grad_close("w", grads["w"], numeric_grad(m, feeds, "w", values["w"]), loss)


# -- whole models ---------------------------------------------------------------------------------

def _directional_and_sampled(m, feeds, values, rng, samples=6, directions=3):
    """For big params: the directional derivative along random directions (all params at once),
    plus central differences on a few sampled elements of each param."""
    loss, grads = m.grad(**feeds)
    for _ in range(directions):
        d = {k: rng.normal(size=np.shape(v)) for k, v in values.items()}
        for sgn, store in ((1, "plus"), (-1, "minus")):
            for k, v in values.items():
                m.params[k] = v + sgn * EPS * d[k]
            if store == "plus":
                lp = loss_of(m, feeds)
            else:
                lm = loss_of(m, feeds)
        set_params(m, values)
        numeric = (lp - lm) / (2 * EPS)
        analytic = sum(float(np.sum(grads[k] * d[k])) for k in values)
        assert_grad_close("directional", np.array(analytic), np.array(numeric), loss)
    for k, v in values.items():
        v = np.array(v)
        for _ in range(samples):
            idx = tuple(int(rng.integers(0, s)) for s in v.shape)
            plus, minus = v.copy(), v.copy()
            plus[idx] += EPS
            minus[idx] -= EPS
            m.params[k] = plus
            lp = loss_of(m, feeds)
            m.params[k] = minus
            lm = loss_of(m, feeds)
            m.params[k] = v
            assert_grad_close(f"{k}{list(idx)}", np.array(grads[k][idx]), np.array((lp - lm) / (2 * EPS)), loss)
    return loss, grads


def test_gradcheck_mlp_model():
    rng = np.random.default_rng(11)
    m = compile64(MLP)
    values = {k: np.array(v, np.float64) for k, v in m.params.items()}
    values["b1"] = 0.1 * rng.normal(size=128)
    values["b2"] = 0.1 * rng.normal(size=10)
    set_params(m, values)
    feeds = {"x": f32(rng.uniform(0, 1, (6, 64))), "y": labels(rng, 6, 10)}
    pre = feeds["x"] @ values["w1"] + values["b1"]
    assert np.abs(pre).min() > 1e-4, "a relu input sits on its kink; pick another seed"
    loss, grads = _directional_and_sampled(m, feeds, values, rng)
    # the loss is the one the design defines: mean cross-entropy + 1e-4 * (sum w1^2 + sum w2^2)
    logits = np.maximum(pre, 0) @ values["w2"] + values["b2"]
    want = _xent(logits, feeds["y"]) + 1e-4 * (np.square(values["w1"]).sum() + np.square(values["w2"]).sum())
    assert loss == pytest.approx(want, rel=1e-12)
    # h2 = dense(h, 32) does not feed the loss: zero gradients
    assert not grads["h2.w"].any() and not grads["h2.b"].any()
    # the small params fully, element by element
    for k in ("b2",):
        assert_grad_close(k, grads[k], numeric_grad(m, feeds, k, values[k]), loss)


@pytest.mark.parametrize("name", ["funcs", "layout", "convnet"])
def test_gradcheck_example_models(name):
    rng = np.random.default_rng(5)
    m = compile64(GOLDEN / "models" / f"{name}.dln")
    values = {k: np.array(v, np.float64) + 0.05 * rng.normal(size=np.shape(v)) for k, v in m.params.items()}
    set_params(m, values)
    if name == "funcs":
        feeds = {"x": f32(rng.normal(size=(7, 6))), "y": labels(rng, 7, 3)}
        values = {k: values[k] for k in m.grad(**feeds)[1]}  # trainable only (logits.w is frozen)
        assert "logits.w" not in values
        for k in values:  # l1(h1.w) has a kink at 0: keep away from it
            if k == "h1.w":
                values[k] = np.where(np.abs(values[k]) < 0.05, 0.05 * np.sign(values[k] + 1e-12), values[k])
        set_params(m, values)
    elif name == "layout":
        feeds = {"x": f32(rng.normal(size=(5, 3, 4))), "t": f32(rng.normal(size=(5, 2)))}
    else:
        feeds = {"x": f32(rng.normal(size=(3, 2, 8, 8))), "y": labels(rng, 3, 5)}
    _directional_and_sampled(m, feeds, values, rng, samples=4, directions=2)


@pytest.mark.parametrize("path", TRAINING_EXAMPLES, ids=[p.stem for p in TRAINING_EXAMPLES])
def test_gradcheck_shipped_examples(path):
    """Every example that minimises something: directional derivatives along random directions
    through all params at once, plus sampled elements of each param (batch of 3)."""
    m = compile64(path)
    assert m.trainable
    g = m.stages["forward"]
    rng = np.random.default_rng(sum(map(ord, path.stem)))
    feeds = {}
    for n in g.inputs:
        t = g.type(n)
        shape = tuple(3 if isinstance(d, str) else d for d in t.shape)
        if t.dtype == "i32":  # class labels, or character ids (charlm: as many as the output's classes)
            classes = g.type(g.meta.outputs[next(iter(g.meta.outputs))]).shape[-1] if g.meta.outputs else 2
            feeds[n] = rng.integers(0, classes if isinstance(classes, int) else 2, shape).astype(np.int32)
        else:
            feeds[n] = f32(rng.uniform(0, 1, shape))
    values = {k: np.array(v, np.float64) + 0.01 * rng.normal(size=np.shape(v)) for k, v in m.params.items()}
    set_params(m, values)
    values = {k: values[k] for k in m.grad(**feeds)[1]}  # the trainable ones
    _directional_and_sampled(m, feeds, values, rng, samples=3, directions=2)


# -- optimizer updates ----------------------------------------------------------------------------

OPT_MODEL = """\
model opt {{
    input  x : f32[N, 3]
    input  c : f32[N, 2]
    param  w : f32[3, 2] = normal(0, 0.5)
    param  b : f32[2]    = constant(0.1)
    loss   = sum(tanh(x @ w + b) * c) + 0.05 * l2(w)
    minimize loss with {opt}
}}
"""


class _Sgd:
    def __init__(self, lr, momentum=0.0, nesterov=False):
        self.lr, self.mu, self.nesterov, self.buf = lr, momentum, nesterov, {}

    def update(self, k, p, g):  # torch.optim.SGD, dampening 0
        if self.mu:
            b = self.buf[k] = self.mu * self.buf.get(k, np.zeros_like(p)) + g
            g = g + self.mu * b if self.nesterov else b
        return p - self.lr * g


class _RmsProp:
    def __init__(self, lr=0.01, alpha=0.99, eps=1e-8):
        self.lr, self.alpha, self.eps, self.sq = lr, alpha, eps, {}

    def update(self, k, p, g):  # torch.optim.RMSprop, not centered, no momentum
        s = self.sq[k] = self.alpha * self.sq.get(k, np.zeros_like(p)) + (1 - self.alpha) * g * g
        return p - self.lr * g / (np.sqrt(s) + self.eps)


class _Adam:
    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, beta1, beta2, eps
        self.m, self.v, self.t = {}, {}, {}

    def update(self, k, p, g):  # torch.optim.Adam, no amsgrad, no weight decay
        t = self.t[k] = self.t.get(k, 0) + 1
        m = self.m[k] = self.b1 * self.m.get(k, np.zeros_like(p)) + (1 - self.b1) * g
        v = self.v[k] = self.b2 * self.v.get(k, np.zeros_like(p)) + (1 - self.b2) * g * g
        m_hat = m / (1 - self.b1 ** t)
        v_hat = v / (1 - self.b2 ** t)
        return p - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


OPTIMIZERS = {
    "sgd": ("sgd(lr = 0.1)", lambda: _Sgd(0.1)),
    "sgd_momentum": ("sgd(lr = 0.1, momentum = 0.9)", lambda: _Sgd(0.1, 0.9)),
    "sgd_nesterov": ("sgd(lr = 0.1, momentum = 0.8, nesterov = true)", lambda: _Sgd(0.1, 0.8, True)),
    "sgd_positional": ("sgd(0.05, 0.5)", lambda: _Sgd(0.05, 0.5)),
    "rmsprop": ("rmsprop(lr = 0.01, alpha = 0.9, eps = 1e-6)", lambda: _RmsProp(0.01, 0.9, 1e-6)),
    "rmsprop_defaults": ("rmsprop()", lambda: _RmsProp()),  # torch defaults: lr 1e-2, alpha .99, eps 1e-8
    "adam": ("adam(lr = 0.01, beta1 = 0.8, beta2 = 0.95, eps = 1e-6)", lambda: _Adam(0.01, 0.8, 0.95, 1e-6)),
    "adam_defaults": ("adam()", lambda: _Adam()),  # torch defaults: lr 1e-3, betas (.9, .999), eps 1e-8
}


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_optimizer_update_matches_numpy(opt):
    """Three steps of `m.step`, each compared with the update recomputed in NumPy from `m.grad`.

    Both sides evaluate the same formulas in float64 and differ only in operation order
    (~1e-16 relative); rtol 1e-10 leaves room for that while any difference of convention
    (bias correction, eps inside or outside the square root, nesterov form) is >= 1e-6."""
    text, make = OPTIMIZERS[opt]
    m = compile64(OPT_MODEL.format(opt=text))
    ref = make()
    rng = np.random.default_rng(3)
    set_params(m, {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)})
    for step in range(3):
        feeds = {"x": f32(rng.normal(size=(4, 3))), "c": f32(rng.normal(size=(4, 2)))}
        before = {k: np.array(v, np.float64) for k, v in m.params.items()}
        loss, grads = m.grad(**feeds)
        want = {k: ref.update(k, before[k], grads[k]) for k in before}
        got_loss = m.step(**feeds)
        assert got_loss == pytest.approx(loss, rel=1e-14), "step must return the loss before the update"
        for k in want:
            assert m.params[k].dtype == np.float64
            np.testing.assert_allclose(m.params[k], want[k], rtol=1e-10, atol=1e-14,
                                       err_msg=f"{opt}: param {k} after step {step + 1}")
            assert not np.allclose(m.params[k], before[k], rtol=1e-12, atol=0), f"{k} did not move"


def test_momentum_buffer_is_per_param_and_persists():
    """Two steps on the same batch: the second momentum step is lr * (g2 + mu * g1)."""
    m = compile64(OPT_MODEL.format(opt="sgd(lr = 0.1, momentum = 0.9)"))
    rng = np.random.default_rng(4)
    feeds = {"x": f32(rng.normal(size=(4, 3))), "c": f32(rng.normal(size=(4, 2)))}
    _, g1 = m.grad(**feeds)
    p1 = {k: np.array(v) for k, v in m.params.items()}
    m.step(**feeds)
    _, g2 = m.grad(**feeds)
    p2 = {k: np.array(v) for k, v in m.params.items()}
    m.step(**feeds)
    for k in p1:
        np.testing.assert_allclose(p2[k], p1[k] - 0.1 * g1[k], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(m.params[k], p2[k] - 0.1 * (g2[k] + 0.9 * g1[k]), rtol=1e-12, atol=1e-15)


# -- regressions ----------------------------------------------------------------------------------

# Was a bug: runtime/data.py check_feeds cast float inputs to float32 even when the model ran in
# float64, so gradient checks with respect to inputs lost half their digits.
def test_float64_inputs_keep_precision():
    m = compile64("model t {\n    input x : f32[2, 3]\n    output x\n}\n")
    x = np.full((2, 3), 1.0 / 3.0)
    np.testing.assert_array_equal(m.forward(x=x)["x"], x)


# -- regressions: each was a bug found by this file, now fixed --

@pytest.mark.parametrize("opt", ["adam(beta1 = 1)", "adam(beta2 = 1.0)", "adam(beta1 = true)"])
def test_optimizer_settings_out_of_range_are_rejected(opt):
    with pytest.raises(dlc.DlcError) as e:
        compile64(OPT_MODEL.format(opt=opt))
    assert e.value.loc is not None and e.value.loc.line == 7


def test_nesterov_without_momentum_error_is_located():
    with pytest.raises(dlc.DlcError) as e:
        compile64(OPT_MODEL.format(opt="sgd(lr = 0.1, nesterov = true)"))
    assert e.value.loc is not None and e.value.loc.line == 7, str(e.value)
