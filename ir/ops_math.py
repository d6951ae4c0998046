"""The elementwise ops and losses a practitioner reaches for (issue 23), registered in the op
registry like every other op (see ops.py): `erf`, `gelu`, `softplus`, `pow`, elementwise `max` and
`min`, the comparisons (`gt lt ge le eq ne`, the operators `> < >= <= == !=` of .dln) and `where`,
`bce_logits`, and `layer_norm`.

Each follows PyTorch's definition, so that results compare with it:

    erf(x)                  torch.erf
    gelu(x, approximate)    torch.nn.GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) ("none", the default),
                            or 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) ("tanh")
    softplus(x, beta, threshold)
                            torch.nn.Softplus: log(1 + exp(beta x)) / beta, and x itself where
                            beta x > threshold
    pow(x, y)               torch.pow, both operands tensors (or numbers) with broadcasting; at
                            x = 0 the derivatives are PyTorch's: d/dx is 0 where y = 0, d/dy is 0
                            where y >= 0
    max(a, b), min(a, b)    torch.maximum / torch.minimum: NaN wins; on a tie each operand receives
                            half the adjoint, as torch does
    gt lt ge le eq ne       1.0 where the comparison holds, else 0.0 (f32); no gradient flows through
    where(c, a, b)          a where c != 0, else b (torch.where(c != 0, a, b)); the adjoint goes to a
                            and b, masked; none to c
    bce_logits(x, t)        torch.nn.functional.binary_cross_entropy_with_logits, reduction mean,
                            computed as mean(max(x, 0) - x t + log1p(exp(-|x|))): no overflow at any x
    layer_norm(x, gamma, beta, axis, eps)
                            torch.nn.LayerNorm over the axes axis..rank-1 (ONNX's LayerNormalization
                            `axis`): (x - mean) / sqrt(var + eps) * gamma + beta, the biased variance

`where` and `layer_norm` are composite ops (as batch_norm in ops_norm.py): their `lower` rule
writes them in other ops, so autodiff, fusion and codegen need nothing new. `where` lowers to two
`pick`s added: pick(c, a) + pick(c, b, when = false), `pick(c, x, when)` being x where (c != 0) ==
when and 0 elsewhere, a plain elementwise op (a kernel has at most two operands); a NaN or an
infinity in the branch not taken never reaches the sum.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import DlcError
from .registry import broadcast_f32 as _binary, f32_operands as _floats, op, unary_f32 as _unary
from .types import TensorType, broadcast_shapes, scalar

SQRT1_2 = math.sqrt(0.5)              # 1 / sqrt(2)
TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715                 # the cubic term of the tanh approximation (Hendrycks & Gimpel)


# -- shape rules -----------------------------------------------------------------------------------

def _gelu_rule(types, attrs):
    _floats("gelu", types)
    if attrs["approximate"] not in ("none", "tanh"):
        raise DlcError(f'gelu(): approximate must be "none" or "tanh", found {attrs["approximate"]!r}')
    return types[0]


def _softplus_rule(types, attrs):
    _floats("softplus", types)
    if not attrs["beta"] > 0:
        raise DlcError(f"softplus(): beta must be > 0, found {attrs['beta']!r}")
    return types[0]


def _where_rule(types, attrs):
    _floats("where", types)
    c, a, b = types
    shape = broadcast_shapes(c.shape, a.shape, f"where of condition {c} and {a}")
    return TensorType("f32", broadcast_shapes(shape, b.shape, f"where of condition {c}, {a} and {b}"))


def _bce_rule(types, attrs):
    _floats("bce_logits", types)
    if types[0].shape != types[1].shape:
        raise DlcError(f"shape mismatch in bce_logits: logits {types[0]} and targets {types[1]} differ")
    return scalar()


def _layer_norm_axes(x, axis) -> list[int]:
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.rank <= axis < x.rank:
        raise DlcError(f"layer_norm: axis {axis!r} is not an axis of its input {x} (rank {x.rank}: "
                       f"axis is one of {-x.rank}..{x.rank - 1})")
    return list(range(axis % x.rank, x.rank))


def _layer_norm_rule(types, attrs):
    x, gamma, beta = types
    _floats("layer_norm", types)
    axes = _layer_norm_axes(x, attrs["axis"])
    want = tuple(x.shape[a] for a in axes)
    if any(isinstance(d, str) for d in want):
        raise DlcError(f"layer_norm: the normalized axes {axes} of {x} must have known sizes")
    for name, t in (("gamma", gamma), ("beta", beta)):
        if tuple(t.shape) != want:
            shown = ", ".join(map(str, want))
            raise DlcError(f"layer_norm: {name} must be f32[{shown}] (the normalized axes {axes[0]}.. of {x}), "
                           f"found {t}")
    if not attrs["eps"] > 0:
        raise DlcError(f"layer_norm: eps must be > 0, found {attrs['eps']!r}")
    return x


# -- NumPy references ------------------------------------------------------------------------------
# NumPy has no erf: math.erf element by element (exact to rounding, in the array's own dtype)

def _erf(x):
    return np.vectorize(math.erf, otypes=[x.dtype])(x)


def _gelu(x, approximate):
    half = x.dtype.type(0.5)
    if approximate == "tanh":
        return half * x * (1 + np.tanh(x.dtype.type(SQRT_2_OVER_PI) * (x + x.dtype.type(GELU_CUBIC) * x * x * x)))
    return half * x * (1 + _erf(x * x.dtype.type(SQRT1_2)))


def _softplus(x, beta, threshold):
    bx = x * x.dtype.type(beta)
    with np.errstate(over="ignore"):  # exp of a large beta x is not used: that element is x
        soft = np.log1p(np.exp(np.minimum(bx, threshold))) / x.dtype.type(beta)
    return np.where(bx > threshold, x, soft).astype(x.dtype)


def _compare(fn):
    return lambda a, b: fn(a, b).astype(np.result_type(a, b))


def _pick(c, x, when):
    return np.where((c != 0) == when, x, 0).astype(np.result_type(c, x))


def _where(c, a, b):
    return np.where(c != 0, a, b).astype(np.result_type(c, a, b))


def _bce_logits(x, t):
    return np.mean(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))))


def _layer_norm(x, gamma, beta, axis, eps):
    axes = tuple(range(axis % x.ndim, x.ndim))
    m = x.mean(axis=axes, keepdims=True)
    v = np.square(x - m).mean(axis=axes, keepdims=True)
    return ((x - m) / np.sqrt(v + x.dtype.type(eps)) * gamma + beta).astype(x.dtype)


# -- derivative rules (vector-Jacobian products written as IR ops, see registry.py) ------------------

def _erf_vjp(b, n, g):
    x = n.args[0]
    return [lambda: b.mul(g, b.mul(b.const(TWO_OVER_SQRT_PI), b.exp(b.neg(b.mul(x, x)))))]


def _gelu_vjp(b, n, g):
    """none: Phi(x) + x phi(x) = 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi);
    tanh:    0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2 / pi) (1 + 3 * 0.044715 x^2), t the tanh."""
    x = n.args[0]
    half = lambda: b.const(0.5)  # noqa: E731
    if n.attrs["approximate"] == "tanh":
        def grad():
            x2 = b.mul(x, x)
            t = b.tanh(b.mul(b.const(SQRT_2_OVER_PI), b.mul(x, b.add(b.const(1.0), b.mul(b.const(GELU_CUBIC), x2)))))
            slope = b.mul(b.const(SQRT_2_OVER_PI), b.add(b.const(1.0), b.mul(b.const(3 * GELU_CUBIC), x2)))
            inner = b.mul(b.mul(half(), x), b.mul(b.sub(b.const(1.0), b.mul(t, t)), slope))
            return b.mul(g, b.add(b.mul(half(), b.add(b.const(1.0), t)), inner))
        return [grad]

    def exact():
        cdf = b.mul(half(), b.add(b.const(1.0), b.erf(b.mul(x, b.const(SQRT1_2)))))
        pdf = b.mul(b.const(1.0 / math.sqrt(2.0 * math.pi)), b.exp(b.mul(b.const(-0.5), b.mul(x, x))))
        return b.mul(g, b.add(cdf, b.mul(x, pdf)))
    return [exact]


def _softplus_vjp(b, n, g):
    """sigmoid(beta x), and exactly 1 where beta x > threshold (the linear part): s + above (1 - s)."""
    def grad():
        bx = b.mul(n.args[0], b.const(n.attrs["beta"]))
        s = b.sigmoid(bx)
        above = b.gt(bx, b.const(n.attrs["threshold"]))
        return b.mul(g, b.add(s, b.mul(above, b.sub(b.const(1.0), s))))
    return [grad]


def _pow_vjp(b, n, g):
    """d/dx = y x^(y-1), 0 where y = 0; d/dy = x^y log x, 0 where x = 0 and y >= 0 (PyTorch's
    pow_backward: so x^2 at 0 sends 0 to x, and 0^y sends 0 to y, not NaN)."""
    x, y = n.args

    def dx():
        d = b.mul(y, b.pow(x, b.sub(y, b.const(1.0))))
        return b.pick(b.eq(y, b.const(0.0)), b.mul(g, d), when=False)

    def dy():
        zero_base = b.mul(b.eq(x, b.const(0.0)), b.ge(y, b.const(0.0)))
        return b.pick(zero_base, b.mul(g, b.mul(n.out, b.log(x))), when=False)
    return [dx, dy]


def _extremum_vjp(loses):
    """max: a receives g * (1 - [a < b] - [a == b] / 2), b the same with the roles swapped (min:
    the comparisons reversed): the whole adjoint to the larger (smaller) operand, half to each on a
    tie, and all of it to both where one is NaN, as torch.maximum / torch.minimum do."""
    def vjp(b, n, g):
        x, y = n.args

        def share(p, q):
            lost = b.add(getattr(b, loses)(p, q), b.mul(b.const(0.5), b.eq(p, q)))
            return b.mul(g, b.sub(b.const(1.0), lost))
        return [lambda: share(x, y), lambda: share(y, x)]
    return vjp


def _pick_vjp(b, n, g):
    return [None, lambda: b.pick(n.args[0], g, when=n.attrs["when"])]


def _bce_vjp(b, n, g):
    """d/dx = (sigmoid(x) - t) g / size, d/dt = -x g / size (PyTorch's, target gradient included)."""
    x, t = n.args
    scale = lambda: b.div(g, b.size(x, axis=None))  # noqa: E731
    return [lambda: b.mul(b.sub(b.sigmoid(x), t), scale()), lambda: b.mul(b.neg(x), scale())]


def _no_gradient(b, n, g):
    return [None, None]


# -- lowering of the composite ops -----------------------------------------------------------------

def _where_lower(g, n: str) -> str:
    c, a, x = g.operands(n)
    loc = g.loc(n)
    taken = g.add("pick", [c, a], {"when": True}, name=f"{n}.then", loc=loc)
    other = g.add("pick", [c, x], {"when": False}, name=f"{n}.else", loc=loc)
    return g.add("add", [taken, other], {}, name=f"{n}.out", loc=loc)


def _layer_norm_lower(g, n: str) -> str:
    """(x - mean) / sqrt(var + eps) * gamma + beta over the normalized axes; gamma and beta have
    the trailing shape of x, so they broadcast as they are."""
    x, gamma, beta = g.operands(n)
    a, loc = g.attrs(n), g.loc(n)
    axes = _layer_norm_axes(g.type(x), a["axis"])

    def add(op_name, args, name, **attrs):
        return g.add(op_name, args, attrs, name=f"{n}.{name}", loc=loc)
    mean = add("mean", [x], "mean", axis=axes, keepdims=True)
    centered = add("sub", [x, mean], "centered")
    var = add("mean", [add("mul", [centered, centered], "squares")], "var", axis=axes, keepdims=True)
    std = add("sqrt", [add("add", [var, add("const", [], "const", value=float(a["eps"]))], "var_eps")], "std")
    normalized = add("div", [centered, std], "normalized")
    return add("add", [add("mul", [normalized, gamma], "scaled"), beta], "out")


# -- ONNX mappings (see ops.py's module doc for the emitter) -----------------------------------------

def _onnx_const(e, n, value, hint):
    return e.init(np.asarray(value, np.float32), f"{n}.{hint}")


def _onnx_gelu(e, n, ins, a, out):
    """Opset 17 has no Gelu (it came in opset 20): the formula in Erf / Tanh, Mul and Add."""
    x = ins[0]
    if a["approximate"] == "tanh":
        cube = e.node("Mul", [e.node("Mul", [x, x], f"{n}.x2"), x], f"{n}.x3")
        inner = e.node("Add", [x, e.node("Mul", [cube, _onnx_const(e, n, GELU_CUBIC, "cubic")], f"{n}.cubic")],
                       f"{n}.inner")
        t = e.node("Tanh", [e.node("Mul", [inner, _onnx_const(e, n, SQRT_2_OVER_PI, "k")], f"{n}.scaled")], f"{n}.t")
    else:
        t = e.node("Erf", [e.node("Mul", [x, _onnx_const(e, n, SQRT1_2, "k")], f"{n}.scaled")], f"{n}.t")
    one_plus = e.node("Add", [t, _onnx_const(e, n, 1.0, "one")], f"{n}.one_plus")
    return e.node("Mul", [e.node("Mul", [x, _onnx_const(e, n, 0.5, "half")], f"{n}.half_x"), one_plus], n, out)


def _onnx_softplus(e, n, ins, a, out):
    """ONNX's Softplus has no beta and no threshold: Softplus(beta x) / beta where beta x <= threshold, else x."""
    bx = e.node("Mul", [ins[0], _onnx_const(e, n, a["beta"], "beta")], f"{n}.bx")
    soft = e.node("Div", [e.node("Softplus", [bx], f"{n}.soft"), _onnx_const(e, n, a["beta"], "beta")], f"{n}.curve")
    above = e.node("Greater", [bx, _onnx_const(e, n, a["threshold"], "threshold")], f"{n}.above")
    return e.node("Where", [above, ins[0], soft], n, out)


def _onnx_compare(op_type: str, negate: bool = False):
    def emit(e, n, ins, a, out):
        flag = e.node(op_type, ins, f"{n}.flag")
        if negate:
            flag = e.node("Not", [flag], f"{n}.not")
        return e.node("Cast", [flag], n, out, to=e.FLOAT)
    return emit


def _onnx_where(e, n, ins, a, out):
    zero = _onnx_const(e, n, 0.0, "zero")
    cond = e.node("Not", [e.node("Equal", [ins[0], zero], f"{n}.is_zero")], f"{n}.cond")
    return e.node("Where", [cond, ins[1], ins[2]], n, out)


def _onnx_bce(e, n, ins, a, out):
    """mean(max(x, 0) - x t + log(1 + exp(-|x|))) (ONNX has no log1p; exp(-|x|) <= 1, so no overflow)."""
    x, t = ins
    relu = e.node("Relu", [x], f"{n}.relu")
    tail = e.node("Log", [e.node("Add", [e.node("Exp", [e.node("Neg", [e.node("Abs", [x], f"{n}.abs")], f"{n}.neg")],
                                                f"{n}.exp"), _onnx_const(e, n, 1.0, "one")], f"{n}.one_plus")],
                  f"{n}.log")
    term = e.node("Add", [e.node("Sub", [relu, e.node("Mul", [x, t], f"{n}.xt")], f"{n}.diff"), tail], f"{n}.term")
    return e.node("ReduceMean", [term], n, out, keepdims=0)


def _onnx_layer_norm(e, n, ins, a, out):
    rank = e.type(e.operands(n)[0]).rank
    return e.node("LayerNormalization", ins, n, out, axis=a["axis"] % rank, epsilon=float(a["eps"]))


# -- the ops ---------------------------------------------------------------------------------------

op("erf", 1, _unary("erf"), _erf, _erf_vjp, c="erff(a)", onnx="Erf",
   doc="the error function, 2/sqrt(pi) * integral of exp(-t^2) from 0 to x")

# gelu's C expression depends on its `approximate` attribute: `c` is a function of the attributes
op("gelu", 1, _gelu_rule, _gelu, _gelu_vjp, attrs={"approximate": "none"}, onnx=_onnx_gelu,
   c=lambda attrs: ("0.5f * a * (1.0f + tanhf(0.7978845608028654f * (a + 0.044715f * a * a * a)))"
                    if attrs["approximate"] == "tanh" else "0.5f * a * (1.0f + erff(a * 0.7071067811865476f))"),
   doc='x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) (PyTorch\'s GELU); approximate = "tanh": '
       "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))")

op("softplus", 1, _softplus_rule, _softplus, _softplus_vjp, attrs={"beta": 1.0, "threshold": 20.0},
   c="beta * a > threshold ? a : log1pf(expf(beta * a)) / beta", onnx=_onnx_softplus,
   doc="log(1 + exp(beta x)) / beta, and x where beta x > threshold (PyTorch's Softplus; beta 1, threshold 20)")

op("pow", 2, _binary("pow"), np.power, _pow_vjp, c="powf(a, b)", onnx="Pow",
   doc="x ** y elementwise, with broadcasting (PyTorch's pow; the derivatives at x = 0 are PyTorch's)")

op("max", 2, _binary("max"), np.maximum, _extremum_vjp("lt"), c="(a > b || a != a) ? a : b", onnx="Max",
   doc="the larger of a and b elementwise, with broadcasting; NaN if either is (torch.maximum); "
       "a tie sends half the gradient to each")
op("min", 2, _binary("min"), np.minimum, _extremum_vjp("gt"), c="(a < b || a != a) ? a : b", onnx="Min",
   doc="the smaller of a and b elementwise, with broadcasting; NaN if either is (torch.minimum); "
       "a tie sends half the gradient to each")

# comparisons: 1.0 where they hold, else 0.0; the .dln operators > < >= <= == != lower to them
for _name, _fn, _c, _onnx in (("gt", np.greater, "a > b", _onnx_compare("Greater")),
                              ("lt", np.less, "a < b", _onnx_compare("Less")),
                              ("ge", np.greater_equal, "a >= b", _onnx_compare("GreaterOrEqual")),
                              ("le", np.less_equal, "a <= b", _onnx_compare("LessOrEqual")),
                              ("eq", np.equal, "a == b", _onnx_compare("Equal")),
                              ("ne", np.not_equal, "a != b", _onnx_compare("Equal", negate=True))):
    op(_name, 2, _binary(_name, f"the operator {_c.split()[1]} ({_name})"), _compare(_fn), _no_gradient, c=f"({_c}) ? 1.0f : 0.0f", onnx=_onnx,
       doc=f"1.0 where {_c.replace('a', 'x').replace('b', 'y')}, else 0.0 (f32, no gradient); "
           f"the operator {_c.split()[1]}")

op("pick", 2, _binary("pick"), _pick, _pick_vjp, attrs={"when": True}, dsl=False,
   c="((a != 0.0f) == when) ? b : 0.0f",
   doc="x where (c != 0) == when, else 0 (the halves of `where`, and masked adjoints)")
op("where", 3, _where_rule, _where, family="composite", lower=_where_lower, onnx=_onnx_where,
   doc="a where c != 0, else b, with broadcasting; the gradient goes to a and b (masked), none to c")

op("bce_logits", 2, _bce_rule, _bce_logits, _bce_vjp, family="reduce", onnx=_onnx_bce,
   kernel={"map": "fmaxf(a, 0.0f) - a * b + log1pf(expf(-fabsf(a)))", "finish": "acc / (float)extent"},
   doc="mean over all elements of the binary cross-entropy of sigmoid(logits) and targets "
       "(PyTorch's binary_cross_entropy_with_logits)")

op("layer_norm", 3, _layer_norm_rule, _layer_norm, family="composite", lower=_layer_norm_lower,
   attrs={"axis": -1, "eps": 1e-5}, onnx=_onnx_layer_norm,
   flops=lambda n, size: 5 * size(n.type),   # per element: the two statistics, a subtraction, a division,
                                             # the scale and the shift
   doc="normalize over the axes axis.. (default the last) of each example, then * gamma + beta "
       "(PyTorch's LayerNorm)")
