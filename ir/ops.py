"""The op registry: every op of the IR, declared once.

An entry holds, side by side: operands and attributes, the shape/dtype rule, the NumPy
reference (what the op *means*; the interpreter runs it), the derivative rule written as IR
ops (the vector-Jacobian product), and the kernel family with, for elementwise ops, the scalar
C expression that the CUDA templates and the emulator share (`a`, `b` are the operands).

A derivative rule `vjp(b, n, g)` gets a builder `b` (`b.mul(x, y)`, `b.const(2.0)`, ...), a
view `n` of the forward node (`n.args`, `n.out`, `n.attrs`, `n.types`, `n.type`) and the
adjoint `g` of the node's result. It returns, for each operand, a thunk that builds that
operand's gradient contribution, or None where the operand has no gradient. The autodiff pass
calls only the thunks it needs, and undoes broadcasting itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import DlcError
from .types import (MAX_ELEMENTS, TensorType, broadcast_shapes, normalize_axes,
                    reshape_shape, scalar)

REQUIRED = object()  # marks an attribute without a default
VARIADIC = -1        # an arity: one or more operands


@dataclass
class OpDef:
    name: str
    arity: int                     # number of operands; VARIADIC for one or more
    infer: Callable                # (types, attrs) -> TensorType
    ref: Callable | None           # NumPy reference: (*arrays, **attrs) -> array
    vjp: Callable | None = None    # derivative rule, see the module doc
    family: str = "elementwise"    # kernel family for codegen (see FAMILIES)
    c: str | None = None           # scalar C expression (elementwise family)
    kernel: dict = field(default_factory=dict)  # what the family's emitter needs (see FAMILIES)
    flops: Callable | None = None  # (node view, size) -> FLOPs; default: the family's rule
    attrs: dict = field(default_factory=dict)  # attribute -> default (REQUIRED if none)
    dsl: bool = True               # callable by name from .dln
    needs_dims: bool = False       # ref also gets `dims=` (bound symbolic dimensions)
    needs_rng: bool = False        # ref also gets `rng=(seed, step)` in training, None in inference
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
            elif not _fits(attrs[k], v):
                kind = {bool: "true or false", int: "an integer or a list of integers",
                        float: "a number"}[type(v)]
                raise DlcError(f"{self.name}(): {k} must be {kind}, found {attrs[k]!r}", loc)
        return {k: attrs[k] for k in self.attrs}  # the declared order, so text is stable


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


FAMILIES = {  # family: (keys its entries declare in `kernel`, default FLOP rule)
    "source": ((), _no_flops),        # input, param, state: buffers, no kernel
    "const": ((), _no_flops),         # a scalar written by one thread
    "shape": ((), _no_flops),         # a size known from the shape alone
    "elementwise": ((), _per_output),  # one thread per element computing `c` over operands a, b
    "reduce": (("map", "finish"), _per_input),  # map: C over a (and b) per element; finish: C over
                                      # the sum acc of the mapped values and the count extent
    "softmax": (("out",), _per_input),  # out: C over x, the row max m and s = sum(exp(x - m))
    "xent": ((), _per_input),         # mean over rows of a fused log-softmax + pick
    "xent_grad": ((), _per_input),    # softmax minus one-hot, scaled, one block per row
    "matmul": ((), _no_flops),        # the tiled product; FLOPs declared by the op
    "transpose": ((), _no_flops),     # gathers: copies with an index map
    "broadcast": ((), _no_flops),
    "slice": ((), _no_flops),
    "pad": ((), _no_flops),           # zeros around the operand along one axis
    "concat": ((), _no_flops),
    "alias": ((), _no_flops),         # reshape: the same buffer under another shape
    "conv": ((), _no_flops), "conv_grad_x": ((), _no_flops), "conv_grad_w": ((), _no_flops),
    "pool": (("template",), _no_flops), "pool_grad": (("template",), _no_flops),  # template: the .cu.j2
    "dropout": ((), _per_output),
    "assign": ((), _no_flops),        # the update of a param or state, committed after the step
}


def op(name, arity, infer, ref, vjp=None, **kw) -> OpDef:
    d = OpDef(name, arity, infer, ref, vjp, **kw)
    if d.family not in FAMILIES:
        raise ValueError(f"op {name}: unknown kernel family {d.family!r}")
    missing = [k for k in FAMILIES[d.family][0] if k not in d.kernel]
    if missing or (d.family == "elementwise") != (d.c is not None):
        raise ValueError(f"op {name}: family {d.family} needs {missing or 'c'} declared")
    OPS[name] = d
    return d


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


# -- shape rules ---------------------------------------------------------------------------

def _floats(name, types):
    for t in types:
        if not t.is_float:
            raise DlcError(f"{name}() expects f32 operands, found {t}")


def _unary_float(name):
    def rule(types, attrs):
        _floats(name, types)
        return types[0]
    return rule


def _broadcast(name):
    def rule(types, attrs):
        _floats(name, types)
        return TensorType("f32", broadcast_shapes(types[0].shape, types[1].shape,
                                                  f"{name} of {types[0]} and {types[1]}"))
    return rule


def _reduce_rule(name):
    def rule(types, attrs):
        _floats(name, types)
        t = types[0]
        axes = normalize_axes(attrs["axis"], t.rank)
        if attrs["keepdims"]:
            return t.with_shape(1 if i in axes else d for i, d in enumerate(t.shape))
        return t.with_shape(d for i, d in enumerate(t.shape) if i not in axes)
    return rule


def _scalar_loss(name):
    def rule(types, attrs):
        _floats(name, types)
        return scalar()
    return rule


def _matmul_rule(types, attrs):
    """Matrices, or batches of them: [M, K] @ [K, N], [B, M, K] @ [K, N] (the matrix shared by
    every item), [M, K] @ [B, K, N] and [B, M, K] @ [B, K, N]. `ta`/`tb` transpose the last two
    dimensions of an operand."""
    a, b = types
    _floats("matmul", types)
    if a.rank not in (2, 3) or b.rank not in (2, 3):
        raise DlcError(f"matmul expects matrices or batches of matrices (rank 2 or 3), found {a} @ {b}")
    m, k = a.shape[-1:-3:-1] if attrs["ta"] else a.shape[-2:]
    k2, n = b.shape[-1:-3:-1] if attrs["tb"] else b.shape[-2:]
    if k != k2:
        raise DlcError(f"shape mismatch in matmul: {a} @ {b} (inner dimensions {k} and {k2} differ)")
    if a.rank == 3 and b.rank == 3 and a.shape[0] != b.shape[0]:
        raise DlcError(f"shape mismatch in matmul: {a} @ {b} (batch dimensions {a.shape[0]} and {b.shape[0]} "
                       f"differ)")
    batch = a.shape[:1] if a.rank == 3 else b.shape[:1] if b.rank == 3 else ()
    return TensorType("f32", (*batch, m, n))


def _transpose_rule(types, attrs):
    t = types[0]
    perm = attrs["perm"]
    if perm is not None and not (isinstance(perm, (list, tuple)) and all(
            isinstance(p, int) and not isinstance(p, bool) for p in perm)):
        raise DlcError(f"transpose perm must be a list of axes such as [1, 0], found {perm!r}")
    perm = tuple(reversed(range(t.rank))) if perm is None else tuple(perm)
    if sorted(perm) != list(range(t.rank)):
        raise DlcError(f"transpose perm {list(perm)} is not a permutation of the {t.rank} axes of {t}")
    return t.with_shape(t.shape[p] for p in perm)


def _reshape_rule(types, attrs):
    target = attrs["shape"]
    if not isinstance(target, (list, tuple)) or not all(
            isinstance(d, (int, str)) and not isinstance(d, bool) for d in target):
        raise DlcError(f"reshape needs a shape list such as [N, 64], found {target!r}")
    return types[0].with_shape(reshape_shape(types[0].shape, tuple(target)))


def _zeros_rule(types, attrs):
    shape = attrs["shape"]
    if not isinstance(shape, (list, tuple)) or not all(
            isinstance(d, str) or isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        shown = "[" + ", ".join(map(str, shape)) + "]" if isinstance(shape, (list, tuple)) else repr(shape)
        raise DlcError(f"zeros needs a shape list of positive sizes such as [N, 32], found {shown}")
    return TensorType("f32", tuple(shape))


def _axis_rule(name):
    def rule(types, attrs):
        _floats(name, types)
        if not isinstance(attrs["axis"], int) or isinstance(attrs["axis"], bool):
            raise DlcError(f"{name} takes one axis, found {attrs['axis']!r}")
        normalize_axes(attrs["axis"], types[0].rank)
        return types[0]
    return rule


def _xent_check(logits, labels, name="softmax_xent"):
    if not logits.is_float or logits.rank != 2:
        raise DlcError(f"{name} expects logits f32[N, C], found {logits}")
    if labels.dtype != "i32" or labels.rank != 1:
        raise DlcError(f"{name} expects integer labels i32[N], found {labels}")
    if labels.shape[0] != logits.shape[0]:
        raise DlcError(f"shape mismatch in {name}: logits {logits} and labels {labels} "
                       f"have different batch sizes")


def _xent_rule(types, attrs):
    _xent_check(*types)
    return scalar()


def _xent_grad_rule(types, attrs):
    _xent_check(types[0], types[1], "softmax_xent_grad")
    return types[0]


def _mse_rule(types, attrs):
    _floats("mse", types)
    if types[0].shape != types[1].shape:
        raise DlcError(f"shape mismatch in mse: prediction {types[0]} and target {types[1]} differ")
    return scalar()


def _bcast_like_rule(types, attrs):
    broadcast_shapes(types[0].shape, types[1].shape, f"broadcast_like {types[0]} to {types[1]}")
    return types[1].with_dtype(types[0].dtype)


def _assign_rule(types, attrs):
    if types[0] != types[1]:
        raise DlcError(f"assign of {types[1]} to a variable of type {types[0]}")
    return types[0]


def _source_rule(types, attrs):
    raise DlcError("source ops (input, param, state) carry their type explicitly")


# -- NumPy references ------------------------------------------------------------------------

def _softmax(x, axis=-1):
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def _log_softmax(x, axis=-1):
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def _check_labels(labels, classes):
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = labels[(labels < 0) | (labels >= classes)][0]
        raise DlcError(f"label {int(bad)} is out of range for {classes} classes")


def _rowmax(x):
    """x.max(axis=1, keepdims=True). NumPy reduces a short contiguous axis one row at a time
    (5.9 us for [128, 10], 79 us for [1024, 10]); for narrow rows the max over the first axis
    of the transposed copy is the same values 3-15x faster."""
    if x.shape[1] <= 64:
        return np.ascontiguousarray(x.T).max(axis=0)[:, None]
    return x.max(axis=1, keepdims=True)


def _xent(logits, labels):
    _check_labels(labels, logits.shape[1])
    z = logits - _rowmax(logits)
    lse = np.log(np.exp(z).sum(axis=1))              # log-sum-exp of each row, shifted by its max
    return (lse - z[np.arange(len(labels)), labels]).mean(dtype=logits.dtype)


def _xent_grad(logits, labels, g):
    p = np.exp(logits - _rowmax(logits))
    p /= p.sum(axis=1, keepdims=True)                 # softmax, in place
    p[np.arange(len(labels)), labels] -= 1
    p *= g / len(labels)
    return p


def _axes(axis):
    """An axis attribute as NumPy takes it: None, an int, or a tuple (attributes hold lists)."""
    return tuple(axis) if isinstance(axis, list) else axis


def _sum(x, axis, keepdims):
    return np.add.reduce(x, axis=_axes(axis), keepdims=keepdims)


def _mean(x, axis, keepdims):
    return np.mean(x, axis=_axes(axis), keepdims=keepdims)


def _matmul(a, b, ta, tb):
    return (np.swapaxes(a, -1, -2) if ta else a) @ (np.swapaxes(b, -1, -2) if tb else b)


def _matmul_vjp(b, n, g):
    """Y = A @ B:  dA = dY @ B^T,  dB = A^T @ dY, with the operands' own transposes folded in.
    Where one operand is a matrix shared by a batch, its adjoint is summed over the batch."""
    x, y = n.args
    ta, tb = n.attrs["ta"], n.attrs["tb"]

    def shared(i, adj):  # the adjoint of a matrix operand that a batched product broadcast
        return b.sum(adj, axis=0) if n.type.rank == 3 and n.types[i].rank == 2 else adj
    return [lambda: shared(0, b.matmul(y, g, ta=tb, tb=True) if ta else b.matmul(g, y, tb=not tb)),
            lambda: shared(1, b.matmul(g, x, ta=True, tb=ta) if tb else b.matmul(x, g, ta=not ta))]


def _reshape(x, shape, dims):
    return x.reshape([dims[d] if isinstance(d, str) else d for d in shape])


def _size(x, axis):
    axes = normalize_axes(axis, x.ndim)
    return np.asarray(np.prod([x.shape[a] for a in axes]), dtype=x.dtype if x.dtype.kind == "f" else "float32")


def _relu_grad(g, y):
    return g * (y > 0)


# -- derivative rules --------------------------------------------------------------------------

def _reduce_back(b, n, g):
    """The adjoint of a reduction over axes, re-shaped so that it broadcasts against the operand."""
    t = n.types[0]
    if not n.attrs["keepdims"]:
        axes = normalize_axes(n.attrs["axis"], t.rank)
        g = b.reshape(g, shape=[1 if i in axes else d for i, d in enumerate(t.shape)])
    return b.broadcast_like(g, n.args[0])


def _softmax_vjp(b, n, g):
    ax = n.attrs["axis"]
    return [lambda: b.mul(n.out, b.sub(g, b.sum(b.mul(g, n.out), axis=ax, keepdims=True)))]


def _log_softmax_vjp(b, n, g):
    ax = n.attrs["axis"]
    return [lambda: b.sub(g, b.mul(b.exp(n.out), b.sum(g, axis=ax, keepdims=True)))]


def _mse_vjp(b, n, g):
    p, t = n.args
    scale = lambda: b.div(b.mul(b.const(2.0), g), b.size(p, axis=None))
    return [lambda: b.mul(b.sub(p, t), scale()), lambda: b.mul(b.sub(t, p), scale())]


# -- the ops -----------------------------------------------------------------------------------

# sources: values that are not computed from operands
op("input", 0, _source_rule, None, family="source", dsl=False, doc="data fed to the model")
op("param", 0, _source_rule, None, family="source", attrs={"init": "zeros"}, dsl=False,
   doc="a learned parameter with its initialiser")
op("state", 0, _source_rule, None, family="source", attrs={"init": "zeros"}, dsl=False,
   doc="optimizer state (velocity, moments), updated by assign")
op("const", 0, lambda t, a: scalar(), lambda value: np.asarray(value, "float32"), family="const",
   attrs={"value": REQUIRED}, dsl=False, doc="a scalar constant")

# elementwise, binary (NumPy broadcasting)
op("add", 2, _broadcast("add"), np.add, lambda b, n, g: [lambda: g, lambda: g], c="a + b")
op("sub", 2, _broadcast("sub"), np.subtract, lambda b, n, g: [lambda: g, lambda: b.neg(g)], c="a - b")
op("mul", 2, _broadcast("mul"), np.multiply,
   lambda b, n, g: [lambda: b.mul(g, n.args[1]), lambda: b.mul(g, n.args[0])], c="a * b")
op("div", 2, _broadcast("div"), np.divide,
   lambda b, n, g: [lambda: b.div(g, n.args[1]), lambda: b.neg(b.div(b.mul(g, n.out), n.args[1]))],
   c="a / b")
# derivative helpers: (adjoint, forward value) -> adjoint of the input
op("relu_grad", 2, _broadcast("relu_grad"), _relu_grad, c="b > 0.0f ? a : 0.0f", dsl=False)
op("sigmoid_grad", 2, _broadcast("sigmoid_grad"), lambda g, y: g * y * (1 - y),
   c="a * b * (1.0f - b)", dsl=False)
op("tanh_grad", 2, _broadcast("tanh_grad"), lambda g, y: g * (1 - y * y), c="a * (1.0f - b * b)", dsl=False)

# elementwise, unary
op("neg", 1, _unary_float("neg"), np.negative, lambda b, n, g: [lambda: b.neg(g)], c="-a")
op("exp", 1, _unary_float("exp"), np.exp, lambda b, n, g: [lambda: b.mul(g, n.out)], c="expf(a)")
op("log", 1, _unary_float("log"), np.log, lambda b, n, g: [lambda: b.div(g, n.args[0])], c="logf(a)")
op("sqrt", 1, _unary_float("sqrt"), np.sqrt,
   lambda b, n, g: [lambda: b.div(g, b.mul(b.const(2.0), n.out))], c="sqrtf(a)")
op("abs", 1, _unary_float("abs"), np.abs, lambda b, n, g: [lambda: b.mul(g, b.sign(n.args[0]))], c="fabsf(a)")
op("sign", 1, _unary_float("sign"), np.sign, lambda b, n, g: [None],
   c="(float)((a > 0.0f) - (a < 0.0f))")
op("relu", 1, _unary_float("relu"), lambda x: np.maximum(x, 0),
   lambda b, n, g: [lambda: b.relu_grad(g, n.out)], c="fmaxf(a, 0.0f)")
op("sigmoid", 1, _unary_float("sigmoid"), lambda x: 0.5 * (1 + np.tanh(0.5 * x)),
   lambda b, n, g: [lambda: b.sigmoid_grad(g, n.out)], c="1.0f / (1.0f + expf(-a))")
op("tanh", 1, _unary_float("tanh"), np.tanh, lambda b, n, g: [lambda: b.tanh_grad(g, n.out)], c="tanhf(a)")

# linear algebra and layout
op("matmul", 2, _matmul_rule, _matmul, _matmul_vjp,
   family="matmul", attrs={"ta": False, "tb": False}, flops=lambda n, size: 2 * size(n.type) * size(
       n.types[0].with_shape([n.types[0].shape[-2 if n.attrs["ta"] else -1]])),
   doc="matrix product (or a batch of them), operands optionally transposed")
op("transpose", 1, _transpose_rule, lambda x, perm: np.transpose(x, perm),
   lambda b, n, g: [lambda: b.transpose(g, perm=None if n.attrs["perm"] is None
                                          else list(np.argsort(n.attrs["perm"]).tolist()))],
   family="transpose", attrs={"perm": None})
op("reshape", 1, _reshape_rule, _reshape,
   lambda b, n, g: [lambda: b.reshape(g, shape=list(n.types[0].shape))],
   family="alias", attrs={"shape": REQUIRED}, needs_dims=True)
op("zeros", 0, _zeros_rule, lambda shape, dims: np.zeros([dims[d] if isinstance(d, str) else d for d in shape],
                                                        "float32"),
   lambda b, n, g: [], c="0.0f", attrs={"shape": REQUIRED}, needs_dims=True,
   doc="a tensor of zeros of the given shape, which may name symbolic dimensions (an initial state)")
op("broadcast_like", 2, _bcast_like_rule, lambda a, ref: np.broadcast_to(a, ref.shape),
   family="broadcast", dsl=False, doc="operand 0 broadcast to the shape of operand 1")

# reductions
op("sum", 1, _reduce_rule("sum"), _sum, lambda b, n, g: [lambda: _reduce_back(b, n, g)],
   family="reduce", kernel={"map": "a", "finish": "acc"}, attrs={"axis": None, "keepdims": False})
op("mean", 1, _reduce_rule("mean"), _mean,
   lambda b, n, g: [lambda: b.div(_reduce_back(b, n, g), b.size(n.args[0], axis=n.attrs["axis"]))],
   family="reduce", kernel={"map": "a", "finish": "acc / (float)extent"}, attrs={"axis": None, "keepdims": False})
op("size", 1, lambda t, a: (normalize_axes(a["axis"], t[0].rank), scalar())[1], _size,
   lambda b, n, g: [None], family="shape", attrs={"axis": None}, dsl=False,
   doc="the number of elements over the given axes, as an f32 scalar")
op("softmax", 1, _axis_rule("softmax"), _softmax, _softmax_vjp, family="softmax",
   kernel={"out": "expf(x - m) / s"}, attrs={"axis": -1})
op("log_softmax", 1, _axis_rule("log_softmax"), _log_softmax, _log_softmax_vjp, family="softmax",
   kernel={"out": "(x - m) - logf(s)"}, attrs={"axis": -1})

# losses and penalties (PyTorch conventions: means over the batch; penalties are sums)
op("softmax_xent", 2, _xent_rule, _xent,
   lambda b, n, g: [lambda: b.softmax_xent_grad(n.args[0], n.args[1], g), None],
   family="xent", doc="mean over the batch of -log softmax(logits)[label]")
op("softmax_xent_grad", 3, _xent_grad_rule, _xent_grad, family="xent_grad", dsl=False,
   doc="(softmax(logits) - onehot(labels)) * g / N")
op("mse", 2, _mse_rule, lambda p, t: np.mean(np.square(p - t)), _mse_vjp, family="reduce",
   kernel={"map": "(a - b) * (a - b)", "finish": "acc / (float)extent"},
   doc="mean of squared differences over all elements")
op("l1", 1, _scalar_loss("l1"), lambda x: np.abs(x).sum(),
   lambda b, n, g: [lambda: b.mul(g, b.sign(n.args[0]))], family="reduce",
   kernel={"map": "fabsf(a)", "finish": "acc"}, doc="sum of |x|")
op("l2", 1, _scalar_loss("l2"), lambda x: np.square(x).sum(),
   lambda b, n, g: [lambda: b.mul(b.mul(b.const(2.0), g), n.args[0])], family="reduce",
   kernel={"map": "a * a", "finish": "acc"}, doc="sum of x^2")

# dropout: in training, zero each element with probability p and scale the rest by 1/(1-p); the
# mask comes from Philox (philox.py) keyed by the seed and the op's salt, counted by element and
# step, so every backend draws the same mask. In inference it is the identity. Given the mask it
# is linear, so its derivative is the same dropout applied to the adjoint.
def _dropout_rule(types, attrs):
    _floats("dropout", types)
    p = attrs["p"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise DlcError(f"dropout probability must be in [0, 1), found {p!r}")
    return types[0]


def _dropout(x, p, salt, rng):
    if rng is None or p == 0:
        return x
    from .philox import keep_mask
    seed, step = rng
    return np.where(keep_mask(seed, salt, step, x.shape, p), x * x.dtype.type(1.0 / (1.0 - p)), 0).astype(x.dtype)


op("dropout", 1, _dropout_rule, _dropout, lambda b, n, g: [lambda: b.dropout(g, **n.attrs)],
   family="dropout", attrs={"p": REQUIRED, "salt": 0}, needs_rng=True,
   doc="training: x * mask / (1 - p), mask ~ Bernoulli(1 - p) from Philox; inference: x")

# state update: operand 0 (a param or state) takes the value of operand 1 at the end of the step
op("assign", 2, _assign_rule, None, family="assign", dsl=False)


def flops(graph, n: str, dims: dict | None = None) -> int:
    """Floating-point operations of one node (a multiply-add counts 2), with symbolic dims bound
    by `dims` (default: every symbol is 1, i.e. per example): the op's declared rule, else its
    family's."""
    dims = dims or {}

    def size(t):
        return int(np.prod([dims.get(d, 1) if isinstance(d, str) else d for d in t.shape]))
    d = OPS[graph.op(n)]
    return (d.flops or FAMILIES[d.family][1])(view(graph, n), size)


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


from . import ops_nn  # noqa: E402,F401  (convolution, pooling, concat: registered the same way)
