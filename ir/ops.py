"""The core ops, each declared once (see registry.py for what an entry holds): sources,
elementwise arithmetic and activations, products and layout, reductions, losses, dropout and the
state update. Convolution, pooling, concat and slice are in ops_nn.py, registered the same way;
importing this module registers both.

Each entry's ONNX mapping (`onnx=`) is an operator type or a small function of the exporter's
emitter (runtime/onnx_export.py): `e.node(type, inputs, hint, out, **attributes)`, `e.ints(values,
hint)` and `e.init(array, hint)` for initializers, `e.type(node)`, `e.operands(node)`, `e.dim(symbol,
node)` for a symbolic dimension's value at run time, `e.float_tensor(name, values)`, `e.FLOAT`, `e.INT64`.
"""
from __future__ import annotations

import numpy as np

from .errors import DlcError
from .registry import (COMMUNICATES, OpDef, EFFECTS, EPILOGUE_FAMILIES, FAMILIES, HOLDS, INLINED_FAMILIES,
                       INPUT, MODEL, OPS, OPTIMIZER, PARAM, POINTWISE_FAMILIES, RANDOM, REQUIRED, STORED,
                       TRAINING, UPDATES_STATE, VARIADIC, Builder, NodeView, elementwise_ops, flops,
                       infer_type, label_operands, op, out_of_range, range_error, view)
from .registry import broadcast_f32 as _broadcast, f32_operands as _floats, unary_f32 as _unary_float
from .types import TensorType, broadcast_shapes, normalize_axes, reshape_shape, scalar

# the registry's names, so that `from dlc.ir.ops import OPS, RANDOM, ...` gives the populated table
__all__ = ["OPS", "OpDef", "op", "REQUIRED", "VARIADIC", "FAMILIES", "POINTWISE_FAMILIES", "EPILOGUE_FAMILIES",
           "INLINED_FAMILIES", "EFFECTS", "TRAINING", "RANDOM", "UPDATES_STATE", "COMMUNICATES", "HOLDS", "STORED",
           "INPUT", "PARAM", "OPTIMIZER", "MODEL", "Builder", "NodeView", "view", "flops", "infer_type",
           "elementwise_ops", "label_operands", "out_of_range", "range_error"]


# -- shape rules ---------------------------------------------------------------------------

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
    """logits f32[N, C] and labels i32[N], or one row of C per position: logits f32[N, T, C] (a
    class per step of a sequence) with labels i32[N, T]."""
    if not logits.is_float or logits.rank < 2:
        raise DlcError(f"{name} expects logits f32[N, C] (or f32[N, T, C], a row per position), found {logits}")
    if labels.dtype != "i32" or labels.rank != logits.rank - 1:
        want = "i32[N]" if logits.rank == 2 else f"i32[{', '.join(map(str, logits.shape[:-1]))}]"
        raise DlcError(f"{name} expects integer labels {want} for logits {logits}, found {labels}")
    if labels.shape != logits.shape[:-1]:
        raise DlcError(f"shape mismatch in {name}: logits {logits} and labels {labels} "
                       f"have different {'batch sizes' if logits.rank == 2 else 'leading dimensions'}")


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
    bad = out_of_range(labels, classes)
    if bad is not None:
        raise DlcError(f"label {bad} is out of range for {classes} classes")


def _rowmax(x):
    """x.max(axis=1, keepdims=True). NumPy reduces a short contiguous axis one row at a time
    (5.9 us for [128, 10], 79 us for [1024, 10]); for narrow rows the max over the first axis
    of the transposed copy is the same values 3-15x faster."""
    if x.shape[1] <= 64:
        return np.ascontiguousarray(x.T).max(axis=0)[:, None]
    return x.max(axis=1, keepdims=True)


def _xent(logits, labels):
    _check_labels(labels, logits.shape[-1])
    logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)  # a row per position
    z = logits - _rowmax(logits)
    lse = np.log(np.exp(z).sum(axis=1))              # log-sum-exp of each row, shifted by its max
    return (lse - z[np.arange(len(labels)), labels]).mean(dtype=logits.dtype)


def _xent_grad(logits, labels, g):
    shape = logits.shape
    logits, labels = logits.reshape(-1, shape[-1]), labels.reshape(-1)
    p = np.exp(logits - _rowmax(logits))
    p /= p.sum(axis=1, keepdims=True)                 # softmax, in place
    p[np.arange(len(labels)), labels] -= 1
    p *= g / len(labels)
    return p.reshape(shape)


def _axes(axis):
    """An axis attribute as NumPy takes it: None, an int, or a tuple (attributes hold lists)."""
    return tuple(axis) if isinstance(axis, list) else axis


def _sum(x, axis, keepdims):
    return np.add.reduce(x, axis=_axes(axis), keepdims=keepdims)


def _mean(x, axis, keepdims):
    return np.mean(x, axis=_axes(axis), keepdims=keepdims)


def _matmul(a, b, ta, tb, min_precision=None):  # (the interpreter rounds the operands: interp._at_precision)
    return (np.swapaxes(a, -1, -2) if ta else a) @ (np.swapaxes(b, -1, -2) if tb else b)


def _matmul_vjp(b, n, g):
    """Y = A @ B:  dA = dY @ B^T,  dB = A^T @ dY, with the operands' own transposes folded in.
    Where one operand is a matrix shared by a batch, its adjoint is summed over the batch.
    Both products keep the product's precision floor (`min_precision`)."""
    x, y = n.args
    ta, tb, floor = n.attrs["ta"], n.attrs["tb"], {"min_precision": n.attrs["min_precision"]}

    def shared(i, adj):  # the adjoint of a matrix operand that a batched product broadcast
        return b.sum(adj, axis=0) if n.type.rank == 3 and n.types[i].rank == 2 else adj
    return [lambda: shared(0, b.matmul(y, g, ta=tb, tb=True, **floor) if ta else b.matmul(g, y, tb=not tb, **floor)),
            lambda: shared(1, b.matmul(g, x, ta=True, tb=ta, **floor) if tb else b.matmul(x, g, ta=not ta, **floor))]


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


# -- ONNX mappings that are more than an operator type (see the module doc for the emitter) ---------

def _onnx_matmul(e, n, ins, a, out):
    if not a["ta"] and not a["tb"]:
        return e.node("MatMul", ins, n, out)  # MatMul broadcasts a matrix over a batch, as dlc does
    if e.type(n).rank == 2:
        return e.node("Gemm", ins, n, out, transA=int(a["ta"]), transB=int(a["tb"]))
    ins = list(ins)  # a batched product: transpose the last two axes of a flagged operand first
    for i, flag in enumerate(("ta", "tb")):
        if a[flag]:
            rank = e.type(e.operands(n)[i]).rank
            ins[i] = e.node("Transpose", [ins[i]], f"{n}.{flag}", perm=list(range(rank - 2)) + [rank - 1, rank - 2])
    return e.node("MatMul", ins, n, out)


def _onnx_transpose(e, n, ins, a, out):
    rank = e.type(n).rank
    perm = list(reversed(range(rank))) if a["perm"] is None else [p % rank for p in a["perm"]]
    return e.node("Transpose", ins, n, out, perm=perm)


def _onnx_reshape(e, n, ins, a, out):
    src = e.operands(n)[0]
    have = e.type(src).shape
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
        parts = [e.ints([d], f"{n}.dim") if isinstance(d, int) else e.dim(d, src) for d in spec]
        shape = e.node("Concat", parts, f"{n}.shape", axis=0)
    return e.node("Reshape", [ins[0], shape], n, out)


def _onnx_zeros(e, n, ins, a, out):
    parts = [e.ints([d], f"{n}.dim") if isinstance(d, int) else e.dim(d, n) for d in a["shape"]]
    shape = e.node("Concat", parts, f"{n}.shape", axis=0) if len(parts) > 1 else parts[0]
    return e.node("ConstantOfShape", [shape], n, out, value=e.float_tensor(f"{n}.zero", [0.0]))


def _onnx_reduce(op_type: str, axes_as_input: bool):
    def emit(e, n, ins, a, out):
        keep = int(bool(a["keepdims"]))
        if a["axis"] is None:  # every axis: no axes at all
            return e.node(op_type, ins, n, out, keepdims=keep)
        axes = list(normalize_axes(a["axis"], e.type(e.operands(n)[0]).rank))
        if axes_as_input:
            return e.node(op_type, [ins[0], e.ints(axes, f"{n}.axes")], n, out, keepdims=keep)
        return e.node(op_type, ins, n, out, keepdims=keep, axes=axes)
    return emit


def _onnx_size(e, n, ins, a, out):
    t = e.type(e.operands(n)[0])
    axes = normalize_axes(a["axis"], t.rank)
    dims = [t.shape[i] for i in axes]
    if all(isinstance(d, int) for d in dims):
        return e.node("Identity", [e.init(np.asarray(np.prod(dims), dtype=np.float32), f"{n}.value")], n, out)
    picked = e.node("Gather", [e.node("Shape", [ins[0]], f"{n}.shape"), e.ints(list(axes), f"{n}.axes")],
                    f"{n}.dims", axis=0)
    count = e.node("ReduceProd", [picked], f"{n}.count", keepdims=0)
    return e.node("Cast", [count], n, out, to=e.FLOAT)


def _onnx_axis(op_type: str):
    return lambda e, n, ins, a, out: e.node(op_type, ins, n, out, axis=a["axis"] % e.type(n).rank)


def _onnx_xent(e, n, ins, a, out):
    logits, labels = ins
    if e.type(e.operands(n)[0]).rank > 2:  # a row per position: SoftmaxCrossEntropyLoss wants classes on axis 1
        logits = e.node("Reshape", [logits, e.ints([-1, e.type(e.operands(n)[0]).shape[-1]], f"{n}.rows")],
                        f"{n}.logits")
        labels = e.node("Reshape", [labels, e.ints([-1], f"{n}.flat")], f"{n}.flat_labels")
    labels = e.node("Cast", [labels], f"{n}.labels", to=e.INT64)
    return e.node("SoftmaxCrossEntropyLoss", [logits, labels], n, out, reduction="mean")


def _onnx_mse(e, n, ins, a, out):
    d = e.node("Sub", ins, f"{n}.diff")
    return e.node("ReduceMean", [e.node("Mul", [d, d], f"{n}.square")], n, out, keepdims=0)


# -- the ops -----------------------------------------------------------------------------------

# sources: values that are not computed from operands; `holds` says which kind (registry.HOLDS)
op("input", 0, _source_rule, None, family="source", dsl=False, holds=INPUT, doc="data fed to the model")
op("param", 0, _source_rule, None, family="source", attrs={"init": "zeros"}, dsl=False, holds=PARAM,
   doc="a learned parameter with its initialiser")
op("state", 0, _source_rule, None, family="source", attrs={"init": "zeros"}, dsl=False, holds=OPTIMIZER,
   doc="optimizer state (velocity, moments), updated by assign")
op("buffer", 0, _source_rule, None, family="source", attrs={"init": "zeros"}, dsl=False, holds=MODEL,
   doc="model state that is not learned (running statistics), updated by assign in training steps")
op("const", 0, lambda t, a: scalar(), lambda value: np.asarray(value, "float32"), family="const",
   attrs={"value": REQUIRED}, dsl=False, doc="a scalar constant")

# elementwise, binary (NumPy broadcasting)
op("add", 2, _broadcast("add"), np.add, lambda b, n, g: [lambda: g, lambda: g], c="a + b", onnx="Add", affine=("add", "add"))
op("sub", 2, _broadcast("sub"), np.subtract, lambda b, n, g: [lambda: g, lambda: b.neg(g)], c="a - b", onnx="Sub", affine=("sub", None))
op("mul", 2, _broadcast("mul"), np.multiply,
   lambda b, n, g: [lambda: b.mul(g, n.args[1]), lambda: b.mul(g, n.args[0])], c="a * b", onnx="Mul", affine=("mul", "mul"))
op("div", 2, _broadcast("div"), np.divide,
   lambda b, n, g: [lambda: b.div(g, n.args[1]), lambda: b.neg(b.div(b.mul(g, n.out), n.args[1]))],
   c="a / b", onnx="Div", affine=("div", None))
# derivative helpers: (adjoint, forward value) -> adjoint of the input
op("relu_grad", 2, _broadcast("relu_grad"), _relu_grad, c="b > 0.0f ? a : 0.0f", dsl=False)
op("sigmoid_grad", 2, _broadcast("sigmoid_grad"), lambda g, y: g * y * (1 - y),
   c="a * b * (1.0f - b)", dsl=False)
op("tanh_grad", 2, _broadcast("tanh_grad"), lambda g, y: g * (1 - y * y), c="a * (1.0f - b * b)", dsl=False)

# elementwise, unary
op("neg", 1, _unary_float("neg"), np.negative, lambda b, n, g: [lambda: b.neg(g)], c="-a", onnx="Neg")
op("exp", 1, _unary_float("exp"), np.exp, lambda b, n, g: [lambda: b.mul(g, n.out)], c="expf(a)", onnx="Exp")
op("log", 1, _unary_float("log"), np.log, lambda b, n, g: [lambda: b.div(g, n.args[0])], c="logf(a)", onnx="Log")
op("sqrt", 1, _unary_float("sqrt"), np.sqrt,
   lambda b, n, g: [lambda: b.div(g, b.mul(b.const(2.0), n.out))], c="sqrtf(a)", onnx="Sqrt")
op("abs", 1, _unary_float("abs"), np.abs, lambda b, n, g: [lambda: b.mul(g, b.sign(n.args[0]))], c="fabsf(a)",
   onnx="Abs")
op("sign", 1, _unary_float("sign"), np.sign, lambda b, n, g: [None],
   c="(float)((a > 0.0f) - (a < 0.0f))", onnx="Sign")
op("relu", 1, _unary_float("relu"), lambda x: np.maximum(x, 0),
   lambda b, n, g: [lambda: b.relu_grad(g, n.out)], c="fmaxf(a, 0.0f)", onnx="Relu")
op("sigmoid", 1, _unary_float("sigmoid"), lambda x: 0.5 * (1 + np.tanh(0.5 * x)),
   lambda b, n, g: [lambda: b.sigmoid_grad(g, n.out)], c="1.0f / (1.0f + expf(-a))", onnx="Sigmoid")
op("tanh", 1, _unary_float("tanh"), np.tanh, lambda b, n, g: [lambda: b.tanh_grad(g, n.out)], c="tanhf(a)",
   onnx="Tanh")


# leaky ReLU, the whole op in one entry: the C expression reads the attribute `slope` by name, and
# the derivative g * (x > 0 ? 1 : slope) = g * (slope + (1 - slope) * relu(sign(x))) is built from
# existing ops (at -O2 it fuses into one kernel with its neighbours)
def _leaky_relu_vjp(b, n, g):
    s = n.attrs["slope"]
    return [lambda: b.mul(g, b.add(b.const(s), b.mul(b.const(1.0 - s), b.relu(b.sign(n.args[0])))))]


op("leaky_relu", 1, _unary_float("leaky_relu"), lambda x, slope: np.where(x > 0, x, x * x.dtype.type(slope)),
   _leaky_relu_vjp, c="a > 0.0f ? a : slope * a", attrs={"slope": 0.01},
   onnx=lambda e, n, ins, a, out: e.node("LeakyRelu", ins, n, out, alpha=float(a["slope"])),
   doc="x where x > 0, else slope * x (PyTorch's LeakyReLU, ONNX's LeakyRelu; slope 0.01 by default)")



# ELU: x where x > 0, else alpha * (e^x - 1); its derivative 1 or alpha * e^x = out + alpha, from
# existing ops as leaky_relu's is (the exponential of a positive x is never taken: no overflow)
def _elu(x, alpha):
    return np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(np.minimum(x, 0)))


def _elu_vjp(b, n, g):
    s = n.attrs["alpha"]
    pos = lambda: b.relu(b.sign(n.args[0]))  # noqa: E731  (1 where x > 0, else 0)
    return [lambda: b.mul(g, b.add(pos(), b.mul(b.sub(b.const(1.0), pos()), b.add(n.out, b.const(s)))))]


op("elu", 1, _unary_float("elu"), _elu, _elu_vjp, c="a > 0.0f ? a : alpha * expm1f(a)", attrs={"alpha": 1.0},
   onnx=lambda e, n, ins, a, out: e.node("Elu", ins, n, out, alpha=float(a["alpha"])),
   doc="x where x > 0, else alpha * (exp(x) - 1) (PyTorch's ELU, ONNX's Elu; alpha 1 by default)")

# linear algebra and layout
def _matmul_channels(n):
    """Column j of the product is operand 1's column j (its row j, read transposed) times operand
    0: when operand 1 is one matrix (shared by a batch), scaling it per column scales the output
    per column, the last axis."""
    if n.types[1].rank != 2:
        return None
    return n.type.rank - 1, 1, 0 if n.attrs["tb"] else 1


op("matmul", 2, _matmul_rule, _matmul, _matmul_vjp, channel_weight=_matmul_channels,
   family="matmul", attrs={"ta": False, "tb": False}, flops=lambda n, size: 2 * size(n.type) * size(
       n.types[0].with_shape([n.types[0].shape[-2 if n.attrs["ta"] else -1]])), onnx=_onnx_matmul,
   doc="matrix product (or a batch of them), operands optionally transposed")
op("transpose", 1, _transpose_rule, lambda x, perm: np.transpose(x, perm),
   lambda b, n, g: [lambda: b.transpose(g, perm=None if n.attrs["perm"] is None
                                          else list(np.argsort(n.attrs["perm"]).tolist()))],
   family="transpose", attrs={"perm": None}, onnx=_onnx_transpose)
op("reshape", 1, _reshape_rule, _reshape,
   lambda b, n, g: [lambda: b.reshape(g, shape=list(n.types[0].shape))],
   family="alias", attrs={"shape": REQUIRED}, needs_dims=True, onnx=_onnx_reshape)  # symbolic N: 0 or -1
op("zeros", 0, _zeros_rule, lambda shape, dims: np.zeros([dims[d] if isinstance(d, str) else d for d in shape],
                                                        "float32"),
   lambda b, n, g: [], c="0.0f", attrs={"shape": REQUIRED}, needs_dims=True, onnx=_onnx_zeros,
   doc="a tensor of zeros of the given shape, which may name symbolic dimensions (an initial state)")
op("broadcast_like", 2, _bcast_like_rule, lambda a, ref: np.broadcast_to(a, ref.shape),
   family="broadcast", dsl=False, doc="operand 0 broadcast to the shape of operand 1",
   onnx=lambda e, n, ins, a, out: e.node("Expand", [ins[0], e.node("Shape", [ins[1]], f"{n}.shape")], n, out))

# reductions
op("sum", 1, _reduce_rule("sum"), _sum, lambda b, n, g: [lambda: _reduce_back(b, n, g)],
   family="reduce", kernel={"map": "a", "finish": "acc"}, attrs={"axis": None, "keepdims": False},
   onnx=_onnx_reduce("ReduceSum", True))      # axes as an input since opset 13
op("mean", 1, _reduce_rule("mean"), _mean,
   lambda b, n, g: [lambda: b.div(_reduce_back(b, n, g), b.size(n.args[0], axis=n.attrs["axis"]))],
   family="reduce", kernel={"map": "a", "finish": "acc / (float)extent"}, attrs={"axis": None, "keepdims": False},
   onnx=_onnx_reduce("ReduceMean", False))    # axes as an attribute until opset 18
op("size", 1, lambda t, a: (normalize_axes(a["axis"], t[0].rank), scalar())[1], _size,
   lambda b, n, g: [None], family="shape", attrs={"axis": None}, dsl=False, onnx=_onnx_size,
   doc="the number of elements over the given axes, as an f32 scalar")
op("softmax", 1, _axis_rule("softmax"), _softmax, _softmax_vjp, family="softmax",
   kernel={"out": "expf(x - m) / s"}, attrs={"axis": -1}, onnx=_onnx_axis("Softmax"))
op("log_softmax", 1, _axis_rule("log_softmax"), _log_softmax, _log_softmax_vjp, family="softmax",
   kernel={"out": "(x - m) - logf(s)"}, attrs={"axis": -1}, onnx=_onnx_axis("LogSoftmax"))

# losses and penalties (PyTorch conventions: means over the batch; penalties are sums)
op("softmax_xent", 2, _xent_rule, _xent,
   lambda b, n, g: [lambda: b.softmax_xent_grad(n.args[0], n.args[1], g), None],
   family="xent", labels=1, onnx=_onnx_xent,   # SoftmaxCrossEntropyLoss, reduction mean
   doc="mean over the batch (over every position of [N, T, C] logits) of -log softmax(logits)[label]")
op("softmax_xent_grad", 3, _xent_grad_rule, _xent_grad, family="xent_grad", dsl=False, labels=1,
   doc="(softmax(logits) - onehot(labels)) * g / N")
op("mse", 2, _mse_rule, lambda p, t: np.mean(np.square(p - t)), _mse_vjp, family="reduce",
   kernel={"map": "(a - b) * (a - b)", "finish": "acc / (float)extent"}, onnx=_onnx_mse,
   doc="mean of squared differences over all elements")
op("l1", 1, _scalar_loss("l1"), lambda x: np.abs(x).sum(),
   lambda b, n, g: [lambda: b.mul(g, b.sign(n.args[0]))], family="reduce",
   kernel={"map": "fabsf(a)", "finish": "acc"}, doc="sum of |x|",
   onnx=lambda e, n, ins, a, out: e.node("ReduceL1", ins, n, out, keepdims=0))
op("l2", 1, _scalar_loss("l2"), lambda x: np.square(x).sum(),
   lambda b, n, g: [lambda: b.mul(b.mul(b.const(2.0), g), n.args[0])], family="reduce",
   kernel={"map": "a * a", "finish": "acc"}, doc="sum of x^2",
   onnx=lambda e, n, ins, a, out: e.node("ReduceSumSquare", ins, n, out, keepdims=0))


# dropout: in training, zero each element with probability p and scale the rest by 1/(1-p); the
# mask comes from Philox (philox.py) keyed by the seed and the op's salt, counted by element and
# step, so every backend draws the same mask. In evaluation it is the identity. Given the mask it
# is linear, so its derivative is the same dropout applied to the adjoint.
def _dropout_rule(types, attrs):
    _floats("dropout", types)
    p = attrs["p"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise DlcError(f"dropout probability must be in [0, 1), found {p!r}")
    return types[0]


def _dropout(x, p, salt, training, rng):
    if not training or p == 0:
        return x
    if rng is None:
        raise DlcError("dropout in training needs random numbers: run with rng=(seed, step)")
    from .philox import keep_mask
    seed, step = rng
    return np.where(keep_mask(seed, salt, step, x.shape, p), x * x.dtype.type(1.0 / (1.0 - p)), 0).astype(x.dtype)


op("dropout", 1, _dropout_rule, _dropout, lambda b, n, g: [lambda: b.dropout(g, **n.attrs)],
   family="dropout", attrs={"p": REQUIRED, "salt": 0}, effects={TRAINING, RANDOM}, eval_operand=0,
   onnx="Identity",   # the exported graph is the evaluation graph: dropout is the identity
   doc="training: x * mask / (1 - p), mask ~ Bernoulli(1 - p) from Philox; evaluation: x")

# state update: operand 0 (a param, optimizer state or model buffer) takes the value of operand 1
# at the end of the step, after every read of the old value
op("assign", 2, _assign_rule, None, family="assign", dsl=False, effects={UPDATES_STATE})


from . import ops_nn  # noqa: E402,F401  (convolution, pooling, concat: registered the same way)
from . import ops_norm  # noqa: E402,F401  (batch normalization)
from . import ops_math  # noqa: E402,F401  (erf, gelu, softplus, pow, max/min, comparisons, where, bce_logits,
                        # layer_norm)
from . import ops_embed  # noqa: E402,F401  (token ids: embedding and its scatter-add adjoint)
from . import ops_comm  # noqa: E402,F401  (data parallelism: batch_share, allreduce)
