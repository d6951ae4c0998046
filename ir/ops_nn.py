"""Convolutional ops, registered in the op registry like every other op (see ops.py).

Layout is NCHW; a kernel is [O, C, kh, kw]. Output size per spatial axis:
    out = (in + 2*padding - dilation*(k - 1) - 1) // stride + 1
The NumPy references gather the input once per kernel tap (kh*kw strided views), so a
convolution is one batched matrix product over [N, C*kh*kw, Ho*Wo]; a 1x1 convolution with
stride 1 and no padding skips the gathering and is exactly the matrix product it is.

`groups` = g splits the channels into g groups (AlexNet's two GPUs; g = C is a depthwise
convolution): the kernel is [O, C/g, kh, kw], and output channels o*O/g .. (o+1)*O/g - 1 see only
the input channels of group o, as PyTorch's Conv2d(groups=g) and ONNX's Conv(group=g) define it.
"""
from __future__ import annotations

import numpy as np

from .errors import DlcError
from .registry import REQUIRED, VARIADIC, op
from .types import TensorType, normalize_axes

_CONV_ATTRS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def _pair(v, what):
    v = tuple(v) if isinstance(v, (list, tuple)) else (v, v)
    if len(v) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise DlcError(f"{what} must be an integer or a pair of integers, found {v!r}")
    return v


def _out_size(n, k, s, p, d, what, t):
    if isinstance(n, str):
        raise DlcError(f"{what}: spatial size {n} must be known, found {t}")
    span = d * (k - 1) + 1
    if n + 2 * p < span:
        raise DlcError(f"{what}: kernel {k} (dilation {d}) is larger than the padded input {n}+2*{p} of {t}")
    return (n + 2 * p - span) // s + 1


def _geometry(attrs, what):
    s, p, d = (_pair(attrs[k], f"{what} {k}") for k in ("stride", "padding", "dilation"))
    if min(s) < 1 or min(d) < 1 or min(p) < 0:
        raise DlcError(f"{what}: stride and dilation must be >= 1 and padding >= 0")
    return s, p, d


def _conv_rule(types, attrs):
    x, w = types
    if not (x.is_float and w.is_float) or x.rank != 4 or w.rank != 4:
        raise DlcError(f"conv2d expects an input f32[N, C, H, W] and a kernel f32[O, C, kh, kw], found {x} and {w}")
    groups = attrs["groups"]
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise DlcError(f"conv2d: groups must be an integer >= 1, found {groups!r}")
    if isinstance(w.shape[0], int) and w.shape[0] % groups:
        raise DlcError(f"conv2d: groups = {groups} does not divide the {w.shape[0]} output channels of the kernel {w}")
    if isinstance(x.shape[1], int) and x.shape[1] % groups:
        raise DlcError(f"conv2d: groups = {groups} does not divide the {x.shape[1]} channels of the input {x}")
    if x.shape[1] != w.shape[1] * groups:
        if groups == 1:
            raise DlcError(f"channel mismatch in conv2d: input {x} has {x.shape[1]} channels, kernel {w} "
                           f"expects {w.shape[1]}")
        raise DlcError(f"channel mismatch in conv2d: input {x} has {x.shape[1]} channels, kernel {w} "
                       f"expects {w.shape[1]} per group, {w.shape[1] * groups} for {groups} groups")
    s, p, d = _geometry(attrs, "conv2d")
    ho = _out_size(x.shape[2], w.shape[2], s[0], p[0], d[0], "conv2d", x)
    wo = _out_size(x.shape[3], w.shape[3], s[1], p[1], d[1], "conv2d", x)
    return TensorType("f32", (x.shape[0], w.shape[0], ho, wo))


def _taps(x, kh, kw, s, p, d, ho, wo, fill=0.0):
    """The input seen by each kernel tap: a list over (i, j) of [N, C, Ho, Wo] strided views."""
    if p[0] or p[1]:
        x = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])), constant_values=fill)
    return [x[:, :, i * d[0]: i * d[0] + s[0] * (ho - 1) + 1: s[0], j * d[1]: j * d[1] + s[1] * (wo - 1) + 1: s[1]]
            for i in range(kh) for j in range(kw)], x.shape


def _cols(x, w_shape, s, p, d, ho, wo):
    """im2col: [N, C*kh*kw, Ho*Wo]."""
    n, c = x.shape[:2]
    kh, kw = w_shape[2:]
    if kh == kw == 1 and s == (1, 1) and p == (0, 0):
        return x.reshape(n, c, -1)
    taps, _ = _taps(x, kh, kw, s, p, d, ho, wo)
    return np.stack(taps, axis=2).reshape(n, c * kh * kw, ho * wo)


def _grouped(fn):
    """A reference of one group applied to each of `groups`: the channel axes of its operands
    split into groups (which of x's, w's and g's axis 1 or w's axis 0 is which: by the names), the
    results joined along the result's channel axis."""
    def per_group(*arrays, stride, padding, dilation, groups=1, split=None, join=1):
        if groups == 1:
            return fn(*arrays, stride, padding, dilation)
        parts = [np.split(a, groups, axis=ax) for a, ax in zip(arrays, split)]
        outs = [fn(*(p[i] for p in parts), stride, padding, dilation) for i in range(groups)]
        return np.concatenate(outs, axis=join)
    return per_group


def _conv_x_w(x, w, stride, padding, dilation, groups=1, min_precision=None):
    return _grouped(_conv)(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups, split=(1, 0))


def _conv_grad_x_g(g, w, x, stride, padding, dilation, groups=1, min_precision=None):
    return _grouped(_conv_grad_x)(g, w, x, stride=stride, padding=padding, dilation=dilation, groups=groups,
                                  split=(1, 0, 1))


def _conv_grad_w_g(x, g, w, stride, padding, dilation, groups=1, min_precision=None):
    return _grouped(_conv_grad_w)(x, g, w, stride=stride, padding=padding, dilation=dilation, groups=groups,
                                  split=(1, 1, 0), join=0)


def _conv(x, w, stride, padding, dilation):
    s, p, d = _pair(stride, ""), _pair(padding, ""), _pair(dilation, "")
    o, c, kh, kw = w.shape
    ho = (x.shape[2] + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1
    wo = (x.shape[3] + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1
    cols = _cols(x, w.shape, s, p, d, ho, wo)
    return np.matmul(w.reshape(o, -1), cols).reshape(x.shape[0], o, ho, wo)


def _conv_grad_w(x, g, w, stride, padding, dilation):
    s, p, d = _pair(stride, ""), _pair(padding, ""), _pair(dilation, "")
    n, o, ho, wo = g.shape
    cols = _cols(x, w.shape, s, p, d, ho, wo)  # [N, C*kh*kw, Ho*Wo]
    # one [O, Ho*Wo] @ [Ho*Wo, C*kh*kw] product per sample, summed over the batch (tensordot would
    # first copy both operands into [O, N*Ho*Wo] and [N*Ho*Wo, C*kh*kw])
    return np.matmul(g.reshape(n, o, -1), cols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)


def _scatter_taps(dtaps, x_shape, kh, kw, s, p, d, ho, wo):
    """The adjoint of `_taps`: add each tap's [N, C, Ho, Wo] back into the (padded) input."""
    n, c, h, wd = x_shape
    dx = np.zeros((n, c, h + 2 * p[0], wd + 2 * p[1]), dtype=dtaps[0].dtype)
    for t, (i, j) in enumerate((i, j) for i in range(kh) for j in range(kw)):
        dx[:, :, i * d[0]: i * d[0] + s[0] * (ho - 1) + 1: s[0], j * d[1]: j * d[1] + s[1] * (wo - 1) + 1: s[1]] += dtaps[t]
    return dx[:, :, p[0]: p[0] + h, p[1]: p[1] + wd]


def _conv_grad_x(g, w, x, stride, padding, dilation):
    s, p, d = _pair(stride, ""), _pair(padding, ""), _pair(dilation, "")
    n, o, ho, wo = g.shape
    _, c, kh, kw = w.shape
    dcols = np.matmul(w.reshape(o, -1).T, g.reshape(n, o, -1))  # [N, C*kh*kw, Ho*Wo]
    if kh == kw == 1 and s == (1, 1) and p == (0, 0):
        return dcols.reshape(x.shape)
    dcols = dcols.reshape(n, c, kh * kw, ho, wo)
    return _scatter_taps([dcols[:, :, t] for t in range(kh * kw)], x.shape, kh, kw, s, p, d, ho, wo)


def _conv_vjp(b, n, g):
    x, w = n.args
    a = n.attrs
    return [lambda: b.conv2d_grad_x(g, w, x, **a), lambda: b.conv2d_grad_w(x, g, w, **a)]


def _conv_flops(y, w):
    """A multiply-add per output element (of the forward conv) per kernel tap and input channel."""
    return lambda n, size: 2 * size(n.types[y] if y is not None else n.type) * size(
        n.types[w].with_shape(n.types[w].shape[1:]))


def _onnx_conv(e, n, ins, a, out):
    w = e.type(e.operands(n)[1]).shape
    p = list(_pair(a["padding"], "padding"))
    return e.node("Conv", ins, n, out, kernel_shape=[w[2], w[3]], strides=list(_pair(a["stride"], "stride")),
                  pads=p + p, dilations=list(_pair(a["dilation"], "dilation")), group=a["groups"])


op("conv2d", 2, _conv_rule, _conv_x_w, _conv_vjp, family="conv", attrs=dict(_CONV_ATTRS), flops=_conv_flops(None, 1),
   channel_weight=lambda n: (1, 1, 0),   # output channel o is kernel row o (any groups) over the input
   onnx=_onnx_conv, doc="2-D convolution (cross-correlation), NCHW input, [O, C / groups, kh, kw] kernel")
op("conv2d_grad_x", 3, lambda t, a: t[2], _conv_grad_x_g, family="conv_grad_x", attrs=dict(_CONV_ATTRS),
   dsl=False, flops=_conv_flops(0, 1), doc="adjoint of conv2d w.r.t. its input: (g, kernel, input for the shape)")
op("conv2d_grad_w", 3, lambda t, a: t[2], _conv_grad_w_g, family="conv_grad_w", attrs=dict(_CONV_ATTRS),
   dsl=False, flops=_conv_flops(1, 2), doc="adjoint of conv2d w.r.t. its kernel: (input, g, kernel for the shape)")


# -- pooling ----------------------------------------------------------------------------------------
# A window of `kernel` taps every `stride` (default: the kernel) over the input padded by `padding`:
# one number, [h, w], or [top, left, bottom, right] (each at most half the kernel, as PyTorch asks).
# The output size is floor((in + lo + hi - k) / s) + 1, or with `ceil_mode` the ceiling (Caffe's
# rule: GoogLeNet's pools), less one where the last window would start past the input and its
# leading padding (PyTorch's rule). Max ignores what lies outside the input; average divides by the
# window's taps inside the padded input (`count_include_pad`, the default, as PyTorch) or inside the
# input alone. A window of ceil mode may reach past the padded input: those taps count nowhere.

_POOL_ATTRS = {"kernel": REQUIRED, "stride": None, "padding": 0, "ceil_mode": False}
_AVG_ATTRS = dict(_POOL_ATTRS, count_include_pad=True)


def _pads(v, what) -> tuple:
    """(top, left, bottom, right) from an integer, [h, w] or [top, left, bottom, right]."""
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    if len(v) not in (1, 2, 4) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise DlcError(f"{what} padding must be an integer, [h, w] or [top, left, bottom, right], found {v!r}")
    return tuple(v * 4 if len(v) == 1 else v + v if len(v) == 2 else v)


def _pool_geometry(attrs, what):
    """(kernel, stride, (top, left, bottom, right) padding), checked."""
    k = _pair(attrs["kernel"], f"{what} kernel")
    s = _pair(attrs["stride"] if attrs["stride"] is not None else attrs["kernel"], f"{what} stride")
    p = _pads(attrs["padding"], what)
    if min(k) < 1 or min(s) < 1 or min(p) < 0:
        raise DlcError(f"{what}: kernel and stride must be >= 1 and padding >= 0")
    if max(p[0], p[2]) > k[0] // 2 or max(p[1], p[3]) > k[1] // 2:
        raise DlcError(f"{what}: padding {list(p)} must be at most half the kernel {list(k)}")
    return k, s, p


def _pool_out(n, k, s, lo, hi, ceil, what, t) -> int:
    if isinstance(n, str):
        raise DlcError(f"{what}: spatial size {n} must be known, found {t}")
    if n + lo + hi < k:
        raise DlcError(f"{what}: kernel {k} is larger than the padded input {n}+{lo}+{hi} of {t}")
    out = (n + lo + hi - k + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= n + lo:  # the last window would start in the trailing padding
        out -= 1
    return out


def _pool_sizes(shape, attrs, what, t=None):
    """(kernel, stride, padding, Ho, Wo) of a pool over a [N, C, H, W] input."""
    k, s, p = _pool_geometry(attrs, what)
    ceil = attrs["ceil_mode"]
    ho = _pool_out(shape[2], k[0], s[0], p[0], p[2], ceil, what, t)
    wo = _pool_out(shape[3], k[1], s[1], p[1], p[3], ceil, what, t)
    return k, s, p, ho, wo


def _pool_rule(what):
    def rule(types, attrs):
        x = types[0]
        if not x.is_float or x.rank != 4:
            raise DlcError(f"{what} expects an input f32[N, C, H, W], found {x}")
        if not isinstance(attrs["ceil_mode"], bool):
            raise DlcError(f"{what}: ceil_mode must be true or false, found {attrs['ceil_mode']!r}")
        *_, ho, wo = _pool_sizes(x.shape, attrs, what, x)
        return x.with_shape((x.shape[0], x.shape[1], ho, wo))
    return rule


def _window_taps(x, attrs, fill):
    """The input seen by each window tap, a list over (i, j) of [N, C, Ho, Wo] strided views of x
    padded with `fill` (on the trailing sides as far as ceil mode's last windows reach), and the
    geometry."""
    k, s, p, ho, wo = _pool_sizes(x.shape, attrs, "pool")
    bottom = max(p[2], (ho - 1) * s[0] + k[0] - x.shape[2] - p[0])
    right = max(p[3], (wo - 1) * s[1] + k[1] - x.shape[3] - p[1])
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], bottom), (p[1], right)), constant_values=fill)
    taps = [xp[:, :, i: i + s[0] * (ho - 1) + 1: s[0], j: j + s[1] * (wo - 1) + 1: s[1]]
            for i in range(k[0]) for j in range(k[1])]
    return taps, (k, s, p, ho, wo, xp.shape)


def _untap(dtaps, x_shape, geometry):
    """The adjoint of `_window_taps`: each tap's [N, C, Ho, Wo] added back into the padded input,
    the padding cut off."""
    k, s, p, ho, wo, padded = geometry
    dx = np.zeros(padded, dtype=dtaps[0].dtype)
    for t, (i, j) in enumerate((i, j) for i in range(k[0]) for j in range(k[1])):
        dx[:, :, i: i + s[0] * (ho - 1) + 1: s[0], j: j + s[1] * (wo - 1) + 1: s[1]] += dtaps[t]
    return dx[:, :, p[0]: p[0] + x_shape[2], p[1]: p[1] + x_shape[3]]


def _divisor(x_shape, geometry, count_include_pad):
    """[Ho, Wo]: how many taps each average window divides by (PyTorch's rule: the window within
    the padded input, or within the input alone)."""
    k, s, p, ho, wo, _ = geometry
    sides = []
    for axis, n, lo, hi in ((0, x_shape[2], p[0], p[2]), (1, x_shape[3], p[1], p[3])):
        start = np.arange(ho if axis == 0 else wo) * s[axis] - lo
        end = np.minimum(start + k[axis], n + hi)
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, n)
        sides.append(end - start)
    return np.outer(*sides)


def _maxpool(x, kernel, stride, padding, ceil_mode=False):
    taps, _ = _window_taps(x, dict(kernel=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode), -np.inf)
    return np.maximum.reduce(taps)


def _maxpool_grad(g, x, y, kernel, stride, padding, ceil_mode=False):
    """Each window's gradient goes to its arg-max (the first maximal tap, as PyTorch)."""
    taps, geometry = _window_taps(x, dict(kernel=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode),
                                  -np.inf)
    todo = np.ones(y.shape, bool)  # windows whose gradient has not been routed yet
    dtaps = []
    for t in taps:
        hit = t == y
        hit &= todo
        todo ^= hit
        dtaps.append(g * hit)  # g where this tap is the window's first max, 0 elsewhere (g finite)
    return _untap(dtaps, x.shape, geometry)


def _avgpool(x, kernel, stride, padding, ceil_mode=False, count_include_pad=True):
    taps, geometry = _window_taps(x, dict(kernel=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode), 0.0)
    return (np.add.reduce(taps) / _divisor(x.shape, geometry, count_include_pad)).astype(x.dtype)


def _avgpool_grad(g, x, kernel, stride, padding, ceil_mode=False, count_include_pad=True):
    """Each window's share of g (g over its divisor) spread over its taps."""
    taps, geometry = _window_taps(x, dict(kernel=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode), 0.0)
    share = (g / _divisor(x.shape, geometry, count_include_pad)).astype(g.dtype)
    return _untap([share] * len(taps), x.shape, geometry)


def _pool_flops(y):
    """One operation per output (of the forward pool) per window tap."""
    def rule(n, size):
        kh, kw = _pair(n.attrs["kernel"], "kernel")
        return size(n.types[y] if y is not None else n.type) * kh * kw
    return rule


def _onnx_pool(op_type: str):
    def emit(e, n, ins, a, out):
        k, s, p = _pool_geometry(a, op_type)
        extra = {"count_include_pad": int(a["count_include_pad"])} if "count_include_pad" in a else {}
        return e.node(op_type, ins, n, out, kernel_shape=list(k), strides=list(s), pads=[p[0], p[1], p[2], p[3]],
                      ceil_mode=int(a["ceil_mode"]), **extra)
    return emit


op("maxpool2d", 1, _pool_rule("maxpool2d"), _maxpool,
   lambda b, n, g: [lambda: b.maxpool2d_grad(g, n.args[0], n.out, **n.attrs)],
   family="pool", kernel={"template": "maxpool2d.cu.j2"}, attrs=dict(_POOL_ATTRS), flops=_pool_flops(None),
   onnx=_onnx_pool("MaxPool"),  # padding never wins a max, as dlc's -inf padding
   doc="max over kernel windows; stride defaults to the kernel; padding as [top, left, bottom, right] too; ceil_mode")
op("maxpool2d_grad", 3, lambda t, a: t[1], _maxpool_grad, family="pool_grad",
   kernel={"template": "maxpool2d_grad.cu.j2"}, attrs=dict(_POOL_ATTRS), dsl=False, flops=_pool_flops(0),
   doc="(g, input, pooled output): g routed to each window's arg-max")
op("avgpool2d", 1, _pool_rule("avgpool2d"), _avgpool,
   lambda b, n, g: [lambda: b.avgpool2d_grad(g, n.args[0], **n.attrs)],
   family="pool", kernel={"template": "avgpool2d.cu.j2"}, attrs=dict(_AVG_ATTRS), flops=_pool_flops(None),
   onnx=_onnx_pool("AveragePool"),
   doc="mean over kernel windows (count_include_pad: padding counts as zeros, the default); ceil_mode")
op("avgpool2d_grad", 2, lambda t, a: t[1], _avgpool_grad, family="pool_grad",
   kernel={"template": "avgpool2d_grad.cu.j2"}, attrs=dict(_AVG_ATTRS), dsl=False, flops=_pool_flops(0),
   doc="(g, input): each window's share of g spread over it")


# -- concat and slice -----------------------------------------------------------------------------

def _concat_rule(types, attrs):
    t0 = types[0]
    ax = normalize_axes(attrs["axis"], t0.rank, "concat axis")[0]
    total = 0
    for t in types:
        if t.rank != t0.rank or t.dtype != t0.dtype or any(
                a != b for i, (a, b) in enumerate(zip(t.shape, t0.shape)) if i != ax):
            raise DlcError(f"shape mismatch in concat along axis {ax}: {t0} and {t} differ off that axis")
        if isinstance(t.shape[ax], str):
            raise DlcError(f"concat along a symbolic dimension ({t}) is not supported")
        total += t.shape[ax]
    return t0.with_shape(total if i == ax else d for i, d in enumerate(t0.shape))


def _concat_vjp(b, n, g):
    ax = normalize_axes(n.attrs["axis"], n.type.rank)[0]
    starts = np.cumsum([0] + [t.shape[ax] for t in n.types]).tolist()
    return [(lambda lo=lo, hi=hi: b.slice(g, axis=ax, start=lo, stop=hi))
            for lo, hi in zip(starts[:-1], starts[1:])]


def _slice_rule(types, attrs):
    t = types[0]
    ax = normalize_axes(attrs["axis"], t.rank, "slice axis")[0]
    lo, hi = attrs["start"], attrs["stop"]
    if isinstance(t.shape[ax], str) or not 0 <= lo < hi <= t.shape[ax]:
        raise DlcError(f"slice [{lo}:{hi}] along axis {ax} is outside {t}")
    return t.with_shape(hi - lo if i == ax else d for i, d in enumerate(t.shape))


def _slice(x, axis, start, stop):
    idx = [slice(None)] * x.ndim
    idx[axis] = slice(start, stop)
    return x[tuple(idx)]


def _pad_rule(types, attrs):
    t = types[0]
    ax = normalize_axes(attrs["axis"], t.rank, "pad axis")[0]
    lo, total = attrs["start"], attrs["total"]
    if isinstance(t.shape[ax], str) or not (0 <= lo and lo + t.shape[ax] <= total):
        raise DlcError(f"pad of {t} to {total} at {lo} along axis {ax} does not fit")
    return t.with_shape(total if i == ax else d for i, d in enumerate(t.shape))


def _pad(x, axis, start, total):
    width = [(0, 0)] * x.ndim
    width[axis] = (start, total - start - x.shape[axis])
    return np.pad(x, width)


def _slice_vjp(b, n, g):
    ax = normalize_axes(n.attrs["axis"], n.type.rank)[0]
    return [lambda: b.pad(g, axis=ax, start=n.attrs["start"], total=n.types[0].shape[ax])]


def _onnx_slice(e, n, ins, a, out):
    ax = a["axis"] % e.type(n).rank
    return e.node("Slice", [ins[0], e.ints([a["start"]], f"{n}.starts"), e.ints([a["stop"]], f"{n}.ends"),
                            e.ints([ax], f"{n}.axes")], n, out)


def _onnx_pad(e, n, ins, a, out):
    t = e.type(e.operands(n)[0])
    ax = a["axis"] % t.rank
    lo, hi = [0] * t.rank, [0] * t.rank
    lo[ax], hi[ax] = a["start"], a["total"] - a["start"] - t.shape[ax]
    return e.node("Pad", [ins[0], e.ints(lo + hi, f"{n}.pads")], n, out, mode="constant")


op("concat", VARIADIC, _concat_rule, lambda *xs, axis: np.concatenate(xs, axis=axis), _concat_vjp,
   family="concat", attrs={"axis": 1},
   onnx=lambda e, n, ins, a, out: e.node("Concat", ins, n, out, axis=a["axis"] % e.type(n).rank),
   doc="join tensors along an axis (default 1, the channels)")
op("pad", 1, _pad_rule, _pad, lambda b, n, g: [lambda: b.slice(g, axis=n.attrs["axis"], start=n.attrs["start"],
                                                                stop=n.attrs["start"] + n.types[0].shape[
                                                                    normalize_axes(n.attrs["axis"], n.type.rank)[0]])],
   family="pad", attrs={"axis": REQUIRED, "start": REQUIRED, "total": REQUIRED}, dsl=False, onnx=_onnx_pad,
   doc="x placed at [start:start+len) of zeros of length total along one axis (the adjoint of slice)")
op("slice", 1, _slice_rule, _slice, _slice_vjp, family="slice", onnx=_onnx_slice,
   attrs={"axis": REQUIRED, "start": REQUIRED, "stop": REQUIRED},
   doc="x[start:stop] along one axis (also the adjoint of concat)")
