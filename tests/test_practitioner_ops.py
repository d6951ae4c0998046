"""The elementwise ops and losses of issue 23 (ir/ops_math.py), each against PyTorch, which nobody
here wrote: erf, gelu (both forms), softplus (beta, threshold), pow, elementwise max / min, the
comparison operators and where, bce_logits and layer_norm (and the prelude's layernorm).

Every case is one expression `y = EXPR` over params; its loss is sum(y * k) for a random input k
(a scalar loss is itself times 3), so the adjoint reaching the op is not all ones. The values of
the params include each op's edge points: ties for max / min, 0 for pow and the comparisons,
beta x above the threshold for softplus, logits of +-100 for bce_logits.

Tolerances:
- the interpreter in float64 against torch in float64: both exact to a few ulps of the values,
  so 1e-9 relative (with an absolute floor of 1e-12 for values that are 0 on one side);
- the emulator (float32, the generated kernels) against torch in float64 from the same float32
  values: relative error below 1e-4 (the issue's bound), measured against the largest value of each
  tensor (`close`), since single elements near 0 carry float32 rounding of their neighbours' size;
- onnxruntime (float32) against the float32 interpreter: 1e-5 relative.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import dlc
from dlc.dsl.frontend import lower
from conftest import dlc_cli, import_torch, needs_emu

# -- the cases -----------------------------------------------------------------------------------
# name -> (expression over the params, {param: values}, torch function of the params (tensors)).
# Values are float32-representable, so the float32 and float64 runs start from the same numbers.


def _v(*rows):
    return np.asarray(rows, np.float64)


def _random(seed, *shape, scale=1.0):
    return np.asarray(np.random.default_rng(seed).normal(0.0, scale, shape), np.float32).astype(np.float64)


# max / min: ties in the first column (a == b) and at 0; b broadcasts over the rows
_TIE_A = _v([1.5, -2.0, 0.0, 3.0], [0.25, 0.0, -1.0, 2.0], [-0.5, 4.0, 0.0, -3.0])
_TIE_B = _v(1.5, 0.0, 0.0, -3.0)
# pow: a base with zeros, exponents 0, 2, 0.5 and 3 (0^0 = 1; 0^2 sends 0 to both operands)
_POW_A = _v([0.0, 0.0, 1.5, 0.0], [2.0, 0.5, 0.0, 1.25], [0.75, 3.0, 1.0, 2.5])
_POW_Y = _v(0.0, 2.0, 0.5, 3.0)

CASES = {
    "erf": ("erf(a)", {"a": _random(1, 3, 4, scale=1.5)}, lambda T, F, a: T.erf(a)),
    "gelu": ("gelu(a)", {"a": np.append(_random(2, 11, scale=2.0), 0.0).reshape(3, 4)},
             lambda T, F, a: F.gelu(a)),
    "gelu_tanh": ('gelu(a, approximate = "tanh")', {"a": np.append(_random(3, 11, scale=2.0), 0.0).reshape(3, 4)},
                  lambda T, F, a: F.gelu(a, approximate="tanh")),
    # 25 and 30 lie above the default threshold 20: there softplus is x and its derivative 1
    "softplus": ("softplus(a)", {"a": _v([25.0, -3.0, 0.0, 30.0], [1.0, -40.0, 19.5, 2.0])},
                 lambda T, F, a: F.softplus(a)),
    # beta x > 5 at x = 2.75 and 3: linear there; 2.25 just below
    "softplus_beta": ("softplus(a, beta = 2, threshold = 5)", {"a": _v([2.75, 2.25, -1.0, 3.0], [0.5, -0.25, 1.0, 0.0])},
                      lambda T, F, a: F.softplus(a, beta=2, threshold=5)),
    "pow": ("pow(a, y)", {"a": _POW_A, "y": _POW_Y}, lambda T, F, a, y: T.pow(a, y)),
    "pow_const": ("pow(a, 2)", {"a": _v([0.0, -1.5, 2.0], [0.5, 0.0, -3.0])}, lambda T, F, a: T.pow(a, 2.0)),
    "pow_tensor": ("pow(a, y)", {"a": np.abs(_random(4, 2, 3)) + 0.5, "y": _random(5, 2, 3)},
                   lambda T, F, a, y: T.pow(a, y)),
    "max": ("max(a, b)", {"a": _TIE_A, "b": _TIE_B}, lambda T, F, a, b: T.maximum(a, b)),
    "min": ("min(a, b)", {"a": _TIE_A, "b": _TIE_B}, lambda T, F, a, b: T.minimum(a, b)),
    # a tie with a number: half the adjoint at a = 0 (torch.maximum; torch.clamp would send all of it)
    "max_relu": ("max(a, 0)", {"a": _v([0.0, -1.0, 2.0])}, lambda T, F, a: T.maximum(a, T.zeros((), dtype=a.dtype))),
    # where with each comparison: equal elements (the first column, and 0) decide > from >=
    "where_gt": ("where(a > b, a * a, b * 3)", {"a": _TIE_A, "b": _TIE_B},
                 lambda T, F, a, b: T.where(a > b, a * a, b * 3)),
    "where_ge": ("where(a >= b, a * a, b * 3)", {"a": _TIE_A, "b": _TIE_B},
                 lambda T, F, a, b: T.where(a >= b, a * a, b * 3)),
    "where_lt": ("where(a < 0, exp(a), a + 1)", {"a": _TIE_A}, lambda T, F, a: T.where(a < 0, T.exp(a), a + 1)),
    "where_le": ("where(a <= 0, -a, sqrt(a + 1))", {"a": _TIE_A},
                 lambda T, F, a: T.where(a <= 0, -a, T.sqrt(a + 1))),
    "where_eq_ne": ("where(a == b, a, 0) + (a != b) * b * 2", {"a": _TIE_A, "b": _TIE_B},
                    lambda T, F, a, b: T.where(a == b, a, T.zeros(())) + (a != b).to(a.dtype) * b * 2),
    # the branch not taken may be infinite: log(a) at a <= 0 never reaches the value
    "where_guard": ("where(a > 0, log(max(a, 0.001)), a)", {"a": _TIE_A},
                    lambda T, F, a: T.where(a > 0, T.log(T.maximum(a, T.tensor(0.001, dtype=a.dtype))), a)),
    "bce_logits": ("bce_logits(a, t)",
                   {"a": _v([100.0, -100.0, 0.0, 2.5], [-1.5, 40.0, -60.0, 0.25]),
                    "t": _v([1.0, 0.0, 0.5, 1.0], [0.0, 1.0, 1.0, 0.25])},
                   lambda T, F, a, t: F.binary_cross_entropy_with_logits(a, t)),
    "bce_logits_wrong": ("bce_logits(a, t)", {"a": _v([100.0, -100.0], [30.0, -0.5]),
                                              "t": _v([0.0, 1.0], [0.0, 1.0])},
                         lambda T, F, a, t: F.binary_cross_entropy_with_logits(a, t)),
    "layer_norm": ("layer_norm(a, g, s)", {"a": _random(6, 3, 5, scale=2.0) + 1.0, "g": _random(7, 5) + 1.0,
                                           "s": _random(8, 5)},
                   lambda T, F, a, g, s: F.layer_norm(a, (5,), g, s)),
    "layer_norm_last2": ("layer_norm(a, g, s, axis = 1, eps = 0.001)",
                         {"a": _random(9, 2, 3, 4), "g": _random(10, 3, 4) + 1.0, "s": _random(11, 3, 4)},
                         lambda T, F, a, g, s: F.layer_norm(a, (3, 4), g, s, eps=1e-3)),
}


def _out_shape(case) -> tuple:
    """The result's shape: the operands' shapes broadcast together; a loss is a scalar."""
    expr, values, _ = case
    return () if expr.startswith("bce_logits") else np.broadcast_shapes(*(v.shape for v in values.values()))


def model_text(names) -> str:
    """One model holding the cases `names`: params NAME_P, input NAME_k of the result's shape,
    output NAME; the loss sums every case's sum(y * k) (or 3 y for a scalar y)."""
    lines, terms = [], []
    for name in names:
        expr, values, _ = CASES[name]
        for p, v in values.items():
            lines.append(f"    param {name}_{p} : f32[{', '.join(map(str, v.shape))}]")
            expr = _rename(expr, p, f"{name}_{p}")
        shape = _out_shape(CASES[name])
        lines.append(f"    {name} = {expr}")
        if shape:
            lines.append(f"    input {name}_k : f32[{', '.join(map(str, shape))}]")
            terms.append(f"sum({name} * {name}_k)")
        else:
            terms.append(f"{name} * 3")
    outputs = ", ".join(names)
    return ("model ops {\n" + "\n".join(lines) + f"\n    loss = {' + '.join(terms)}\n    output {outputs}\n"
            "    minimize loss with sgd(lr = 0.1)\n}\n")


def _rename(expr: str, old: str, new: str) -> str:
    return re.sub(rf"(?<![\w.\"]){old}(?![\w\"])", new, expr)


def feeds_for(names) -> dict:
    out = {}
    for name in names:
        shape = _out_shape(CASES[name])
        if shape:
            out[f"{name}_k"] = _random(100 + len(name), *shape)
    return out


def torch_case(name, dtype):
    """(value, {param: gradient}) of case `name` in torch, the loss as the model writes it."""
    torch = import_torch()
    expr, values, fn = CASES[name]
    params = {p: torch.tensor(v, dtype=dtype, requires_grad=True) for p, v in values.items()}
    y = fn(torch, torch.nn.functional, *params.values())
    k = feeds_for([name]).get(f"{name}_k")
    loss = (y * torch.tensor(k, dtype=dtype)).sum() if k is not None else y * 3
    loss.backward()
    return y.detach().numpy(), {p: t.grad.numpy() for p, t in params.items()}


def set_params(m, names, dtype):
    for name in names:
        for p, v in CASES[name][1].items():
            m.params[f"{name}_{p}"] = np.asarray(v, dtype)


NAMES = sorted(CASES)


@pytest.fixture(scope="module")
def interp64():
    m = dlc.compile(model_text(NAMES), backend="interp", float_dtype="float64")
    set_params(m, NAMES, np.float64)
    return m, m.forward(**feeds_for(NAMES)), m.grad(**feeds_for(NAMES))[1]


@pytest.mark.parametrize("name", NAMES)
def test_interpreter_agrees_with_pytorch_in_float64(interp64, name):
    torch = import_torch()
    _, out, grads = interp64
    want, want_grads = torch_case(name, torch.float64)
    np.testing.assert_allclose(out[name], want, rtol=1e-9, atol=1e-12)
    for p, g in want_grads.items():
        np.testing.assert_allclose(grads[f"{name}_{p}"], g, rtol=1e-9, atol=1e-12, err_msg=f"gradient of {p}")


def close(got, want, what):
    """Relative error below 1e-4, against the largest finite magnitude of the tensor (see the module
    doc); infinities in the same places."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, what
    finite = np.isfinite(want)  # an infinity (the derivative of 0 ** 0.5) must be the same infinity
    np.testing.assert_array_equal(got[~finite], want[~finite], err_msg=what)
    got, want = got[finite], want[finite]
    scale = max(np.abs(want).max(initial=0.0), 1e-30)
    err = np.abs(got - want).max(initial=0.0) / scale
    assert err < 1e-4, f"{what}: relative error {err:.3g}\ngot\n{got}\nwant\n{want}"


@needs_emu
@pytest.mark.parametrize("level", [0, 2])
def test_emulator_agrees_with_pytorch_in_float32(level):
    torch = import_torch()
    m = dlc.compile(model_text(NAMES), backend="emu", opt_level=level)
    set_params(m, NAMES, np.float32)
    feeds = {k: v.astype(np.float32) for k, v in feeds_for(NAMES).items()}
    out = m.forward(**feeds)
    _, grads = m.grad(**feeds)
    for name in NAMES:
        want, want_grads = torch_case(name, torch.float64)
        assert np.all(np.isfinite(out[name])), name
        close(out[name], want, name)
        for p, g in want_grads.items():
            close(grads[f"{name}_{p}"], g, f"{name}: gradient of {p}")


def test_ties_split_the_gradient_as_torch_does():
    """At a == b, torch.maximum sends half the adjoint to each operand (checked against torch
    above); here the numbers themselves: a tie in the first element, none in the second."""
    m = dlc.compile("model m {\n param a : f32[2]\n param b : f32[2]\n minimize sum(max(a, b)) with sgd(lr = 1)\n}",
                    backend="interp", float_dtype="float64")
    m.params["a"], m.params["b"] = np.array([1.0, 2.0]), np.array([1.0, 0.0])
    _, g = m.grad()
    assert g["a"].tolist() == [0.5, 1.0] and g["b"].tolist() == [0.5, 0.0]


def test_bce_with_extreme_logits_is_finite_and_exact():
    m = dlc.compile("model m {\n input x : f32[4]\n input t : f32[4]\n l = bce_logits(x, t)\n output l\n}",
                    backend="interp")
    got = m.forward(x=np.array([100, -100, 100, -100], np.float32), t=np.array([1, 0, 0, 1], np.float32))["l"]
    assert got == pytest.approx(100.0 / 2, rel=1e-6)  # two right (loss ~ e^-100) and two wrong by 100


def test_comparison_operators_bind_looser_than_arithmetic():
    """`x - 1 > 2 * y` is (x - 1) > (2 * y); the value is 0 or 1."""
    src = "model m {\n input x : f32[3]\n input y : f32[3]\n big = x - 1 > 2 * y\n output big\n}"
    g = lower(src)
    assert g.op("big") == "gt" and [g.op(a) for a in g.operands("big")] == ["sub", "mul"]
    m = dlc.compile(src, backend="interp")
    got = m.forward(x=np.array([3.0, 3.0, 0.0], np.float32), y=np.array([0.5, 1.0, -1.0], np.float32))["big"]
    assert got.tolist() == [1.0, 0.0, 1.0] and got.dtype == np.float32


def test_where_and_layer_norm_are_lowered_before_autodiff():
    m = dlc.compile("model m {\n input x : f32[N, 4]\n n = layernorm(where(x > 0, x, 0.1 * x))\n output n\n"
                    " minimize mean(n * n) with sgd(lr = 0.1)\n}", backend="interp")
    forward, optimized = m.ir(stage="forward"), m.ir(stage="optimized")
    assert "= where(" in forward and "= layer_norm[" in forward
    assert "= where(" not in optimized and "layer_norm[" not in optimized and "= pick[" in optimized
    assert sorted(m.params) == ["n.beta", "n.gamma"]  # the prelude's layernorm names its params after the call


# -- a model that trains ------------------------------------------------------------------------------

TRAIN = """model ring {
    input  x : f32[N, 2]
    input  t : f32[N, 1]
    param  w1 : f32[2, 16] = normal(0, 1)
    param  b1 : f32[16] = zeros
    param  w2 : f32[16, 1] = normal(0, 0.3)
    param  b2 : f32[1] = zeros
    r2     = sum(pow(x, 2), axis = 1, keepdims = true)
    h      = gelu(layernorm(x @ w1 + b1))
    g      = where(r2 > 4, softplus(h, beta = 2), max(h, -0.5))
    logits = g @ w2 + b2
    loss   = bce_logits(logits, t)
    output logits
    minimize loss with adam(lr = 0.05)
}"""


def ring_data(n=256, seed=0):
    r = np.random.default_rng(seed)
    x = r.uniform(-3, 3, (n, 2)).astype(np.float32)
    t = (np.sqrt((x ** 2).sum(1, keepdims=True)) < 1.8).astype(np.float32)  # inside a circle
    return x, t


def test_a_model_of_the_new_ops_trains():
    m = dlc.compile(TRAIN, backend="interp", seed=0)
    x, t = ring_data()
    first = m.step(x=x, t=t)
    for _ in range(150):
        last = m.step(x=x, t=t)
    assert last < 0.5 * first, (first, last)
    accuracy = ((m.forward(x=x)["logits"] > 0) == (t > 0.5)).mean()
    assert accuracy > 0.85, accuracy


# -- ONNX -------------------------------------------------------------------------------------------

EXPORT_NAMES = NAMES


def test_export_agrees_with_onnxruntime(onnx_runtime):
    onnx, ort = onnx_runtime
    m = dlc.compile(model_text(EXPORT_NAMES), backend="interp")
    set_params(m, EXPORT_NAMES, np.float32)
    proto, _ = m.to_onnx()
    onnx.checker.check_model(proto)
    kinds = {n.op_type for n in proto.graph.node}
    assert {"Erf", "Pow", "Max", "Min", "Greater", "Where", "LayerNormalization", "Softplus"} <= kinds
    s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in s.get_outputs()], s.run(None, {})))
    want = m.forward()
    for name in EXPORT_NAMES:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_export_of_the_training_model_agrees_with_onnxruntime(onnx_runtime):
    onnx, ort = onnx_runtime
    m = dlc.compile(TRAIN, backend="interp", seed=3)
    proto, _ = m.to_onnx()
    x, _ = ring_data(32, seed=5)
    s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(s.run(None, {"x": x})[0], m.forward(x=x)["logits"], rtol=1e-5, atol=1e-6)


# -- NVRTC ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("level", [0, 2])
def test_the_new_kernels_compile_with_nvrtc(nvrtc, level):
    from dlc.codegen import generate
    from dlc.codegen.nvrtc import check_module
    mod = generate(dlc.compile(model_text(NAMES), backend="interp", opt_level=level).graph)
    for c in ("erff(", "powf(", "log1pf(", "tanhf("):
        assert c in mod.source
    check_module(mod)


# -- bad input: one test per message --------------------------------------------------------------

def _err(body, inputs="input x : f32[N, 4]\n    input y : i32[N]"):
    return f"model m {{\n    {inputs}\n    {body}\n    output h\n}}\n"


BAD = [
    ('h = gelu(x, approximate = "erf")', r'gelu\(\): approximate must be "none" or "tanh", found \'erf\''),
    ("h = softplus(x, beta = 0)", r"softplus\(\): beta must be > 0, found 0"),
    ("h = erf(y)", r"erf\(\) expects f32 operands, found i32\[N\]"),
    ("h = y > 0", r"the operator > \(gt\) expects f32 operands, found i32\[N\]"),
    ("h = 1 > 2", r"operator > compares tensors .* found two numbers 1 and 2"),
    ("h = x < x < x", r"syntax error: comparisons do not chain: .* found a second comparison '<'"),
    ("h = (x < x) == x >= x", r"syntax error: comparisons do not chain: .* found a second comparison '>='"),
    ("h = > x", r"syntax error: unexpected '>'; expected"),
    ("h = where(y, x, x)", r"where\(\) expects f32 operands, found i32\[N\]"),
    ("h = where(x, zeros([N, 3]), x)", r"cannot broadcast .*\(where of condition f32\[N, 4\] and f32\[N, 3\]\)"),
    ("h = where(x, x, zeros([N, 3]))", r".*where of condition f32\[N, 4\], f32\[N, 4\] and f32\[N, 3\]"),
    ("h = bce_logits(x, zeros([N, 3]))",
     r"shape mismatch in bce_logits: logits f32\[N, 4\] and targets f32\[N, 3\] differ"),
    ("h = layer_norm(x, zeros([3]), zeros([4]))",
     r"layer_norm: gamma must be f32\[4\] \(the normalized axes 1\.\. of f32\[N, 4\]\), found f32\[3\]"),
    ("h = layer_norm(x, zeros([4]), zeros([4]), axis = 2)",
     r"layer_norm: axis 2 is not an axis of its input f32\[N, 4\]"),
    ("h = layer_norm(x, zeros([N, 4]), zeros([N, 4]), axis = 0)",
     r"layer_norm: the normalized axes \[0, 1\] of f32\[N, 4\] must have known sizes"),
    ("h = layer_norm(x, zeros([4]), zeros([4]), eps = 0)", r"layer_norm: eps must be > 0, found 0"),
    ("h = layernorm(reshape(x, [N, 2, 2]))",
     r"shape mismatch: layernorm\(\) expects x: \[B, F\], found f32\[N, 2, 2\]"),
]


@pytest.mark.parametrize("body,message", BAD, ids=[b for b, _ in BAD])
def test_bad_input_is_a_located_error(body, message):
    with pytest.raises(dlc.DlcError) as e:
        dlc.compile(_err(body), backend="interp")
    assert e.value.loc is not None and e.value.loc.line == 4, str(e.value)
    assert re.search(message, e.value.message), str(e.value)


def test_the_cli_reports_a_bad_comparison_located(tmp_path):
    f = tmp_path / "bad.dln"
    f.write_text(_err("h = y >= 0"))
    r = dlc_cli("check", f, rc=2)
    assert f"{f}:4:11: error: the operator >= (ge) expects f32 operands, found i32[N]" in r.stderr


def test_max_and_min_propagate_nan_as_torch_does():
    """A NaN operand gives NaN, and sends the whole adjoint to both operands (torch.maximum's rule).
    (Params and data may not hold NaN: it is made inside, as log(-1).)"""
    torch = import_torch()
    m = dlc.compile("model m {\n input c : f32[3]\n param a : f32[3]\n param b : f32[3]\n u = a + log(c)\n"
                    " v = b + log(2 - c)\n h = max(u, v) + 3 * min(u, v)\n output h\n"
                    " minimize sum(h) with sgd(lr = 1)\n}", backend="interp", float_dtype="float64")
    a, b, c = np.array([0.5, 1.0, 2.0]), np.array([1.0, 0.25, 0.5]), np.array([-1.0, 3.0, 1.0])
    m.params["a"], m.params["b"] = a, b
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (a, b))
    u, v = ta + torch.log(torch.tensor(c)), tb + torch.log(2 - torch.tensor(c))
    h = torch.maximum(u, v) + 3 * torch.minimum(u, v)
    h.sum().backward()
    got = m.forward(c=c)["h"]
    assert np.isnan(got[:2]).all() and np.isfinite(got[2])
    np.testing.assert_allclose(got, h.detach().numpy(), rtol=1e-12)   # NaN in the same places
    _, g = m.grad(c=c)
    # a NaN: 1 (max) + 3 (min) to both; else max's 1 to a (the larger), min's 3 to b
    assert g["a"].tolist() == [4.0, 4.0, 1.0] and g["b"].tolist() == [4.0, 4.0, 3.0]
    np.testing.assert_array_equal(g["a"], ta.grad.numpy())
    np.testing.assert_array_equal(g["b"], tb.grad.numpy())


def test_the_ir_of_the_new_ops_reads_back():
    from dlc.ir.text import parse_ir, print_ir
    m = dlc.compile(model_text(NAMES), backend="interp", opt_level=2)
    for stage in ("forward", "optimized"):
        text = m.ir(stage=stage)
        assert print_ir(parse_ir(text)) == text
    assert 'gelu[approximate=tanh]' in m.ir(stage="forward")


def test_interpreter_computes_ieee_results_without_numpy_warnings():
    """bce_logits at logits of +-100 (its gradient's `where` evaluates exp(100) on the branch it
    does not take) and log(-1): the interpreter gives the IEEE results silently, as the kernels
    do, with no NumPy RuntimeWarning on the user's terminal; --check-numerics still stops at the NaN."""
    import warnings
    m = dlc.compile("model m {\n input x : f32[4]\n input t : f32[4]\n l = bce_logits(x, t)\n output l\n"
                    " n = log(x)\n output n\n}", backend="interp")
    x = np.array([100.0, -100.0, 3.0, -1.0], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # any warning fails the test
        got = m.run(["l", "n"], {"x": x, "t": np.array([1.0, 0.0, 1.0, 0.0], np.float32)})
    assert np.isfinite(got["l"]) and np.isnan(got["n"][3])
    m.check_numerics = True
    with pytest.raises(dlc.DlcError, match="produced nan"):
        m.run(["n"], {"x": x, "t": np.zeros(4, np.float32)})
