"""ONNX export (`dlc export`): a model's inference graph as an ONNX model.

The graph exported is the forward stage (the IR as the front end lowered it, before autodiff)
restricted to what the model's outputs depend on: no loss (unless an output reads it), no
gradients, no optimizer. Inputs keep their names and types, a symbolic dimension (`N`) becomes
a `dim_param`; params become initializers named after them (`w1`, `h1.w`); outputs are named as
in the model's `output` line. Every IR op that can appear there maps onto ONNX operators of the
default domain at opset 17 (`OPSET`), one table below (`EXPORT`); an op without a mapping is an
error naming it and the `.dln` line it came from.

Opset 17 is the last before ReduceMean, ReduceProd, ReduceL1 and ReduceSumSquare took their axes
as an input (opset 18); ReduceSum takes them as an input since opset 13, as here. IR version 8
is what opset 17 was released with, so older runtimes read the file too.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..ir.errors import DlcError
from ..ir.graph import Graph
from ..ir.types import normalize_axes

OPSET = 17
IR_VERSION = 8


def require_onnx():
    """The onnx module, or a DlcError that says how to install it."""
    try:
        import onnx
    except ImportError as e:
        raise DlcError(f"dlc export needs the onnx package, which is not installed ({e}): pip install 'dlc[onnx]'")
    return onnx


class _Emitter:
    """Collects ONNX nodes and initializers; every value gets a unique name."""

    def __init__(self, onnx, g: Graph):
        self.onnx, self.h, self.g = onnx, onnx.helper, g
        self.nodes, self.inits, self.used = [], [], set()
        self.value: dict[str, str] = {}  # IR node -> ONNX value name

    def fresh(self, hint: str) -> str:
        name, i = hint, 1
        while name in self.used:
            name, i = f"{hint}_{i}", i + 1
        self.used.add(name)
        return name

    def init(self, array, hint: str) -> str:
        name = self.fresh(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def ints(self, values, hint: str) -> str:
        return self.init(np.asarray(values, dtype=np.int64), hint)

    def node(self, op_type: str, inputs, hint: str, out: str | None = None, **attrs) -> str:
        out = out or self.fresh(hint)
        self.nodes.append(self.h.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out


# An exporter gets the emitter, the IR node, its operands' ONNX names, the node's attributes and
# the name its result must get; it emits nodes whose last output has that name.
Exporter = Callable[[_Emitter, str, list, dict, str], str]


def _plain(op_type: str) -> Exporter:
    return lambda e, n, ins, a, out: e.node(op_type, ins, n, out)


def _matmul(e, n, ins, a, out):
    if not a["ta"] and not a["tb"]:
        return e.node("MatMul", ins, n, out)  # MatMul broadcasts a matrix over a batch, as dlc does
    if e.g.type(n).rank == 2:
        return e.node("Gemm", ins, n, out, transA=int(a["ta"]), transB=int(a["tb"]))
    ins = list(ins)  # a batched product: transpose the last two axes of a flagged operand first
    for i, flag in enumerate(("ta", "tb")):
        if a[flag]:
            rank = e.g.type(e.g.operands(n)[i]).rank
            ins[i] = e.node("Transpose", [ins[i]], f"{n}.{flag}", perm=list(range(rank - 2)) + [rank - 1, rank - 2])
    return e.node("MatMul", ins, n, out)


def _zeros(e, n, ins, a, out):
    parts = [e.ints([d], f"{n}.dim") if isinstance(d, int) else _dim(e, d, n) for d in a["shape"]]
    shape = e.node("Concat", parts, f"{n}.shape", axis=0) if len(parts) > 1 else parts[0]
    return e.node("ConstantOfShape", [shape], n, out,
                  value=e.h.make_tensor(f"{n}.zero", e.onnx.TensorProto.FLOAT, [1], [0.0]))


def _transpose(e, n, ins, a, out):
    rank = e.g.type(n).rank
    perm = list(reversed(range(rank))) if a["perm"] is None else [p % rank for p in a["perm"]]
    return e.node("Transpose", ins, n, out, perm=perm)


def _dim(e, sym: str, prefer: str) -> str:
    """A 1-element int64 tensor holding the bound value of the symbolic dim `sym`: read off the
    shape of `prefer` (an IR node) or of the first input that has the symbol."""
    g = e.g
    for src in [prefer] + g.inputs:
        shape = g.type(src).shape
        if sym in shape:
            whole = e.node("Shape", [e.value[src]], f"{src}.shape") if src in e.value else None
            if whole is None:
                continue
            return e.node("Gather", [whole, e.ints([shape.index(sym)], f"{src}.dim")], f"{sym}.value", axis=0)
    raise DlcError(f"cannot export to ONNX: no input binds the dimension {sym}")


def _reshape(e, n, ins, a, out):
    src = e.g.operands(n)[0]
    have = e.g.type(src).shape
    spec = []
    for i, d in enumerate(a["shape"]):
        if isinstance(d, int):
            spec.append(d)
        elif i < len(have) and have[i] == d:
            spec.append(0)  # Reshape's 0: this dimension of the input, as it is (the batch N)
        else:
            spec.append(d)
    unknown = [d for d in spec if isinstance(d, str)]
    if len(unknown) <= 1:  # at most one dimension left to infer: -1
        shape = e.ints([-1 if isinstance(d, str) else d for d in spec], f"{n}.shape")
    else:
        parts = [e.ints([d], f"{n}.dim") if isinstance(d, int) else _dim(e, d, src) for d in spec]
        shape = e.node("Concat", parts, f"{n}.shape", axis=0)
    return e.node("Reshape", [ins[0], shape], n, out)


def _broadcast_like(e, n, ins, a, out):
    return e.node("Expand", [ins[0], e.node("Shape", [ins[1]], f"{n}.shape")], n, out)


def _reduce(op_type: str, axes_as_input: bool) -> Exporter:
    def emit(e, n, ins, a, out):
        keep = int(bool(a["keepdims"]))
        if a["axis"] is None:  # every axis: no axes at all
            return e.node(op_type, ins, n, out, keepdims=keep)
        axes = list(normalize_axes(a["axis"], e.g.type(e.g.operands(n)[0]).rank))
        if axes_as_input:
            return e.node(op_type, [ins[0], e.ints(axes, f"{n}.axes")], n, out, keepdims=keep)
        return e.node(op_type, ins, n, out, keepdims=keep, axes=axes)
    return emit


def _size(e, n, ins, a, out):
    src = e.g.operands(n)[0]
    t = e.g.type(src)
    axes = normalize_axes(a["axis"], t.rank)
    dims = [t.shape[i] for i in axes]
    if all(isinstance(d, int) for d in dims):
        return e.node("Identity", [e.init(np.asarray(np.prod(dims), dtype=np.float32), f"{n}.value")], n, out)
    picked = e.node("Gather", [e.node("Shape", [ins[0]], f"{n}.shape"), e.ints(list(axes), f"{n}.axes")],
                    f"{n}.dims", axis=0)
    count = e.node("ReduceProd", [picked], f"{n}.count", keepdims=0)
    return e.node("Cast", [count], n, out, to=e.onnx.TensorProto.FLOAT)


def _axis(op_type: str) -> Exporter:
    return lambda e, n, ins, a, out: e.node(op_type, ins, n, out, axis=a["axis"] % e.g.type(n).rank)


def _xent(e, n, ins, a, out):
    labels = e.node("Cast", [ins[1]], f"{n}.labels", to=e.onnx.TensorProto.INT64)
    return e.node("SoftmaxCrossEntropyLoss", [ins[0], labels], n, out, reduction="mean")


def _mse(e, n, ins, a, out):
    d = e.node("Sub", ins, f"{n}.diff")
    return e.node("ReduceMean", [e.node("Mul", [d, d], f"{n}.square")], n, out, keepdims=0)


def _pair(v):
    return list(v) if isinstance(v, (list, tuple)) else [v, v]


def _conv(e, n, ins, a, out):
    w = e.g.type(e.g.operands(n)[1]).shape
    p = _pair(a["padding"])
    return e.node("Conv", ins, n, out, kernel_shape=[w[2], w[3]], strides=_pair(a["stride"]), pads=p + p,
                  dilations=_pair(a["dilation"]))


def _pool(op_type: str, **extra) -> Exporter:
    def emit(e, n, ins, a, out):
        k = _pair(a["kernel"])
        s = _pair(a["stride"] if a["stride"] is not None else a["kernel"])
        p = _pair(a["padding"])
        return e.node(op_type, ins, n, out, kernel_shape=k, strides=s, pads=p + p, **extra)
    return emit


def _concat(e, n, ins, a, out):
    return e.node("Concat", ins, n, out, axis=a["axis"] % e.g.type(n).rank)


def _slice(e, n, ins, a, out):
    ax = a["axis"] % e.g.type(n).rank
    return e.node("Slice", [ins[0], e.ints([a["start"]], f"{n}.starts"), e.ints([a["stop"]], f"{n}.ends"),
                            e.ints([ax], f"{n}.axes")], n, out)


def _pad(e, n, ins, a, out):
    t = e.g.type(e.g.operands(n)[0])
    ax = a["axis"] % t.rank
    lo, hi = [0] * t.rank, [0] * t.rank
    lo[ax], hi[ax] = a["start"], a["total"] - a["start"] - t.shape[ax]
    return e.node("Pad", [ins[0], e.ints(lo + hi, f"{n}.pads")], n, out, mode="constant")


EXPORT: dict[str, Exporter] = {
    **{op: _plain(t) for op, t in {
        "add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "neg": "Neg", "exp": "Exp", "log": "Log",
        "sqrt": "Sqrt", "abs": "Abs", "sign": "Sign", "relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh",
        "dropout": "Identity",  # inference: dropout is the identity
    }.items()},
    "matmul": _matmul,                      # MatMul, or Gemm with transA/transB
    "transpose": _transpose,
    "reshape": _reshape,                    # symbolic N: 0 (copy the input's) or -1
    "broadcast_like": _broadcast_like,      # Expand to the Shape of the reference
    "zeros": _zeros,                        # ConstantOfShape, symbolic dims read off an input
    "sum": _reduce("ReduceSum", True),      # axes as an input since opset 13
    "mean": _reduce("ReduceMean", False),   # axes as an attribute until opset 18
    "size": _size,
    "softmax": _axis("Softmax"),
    "log_softmax": _axis("LogSoftmax"),
    "softmax_xent": _xent,                  # SoftmaxCrossEntropyLoss, reduction mean
    "mse": _mse,
    "l1": lambda e, n, ins, a, out: e.node("ReduceL1", ins, n, out, keepdims=0),
    "l2": lambda e, n, ins, a, out: e.node("ReduceSumSquare", ins, n, out, keepdims=0),
    "conv2d": _conv,
    "maxpool2d": _pool("MaxPool"),          # padding never wins a max, as dlc's -inf padding
    "avgpool2d": _pool("AveragePool", count_include_pad=1),  # dlc divides by the whole window
    "concat": _concat,
    "slice": _slice,
    "pad": _pad,
}
SOURCES = ("input", "param", "const")


def _elem(onnx, dtype: str):
    return {"f32": onnx.TensorProto.FLOAT, "i32": onnx.TensorProto.INT32}[dtype]


def export_onnx(g: Graph, params: dict):
    """(ModelProto, one-line summary) of the inference graph of `g` (a forward-stage graph), with
    `params` (name -> array) as initializers. Raises DlcError for a model without outputs and for
    ops without an ONNX mapping."""
    onnx = require_onnx()
    h = onnx.helper
    m = g.meta
    if not m.outputs:
        raise DlcError(f"model {m.name} has no outputs to export (add `output NAME`)")
    roots = list(m.outputs.values())
    need = g.upstream(roots)
    order = [n for n in g.order() if n in need]
    missing = [n for n in order if g.op(n) not in EXPORT and g.op(n) not in SOURCES]
    if missing:
        n = missing[0]
        loc = g.loc(n)
        others = sorted({g.op(k) for k in missing} - {g.op(n)})
        raise DlcError(f"cannot export to ONNX: op '{g.op(n)}' (%{n}) has no ONNX mapping"
                       + (f" (nor {', '.join(others)})" if others else "")
                       + f"; exported ops: {', '.join(sorted(EXPORT))}", loc,
                       g.sources.get(loc.file) if loc else None)
    e = _Emitter(onnx, g)
    # inputs keep their names; then the outputs' names are taken, so no other value gets one
    e.used.update(n for n in order if g.op(n) == "input")
    e.used.update(m.outputs)
    reuse = {v for k, v in m.outputs.items() if k == v and g.op(v) not in SOURCES}  # named as its output
    inputs, count = [], 0
    for n in order:
        op, t = g.op(n), g.type(n)
        if op == "input":
            e.value[n] = n
            inputs.append(h.make_tensor_value_info(e.value[n], _elem(onnx, t.dtype), list(t.shape)))
        elif op == "param":
            a = np.asarray(params[n], dtype=np.float32)
            count += a.size
            e.value[n] = e.init(a, n)
        elif op == "const":
            e.value[n] = e.init(np.asarray(g.attrs(n)["value"], dtype=np.float32), n)
        else:
            e.value[n] = EXPORT[op](e, n, [e.value[a] for a in g.operands(n)], g.attrs(n),
                                    n if n in reuse else e.fresh(n))
    outputs = []
    for k, v in m.outputs.items():
        if e.value[v] != k:
            e.node("Identity", [e.value[v]], k, out=k)
        t = g.type(v)
        outputs.append(h.make_tensor_value_info(k, _elem(onnx, t.dtype), list(t.shape)))
    graph = h.make_graph(e.nodes, m.name, inputs, outputs, initializer=e.inits)
    model = h.make_model(graph, producer_name="dlc", producer_version="0.1.0",
                         opset_imports=[h.make_opsetid("", OPSET)],
                         doc_string=f"model {m.name}: the inference graph, exported by dlc")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)  # a failure here is a bug in the mapping above
    n_params = sum(1 for n in order if g.op(n) == "param")
    summary = (f"inputs {', '.join(f'{n}: {g.type(n)}' for n in order if g.op(n) == 'input')}; "
               f"outputs {', '.join(f'{k}: {g.type(v)}' for k, v in m.outputs.items())}; "
               f"{count:,} weights in {n_params} initializers; {len(e.nodes)} ONNX nodes, opset {OPSET}")
    return model, summary
