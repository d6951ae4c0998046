"""The op registry: what an op entry declares, and the table every stage looks ops up in.

An entry (`OpDef`, made by `op(...)` in ops.py and ops_nn.py) holds, side by side: operands and
attributes, the shape/dtype rule, the NumPy reference (what the op *means*; the interpreter runs
it), the derivative rule written as IR ops (the vector-Jacobian product), the kernel family with
what that family needs (for elementwise ops the scalar C expression that the CUDA templates and the
emulator share), the ONNX mapping, and the op's **effects** and, for a source, the **kind of value
it holds**. Autodiff, the passes, the interpreter, codegen and the runtime look these up; none of
them branches on an op's name.

A derivative rule `vjp(b, n, g)` gets a builder `b` (`b.mul(x, y)`, `b.const(2.0)`, ...), a
view `n` of the forward node (`n.args`, `n.out`, `n.attrs`, `n.types`, `n.type`) and the
adjoint `g` of the node's result. It returns, for each operand, a thunk that builds that
operand's gradient contribution, or None where the operand has no gradient. The autodiff pass
calls only the thunks it needs, and undoes broadcasting itself.

This module registers no op; it imports nothing of dlc but errors and types.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import DlcError
from .precision import MIN_PRECISION, PRECISIONS
from .types import MAX_ELEMENTS, TensorType, broadcast_shapes

REQUIRED = object()  # marks an attribute without a default
VARIADIC = -1        # an arity: one or more operands

# -- effects: what makes an op more than a function of its operands and attributes ----------------
# An entry lists the ones it has; every stage reads the declaration (`has_effect`), never the name.
TRAINING = "training"          # its value differs between training and evaluation: the reference
                               # gets `training=` (True in a training step), the kernels read the mode
RANDOM = "random"              # draws random numbers (in training): the reference gets `rng=(seed, step)`
UPDATES_STATE = "updates_state"  # writes a param, optimizer state or model buffer at the end of the
                               # step (assign): a root of every training step, never removed or merged
COMMUNICATES = "communicates"  # exchanges values with other processes (an all-reduce): never removed,
                               # merged or folded; the reference gets `comm=` (the run's communicator,
                               # or None in a process of its own: ir/ops_comm.py)
EFFECTS = (TRAINING, RANDOM, UPDATES_STATE, COMMUNICATES)

# -- what a source op holds (`OpDef.holds`) ----------------------------------------------------------
INPUT = "input"          # data fed to every run
PARAM = "param"          # learned by the optimizer; travels with the weights (--save, --load, ONNX)
OPTIMIZER = "optimizer"  # optimizer state (momenta, Adam's moments, schedule counters); travels
                         # with checkpoints and `--save`, never into ONNX
MODEL = "model"          # model state that is not learned (running statistics); travels with the
                         # weights, into checkpoints and ONNX; never differentiated
HOLDS = (INPUT, PARAM, OPTIMIZER, MODEL)
STORED = (PARAM, OPTIMIZER, MODEL)  # what a backend keeps from run to run (an assign may update it)


@dataclass
class OpDef:
    name: str
    arity: int                     # number of operands; VARIADIC for one or more
    infer: Callable                # (types, attrs) -> TensorType
    ref: Callable | None           # NumPy reference: (*arrays, **attrs) -> array
    vjp: Callable | None = None    # derivative rule, see the module doc
    family: str = "elementwise"    # kernel family for codegen (see FAMILIES)
    c: str | Callable | None = None  # scalar C expression (elementwise family) over the operands a, b
                                   # and the op's attributes by name (codegen writes their values in);
                                   # or a function of the attributes giving one, where an attribute
                                   # chooses the formula (gelu's approximate): see `c_of`
    kernel: dict = field(default_factory=dict)  # what the family's emitter needs (see FAMILIES)
    flops: Callable | None = None  # (node view, size) -> FLOPs; default: the family's rule
    attrs: dict = field(default_factory=dict)  # attribute -> default (REQUIRED if none)
    dsl: bool = True               # callable by name from .dln
    needs_dims: bool = False       # ref also gets `dims=` (bound symbolic dimensions)
    effects: frozenset = frozenset()  # of EFFECTS
    holds: str | None = None       # a source op: which of HOLDS its value is
    labels: int | None = None      # the operand that holds indices into an axis of another operand:
                                   # class labels into the last axis of operand 0 (softmax_xent),
                                   # token ids into the rows of a table (embedding); every backend and
                                   # the data loader check them (`label_operands`, `range_error`)
    labels_operand: int = 0        # the operand whose axis `labels_axis` bounds the indices
    labels_axis: int = -1          # -1: classes along the last axis; 0: rows of a table
    onnx: str | Callable | None = None  # ONNX: an operator type (same operands, no attributes) or
                                   # (emitter, node, input names, attrs, output name) -> output name
    train_check: Callable | None = None  # (operand shapes, dims bound to numbers, attrs) -> what is wrong
                                   # with running it in training on such a batch (a str), or None:
                                   # checked before every training run (batch norm: one value per channel)
    eval_operand: int | None = None  # an op with the TRAINING effect: the operand whose value it takes in
                                   # an evaluation run (dropout: 0, the identity; if_training: 1, the
                                   # running statistics). The `evaluation` pass specialises the
                                   # evaluation form with it (a composite op is lowered before)
    affine: tuple | None = None    # per operand slot, how the op acts on that operand when the other is
                                   # a constant per channel: "add", "sub", "mul" or "div" (y = a s + t
                                   # composes with the op of that name), None where it is not affine
                                   # in that slot: what the -O2 `fold-bn` pass folds into a product
    channel_weight: Callable | None = None  # a product linear in one operand per output channel:
                                   # (node view) -> (output channel axis, that operand's slot, its
                                   # channel axis), or None for a node it does not apply to; scaling
                                   # the operand's slices scales the output's channels (`fold-bn`)
    lower: Callable | None = None  # a composite op (family "composite"): (graph, node) -> the node
                                   # that computes it from other ops (the `lower` pass, first in
                                   # every pipeline: autodiff, fusion and codegen never see the op)
    doc: str = ""

    def complete_attrs(self, attrs: dict, loc=None) -> dict:
        for k in attrs:
            if k not in self.attrs:
                known = ", ".join(self.attrs) or "none"
                raise DlcError(f"{self.name}() has no argument '{k}' (its arguments: {known})", loc)
        for k, v in self.attrs.items():
            if k not in attrs:
                if v is REQUIRED:
                    raise DlcError(f"{self.name}() needs the argument '{k}'", loc)
                attrs[k] = v
            elif k == MIN_PRECISION and attrs[k] not in PRECISIONS + (None,):
                raise DlcError(f"{self.name}(): {k} must be one of " + ", ".join(f'"{p}"' for p in PRECISIONS)
                               + f", found {attrs[k]!r}", loc)
            elif not _fits(attrs[k], v):
                kind = {bool: "true or false", int: "an integer or a list of integers",
                        float: "a number"}[type(v)]
                raise DlcError(f"{self.name}(): {k} must be {kind}, found {attrs[k]!r}", loc)
        return {k: attrs[k] for k in self.attrs}  # the declared order, so text is stable

    def c_of(self, attrs: dict) -> str:
        """The C expression of a node of this op with these attributes (before codegen writes the
        attribute values in)."""
        return self.c(attrs) if callable(self.c) else self.c

    def has(self, effect: str) -> bool:
        return effect in self.effects

    @property
    def pure(self) -> bool:
        """A function of its operands and attributes alone: it may be folded, merged or removed."""
        return not self.effects


OPS: dict[str, OpDef] = {}


def _fits(value, default) -> bool:
    """Whether an attribute value has the kind its default has (bool, int or list of ints, number)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        ints = value if isinstance(value, (list, tuple)) else [value]
        return all(isinstance(i, int) and not isinstance(i, bool) for i in ints)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True  # None or REQUIRED: the op's shape rule checks


# -- kernel families: what codegen needs from an op --------------------------------------------
# Codegen has one emitter per family, looked up in a table (codegen/generate.py, EMITTERS); it has
# no branch on an op's name. What an emitter needs from the op is declared in the op's entry:
# `c` for elementwise ops, the keys below in `kernel` for the others, and the FLOP count (the
# family's rule unless the entry gives `flops`). A FLOP rule gets the node view and `size(type)`,
# the element count with symbolic dims bound; a multiply-add counts 2.

def _no_flops(n, size):
    return 0


def _per_output(n, size):
    return size(n.type)


def _per_input(n, size):  # one pass over the floating-point operands
    return sum(size(t) for t in n.types if t.is_float)


@dataclass(frozen=True)
class Family:
    keys: tuple = ()               # what its entries declare in `kernel`
    flops: Callable = _no_flops    # the default FLOP rule
    pointwise: bool = False        # one output element from one element of each operand (a load or
                                   # an index map): a fusion group computes it inline, in registers
    epilogue: bool = False         # a product whose kernel ends in a store hook (store.cu.j2): a
                                   # fusion group may run on its accumulator before the store
    inlined: bool = False          # a scalar known at compile time: a fused kernel writes it as a literal
    moves: bool = False            # every output element is an operand element or zero (data movement):
                                   # it commutes with rounding (codegen/storage.py, 16-bit buffers)
    product: bool = False          # a matrix product (or an implicit-GEMM convolution): its first two
                                   # operands are rounded to the graph's precision (ir/precision.py);
                                   # every op of the family takes the attribute `min_precision`


FAMILIES = {
    "source": Family(),                               # input, param, state, buffer: buffers, no kernel
    "const": Family(inlined=True),                    # a scalar written by one thread
    "shape": Family(inlined=True),                    # a size known from the shape alone
    "elementwise": Family(flops=_per_output, pointwise=True),  # `c` over operands a, b per element
    "reduce": Family(("map", "finish"), _per_input),  # map: C over a (and b) per element; finish: C over
                                                      # the sum acc of the mapped values and the count extent
    "softmax": Family(("out",), _per_input),          # out: C over x, the row max m and s = sum(exp(x - m))
    "xent": Family(flops=_per_input),                 # mean over rows of a fused log-softmax + pick
    "xent_grad": Family(flops=_per_input),            # softmax minus one-hot, scaled, one block per row
    "matmul": Family(epilogue=True, product=True),    # the tiled product; FLOPs declared by the op
    "transpose": Family(moves=True),                  # gathers: copies with an index map
    "broadcast": Family(pointwise=True, moves=True),
    "slice": Family(pointwise=True, moves=True),      # gathers its operand: a load in a fused kernel
    "pad": Family(moves=True),                        # zeros around the operand along one axis
    "first": Family(),                                # channel_first: one value per channel, one thread each
    "concat": Family(moves=True),
    "alias": Family(moves=True),                      # reshape: the same buffer under another shape
    "conv": Family(epilogue=True, product=True), "conv_grad_x": Family(epilogue=True, product=True),
    "conv_grad_w": Family(epilogue=True, product=True),
    "pool": Family(("template",)), "pool_grad": Family(("template",)),  # template: the .cu.j2
    "dropout": Family(flops=_per_output),
    "gather": Family(),                               # embedding: rows of a table picked by ids, one thread
                                                      # per output element
    "scatter_add": Family(),                          # embedding_grad: the adjoint's rows summed into the
                                                      # table's, one thread per table element, ids in order
    "mode_select": Family(pointwise=True),            # if_training: one operand or the other, by the run's mode
                                                      # word (a fused kernel loads it once per element)
    "composite": Family(flops=_per_output),           # written in other ops by its `lower` rule before
                                                      # autodiff: no emitter, no derivative rule
    "assign": Family(),                               # the update of a stored value, committed after the step
    "host": Family(("device",)),                      # no kernel: the runner computes it on the host between
                                                      # kernels, by its reference (allreduce: ir/ops_comm.py);
                                                      # `device`: what the cuda backend does instead, on its stream
}
POINTWISE_FAMILIES = tuple(k for k, f in FAMILIES.items() if f.pointwise)
EPILOGUE_FAMILIES = tuple(k for k, f in FAMILIES.items() if f.epilogue)
INLINED_FAMILIES = tuple(k for k, f in FAMILIES.items() if f.inlined)
PRODUCT_FAMILIES = tuple(k for k, f in FAMILIES.items() if f.product)


def op(name, arity, infer, ref, vjp=None, **kw) -> OpDef:
    """Declare an op (see OpDef); a mistake in the declaration is an error at import time."""
    d = OpDef(name, arity, infer, ref, vjp, **kw)
    d.effects = frozenset(d.effects)
    if d.family not in FAMILIES:
        raise ValueError(f"op {name}: unknown kernel family {d.family!r}")
    if FAMILIES[d.family].product:  # a floor: the product runs no coarser (product_precision)
        d.attrs = {**d.attrs, MIN_PRECISION: None}
    missing = [k for k in FAMILIES[d.family].keys if k not in d.kernel]
    if missing or (d.family == "elementwise") != (d.c is not None):
        raise ValueError(f"op {name}: family {d.family} needs {missing or 'c'} declared")
    if d.c is not None and {"a", "b"} & set(d.attrs):
        raise ValueError(f"op {name}: an attribute may not be called a or b (the C expression's operands)")
    if not d.effects <= set(EFFECTS):
        raise ValueError(f"op {name}: unknown effects {sorted(d.effects - set(EFFECTS))} (known: {EFFECTS})")
    if (d.family == "source") != (d.holds is not None) or d.holds not in HOLDS + (None,):
        raise ValueError(f"op {name}: a source declares what it holds ({', '.join(HOLDS)}), no other op does")
    if (d.family == "composite") != (d.lower is not None):
        raise ValueError(f"op {name}: a composite op declares `lower` (how other ops compute it), no other op does")
    if d.has(TRAINING) and d.family != "composite" and d.eval_operand is None:
        raise ValueError(f"op {name}: an op with the TRAINING effect declares eval_operand (its value in evaluation)")
    if d.eval_operand is not None and not (d.has(TRAINING) and 0 <= d.eval_operand < max(d.arity, 1)):
        raise ValueError(f"op {name}: eval_operand is for an op with the TRAINING effect, and names one of its operands")
    if d.has(RANDOM) and "salt" not in d.attrs:
        raise ValueError(f"op {name}: a random op needs a 'salt' attribute (its own stream of numbers)")
    OPS[name] = d
    return d


# -- shape rules shared by the op modules (ops.py, ops_math.py) ------------------------------------
def f32_operands(name: str, types, shown: str | None = None) -> None:
    """Every operand f32, or an error naming the op (`shown`: how, when not `name()`)."""
    for t in types:
        if not t.is_float:
            raise DlcError(f"{shown or name + '()'} expects f32 operands, found {t}")


def unary_f32(name: str):
    """The shape rule of an elementwise op of one f32 operand: its type."""
    def rule(types, attrs):
        f32_operands(name, types)
        return types[0]
    return rule


def broadcast_f32(name: str, shown: str | None = None):
    """The shape rule of an elementwise op of two f32 operands: NumPy broadcasting."""
    def rule(types, attrs):
        f32_operands(name, types, shown)
        return TensorType("f32", broadcast_shapes(types[0].shape, types[1].shape,
                                                  f"{name} of {types[0]} and {types[1]}"))
    return rule


def infer_type(name: str, types: list[TensorType], attrs: dict) -> TensorType:
    d = OPS[name]
    if d.arity == VARIADIC and not types:
        raise DlcError(f"{name}() takes one or more operands, found none")
    if d.arity != VARIADIC and len(types) != d.arity:
        raise DlcError(f"{name}() takes {d.arity} operand{'s' * (d.arity != 1)}, found {len(types)}")
    t = d.infer(types, attrs)
    n = t.numel()
    if n is not None and n > MAX_ELEMENTS:
        raise DlcError(f"{name}() would make a tensor of {n} elements, {t} (more than {MAX_ELEMENTS})")
    return t


# -- questions about a graph, answered from the entries (Graph.holding and Graph.with_effect too) ----

def label_operands(graph) -> list[tuple[str, int | str, str]]:
    """(labels node, bound, node reading them) for every operand declared to hold indices
    (`OpDef.labels`): the bound is the size of axis `labels_axis` of operand `labels_operand` (the
    class count of softmax_xent's logits, the rows of embedding's table). Indices that reach the
    op through reshapes (family `alias`: the same values in another shape) are named by the node
    they were reshaped from, usually an input, so that the feeds can be checked."""
    out = []
    for k, d in OPS.items():
        if d.labels is None:
            continue
        for n in graph.nodes_of(k):
            args = graph.operands(n)
            labels = args[d.labels]
            while OPS[graph.op(labels)].family == "alias":
                labels = graph.operands(labels)[0]
            out.append((labels, graph.type(args[d.labels_operand]).shape[d.labels_axis], n))
    return out


def range_error(op_name: str, bad: int, bound: int) -> str:
    """What is wrong with an index `bad` outside 0..bound-1 read by op `op_name`, in its own words:
    a class label, or a row of a table."""
    if OPS[op_name].labels_axis == -1:
        return f"label {bad} is out of range for {bound} classes"
    return f"id {bad} is out of range for an embedding table of {bound} rows (ids are 0..{bound - 1})"


def out_of_range(labels, classes: int):
    """The first class index of `labels` outside 0..classes-1, or None when all are inside."""
    labels = np.asarray(labels)
    if not labels.size or (labels.min() >= 0 and labels.max() < classes):
        return None
    return int(labels[(labels < 0) | (labels >= classes)][0])


def flops(graph, n: str, dims: dict | None = None) -> int:
    """Floating-point operations of one node (a multiply-add counts 2), with symbolic dims bound
    by `dims` (default: every symbol is 1, i.e. per example): the op's declared rule, else its
    family's."""
    dims = dims or {}

    def size(t):
        return int(np.prod([dims.get(d, 1) if isinstance(d, str) else d for d in t.shape]))
    d = OPS[graph.op(n)]
    return (d.flops or FAMILIES[d.family].flops)(view(graph, n), size)


class Builder:
    """Adds op applications to a graph by calling ops as methods: `b.mul(x, y)`, `b.sum(g, axis=0)`.

    New nodes are named `prefix` (plus a counter) and carry `loc`, both set by the caller.
    """

    def __init__(self, graph, prefix: str = "t", loc=None):
        self.graph, self.prefix, self.loc = graph, prefix, loc

    def const(self, value: float) -> str:
        return self.graph.add("const", [], {"value": float(value)}, name=f"{self.prefix}.const", loc=self.loc)

    def __getattr__(self, opname: str):
        if opname not in OPS:
            raise AttributeError(opname)
        return lambda *args, **attrs: self.graph.add(opname, args, attrs, name=self.prefix, loc=self.loc)


@dataclass
class NodeView:
    """What a derivative rule sees of a forward node."""
    out: str
    args: list
    attrs: dict
    type: TensorType
    types: list


def view(graph, n: str) -> NodeView:
    args = graph.operands(n)
    return NodeView(n, args, graph.attrs(n), graph.type(n), [graph.type(a) for a in args])


def elementwise_ops() -> list[str]:
    return [k for k, d in OPS.items() if d.family == "elementwise"]
