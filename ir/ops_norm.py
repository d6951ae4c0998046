"""Batch normalization, registered in the op registry like every other op (see ops.py).

`batch_norm(x, gamma, beta, mean, var)` normalizes each channel of x (axis `axis`, default 1:
the C of [N, C, H, W], the F of [N, F]) over all the other axes, as PyTorch's BatchNorm1d/2d
and ONNX's BatchNormalization define it:

    training:   y = (x - m) / sqrt(v + eps) * gamma + beta, m and v the batch's mean and
                (biased) variance per channel; the running statistics, model buffers, take
                mean <- (1 - momentum) * mean + momentum * m and
                var  <- (1 - momentum) * var  + momentum * v * n / (n - 1)  (n values per channel)
    evaluation: the same with m = mean and v = var, the running statistics; nothing is updated

It is a **composite** op: its entry's `lower` rule writes it in other ops (reductions, elementwise
arithmetic, `if_training` to pick the batch or the running statistics, and an `assign` per running
statistic), and the `lower` pass, first in every pipeline, replaces it. So autodiff differentiates
that form (the exact batch-norm gradient through the batch statistics, which is PyTorch's), the
`-O2` fusion rules fuse its elementwise part with its neighbours, and codegen needs one new kernel,
`if_training`'s. The op itself stays in the forward graph: `dlc check` lists it, ONNX export writes
one BatchNormalization, and its NumPy reference is what tests hold the lowered form to.
"""
from __future__ import annotations

import numpy as np

from .errors import DlcError
from .registry import TRAINING, op


def _if_training_rule(types, attrs):
    a, b = types
    if a != b:
        raise DlcError(f"if_training: both operands must have one type, found {a} and {b}")
    return a


# In a training run the first operand, in an evaluation run the second (the batch statistics or the
# running ones). Gradients are taken in training runs only, so the adjoint goes to operand 0.
op("if_training", 2, _if_training_rule, lambda a, b, training: a if training else b,
   lambda b, n, g: [lambda: g, None], family="mode_select", effects={TRAINING}, dsl=False,
   eval_operand=1,
   onnx=lambda e, n, ins, a, out: e.node("Identity", [ins[1]], n, out),  # the exported graph evaluates
   doc="training: operand 0; evaluation: operand 1")


def _channel_axis(x, axis, what="batch_norm") -> int:
    if x.rank < 2:
        raise DlcError(f"{what} normalizes over a batch: its input needs a batch axis and a channel axis, found {x}")
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.rank <= axis < x.rank:
        raise DlcError(f"{what}: axis {axis!r} is not an axis of its input {x} (rank {x.rank}: "
                       f"axis is one of {-x.rank}..{x.rank - 1})")
    ax = axis % x.rank
    if ax == 0:
        raise DlcError(f"{what}: axis 0 of {x} is the batch, which it normalizes over; name the channel axis "
                       f"(1 for [N, C, H, W] and [N, F])")
    if isinstance(x.shape[ax], str):
        raise DlcError(f"{what}: the channel axis {axis} of {x} must have a known size")
    return ax


def _batch_norm_rule(types, attrs):
    x, *stats = types
    if not x.is_float:
        raise DlcError(f"batch_norm needs f32 values, found {x}")
    ax = _channel_axis(x, attrs["axis"])
    c = x.shape[ax]
    for name, t in zip(("gamma", "beta", "mean", "var"), stats):
        if t.dtype != "f32" or tuple(t.shape) != (c,):
            raise DlcError(f"batch_norm: {name} must be f32[{c}] (one value per channel of axis {attrs['axis']} "
                           f"of {x}), found {t}")
    if not 0 <= attrs["momentum"] <= 1:
        raise DlcError(f"batch_norm: momentum must be in [0, 1], found {attrs['momentum']!r}")
    if not attrs["eps"] > 0:
        raise DlcError(f"batch_norm: eps must be > 0, found {attrs['eps']!r}")
    return x


def _batch_norm(x, gamma, beta, mean, var, axis, momentum, eps, training):
    ax = axis % x.ndim
    axes = tuple(i for i in range(x.ndim) if i != ax)
    shape = [1] * x.ndim
    shape[ax] = -1
    if training:
        m = x.mean(axis=axes, keepdims=True)
        v = np.square(x - m).mean(axis=axes, keepdims=True)
    else:
        m, v = mean.reshape(shape), var.reshape(shape)
    y = (x - m) / np.sqrt(v + x.dtype.type(eps)) * gamma.reshape(shape) + beta.reshape(shape)
    return y.astype(x.dtype)


def running_statistics(x, mean, var, axis, momentum):
    """The running mean and variance after a training step on the batch x (PyTorch's rule: the
    unbiased batch variance): what the lowered form's assigns store."""
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    n = x.size // mean.size
    m = x.mean(axis=axes)
    v = np.square(x - x.mean(axis=axes, keepdims=True)).mean(axis=axes) * (n / (n - 1))
    return (1 - momentum) * mean + momentum * m, (1 - momentum) * var + momentum * v


def _channel_first_rule(types, attrs):
    (x,) = types
    if not x.is_float:
        raise DlcError(f"channel_first needs f32 values, found {x}")
    ax = _channel_axis(x, attrs["axis"], "channel_first")
    return x.with_shape(d if i == ax else 1 for i, d in enumerate(x.shape))


def _channel_first(x, axis):
    idx = tuple(slice(None) if i == axis % x.ndim else slice(0, 1) for i in range(x.ndim))
    return x[idx].copy()


# Each channel's first value (index 0 of every other axis), shape kept ([1, C, 1, 1]): the shift
# about which batch_norm's lowered form sums its statistics in one pass. The statistics do not
# depend on the shift's value, so it has no derivative (its adjoint is none: autodiff sends nothing
# back through it, which is exact). One thread per channel loads one value (family `first`).
op("channel_first", 1, _channel_first_rule, _channel_first, lambda b, n, g: [None], family="first",
   attrs={"axis": 1}, dsl=False, onnx=lambda e, n, ins, a, out: _onnx_channel_first(e, n, ins, a, out),
   doc="each channel's first value (index 0 of every other axis); no derivative (a shift)")


def _onnx_channel_first(e, n, ins, a, out):
    t = e.type(e.operands(n)[0])
    ax = a["axis"] % t.rank
    axes = [i for i in range(t.rank) if i != ax]
    return e.node("Slice", [ins[0], e.ints([0] * len(axes), f"{n}.starts"), e.ints([1] * len(axes), f"{n}.ends"),
                            e.ints(axes, f"{n}.axes")], n, out)


def _batch_norm_lower(g, n: str) -> str:
    """batch_norm written in other ops; the node returned takes its place (and its name)."""
    x, gamma, beta, mean, var = g.operands(n)
    a, t, loc = g.attrs(n), g.type(x), g.loc(n)
    ax = a["axis"] % t.rank
    axes = [i for i in range(t.rank) if i != ax]
    c = t.shape[ax]
    per_channel = [1] * t.rank
    per_channel[ax] = c

    def add(op_name, args, name, **attrs):
        return g.add(op_name, args, attrs, name=f"{n}.{name}", loc=loc)

    def const(v):
        return add("const", [], "const", value=float(v))

    # The batch statistics in one pass over x: the mean and the mean square of d = x - k about a
    # shift k per channel (the channel's first value, `channel_first`), two sibling reductions
    # that -O2 computes in one kernel (passes/fusion.py, rule `siblings`); then mean = k + E[d]
    # and var = E[d^2] - E[d]^2. About a shift drawn from the data this is sound: the rounding
    # error of the difference is about eps * (var + (mean - k)^2) / var relative to var, and
    # (mean - k)^2 is of the order of var for a value of the channel, so the variance keeps its
    # digits whatever the mean (x = 1000 + N(0, 1): the unshifted E[x^2] - E[x]^2 loses 1e6
    # times eps, 6% in float32; this keeps about 1e-7; tests/test_batch_norm.py). Welford's or
    # Chan's updates would also be sound, but need a reduction with three accumulators per
    # element and their own combine; the shift needs only sums. The shift has no derivative and
    # the statistics do not depend on it, so the gradient is exactly the two-pass one. relu
    # keeps a rounding error from making the variance of a constant channel negative.
    shift = add("channel_first", [x], "shift", axis=ax)
    shifted = add("sub", [x, shift], "shifted")
    s1 = add("mean", [shifted], "shifted_mean", axis=axes, keepdims=True)
    s2 = add("mean", [add("mul", [shifted, shifted], "shifted_squares")], "shifted_square_mean", axis=axes,
             keepdims=True)
    batch_mean = add("add", [shift, s1], "batch_mean")
    batch_var = add("relu", [add("sub", [s2, add("mul", [s1, s1], "mean_square")], "variance")], "batch_var")
    m = add("if_training", [batch_mean, add("reshape", [mean], "running_mean", shape=per_channel)], "mean")
    v = add("if_training", [batch_var, add("reshape", [var], "running_var", shape=per_channel)], "var")
    scale = add("div", [add("reshape", [gamma], "gamma", shape=per_channel),
                        add("sqrt", [add("add", [v, const(a["eps"])], "var_eps")], "std")], "scale")
    shifted = add("mul", [add("sub", [x, m], "x_minus_mean"), scale], "normalized")
    y = add("add", [shifted, add("reshape", [beta], "beta", shape=per_channel)], "out")

    # the running statistics, updated at the end of a training step (evaluation commits nothing)
    mom = float(a["momentum"])
    count = add("size", [x], "count", axis=axes)
    unbias = add("div", [count, add("sub", [count, const(1.0)], "count_less_1")], "unbias")
    for buf, batch, extra, name in ((mean, batch_mean, None, "mean"), (var, batch_var, unbias, "var")):
        stat = add("reshape", [batch], f"batch_{name}_c", shape=[c])
        if extra is not None:
            stat = add("mul", [stat, extra], f"batch_{name}_unbiased")
        new = add("add", [add("mul", [buf, const(1.0 - mom)], f"kept_{name}"),
                          add("mul", [stat, const(mom)], f"new_{name}_part")], f"new_{name}")
        add("assign", [buf, new], f"update_{name}")
    return y


def _onnx_batch_norm(e, n, ins, a, out):
    if a["axis"] % e.type(e.operands(n)[0]).rank != 1:
        raise DlcError(f"ONNX's BatchNormalization normalizes axis 1; {n} normalizes axis {a['axis']}")
    # ONNX's momentum weighs the old running value (PyTorch's weighs the new one); the exported
    # graph is the evaluation graph, which reads the running statistics
    return e.node("BatchNormalization", ins, n, out, epsilon=float(a["eps"]), momentum=1.0 - float(a["momentum"]))


def _batch_norm_train_check(shapes, attrs):
    """A training batch needs two or more values per channel: with one, the unbiased variance is
    0 * 1/(1 - 1) and the running variance becomes NaN (PyTorch refuses such a batch too)."""
    x = shapes[0]
    ax = attrs["axis"] % len(x)
    values = int(np.prod(x)) // x[ax] if x[ax] else 0
    if values <= 1:
        shown = "[" + ", ".join(map(str, x)) + "]"
        return (f"batch_norm in training needs more than one value per channel, found {values} (input {shown}): "
                f"the batch variance of one value is undefined; train with batches of 2 or more examples "
                f"(the last batch of an epoch too), or run this batch in evaluation mode")
    return None


op("batch_norm", 5, _batch_norm_rule, _batch_norm, family="composite", lower=_batch_norm_lower,
   train_check=_batch_norm_train_check,
   attrs={"axis": 1, "momentum": 0.1, "eps": 1e-5}, effects={TRAINING}, onnx=_onnx_batch_norm,
   flops=lambda n, size: 4 * size(n.type),   # per element: a subtraction, a multiplication and an addition,
                                             # and one pass for the statistics
   doc="normalize each channel (axis) over the batch: batch statistics in training (running "
       "statistics updated), running statistics in evaluation; then * gamma + beta")
