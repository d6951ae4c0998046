"""What each ONNX op becomes in `dlc import` (runtime/onnx_import.py walks the graph and calls these).

`RULES` maps an ONNX op type to a function `(importer, node index, node, input values, attributes)
-> output values`. An input value is a `Tensor` (a `.dln` name and its type: computed at run time),
a `Lazy` tensor (written only when read as one), or a NumPy array (known when importing: an
initializer or a folded result; an object array is a shape vector that holds the batch symbol `N`,
which `SYMBOLIC` folds). A rule writes bindings through the importer (`imp.call`, `imp.binary`,
`imp.bind`), declares weights (`imp.operand`, `imp.param_of`, `imp.store` for a prelude layer's), and
raises `Unsupported` for a use dlc cannot express (listed with the others) or `DlcError` for an
attribute it has no equivalent of (named with the node).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..ir.errors import DlcError
from ..ir.registry import OPS
from ..ir.types import TensorType

BATCH = "N"          # the symbolic batch dimension of the imported model


# -- values ------------------------------------------------------------------------------------------

@dataclass
class Tensor:
    """A value computed at run time: a `.dln` name and its type."""
    name: str
    type: TensorType


class Lazy:
    """A tensor whose binding is written only when a node reads it as one, so that what exporters
    write and undo (a transpose into a recurrent layer's sequence-first layout and back, a tensor
    of zeros for its initial state) needs no line of its own. `kind`: "transpose" (`src` with its
    axes permuted by `perm`), "seq_first" (a recurrent layer's sequence `src`, [N, T, H], as ONNX's
    [T, 1, N, H]), "fill" (a constant of a shape holding the batch), "last_state" ([1, N, H])."""

    def __init__(self, kind: str, type: TensorType, make, src=None, perm=None, value=None):
        self.kind, self.type, self._make = kind, type, make
        self.src, self.perm, self.value = src, perm, value
        self._tensor = None

    def tensor(self, name: str | None = None) -> Tensor:
        if self._tensor is None:
            self._tensor = self._make(name)
        return self._tensor


def fmt_number(v) -> str:
    """A float as .dln writes it: the shortest text that reads back to the same float32."""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    f = np.float32(v)
    if not np.isfinite(f):
        raise DlcError(f"the value {v} is not a finite number, which .dln cannot write")
    text = str(f)
    if "e" not in text and "." not in text:
        text += ".0"
    return text


def fmt_attr(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_attr(x) for x in v) + "]"
    if isinstance(v, str):
        return v if v == BATCH else '"' + v + '"'
    return fmt_number(v)


def attr_text(attrs: dict) -> str:
    return "".join(f", {k} = {fmt_attr(v)}" for k, v in attrs.items())


class Unsupported(Exception):
    """A node no entry translates (collected into the list of unsupported ops)."""


# -- folding shape vectors that hold the batch size --------------------------------------------------
# A "shape value" is an array of dtype object whose entries are integers or the symbol N (an int64
# array once every entry is known).

def _sym(v) -> np.ndarray:
    """A shape value: int64 where every entry is known, else an object array holding the symbol."""
    a = np.asarray(v, dtype=object)
    return a if any(isinstance(d, str) for d in a.reshape(-1)) else a.astype(np.int64)


def _ints(v) -> list[int]:
    if v is None:
        return None
    if v.dtype == object:
        raise Unsupported("its axes or indices depend on the batch size")
    return [int(x) for x in np.asarray(v).reshape(-1)]


def _axes_of(node_ins, attrs, k=1):
    """Axes given as an attribute (older opsets) or as input k."""
    if "axes" in attrs:
        return list(attrs["axes"])
    return _ints(node_ins[k]) if len(node_ins) > k and node_ins[k] is not None else None


def _sym_gather(imp, node, ins, a):
    data, idx = ins
    return [_sym(np.take(data, np.asarray(idx, dtype=np.int64), axis=a.get("axis", 0)))]


def _sym_concat(imp, node, ins, a):
    return [_sym(np.concatenate([_sym(v) for v in ins], axis=a.get("axis", 0)))]


def _sym_unsqueeze(imp, node, ins, a):
    v = ins[0]
    axes = sorted(x % (v.ndim + len(_axes_of(ins, a))) for x in _axes_of(ins, a))
    for ax in axes:
        v = np.expand_dims(v, ax)
    return [_sym(v)]


def _sym_squeeze(imp, node, ins, a):
    axes = _axes_of(ins, a)
    v = ins[0]
    return [_sym(np.squeeze(v, axis=tuple(axes)) if axes is not None else np.squeeze(v))]


def _sym_slice(imp, node, ins, a):
    v = ins[0]
    if "starts" in a:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
        steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else None
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    idx = [slice(None)] * v.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        idx[ax] = slice(s, e, st)
    return [_sym(v[tuple(idx)])]


def _sym_shape(imp, node, ins, a):
    return _shape_of(ins[0].shape, a)


def _shape_of(shape, a) -> list:
    dims = list(shape)[a.get("start", 0): a.get("end", None)]
    if all(isinstance(d, int) for d in dims):
        return [np.asarray(dims, dtype=np.int64)]
    return [_sym(dims)]


def _sym_reshape(imp, node, ins, a):
    return [_sym(np.reshape(ins[0], [int(x) for x in _ints(ins[1])]))]


def _sym_identity(imp, node, ins, a):
    return [ins[0]]


SYMBOLIC = {"Gather": _sym_gather, "Concat": _sym_concat, "Unsqueeze": _sym_unsqueeze, "Squeeze": _sym_squeeze,
             "Slice": _sym_slice, "Cast": _sym_identity, "Identity": _sym_identity, "Reshape": _sym_reshape,
             "Shape": _sym_shape}


# -- the ops --------------------------------------------------------------------------------------
# Each entry: (importer, node index, node, input values, attributes) -> output values.

def _tensor(imp, v, what="its input"):
    if isinstance(v, Lazy):
        v = v.tensor()
    if not isinstance(v, Tensor):
        raise Unsupported(f"{what} is a constant where dlc needs a computed tensor")
    return v.name, v.type


def _unary(op, **fixed):
    def rule(imp, i, node, ins, a):
        x = _tensor(imp, ins[0])
        attrs = {k: (f(a) if callable(f) else f) for k, f in fixed.items()}
        attrs = {k: v for k, v in attrs.items() if v != OPS[op].attrs.get(k)}
        return [imp.call(node, op, [x], attrs, name=imp.result_name(node))]
    return rule


def _binary(op, sym):
    def rule(imp, i, node, ins, a):
        x, y = (imp.operand(n, node) for n in node.input[:2])
        if sym:
            return [imp.binary(node, op, sym, x, y, name=imp.result_name(node))]
        return [imp.call(node, op, [x, y], name=imp.result_name(node))]
    return rule


def _variadic(op, sym):
    """Sum, Max, Min of several operands: one binding, the operands folded pairwise."""
    def rule(imp, i, node, ins, a):
        xs = [imp.operand(n, node) for n in node.input if n]
        acc = xs[0]
        if len(xs) == 1:
            return [imp.bind(node, imp.result_name(node), f"{acc[0]} * 1.0", acc[1])]
        for x in xs[1:]:
            t = imp.infer(op, [acc[1], x[1]], {})
            acc = (f"{acc[0]} {sym} {x[0]}" if sym else f"{op}({acc[0]}, {x[0]})"), t
        return [imp.bind(node, imp.result_name(node), acc[0], acc[1])]
    return rule


def _conv_pads(imp, a, x: TensorType, k, s, d):
    """(top, left, bottom, right) padding from `pads` or `auto_pad`."""
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        p = list(a.get("pads", [0, 0, 0, 0]))
        return p[0], p[1], p[2], p[3]
    if auto == "VALID":
        return 0, 0, 0, 0
    lo, hi = [], []
    for ax in range(2):
        n = x.shape[2 + ax]
        if isinstance(n, str):
            raise DlcError(f"auto_pad {auto} needs a known spatial size, found {x}")
        out = -(-n // s[ax])
        total = max((out - 1) * s[ax] + (k[ax] - 1) * d[ax] + 1 - n, 0)
        small = total // 2
        lo.append(small if auto == "SAME_UPPER" else total - small)
        hi.append(total - lo[-1])
    return lo[0], lo[1], hi[0], hi[1]


def _pad_axes(imp, node, x, sides, value: float = 0.0, name: str | None = None):
    """x with `value` added before and after some axes (`sides`: (axis, before, after) each), as
    constants concatenated along each axis in turn: one binding per padded axis, the last one named
    `name` where given."""
    todo = [(ax, lo, hi) for ax, lo, hi in sides if lo or hi]
    fill = "" if not value else f" + {fmt_number(value)}"
    for k, (axis, lo, hi) in enumerate(todo):
        parts, types = [], []
        for extra, after in ((lo, False), (hi, True)):
            if after:
                parts.append(x[0])
                types.append(x[1])
            if extra:
                shape = list(x[1].shape)
                shape[axis] = extra
                parts.append(f"zeros({fmt_attr(shape)}){fill}")
                types.append(TensorType("f32", tuple(shape)))
        t = imp.infer("concat", types, {"axis": axis})
        last = k == len(todo) - 1 and name
        x = imp.bind(node, name if last else imp.fresh(f"{x[0]}_pad"),
                     f"concat({', '.join(parts)}, axis = {axis})", t)
        x = (x.name, x.type)
    return Tensor(*x)


def _pad_input(imp, node, x, pads):
    """Asymmetric padding as zeros concatenated on the heavier sides; returns the padded operand
    and the symmetric padding left for the convolution."""
    top, left, bottom, right = pads
    sym_h, sym_w = min(top, bottom), min(left, right)
    x = _pad_axes(imp, node, x, [(2, top - sym_h, bottom - sym_h), (3, left - sym_w, right - sym_w)])
    return (x.name, x.type), (sym_h, sym_w)


def _pad(imp, i, node, ins, a):
    x = _tensor(imp, ins[0])
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        raise Unsupported(f"mode {mode} (dlc pads with a constant)")
    if imp.opset < 11:
        pads, value, axes = list(a["pads"]), float(a.get("value", 0.0)), None
    else:
        pads = _ints(ins[1])
        value = float(ins[2].reshape(-1)[0]) if len(ins) > 2 and isinstance(ins[2], np.ndarray) else 0.0
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
        if len(ins) > 2 and isinstance(ins[2], (Tensor, Lazy)):
            raise Unsupported("its padding value is computed at run time")
    r = x[1].rank
    axes = [ax % r for ax in axes] if axes else list(range(r))
    half = len(pads) // 2
    sides = [(ax, pads[k], pads[k + half]) for k, ax in enumerate(axes)]
    if any(lo < 0 or hi < 0 for _, lo, hi in sides):
        raise Unsupported("negative pads (a crop)")
    if any((lo or hi) and isinstance(x[1].shape[ax], str) for ax, lo, hi in sides):
        raise Unsupported("padding along the batch axis")
    if not any(lo or hi for _, lo, hi in sides):
        return _identity(imp, i, node, ins, a)
    return [_pad_axes(imp, node, x, sides, value, name=imp.result_name(node))]


def _geom(v):
    """An attribute pair written as one number when both agree."""
    return v[0] if v[0] == v[1] else list(v)


def _bias_add(imp, i, out: str, channels_shape: tuple):
    """The node that adds a constant bias to `out` right after it, when it is `out`'s only reader
    and its constant has the shape `channels_shape` (or that with a leading 1): (node index, bias
    array, its name), else None. (A bias [O] added to [N, O, H, W] would broadcast along W: no.)"""
    users = imp.consumers.get(out, [])
    if len(users) != 1 or users[0] < 0:
        return None
    j = users[0]
    nxt = imp.model.graph.node[j]
    if nxt.op_type != "Add" or len(nxt.input) != 2:
        return None
    other = nxt.input[1] if nxt.input[0] == out else nxt.input[0]
    b = imp.const(other)
    if b is None or not imp.only_use(other) or b.dtype == object:
        return None
    if tuple(b.shape) not in (tuple(channels_shape), (1,) + tuple(channels_shape)):
        return None
    return j, b, other


def _conv(imp, i, node, ins, a):
    x = _tensor(imp, ins[0])
    w = imp.const(node.input[1])
    if x[1].rank != 4:
        raise Unsupported(f"a {x[1].rank - 2}-D convolution (dlc has conv2d)")
    k = list(a.get("kernel_shape") or (w.shape[2:] if w is not None else ins[1].type.shape[2:]))
    s = list(a.get("strides", [1, 1]))
    d = list(a.get("dilations", [1, 1]))
    g = int(a.get("group", 1))
    x, pad = _pad_input(imp, node, x, _conv_pads(imp, a, x[1], k, s, d))
    bias = imp.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and bias is None:
        raise Unsupported("its bias is computed at run time")
    nodes, bias_name = [node], (node.input[2] if bias is not None else None)
    if bias is None and w is not None:
        found = _bias_add(imp, i, node.output[0], (w.shape[0], 1, 1))
        if found:
            j, bias, bias_name = found
            imp.absorbed.add(j)
            nodes.append(imp.model.graph.node[j])
    out_onnx = nodes[-1].output[0]
    attrs = {"stride": _geom(s), "padding": _geom(pad), "dilation": _geom(d), "groups": g}
    wname = node.input[1]
    if bias is None and w is not None and imp.only_use(wname) and k[0] == k[1] and d == [1, 1] and g == 1:
        found = _conv_bn(imp, node, x, w, attrs)
        if found is not None:
            return [found]
    prelude = (w is not None and imp.only_use(wname) and bias is not None and imp.only_use(bias_name)
               and k[0] == k[1] and d == [1, 1])
    if prelude:
        name = imp.out_names.get(out_onnx) or imp.layer_name(node, wname)
        o = w.shape[0]
        t = imp.infer("add", [imp.infer("conv2d", [x[1], TensorType("f32", tuple(w.shape))], attrs),
                              TensorType("f32", (o, 1, 1))], {})
        shown = {kk: v for kk, v in attrs.items() if kk != "dilation" and v != OPS["conv2d"].attrs[kk]}
        imp.store(f"{name}.w", w)
        imp.store(f"{name}.b", bias.reshape(o, 1, 1))
        imp.prelude["conv"] += 1
        out = imp.bind(node, name, f"conv({x[0]}, {o}, {k[0]}{attr_text(shown)})", t, nodes)
    else:
        wt = imp.operand(wname, node, number=False)
        attrs = {kk: v for kk, v in attrs.items() if v != OPS["conv2d"].attrs[kk]}
        name = imp.out_names.get(out_onnx) or imp.fresh(out_onnx)
        t = imp.infer("conv2d", [x[1], wt[1]], attrs)
        expr = f"conv2d({x[0]}, {wt[0]}{attr_text(attrs)})"
        if bias is not None:
            o = t.shape[1]
            b = imp.param_of(bias_name, bias.reshape(o, 1, 1))
            t = imp.infer("add", [t, b.type], {})
            expr += f" + {b.name}"
        out = imp.bind(node, name, expr, t, nodes)
    if len(nodes) > 1:
        imp.values[out_onnx] = out
        imp.ops["Add"] += 1
    return [out]


def _next(imp, out: str, op_type: str):
    """The node that alone reads `out`, when it is an `op_type` reading it first: (index, node)."""
    users = imp.consumers.get(out, [])
    if len(users) != 1 or users[0] < 0:
        return None
    nxt = imp.model.graph.node[users[0]]
    return (users[0], nxt) if nxt.op_type == op_type and nxt.input[0] == out else None


def _conv_bn(imp, node, x, w, attrs):
    """Conv without a bias, then BatchNormalization (with PyTorch's defaults) and perhaps a Relu,
    each the only reader of the one before: the prelude's conv_bn or conv_bn_relu (ResNet's unit)."""
    found = _next(imp, node.output[0], "BatchNormalization")
    if not found:
        return None
    j, bn = found
    a = imp.attributes(bn)
    stats = [imp.const(n) for n in bn.input[1:5]]
    if (any(v is None or not imp.only_use(n) for v, n in zip(stats, bn.input[1:5])) or a.get("training_mode", 0)
            or any(o and imp.consumers.get(o) for o in bn.output[1:])
            or abs(float(a.get("epsilon", 1e-5)) - 1e-5) > 1e-9 or abs(float(a.get("momentum", 0.9)) - 0.9) > 1e-6):
        return None
    nodes, absorbed = [node, bn], [j]
    relu = _next(imp, bn.output[0], "Relu")
    if relu:
        nodes.append(relu[1])
        absorbed.append(relu[0])
    out_onnx = nodes[-1].output[0]
    if any(n.output[0] in imp.out_names for n in nodes[:-1]):
        return None  # an inner value is a graph output: the layers stay apart
    name = imp.out_names.get(out_onnx) or imp.layer_name(node, node.input[1])
    o = w.shape[0]
    t = imp.infer("conv2d", [x[1], TensorType("f32", tuple(w.shape))], attrs)
    fn = "conv_bn_relu" if relu else "conv_bn"
    shown = {kk: v for kk, v in attrs.items() if kk in ("stride", "padding") and v != OPS["conv2d"].attrs[kk]}
    imp.store(f"{name}.w", w)
    for key, v, kind in zip(("gamma", "beta", "mean", "var"), stats, ("param", "param", "buffer", "buffer")):
        imp.store(f"{name}.bn.{key}", v.reshape(o), kind)
    imp.prelude[fn] += 1
    for k, n in zip(absorbed, nodes[1:]):
        imp.absorbed.add(k)
        imp.ops[n.op_type] += 1
    out = imp.bind(node, name, f"{fn}({x[0]}, {o}, {w.shape[2]}{attr_text(shown)})", t, nodes)
    for n in nodes[1:]:
        imp.values[n.output[0]] = out
    return out


def _gemm(imp, i, node, ins, a):
    x = _tensor(imp, ins[0])
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    ta, tb = bool(a.get("transA", 0)), bool(a.get("transB", 0))
    w = imp.const(node.input[1])
    c_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    c = imp.const(c_name) if c_name else None
    if (w is not None and imp.only_use(node.input[1]) and not ta and alpha == 1.0 and beta == 1.0 and c is not None
            and imp.only_use(c_name) and c.size == (w.shape[0] if tb else w.shape[1])):
        return [_linear(imp, node, x, w.T if tb else w, c.reshape(-1), node.input[1], [node])]
    wt = imp.operand(node.input[1], node, number=False)
    attrs = {k: v for k, v in (("ta", ta), ("tb", tb)) if v}
    t = imp.infer("matmul", [x[1], wt[1]], attrs)
    expr = f"matmul({x[0]}, {wt[0]}{attr_text(attrs)})"
    if alpha != 1.0:
        expr = f"{fmt_number(alpha)} * {expr}"
    if c_name:
        cv = imp.operand(c_name, node)
        t = imp.infer("add", [t, cv[1]], {})
        expr += f" + {cv[0]}" if beta == 1.0 else f" + {fmt_number(beta)} * {cv[0]}"
    return [imp.bind(node, imp.result_name(node), expr, t)]


def _linear(imp, node, x, w, b, wname, nodes) -> Tensor:
    out_onnx = nodes[-1].output[0]
    name = imp.out_names.get(out_onnx) or imp.layer_name(node, wname)
    imp.store(f"{name}.w", w)
    imp.store(f"{name}.b", b)
    imp.prelude["linear"] += 1
    t = imp.infer("add", [imp.infer("matmul", [x[1], TensorType("f32", tuple(w.shape))], {}),
                          TensorType("f32", tuple(b.shape))], {})
    return imp.bind(node, name, f"linear({x[0]}, {w.shape[1]})", t, nodes)


def _matmul(imp, i, node, ins, a):
    x = imp.operand(node.input[0], node, number=False)
    w = imp.const(node.input[1])
    if isinstance(ins[0], (Tensor, Lazy)) and x[1].rank == 2 and w is not None and w.ndim == 2 and imp.only_use(node.input[1]):
        found = _bias_add(imp, i, node.output[0], (w.shape[1],))
        base = re.sub(r"[._](weight|w)$", "", node.input[1])
        if found and base != node.input[1] and re.sub(r"[._](bias|b)$", "", found[2]) == base:
            j, b, _ = found
            imp.absorbed.add(j)
            out = _linear(imp, node, x, w, b.reshape(-1), node.input[1], [node, imp.model.graph.node[j]])
            imp.values[imp.model.graph.node[j].output[0]] = out
            imp.ops["Add"] += 1
            return [out]
    y = imp.operand(node.input[1], node, number=False)
    if x[1].rank < 2 or y[1].rank < 2:
        raise Unsupported("a product with a vector operand (dlc's matmul takes matrices)")
    return [imp.binary(node, "matmul", "@", x, y, name=imp.result_name(node))]


def _pool(op):
    def rule(imp, i, node, ins, a):
        x = _tensor(imp, ins[0])
        if len([o for o in node.output if o]) > 1 and imp.consumers.get(node.output[1]):
            raise Unsupported("its Indices output is used")
        k = list(a["kernel_shape"])
        s = list(a.get("strides", [1] * len(k)))
        d = list(a.get("dilations", [1] * len(k)))
        if any(v != 1 for v in d):
            raise DlcError(f"unsupported attribute dilations = {d}: dlc's pools have no dilation")
        if x[1].rank == 5:
            return _pool3d(imp, node, x, k, s, a, op)
        if x[1].rank != 4:
            raise Unsupported(f"a {x[1].rank - 2}-D pool (dlc pools 2-D)")
        p = _conv_pads(imp, a, x[1], k, s, d)
        attrs = {"kernel": _geom(k), "stride": _geom(s)}
        if any(p):
            attrs["padding"] = p[0] if len(set(p)) == 1 else ([p[0], p[1]] if p[:2] == p[2:] else list(p))
        if a.get("ceil_mode", 0):
            attrs["ceil_mode"] = True
        if op == "avgpool2d" and not a.get("count_include_pad", 0):
            attrs["count_include_pad"] = False  # ONNX's default is 0, dlc's (PyTorch's) true
        if attrs["stride"] == attrs["kernel"]:
            del attrs["stride"]
        return [imp.call(node, op, [x], attrs, name=imp.result_name(node))]
    return rule


def _pool3d(imp, node, x, k, s, a, op):
    """A 3-D pool that pools along the first spatial axis only (kernel and stride 1 on the last two,
    no padding there: PyTorch's LocalResponseNorm exports so) as a 2-D pool of [N, C, D, H*W]."""
    pads = list(a.get("pads", [0] * 6))
    auto = a.get("auto_pad", b"NOTSET")
    if k[1:] != [1, 1] or s[1:] != [1, 1] or pads[1:3] + pads[4:] != [0, 0, 0, 0] or auto not in (b"NOTSET", "NOTSET"):
        raise Unsupported("a 3-D pool over more than its first spatial axis (dlc pools 2-D)")
    n, c, dd, h, w = x[1].shape
    flat = imp.call(node, "reshape", [x], {"shape": [n, c, dd, h * w]}, name=imp.fresh(f"{x[0]}_2d"))
    attrs = {"kernel": [k[0], 1], "stride": [s[0], 1]}
    if pads[0] or pads[3]:
        attrs["padding"] = [pads[0], 0, pads[3], 0]
    if a.get("ceil_mode", 0):
        attrs["ceil_mode"] = True
    if op == "avgpool2d" and not a.get("count_include_pad", 0):
        attrs["count_include_pad"] = False
    pooled = imp.call(node, op, [(flat.name, flat.type)], attrs, name=imp.fresh(f"{node.output[0]}_2d"))
    return [imp.call(node, "reshape", [(pooled.name, pooled.type)],
                     {"shape": [n, c, pooled.type.shape[2], h, w]}, name=imp.result_name(node))]


def _squeeze_unsqueeze(imp, i, node, ins, a):
    """Unsqueeze and Squeeze of a tensor: a reshape."""
    v = ins[0]
    if (isinstance(v, Lazy) and v.kind == "seq_first" and node.op_type == "Squeeze"
            and [x % 4 for x in (_axes_of(ins, a) or [1])] == [1]):  # [T, 1, N, H] -> [T, N, H]
        t = v.src.type.with_shape([v.src.type.shape[1], v.src.type.shape[0], v.src.type.shape[2]])
        make = lambda name: imp.call(node, "transpose", [(v.src.name, v.src.type)], {"perm": [1, 0, 2]},
                                     name=name or imp.result_name(node))
        return [Lazy("transpose", t, make, src=v.src, perm=[1, 0, 2])]
    x = _tensor(imp, v)
    shape = list(x[1].shape)
    axes = _axes_of(ins, a)
    if node.op_type == "Unsqueeze":
        r = len(shape) + len(axes)
        for ax in sorted(v % r for v in axes):
            shape.insert(ax, 1)
    else:
        drop = {v % len(shape) for v in axes} if axes else {k for k, d in enumerate(shape) if d == 1}
        shape = [d for k, d in enumerate(shape) if k not in drop]
    return [_reshaped(imp, node, x, shape)]


def _global_pool(op):
    def rule(imp, i, node, ins, a):
        x = _tensor(imp, ins[0])
        if x[1].rank != 4:
            raise Unsupported("a global pool of a tensor that is not [N, C, H, W]")
        if op == "mean":
            return [imp.call(node, "mean", [x], {"axis": [2, 3], "keepdims": True}, name=imp.result_name(node))]
        return [imp.call(node, "maxpool2d", [x], {"kernel": list(x[1].shape[2:])}, name=imp.result_name(node))]
    return rule


def _batch_norm(imp, i, node, ins, a):
    x = _tensor(imp, ins[0])
    if a.get("training_mode", 0) or any(o and imp.consumers.get(o) for o in node.output[1:]):
        raise Unsupported("it is in training mode (its running statistics are outputs)")
    if a.get("spatial", 1) != 1:
        raise DlcError("unsupported attribute spatial = 0 (per-element statistics): dlc normalizes per channel")
    eps = float(a.get("epsilon", 1e-5))
    momentum = 1.0 - float(str(np.float32(a.get("momentum", 0.9))))  # 1 - 0.8 is 0.2, not 1 - float32(0.8)
    names = list(node.input[1:5])
    stats = [imp.const(n) for n in names]
    attrs = {}
    if abs(momentum - 0.1) > 1e-7:
        attrs["momentum"] = momentum
    if abs(eps - 1e-5) > 1e-12:
        attrs["eps"] = eps
    c = x[1].shape[1] if x[1].rank >= 2 else None
    fn = {4: "batchnorm2d", 2: "batchnorm1d"}.get(x[1].rank)
    if fn and all(s is not None and imp.only_use(n) for s, n in zip(stats, names)):
        name = imp.result_name(node) if node.output[0] in imp.out_names else imp.layer_name(node, names[0])
        for key, v, kind in zip(("gamma", "beta", "mean", "var"), stats, ("param", "param", "buffer", "buffer")):
            imp.store(f"{name}.{key}", v.reshape(c), kind)
        imp.prelude[fn] += 1
        return [imp.bind(node, name, f"{fn}({x[0]}{attr_text(attrs)})", x[1])]
    ops = [imp.operand(n, node, number=False) for n in names[:2]]
    for n, s in zip(names[2:], stats[2:]):
        if s is None:
            raise Unsupported("its running statistics are computed at run time")
        if n not in imp.as_param:
            imp.as_param[n] = imp.declare(imp.fresh(n), s.reshape(c), "buffer", comment=f"onnx: {n}")
        ops.append((imp.as_param[n].name, imp.as_param[n].type))
    return [imp.call(node, "batch_norm", [x] + ops, attrs, name=imp.result_name(node))]


def _layer_norm(imp, i, node, ins, a):
    x = _tensor(imp, ins[0])
    if any(o and imp.consumers.get(o) for o in node.output[1:]):
        raise Unsupported("its Mean or InvStdDev output is used")
    axis = int(a.get("axis", -1)) % x[1].rank
    eps = float(a.get("epsilon", 1e-5))
    shape = x[1].shape[axis:]
    scale = imp.const(node.input[1])
    bias = imp.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(shape, np.float32)
    attrs = {"eps": eps} if abs(eps - 1e-5) > 1e-12 else {}
    bname = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if (x[1].rank == 2 and axis == 1 and scale is not None and imp.only_use(node.input[1])
            and (bname is None or imp.only_use(bname))):
        name = imp.result_name(node) if node.output[0] in imp.out_names else imp.layer_name(node, node.input[1])
        imp.store(f"{name}.gamma", np.broadcast_to(scale, shape))
        imp.store(f"{name}.beta", np.broadcast_to(bias, shape))
        imp.prelude["layernorm"] += 1
        return [imp.bind(node, name, f"layernorm({x[0]}{attr_text(attrs)})", x[1])]
    g = imp.operand(node.input[1], node, number=False)
    b = imp.operand(bname, node, number=False) if bname else (imp.declare(imp.fresh(f"{node.output[0]}_beta"), bias).name,
                                               TensorType("f32", tuple(shape)))
    attrs = dict(attrs, axis=axis) if axis != x[1].rank - 1 else attrs
    return [imp.call(node, "layer_norm", [x, g, b], attrs, name=imp.result_name(node))]


def _lrn(imp, i, node, ins, a):
    x = _tensor(imp, ins[0])
    size = int(a["size"])
    if size % 2 == 0:
        raise DlcError(f"unsupported attribute size = {size}: dlc's lrn takes an odd size")
    attrs = {"size": size, "alpha": float(a.get("alpha", 1e-4)), "beta": float(a.get("beta", 0.75)),
             "k": float(a.get("bias", 1.0))}
    imp.prelude["lrn"] += 1
    return [imp.bind(node, imp.result_name(node), f"lrn({x[0]}{attr_text(attrs)})", x[1])]


# The prelude's lrn as dlc export writes it: x * x, reshaped to [N, 1, C, H*W], averaged over `size`
# channels (padding counted), reshaped back, then x * exp(-beta * log(k + alpha * avg)). Found from
# its first node, each node the only reader of the one before, and written back as one `lrn` line.
_LRN_CHAIN = ("Reshape", "AveragePool", "Reshape", "Mul", "Add", "Log", "Mul", "Exp", "Mul")


def _scalar(imp, node, value_name):
    """The single value of the constant operand of `node` other than `value_name`, or None."""
    others = [n for n in node.input if n != value_name]
    c = imp.const(others[0]) if len(others) == 1 else None
    return float(c.reshape(-1)[0]) if c is not None and c.dtype != object and c.size == 1 else None


def _lrn_pattern(imp, node, x: Tensor, x_onnx: str):
    """(size, alpha, beta, k, the chain's nodes) where `node` (x * x) starts the prelude's lrn."""
    chain, out = [], node.output[0]
    for want in _LRN_CHAIN:
        nxt = _next_any(imp, out)
        if nxt is None or nxt[1].op_type != want:
            return None
        chain.append(nxt)
        out = nxt[1].output[0]
    (_, r1), (_, pool), (_, r2), (_, m1), (_, add), (_, log), (_, m2), (_, exp), (_, last) = chain
    if sorted(last.input) != sorted([x_onnx, exp.output[0]]):
        return None
    n_, c, h, w = x.type.shape
    a = imp.attributes(pool)
    size = list(a.get("kernel_shape", [0]))[0]
    if (list(a.get("kernel_shape", [])) != [size, 1] or list(a.get("strides", [1, 1])) != [1, 1] or size % 2 == 0
            or list(a.get("pads", [])) != [(size - 1) // 2, 0, (size - 1) // 2, 0] or not a.get("count_include_pad", 0)
            or a.get("ceil_mode", 0)):
        return None
    for rs, want in ((r1, [n_, 1, c, h * w]), (r2, [n_, c, h, w])):
        target = imp.const(rs.input[1])
        src = [n_, c, h, w] if rs is r1 else [n_, 1, c, h * w]
        if target is None or _reshape_spec(src, target, imp.attributes(rs)) not in (want, [-1] + want[1:]):
            return None
    alpha, k, minus_beta = (_scalar(imp, m1, r2.output[0]), _scalar(imp, add, m1.output[0]),
                            _scalar(imp, m2, log.output[0]))
    if None in (alpha, k, minus_beta):
        return None
    return size, alpha, -minus_beta, k, chain


def _next_any(imp, out: str):
    """The node that alone reads `out`: (index, node), else None."""
    users = imp.consumers.get(out, [])
    return (users[0], imp.model.graph.node[users[0]]) if len(users) == 1 and users[0] >= 0 else None


def _mul(imp, i, node, ins, a):
    """Mul; x * x that starts the prelude's lrn (as dlc export writes it) becomes that one line."""
    if len(node.input) == 2 and node.input[0] == node.input[1] and isinstance(ins[0], (Tensor, Lazy)):
        x = Tensor(*_tensor(imp, ins[0]))
        found = _lrn_pattern(imp, node, x, node.input[0]) if x.type.rank == 4 and all(
            isinstance(d, int) for d in x.type.shape[1:]) else None
        if found:
            size, alpha, beta, k, chain = found
            for j, n in chain:
                imp.absorbed.add(j)
                imp.ops[n.op_type] += 1
            last = chain[-1][1]
            attrs = {"size": size, "alpha": alpha, "beta": beta, "k": k}
            imp.prelude["lrn"] += 1
            out = imp.bind(node, imp.out_names.get(last.output[0]) or imp.fresh(last.output[0]),
                           f"lrn({x.name}{attr_text(attrs)})", x.type, [node, last], span=len(chain) + 1)
            imp.values[last.output[0]] = out
            return [None]
    return _binary("mul", "*")(imp, i, node, ins, a)


def _softmax(op):
    def rule(imp, i, node, ins, a):
        x = _tensor(imp, ins[0])
        r = x[1].rank
        axis = int(a.get("axis", -1 if imp.opset >= 13 else 1)) % r
        if imp.opset >= 13 or axis == r - 1:
            attrs = {"axis": axis - r} if axis != r - 1 else {}
            return [imp.call(node, op, [x], attrs, name=imp.result_name(node))]
        # before opset 13: the input is flattened to [prod(:axis), prod(axis:)] around the softmax
        rest = x[1].shape[axis:]
        if any(isinstance(d, str) for d in rest):
            raise Unsupported("a softmax over the batch axis")
        flat = imp.call(node, "reshape", [x], {"shape": list(x[1].shape[:axis]) + [int(np.prod(rest))]},
                        name=imp.fresh(f"{node.output[0]}_flat"))
        sm = imp.call(node, op, [(flat.name, flat.type)], {}, name=imp.fresh(f"{node.output[0]}_rows"))
        return [imp.call(node, "reshape", [(sm.name, sm.type)], {"shape": list(x[1].shape)},
                         name=imp.result_name(node))]
    return rule


def _flatten(imp, i, node, ins, a):
    x = _tensor(imp, ins[0])
    axis = int(a.get("axis", 1)) % (x[1].rank + 1) if x[1].rank else 0
    head, tail = x[1].shape[:axis], x[1].shape[axis:]
    if any(isinstance(d, str) for d in tail) or sum(isinstance(d, str) for d in head) > 1 or (
            any(isinstance(d, str) for d in head) and len(head) > 1):
        raise Unsupported(f"a flatten at axis {axis} of {x[1]} multiplies the batch size")
    first = head[0] if len(head) == 1 else int(np.prod(head)) if head else 1
    return [_reshaped(imp, node, x, [first, int(np.prod(tail)) if tail else 1])]


def _reshape(imp, i, node, ins, a):
    x = _tensor(imp, ins[0])
    shape = ins[1] if len(ins) > 1 else _sym(a["shape"])
    if isinstance(shape, (Tensor, Lazy)):
        raise Unsupported("its shape is computed from data at run time")
    return [_reshaped(imp, node, x, _reshape_spec(x[1].shape, shape, a))]


def _reshape_spec(have, shape: np.ndarray, a) -> list:
    """Reshape's target as dlc writes it: ONNX's 0 (copy the dimension) resolved, a symbol kept."""
    spec = []
    for k, d in enumerate(shape.reshape(-1).tolist()):
        if d == 0 and not a.get("allowzero", 0):
            spec.append(have[k])
        else:
            spec.append(d if isinstance(d, str) else int(d))
    if BATCH in have and BATCH not in spec and -1 not in spec and spec and spec[0] == 1:
        spec[0] = BATCH  # a model exported at batch 1 wrote the batch as 1
    return spec


def _reshaped(imp, node, x, shape) -> Tensor:
    """x reshaped: a binding, unless the shape is x's own (then x itself, as exporters' no-op
    reshapes are)."""
    t = imp.infer("reshape", [x[1]], {"shape": list(shape)})
    if t == x[1] and node.output[0] not in imp.out_names:
        return Tensor(*x)
    return imp.call(node, "reshape", [x], {"shape": list(shape)}, name=imp.result_name(node))


def _transpose(imp, i, node, ins, a):
    v = ins[0]
    rank = v.type.rank
    perm = [p % rank for p in a.get("perm", reversed(range(rank)))]
    if isinstance(v, Lazy) and v.kind == "transpose":  # a transpose of a transpose: one, or none
        src, perm = v.src, [v.perm[p] for p in perm]
    else:
        src = Tensor(*_tensor(imp, v))
    if perm == list(range(rank)) and node.output[0] not in imp.out_names:
        return [src]
    t = src.type.with_shape(src.type.shape[p] for p in perm)
    make = lambda name: imp.call(node, "transpose", [(src.name, src.type)], {"perm": perm},
                                 name=name or imp.result_name(node))
    return [Lazy("transpose", t, make, src=src, perm=perm)]


def _concat(imp, i, node, ins, a):
    xs = [imp.operand(n, node, number=False) for n in node.input if n]
    rank = max(t.rank for _, t in xs)
    return [imp.call(node, "concat", xs, {"axis": int(a["axis"]) % rank}, name=imp.result_name(node))]


def _identity(imp, i, node, ins, a):
    if len(node.output) > 1 and node.output[1] and imp.consumers.get(node.output[1]):
        raise Unsupported("its mask output is used")
    v = ins[0]
    if isinstance(v, (Tensor, Lazy)) and node.output[0] not in imp.out_names:
        return [v]  # the identity in evaluation: no binding of its own (Dropout, Identity)
    if isinstance(v, Lazy) and v._tensor is None:  # a graph output: written under the output's name
        return [v.tensor(imp.result_name(node))]
    x = imp.operand(node.input[0], node)
    return [imp.bind(node, imp.result_name(node), f"{x[0]} * 1.0", x[1])]


def _clip(imp, i, node, ins, a):
    x = _tensor(imp, ins[0])
    if imp.opset < 11:
        lo, hi = a.get("min"), a.get("max")
    else:
        bounds = []
        for k in (1, 2):
            n = node.input[k] if len(node.input) > k and node.input[k] else None
            v = imp.const(n) if n else None
            if n and v is None:
                raise Unsupported("its bounds are computed at run time")
            bounds.append(None if v is None else float(v.reshape(-1)[0]))
        lo, hi = bounds
    expr, t = x[0], x[1]
    if hi is not None and np.isfinite(hi):
        expr = f"min({expr}, {fmt_number(hi)})"
    if lo is not None and np.isfinite(lo):
        expr = f"max({expr}, {fmt_number(lo)})"
    return [imp.bind(node, imp.result_name(node), expr if expr != x[0] else f"{x[0]} * 1.0", t)]


def _where(imp, i, node, ins, a):
    ops = [imp.operand(n, node) for n in node.input]
    return [imp.call(node, "where", ops, name=imp.result_name(node))]


def _cast(imp, i, node, ins, a):
    ints = (imp.onnx.TensorProto.INT32, imp.onnx.TensorProto.INT64)
    if a.get("to") in ints and isinstance(ins[0], (Tensor, Lazy)) and _tensor(imp, ins[0])[1].dtype == "i32":
        return _identity(imp, i, node, ins, a)  # ids stay i32 (an exporter casts them to int64 for Gather)
    if a.get("to") not in (imp.onnx.TensorProto.FLOAT, imp.onnx.TensorProto.BOOL):
        to = imp.onnx.helper.tensor_dtype_to_string(a.get("to")).removeprefix("TensorProto.")
        raise Unsupported(f"a cast to {to} (dlc computes in float32)")
    return _identity(imp, i, node, ins, a)  # comparisons give 1.0 and 0.0 already


def _not(imp, i, node, ins, a):
    x = _tensor(imp, ins[0])
    return [imp.bind(node, imp.result_name(node), f"{x[0]} == 0", x[1])]


def _gelu(imp, i, node, ins, a):
    approx = a.get("approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return _unary("gelu", approximate=approx)(imp, i, node, ins, a)


def _reciprocal(imp, i, node, ins, a):
    x = _tensor(imp, ins[0])
    return [imp.binary(node, "div", "/", ("1.0", TensorType("f32", ())), x, name=imp.result_name(node))]


def _constant_of_shape(imp, i, node, ins, a):
    shape = ins[0]
    value = imp.onnx.numpy_helper.to_array(a["value"]).reshape(-1)[0] if "value" in a else 0.0
    dims = shape.reshape(-1).tolist()
    t = TensorType("f32", tuple(dims))
    expr = f"zeros({fmt_attr(dims)})" + (f" + {fmt_number(float(value))}" if value else "")
    make = lambda name: imp.bind(node, name or imp.result_name(node), expr, imp.infer("zeros", [], {"shape": dims}))
    return [Lazy("fill", t, make, value=float(value))]


def _shape(imp, i, node, ins, a):
    return _shape_of(ins[0].type.shape, a)


def _reduce(op):
    def rule(imp, i, node, ins, a):
        x = _tensor(imp, ins[0])
        axes = _axes_of(ins, a)
        keep = bool(a.get("keepdims", 1))
        if axes is None or axes == []:
            if a.get("noop_with_empty_axes", 0):
                return _identity(imp, i, node, ins, a)
            axes = None
        attrs = {} if axes is None else {"axis": axes if len(axes) > 1 else axes[0]}  # none: every axis
        if keep:
            attrs["keepdims"] = True
        return [imp.call(node, op, [x], attrs, name=imp.result_name(node))]
    return rule


# -- recurrent layers: onto the prelude's lstm and elman --------------------------------------------
# ONNX's LSTM and RNN read X as [T, N, F] (sequence first) and write Y as [T, directions, N, H]; the
# prelude's layers read [N, T, F] and return [N, T, H]. Exporters of batch-first models transpose X
# in and Y out: those transposes are lazy (`Lazy`) and cancel, so the .dln reads `h = lstm(x, 32)`.
# Gate order: ONNX's LSTM stacks i, o, f, c; the prelude's lstm i, f, g (= c), o.
_LSTM_GATES = [0, 2, 3, 1]


def _recurrent(kind: str):
    def rule(imp, i, node, ins, a):
        gates = 4 if kind == "lstm" else 1
        acts = [x.decode() if isinstance(x, bytes) else x for x in a.get("activations", [])]
        want = ["Sigmoid", "Tanh", "Tanh"] if kind == "lstm" else ["Tanh"]
        direction = a.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        for bad, why in ((direction != "forward", f"direction {direction} (the prelude's layers run forward)"),
                         (acts and acts != want, f"activations {acts}"), ("clip" in a, "a cell clip"),
                         (a.get("input_forget", 0), "input_forget"), (a.get("layout", 0), "layout 1"),
                         (len(node.input) > 7 and node.input[7], "peepholes"),
                         (kind == "lstm" and len(node.output) > 2 and imp.consumers.get(node.output[2]),
                          "its cell state output Y_c is used")):
            if bad:
                raise Unsupported(why)
        x = ins[0]
        if isinstance(x, Lazy) and x.kind == "transpose" and x.perm == [1, 0, 2]:
            xs = x.src  # the batch-first input the exporter transposed
        else:
            t = _tensor(imp, x)
            xs = imp.call(node, "transpose", [t], {"perm": [1, 0, 2]}, name=imp.fresh(f"{node.output[0] or 'seq'}_in"))
        n_, steps, feats = xs.type.shape
        if xs.type.rank != 3 or not isinstance(steps, int):
            raise Unsupported(f"a sequence {xs.type} (dlc unrolls a known number of steps)")
        hidden = int(a["hidden_size"])
        w, r = imp.const(node.input[1]), imp.const(node.input[2])
        b = imp.const(node.input[3]) if len(node.input) > 3 and node.input[3] else np.zeros((1, 2 * gates * hidden))
        if w is None or r is None or b is None:
            raise Unsupported("its weights are computed at run time")
        if len(node.input) > 4 and node.input[4]:
            lens = imp.const(node.input[4])
            if lens is None or np.any(lens != steps):
                raise Unsupported("sequence_lens other than the whole sequence")
        for k in (5, 6):
            if len(node.input) > k and node.input[k]:
                s0 = ins[k]
                if not ((isinstance(s0, Lazy) and s0.kind == "fill" and s0.value == 0)
                        or (isinstance(s0, np.ndarray) and s0.dtype != object and not s0.any())):
                    raise Unsupported("an initial state other than zeros")
        order = _LSTM_GATES if kind == "lstm" else [0]
        blocks = lambda m: m.reshape(gates, hidden, -1)[order].reshape(gates * hidden, -1)
        bias = (b[0, :gates * hidden] + b[0, gates * hidden:]).reshape(gates, hidden)[order].reshape(-1)
        name = imp.result_name(node) if node.output[0] in imp.out_names else imp.fresh(
            re.sub(r"[/_](LSTM|RNN)(_output_0)?$", "", node.output[0] or node.name) or kind)
        imp.store(f"{name}.wx", blocks(w[0]).T)
        imp.store(f"{name}.b", bias)
        imp.store(f"{name}.s.wh" if kind == "lstm" else f"{name}.wh", blocks(r[0]).T)
        imp.prelude[kind if kind == "lstm" else "elman"] += 1
        fn = "lstm" if kind == "lstm" else "elman"
        extra = ", forget_bias = 0.0" if kind == "lstm" else ""  # ONNX's biases hold the forget bias
        h = imp.bind(node, name, f"{fn}({xs.name}, {hidden}{extra})", xs.type.with_shape([n_, steps, hidden]))

        def seq(out):
            def make(name_):
                tt = imp.call(node, "transpose", [(h.name, h.type)], {"perm": [1, 0, 2]}, name=imp.fresh(f"{h.name}_tn"))
                return imp.call(node, "reshape", [(tt.name, tt.type)], {"shape": [steps, 1, n_, hidden]},
                                name=name_ or imp.result_name(node, out))
            return Lazy("seq_first", h.type.with_shape([steps, 1, n_, hidden]), make, src=h)

        def last(out):
            make = lambda name_: imp.bind(node, name_ or imp.result_name(node, out),
                                          f"reshape(last({h.name}), [1, {n_}, {hidden}])",
                                          h.type.with_shape([1, n_, hidden]))
            return Lazy("last_state", h.type.with_shape([1, n_, hidden]), make, src=h)
        return [seq(0), last(1), None]
    return rule


def _gather(imp, i, node, ins, a):
    """Gather of a weight table's rows at ids the model is given: `embedding`; of a tensor at
    constant indices along an axis: the prelude's `last` for the last step of a sequence, else
    slices (joined where several)."""
    v, idx = ins
    if isinstance(idx, (Tensor, Lazy)) and isinstance(v, np.ndarray) and v.ndim == 2 and v.dtype.kind == "f" \
            and int(a.get("axis", 0)) % 2 == 0 and _tensor(imp, idx)[1].dtype == "i32":
        # rows of a weight table picked by ids the model is given: an embedding (nn.Embedding's export)
        table = imp.param_of(node.input[0], v.astype(np.float32))
        return [imp.call(node, "embedding", [(table.name, table.type), _tensor(imp, idx)], name=imp.result_name(node))]
    if not isinstance(idx, np.ndarray) or idx.dtype == object:
        raise Unsupported("its indices are computed at run time")
    x = _tensor(imp, v)
    axis = int(a.get("axis", 0)) % x[1].rank
    size = x[1].shape[axis]
    if isinstance(size, str):
        raise Unsupported("a gather along the batch axis")
    picks = [int(k) % size for k in idx.reshape(-1)]
    if idx.ndim == 0 and x[1].rank == 3 and axis == 1 and picks == [size - 1]:
        imp.prelude["last"] += 1
        return [imp.bind(node, imp.result_name(node), f"last({x[0]})", x[1].with_shape([x[1].shape[0], x[1].shape[2]]))]
    if idx.ndim > 1:
        raise Unsupported("indices of rank > 1")
    parts = [f"slice({x[0]}, axis = {axis}, start = {k}, stop = {k + 1})" for k in picks]
    shape = list(x[1].shape)
    shape[axis] = len(picks)
    expr = parts[0] if len(parts) == 1 else f"concat({', '.join(parts)}, axis = {axis})"
    if idx.ndim == 0:
        del shape[axis]
        expr = f"reshape({expr}, {fmt_attr(shape)})"
    return [imp.bind(node, imp.result_name(node), expr, x[1].with_shape(shape))]


def _slice(imp, i, node, ins, a):
    """Slice of a tensor with constant bounds and step 1: a `slice` per axis cut."""
    x = _tensor(imp, ins[0])
    if "starts" in a:
        starts, ends, axes, steps = list(a["starts"]), list(a["ends"]), a.get("axes"), None
    else:
        if any(not isinstance(v, np.ndarray) for v in ins[1:] if v is not None):
            raise Unsupported("its bounds are computed at run time")
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
        steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else None
    axes = [ax % x[1].rank for ax in (axes or range(len(starts)))]
    if steps and any(st != 1 for st in steps):
        raise Unsupported("a slice with a step other than 1")
    expr, t = x[0], x[1]
    for lo, hi, ax in zip(starts, ends, axes):
        size = t.shape[ax]
        if isinstance(size, str):
            raise Unsupported("a slice along the batch axis")
        lo, hi = (max(0, min(size, v + size if v < 0 else v)) for v in (lo, hi))
        if (lo, hi) == (0, size):
            continue
        t = imp.infer("slice", [t], {"axis": ax, "start": lo, "stop": hi})
        expr = f"slice({expr}, axis = {ax}, start = {lo}, stop = {hi})"
    if expr == x[0]:
        return _identity(imp, i, node, ins[:1], a)
    return [imp.bind(node, imp.result_name(node), expr, t)]


RULES = {
    "Add": _binary("add", "+"), "Sub": _binary("sub", "-"), "Mul": _mul, "Div": _binary("div", "/"),
    "Pow": _binary("pow", None), "Max": _variadic("max", None), "Min": _variadic("min", None),
    "Sum": _variadic("add", "+"),
    "Greater": _binary("gt", ">"), "Less": _binary("lt", "<"), "GreaterOrEqual": _binary("ge", ">="),
    "LessOrEqual": _binary("le", "<="), "Equal": _binary("eq", "=="), "Not": _not, "Where": _where,
    "Relu": _unary("relu"), "Sigmoid": _unary("sigmoid"), "Tanh": _unary("tanh"), "Erf": _unary("erf"),
    "Exp": _unary("exp"), "Log": _unary("log"), "Sqrt": _unary("sqrt"), "Abs": _unary("abs"), "Neg": _unary("neg"),
    "Reciprocal": _reciprocal,
    "LeakyRelu": _unary("leaky_relu", slope=lambda a: float(a.get("alpha", 0.01))),
    "Elu": _unary("elu", alpha=lambda a: float(a.get("alpha", 1.0))),
    "Gelu": _gelu, "Clip": _clip,
    "Softmax": _softmax("softmax"), "LogSoftmax": _softmax("log_softmax"),
    "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul,
    "MaxPool": _pool("maxpool2d"), "AveragePool": _pool("avgpool2d"),
    "GlobalAveragePool": _global_pool("mean"), "GlobalMaxPool": _global_pool("max"),
    "BatchNormalization": _batch_norm, "LayerNormalization": _layer_norm, "LRN": _lrn,
    "Concat": _concat, "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose,
    "Dropout": _identity, "Identity": _identity, "Cast": _cast, "Pad": _pad,
    "Unsqueeze": _squeeze_unsqueeze, "Squeeze": _squeeze_unsqueeze,
    "ConstantOfShape": _constant_of_shape, "Shape": _shape,
    "ReduceMean": _reduce("mean"), "ReduceSum": _reduce("sum"),
    "LSTM": _recurrent("lstm"), "RNN": _recurrent("rnn"), "Gather": _gather, "Slice": _slice,
}


def supported_ops() -> list[str]:
    """The ONNX op types `dlc import` translates (any op is folded where its inputs are constants)."""
    return sorted(RULES)
