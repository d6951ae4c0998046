"""ONNX export (`dlc export`): a model's inference graph as an ONNX model.

The graph exported is the forward stage (the IR as the front end lowered it, before autodiff)
restricted to what the model's outputs depend on: no loss (unless an output reads it), no
gradients, no optimizer. Inputs keep their names and types, a symbolic dimension (`N`) becomes
a `dim_param`; params become initializers named after them (`w1`, `h1.w`); outputs are named as
in the model's `output` line. Every IR op that can appear there maps onto ONNX operators of the
default domain at opset 17 (`OPSET`), as each op's registry entry says (`OpDef.onnx`, in
ir/ops.py and ir/ops_nn.py); an op without a mapping is an error naming it and the `.dln` line it
came from. Model buffers (model state, such as running statistics) are initializers too; the
graph is the evaluation graph (dropout is the identity).

Opset 17 is the last before ReduceMean, ReduceProd, ReduceL1 and ReduceSumSquare took their axes
as an input (opset 18); ReduceSum takes them as an input since opset 13, as here. IR version 8
is what opset 17 was released with, so older runtimes read the file too.
"""
from __future__ import annotations

import numpy as np

from ..ir.errors import DlcError
from ..ir.graph import Graph
from ..ir.ops import INPUT, MODEL, OPS, PARAM

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
    """Collects ONNX nodes and initializers; every value gets a unique name. An op's entry maps
    the op with it (`OpDef.onnx`, see ir/ops.py): `node`, `ints`, `init`, `float_tensor`, `dim`,
    `type`, `operands`, and the element types FLOAT and INT64."""

    def __init__(self, onnx, g: Graph):
        self.onnx, self.h, self.g = onnx, onnx.helper, g
        self.FLOAT, self.INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
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

    def float_tensor(self, name: str, values):
        """A float tensor attribute value (ConstantOfShape's `value`)."""
        return self.h.make_tensor(name, self.FLOAT, [len(values)], list(values))

    def node(self, op_type: str, inputs, hint: str, out: str | None = None, **attrs) -> str:
        out = out or self.fresh(hint)
        self.nodes.append(self.h.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def type(self, n: str):
        return self.g.type(n)

    def operands(self, n: str) -> list[str]:
        return self.g.operands(n)

    def dim(self, sym: str, prefer: str) -> str:
        """A 1-element int64 tensor holding the bound value of the symbolic dim `sym`: read off the
        shape of `prefer` (an IR node) or of the first input that has the symbol."""
        g = self.g
        for src in [prefer] + g.inputs:
            shape = g.type(src).shape
            if sym in shape and src in self.value:
                whole = self.node("Shape", [self.value[src]], f"{src}.shape")
                return self.node("Gather", [whole, self.ints([shape.index(sym)], f"{src}.dim")], f"{sym}.value", axis=0)
        raise DlcError(f"cannot export to ONNX: no input binds the dimension {sym}")


def _exporter(op_name: str):
    """The entry's mapping as a function (emitter, node, input names, attrs, output) -> output."""
    how = OPS[op_name].onnx
    if isinstance(how, str):
        return lambda e, n, ins, a, out: e.node(how, ins, n, out)
    return how


def exported_ops() -> list[str]:
    """The ops that have an ONNX mapping, sorted."""
    return sorted(k for k, d in OPS.items() if d.onnx is not None)


def _elem(onnx, dtype: str):
    return {"f32": onnx.TensorProto.FLOAT, "i32": onnx.TensorProto.INT32}[dtype]


def export_onnx(g: Graph, values: dict, version: str):
    """(ModelProto, one-line summary) of the evaluation graph of `g` (a forward-stage graph), with
    `values` (name -> array: the params and the model buffers) as initializers and `version` as
    the producer's. Raises DlcError for a model without outputs and for ops without an ONNX mapping."""
    onnx = require_onnx()
    h = onnx.helper
    m = g.meta
    if not m.outputs:
        raise DlcError(f"model {m.name} has no outputs to export (add `output NAME`)")
    roots = list(m.outputs.values())
    need = g.upstream(roots)
    order = [n for n in g.order() if n in need]
    kind = {n: OPS[g.op(n)].holds or OPS[g.op(n)].family for n in order}  # a source's kind, else the family
    missing = [n for n in order if OPS[g.op(n)].onnx is None and kind[n] not in (INPUT, PARAM, MODEL, "const")]
    if missing:
        n = missing[0]
        loc = g.loc(n)
        others = sorted({g.op(k) for k in missing} - {g.op(n)})
        raise DlcError(f"cannot export to ONNX: op '{g.op(n)}' (%{n}) has no ONNX mapping"
                       + (f" (nor {', '.join(others)})" if others else "")
                       + f"; exported ops: {', '.join(exported_ops())}", loc,
                       g.sources.get(loc.file) if loc else None)
    e = _Emitter(onnx, g)
    # inputs keep their names; then the outputs' names are taken, so no other value gets one
    e.used.update(n for n in order if kind[n] == INPUT)
    e.used.update(m.outputs)
    reuse = {v for k, v in m.outputs.items() if k == v and OPS[g.op(v)].holds is None
             and kind[v] != "const"}  # named as its output
    inputs, count, stored = [], 0, {PARAM: 0, MODEL: 0}
    for n in order:
        t = g.type(n)
        if kind[n] == INPUT:
            e.value[n] = n
            inputs.append(h.make_tensor_value_info(e.value[n], _elem(onnx, t.dtype), list(t.shape)))
        elif kind[n] in (PARAM, MODEL):
            a = np.asarray(values[n], dtype=np.float32)
            count += a.size if kind[n] == PARAM else 0
            stored[kind[n]] += 1
            e.value[n] = e.init(a, n)
        elif kind[n] == "const":
            e.value[n] = e.init(np.asarray(g.attrs(n)["value"], dtype=np.float32), n)
        else:
            e.value[n] = _exporter(g.op(n))(e, n, [e.value[a] for a in g.operands(n)], g.attrs(n),
                                            n if n in reuse else e.fresh(n))
    outputs = []
    for k, v in m.outputs.items():
        if e.value[v] != k:
            e.node("Identity", [e.value[v]], k, out=k)
        t = g.type(v)
        outputs.append(h.make_tensor_value_info(k, _elem(onnx, t.dtype), list(t.shape)))
    graph = h.make_graph(e.nodes, m.name, inputs, outputs, initializer=e.inits)
    model = h.make_model(graph, producer_name="dlc", producer_version=version,
                         opset_imports=[h.make_opsetid("", OPSET)],
                         doc_string=f"model {m.name}: the inference graph, exported by dlc")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)  # a failure here is a bug in a mapping
    buffers = f" and {stored[MODEL]} model-state arrays" if stored[MODEL] else ""
    summary = (f"inputs {', '.join(f'{n}: {g.type(n)}' for n in order if kind[n] == INPUT)}; "
               f"outputs {', '.join(f'{k}: {g.type(v)}' for k, v in m.outputs.items())}; "
               f"{count:,} weights in {stored[PARAM]} initializers{buffers}; {len(e.nodes)} ONNX nodes, opset {OPSET}")
    return model, summary
