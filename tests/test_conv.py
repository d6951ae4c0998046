"""Convolutional ops on the interpreter: forward against naive loops, gradients against finite
differences (float64), dropout's generator and masks, bad input, and the example networks."""
import json

import numpy as np
import pytest

import dlc
from dlc.ir.philox import keep_mask, philox_word0, uniform
from conftest import dlc_cli


def naive_conv(x, w, s, p, d):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    ho = (h + 2 * p - d * (kh - 1) - 1) // s + 1
    wo = (wd + 2 * p - d * (kw - 1) - 1) // s + 1
    out = np.zeros((n, o, ho, wo))
    for b in range(n):
        for f in range(o):
            for i in range(ho):
                for j in range(wo):
                    patch = xp[b, :, i * s: i * s + d * (kh - 1) + 1: d, j * s: j * s + d * (kw - 1) + 1: d]
                    out[b, f, i, j] = (patch * w[f]).sum()
    return out


def naive_pool(x, k, s, p, kind):
    n, c, h, w = x.shape
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            win = xp[:, :, i * s: i * s + k, j * s: j * s + k]
            out[:, :, i, j] = win.max(axis=(2, 3)) if kind == "max" else win.mean(axis=(2, 3))
    return out


@pytest.mark.parametrize("shape,wshape,s,p,d", [
    ((2, 3, 7, 5), (4, 3, 3, 3), 1, 1, 1),
    ((1, 2, 9, 8), (3, 2, 3, 2), 2, 1, 1),     # non-square kernel, stride 2
    ((2, 2, 9, 9), (2, 2, 3, 3), 1, 2, 2),     # dilation 2
    ((3, 5, 4, 4), (6, 5, 1, 1), 1, 0, 1),     # 1x1: the matrix-product path
    ((1, 1, 5, 5), (1, 1, 5, 5), 1, 0, 1),     # kernel as large as the input
])
def test_conv2d_forward_matches_naive_loops(shape, wshape, s, p, d):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(shape), rng.standard_normal(wshape)
    got = dlc.ir.ops.OPS["conv2d"].ref(x, w, stride=s, padding=p, dilation=d)
    np.testing.assert_allclose(got, naive_conv(x, w, s, p, d), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_forward_matches_naive_loops(k, s, p, kind):
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 6))
    got = dlc.ir.ops.OPS[f"{kind}pool2d"].ref(x, kernel=k, stride=s, padding=p)
    np.testing.assert_allclose(got, naive_pool(x, k, s, p, kind), rtol=1e-12, atol=1e-12)


def numeric_grad(m, name, feeds):
    """Central differences of the loss w.r.t. one param (float64, eps 1e-6)."""
    base = np.array(m.params[name])
    num = np.zeros_like(base)
    eps = 1e-6
    for i in np.ndindex(base.shape):
        for sign in (1, -1):
            v = base.copy()
            v[i] += sign * eps
            m.params[name] = v
            num[i] += sign * m.grad(**feeds)[0] / (2 * eps)
    m.params[name] = base
    return num


def check_grads(src, feeds):
    m = dlc.compile(src, backend="interp", float_dtype="float64")
    loss, grads = m.grad(**feeds)
    # float64 central differences with eps = 1e-6: truncation error ~eps^2 * f''' (negligible for
    # these smooth, kink-free-at-the-sample losses) and rounding error ~ulp(loss) * (number of
    # summed terms) / eps, bounded here by 100 * 2.2e-16 * |loss| / 1e-6.
    atol = 100 * 2.2e-16 * max(1.0, abs(loss)) / 1e-6
    for name, g in grads.items():
        num = numeric_grad(m, name, feeds)
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=atol, err_msg=name)


FEEDS = {"x": np.random.default_rng(2).standard_normal((2, 3, 7, 5)), "t": None}


@pytest.mark.parametrize("conv", [
    "conv2d(x, k, padding = 1)",
    "conv2d(x, k, stride = 2, padding = 1)",
    "conv2d(x, k, dilation = 2, padding = 2)",
    "conv2d(x, k, stride = [2, 1], padding = [0, 1])",
])
def test_conv2d_gradients(conv):
    src = f"""
    model t {{
        input x : f32[N, 3, 7, 5]
        param k : f32[4, 3, 3, 3] = he
        param b : f32[4, 1, 1] = normal(0, 1)
        y = {conv} + b
        loss = sum(y * y) + sum(sigmoid(y))
        output y
        minimize loss with sgd(lr = 0.1)
    }}"""
    check_grads(src, {"x": FEEDS["x"]})


def test_conv_1x1_and_input_gradient_through_two_layers():
    src = """
    model t {
        input x : f32[N, 3, 7, 5]
        param a : f32[4, 3, 1, 1] = he
        param k : f32[2, 4, 3, 3] = he
        h = tanh(conv2d(x, a))
        y = conv2d(h, k, padding = 1)
        loss = sum(y * y)
        output y
        minimize loss with sgd(lr = 0.1)
    }"""
    check_grads(src, {"x": FEEDS["x"]})


@pytest.mark.parametrize("pool", [
    "maxpool2d(c, 2)", "maxpool2d(c, 3, stride = 2, padding = 1)", "maxpool2d(c, 3, stride = 1, padding = 1)",
    "avgpool2d(c, 2)", "avgpool2d(c, 3, stride = 2, padding = 1)",
])
def test_pooling_gradients(pool):
    # continuous random data: no ties inside a window, so the max is differentiable there
    src = f"""
    model t {{
        input x : f32[N, 3, 7, 5]
        param k : f32[2, 3, 3, 3] = he
        c = conv2d(x, k, padding = 1)
        y = {pool}
        loss = sum(y * y)
        output y
        minimize loss with sgd(lr = 0.1)
    }}"""
    check_grads(src, {"x": FEEDS["x"]})


def test_concat_gradients_and_shape():
    src = """
    model t {
        input x : f32[N, 3, 7, 5]
        param a : f32[2, 3, 1, 1] = he
        param k : f32[3, 3, 3, 3] = he
        y = concat(conv2d(x, a), conv2d(x, k, padding = 1), x, axis = 1)
        loss = sum(y * y * y)
        output y
        minimize loss with sgd(lr = 0.1)
    }"""
    m = dlc.compile(src, backend="interp")
    assert m.forward(x=FEEDS["x"])["y"].shape == (2, 8, 7, 5)
    check_grads(src, {"x": FEEDS["x"]})


def test_maxpool_routes_gradient_to_the_argmax():
    x = np.array([[[[1.0, 5.0], [2.0, 3.0]]]])
    y = dlc.ir.ops.OPS["maxpool2d"].ref(x, kernel=2, stride=None, padding=0)
    dx = dlc.ir.ops.OPS["maxpool2d_grad"].ref(np.ones_like(y), x, y, kernel=2, stride=None, padding=0)
    np.testing.assert_array_equal(dx, [[[[0, 1], [0, 0]]]])


# -- dropout ------------------------------------------------------------------------------------

def test_philox_known_answers():
    # word 0 of the Random123 known-answer vectors for philox4x32-10
    assert int(philox_word0(0, 0, [0], [0], 0, 0)[0]) == 0x6627E8D5
    assert int(philox_word0(0xFFFFFFFF, 0xFFFFFFFF, [0xFFFFFFFF], [0xFFFFFFFF], 0xFFFFFFFF, 0xFFFFFFFF)[0]) == 0x408F276D
    assert int(philox_word0(0xA4093822, 0x299F31D0, [0x243F6A88], [0x85A308D3], 0x13198A2E, 0x03707344)[0]) == 0xD16CFE09


def test_uniform_and_mask_statistics():
    u = uniform(7, 1, 3, 200_000)
    assert 0 <= u.min() and u.max() < 1
    # mean of 200k uniforms: standard error 0.29/sqrt(2e5) = 6.5e-4; allow 5 standard errors
    assert abs(u.mean() - 0.5) < 3.3e-3
    keep = keep_mask(7, 1, 3, (400, 500), 0.3)
    # keep rate 0.7 over 2e5 draws: standard error 1.0e-3; allow 5
    assert abs(keep.mean() - 0.7) < 5e-3
    assert (keep == keep_mask(7, 1, 3, (400, 500), 0.3)).all()
    assert (keep != keep_mask(7, 1, 4, (400, 500), 0.3)).any()  # another step, another mask
    assert (keep != keep_mask(7, 2, 3, (400, 500), 0.3)).any()  # another op, another mask


DROPOUT = """
model t {
    input x : f32[N, 20]
    input y : i32[N]
    param w : f32[20, 5] = xavier
    h = dropout(x, 0.5)
    logits = dropout(h @ w, 0.2)
    loss = softmax_xent(logits, y)
    output logits
    minimize loss with sgd(lr = 0.1)
}"""


def test_dropout_inference_is_identity_and_training_scales_kept_values():
    m = dlc.compile(DROPOUT, backend="interp", float_dtype="float64")
    x = np.random.default_rng(3).random((6, 20)) + 0.5
    np.testing.assert_allclose(m.forward(x=x)["logits"], x @ m.params["w"])
    h = dlc.ir.ops.OPS["dropout"].ref(x, p=0.5, salt=0, training=True, rng=(0, 0))
    kept = h != 0
    np.testing.assert_allclose(h[kept], 2 * x[kept])
    np.testing.assert_array_equal(kept, keep_mask(0, 0, 0, x.shape, 0.5))


def test_dropout_gradient_uses_the_same_mask():
    x = np.random.default_rng(4).random((6, 20))
    check_grads(DROPOUT, {"x": x, "y": np.arange(6) % 5})


def test_dropout_ops_get_distinct_salts():
    m = dlc.compile(DROPOUT, backend="interp")
    salts = sorted(m.graph.attrs(n)["salt"] for n in m.stages["forward"].nodes_of("dropout"))
    assert salts == [0, 1]


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("line,expect", [
    ("y = conv2d(x, k5)", "larger than the padded input"),
    ("y = conv2d(x, kc)", "channel mismatch in conv2d"),
    ("y = concat(x, z, axis = 1)", "shape mismatch in concat"),
    ("y = maxpool2d(x, 2, padding = 2)", "padding"),
    ("y = dropout(x, 1.5)", "dropout probability"),
])
def test_bad_convolutional_input_is_located(line, expect):
    src = f"""model t {{
    input x : f32[N, 3, 4, 4]
    input z : f32[N, 3, 5, 4]
    param k5 : f32[2, 3, 5, 5] = he
    param kc : f32[2, 4, 3, 3] = he
    {line}
    output y
}}"""
    with pytest.raises(dlc.DlcError) as e:
        dlc.compile(src, backend="interp")
    assert expect in e.value.message
    assert e.value.loc is not None and e.value.loc.line == 6


# -- dlc check FLOPs and the example networks -----------------------------------------------------

def test_check_reports_what_a_1x1_reduction_saves(examples_dir):
    out = dlc_cli("check", examples_dir / "bottleneck.dln", rc=0).stdout
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.startswith("  ") and len(ln.split()) >= 4}
    maps = 28 * 28
    # conv: 2*C*k*k multiply-adds per output element; + bias add and relu, one each per element
    direct = 2 * 192 * 25 * 32 * maps + 2 * 32 * maps
    reduce = 2 * 192 * 1 * 16 * maps + 2 * 16 * maps
    reduced = 2 * 16 * 25 * 32 * maps + 2 * 32 * maps
    assert int(rows["direct"][-1].replace(",", "")) == direct
    assert int(rows["reduce"][-1].replace(",", "")) == reduce
    assert int(rows["reduced"][-1].replace(",", "")) == reduced
    assert int(rows["direct"][-2].replace(",", "")) == 32 * 192 * 25 + 32


def run_example(examples_dir, tmp_path, name, *flags):
    mj = tmp_path / "m.json"
    dlc_cli("run", examples_dir / name, "--no-progress", "--metrics-json", mj, *flags, rc=0, timeout=None)
    return json.loads(mj.read_text())


def test_lenet_reaches_097_held_out(examples_dir, tmp_path):
    m = run_example(examples_dir, tmp_path, "lenet.dln")
    assert m["val_accuracy"] >= 0.97


def test_inception_trains(examples_dir, tmp_path):
    m = run_example(examples_dir, tmp_path, "inception.dln", "--epochs", "4")
    assert m["val_accuracy"] >= 0.85
    assert m["history"][-1]["loss"] < m["history"][0]["loss"]
