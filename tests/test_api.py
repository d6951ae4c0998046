"""The Python API of DESIGN.md: dlc.compile, Model.params / forward / grad / step / ir."""
from __future__ import annotations

import re

import numpy as np
import pytest

import dlc
from dlc.ir.text import parse_ir
from dlc.ir.verify import verify
from conftest import DIGITS, EXAMPLES, MLP

MLP_PARAMS = {"w1": (64, 128), "b1": (128,), "w2": (128, 10), "b2": (10,)}

FROZEN = """model transfer {
    input x : f32[N, 4]
    input t : f32[N, 2]
    param w1 : f32[4, 3] = he
    param b1 : f32[3]    = ones
    param w2 : f32[3, 2] = xavier
    out  = relu(x @ w1 + b1) @ w2
    loss = mse(out, t)
    output out
    minimize loss with sgd(lr = 0.1)
    freeze w1, b1
}
"""

INFERENCE_ONLY = """model infer {
    input x : f32[N, 4]
    param w : f32[4, 3] = he
    y = tanh(x @ w)
    output y
}
"""


@pytest.fixture(scope="module")
def digits():
    with np.load(DIGITS) as z:
        return z["x"][:64].copy(), z["y"][:64].copy()


@pytest.fixture
def mlp():
    return dlc.compile(str(MLP), backend="interp")


# -- compile ----------------------------------------------------------------------------------------
def test_compile_from_path_str_path_and_text():
    a = dlc.compile(str(MLP), backend="interp")
    b = dlc.compile(MLP, backend="interp")
    c = dlc.compile(MLP.read_text(), backend="interp")
    for m in (a, b, c):
        assert isinstance(m, dlc.Model)
        assert m.name == "mlp" and m.backend == "interp"
        assert {k: tuple(np.shape(v)) for k, v in m.params.items()} == MLP_PARAMS
    # same seed, same initial weights, whichever way the source was given
    for k in MLP_PARAMS:
        np.testing.assert_array_equal(np.asarray(a.params[k]), np.asarray(c.params[k]))


def test_compile_default_backend_is_usable():
    m = dlc.compile(MLP)  # "auto": cuda where a GPU is present, else interp
    assert m.backend in ("interp", "cuda")


def test_seed_changes_initial_weights():
    a = dlc.compile(MLP, backend="interp", seed=0)
    b = dlc.compile(MLP, backend="interp", seed=1)
    assert not np.array_equal(np.asarray(a.params["w1"]), np.asarray(b.params["w1"]))
    np.testing.assert_array_equal(np.asarray(a.params["b1"]), np.zeros(128, np.float32))  # = zeros


# -- params -------------------------------------------------------------------------------------
def test_params_read_write(mlp):
    assert list(mlp.params) == list(MLP_PARAMS)
    assert len(mlp.params) == 4
    for k, shape in MLP_PARAMS.items():
        v = np.asarray(mlp.params[k])
        assert v.shape == shape and v.dtype == np.float32
    new = np.arange(64 * 128, dtype=np.float32).reshape(64, 128) / 1e4
    mlp.params["w1"] = new
    np.testing.assert_array_equal(np.asarray(mlp.params["w1"]), new)
    mlp.params.update(b2=np.full(10, 0.5, np.float32))
    np.testing.assert_array_equal(np.asarray(mlp.params["b2"]), np.full(10, 0.5, np.float32))


def test_params_written_are_used_by_forward(mlp, digits):
    x, _ = digits
    for k, shape in MLP_PARAMS.items():
        mlp.params[k] = np.zeros(shape, np.float32)
    mlp.params["b2"] = np.arange(10, dtype=np.float32)
    out = mlp.forward(x=x[:5])["logits"]
    np.testing.assert_allclose(out, np.tile(np.arange(10, dtype=np.float32), (5, 1)))


def test_params_wrong_shape_or_name_is_refused(mlp):
    before = np.array(mlp.params["w1"])
    with pytest.raises(dlc.DlcError) as ei:
        mlp.params["w1"] = np.zeros((64, 127), np.float32)
    assert "w1" in str(ei.value) and "[64, 127]" in str(ei.value) and "f32[64, 128]" in str(ei.value)
    with pytest.raises(dlc.DlcError):
        mlp.params["w1"] = np.zeros(64 * 128, np.float32)
    np.testing.assert_array_equal(np.asarray(mlp.params["w1"]), before)
    with pytest.raises(dlc.DlcError):
        mlp.params["nope"] = np.zeros(3, np.float32)
    with pytest.raises(KeyError):
        mlp.params["nope"]


# -- forward ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 5, 64])
def test_forward_shapes_without_labels(mlp, digits, n):
    x, _ = digits
    out = mlp.forward(x=x[:n])
    assert list(out) == ["logits"]
    assert out["logits"].shape == (n, 10)
    assert np.isfinite(out["logits"]).all()


def test_forward_is_pure(mlp, digits):
    x, _ = digits
    a = mlp.forward(x=x)["logits"]
    b = mlp.forward(x=x)["logits"]
    np.testing.assert_array_equal(a, b)
    # a batch gives the same rows as its examples one at a time
    c = np.concatenate([mlp.forward(x=x[i:i + 1])["logits"] for i in range(4)])
    np.testing.assert_allclose(c, a[:4], rtol=1e-5, atol=1e-5)


def test_forward_missing_input_is_an_error(mlp):
    with pytest.raises(dlc.DlcError) as ei:
        mlp.forward()
    assert "'x'" in str(ei.value)


def test_deferred_steps_on_the_interpreter_and_a_bad_wait(mlp, digits):
    """wait=False gives the same losses as waiting steps (interp has no device: nothing queues);
    a wait that is not a bool is refused before the step runs."""
    x, y = digits
    twin = dlc.compile(str(MLP), backend="interp")
    pending = [mlp.train_step({"x": x[i:i + 8], "y": y[i:i + 8]}, wait=False) for i in (0, 8, 16)]
    assert [p.result()[0] for p in pending] == [twin.step(x=x[i:i + 8], y=y[i:i + 8]) for i in (0, 8, 16)]
    with pytest.raises(dlc.DlcError, match="wait: must be True or False, found 'no'"):
        mlp.train_step({"x": x[:8], "y": y[:8]}, wait="no")
    assert mlp.steps == 3


def test_forward_without_labels_reshape_model(digits):
    x, _ = digits
    m = dlc.compile(EXAMPLES / "lenet.dln", backend="interp")
    assert m.forward(x=x[:3])["logits"].shape == (3, 10)


def test_forward_reshape_model_with_labels(digits):
    """The same model runs when the labels are given (the workaround for the bug above)."""
    x, y = digits
    m = dlc.compile(EXAMPLES / "lenet.dln", backend="interp")
    assert m.forward(x=x[:3], y=y[:3])["logits"].shape == (3, 10)


# -- grad -------------------------------------------------------------------------------------------
def test_grad_returns_loss_and_a_grad_per_param(mlp, digits):
    x, y = digits
    before = {k: np.array(v) for k, v in mlp.params.items()}
    loss, grads = mlp.grad(x=x[:32], y=y[:32])
    assert isinstance(loss, float) and np.isfinite(loss) and loss > 0
    assert set(grads) == set(MLP_PARAMS)
    for k, shape in MLP_PARAMS.items():
        assert grads[k].shape == shape and np.isfinite(grads[k]).all()
        assert np.abs(grads[k]).max() > 0, f"gradient of {k} is all zero"
    for k, v in before.items():  # grad() does not change the params
        np.testing.assert_array_equal(np.asarray(mlp.params[k]), v)
    # the gradient agrees with a finite difference in one coordinate of b2
    eps = 1e-2

    def loss_at(delta):
        p = before["b2"].copy()
        p[3] += delta
        mlp.params["b2"] = p
        return mlp.grad(x=x[:32], y=y[:32])[0]

    lp, lm = loss_at(eps), loss_at(-eps)
    assert grads["b2"][3] == pytest.approx((lp - lm) / (2 * eps), rel=2e-2, abs=1e-4)


def test_grad_needs_the_labels(mlp, digits):
    x, _ = digits
    with pytest.raises(dlc.DlcError) as ei:
        mlp.grad(x=x[:4])
    assert "'y'" in str(ei.value)


# -- step ---------------------------------------------------------------------------------------------
def test_step_lowers_the_loss_on_a_fixed_batch(mlp, digits):
    x, y = digits
    losses = [mlp.step(x=x[:32], y=y[:32]) for _ in range(15)]
    assert all(isinstance(v, float) and np.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 10, losses
    # the loss step() returns is the loss before the update, as grad() reports it
    now = mlp.grad(x=x[:32], y=y[:32])[0]
    assert mlp.step(x=x[:32], y=y[:32]) == pytest.approx(now, rel=1e-5)


def test_step_changes_params(mlp, digits):
    x, y = digits
    before = {k: np.array(v) for k, v in mlp.params.items()}
    mlp.step(x=x[:16], y=y[:16])
    for k, v in before.items():
        assert not np.array_equal(np.asarray(mlp.params[k]), v), f"{k} did not change"


def test_batch_size_one(mlp, digits):
    x, y = digits
    assert mlp.forward(x=x[:1])["logits"].shape == (1, 10)
    loss, grads = mlp.grad(x=x[:1], y=y[:1])
    assert np.isfinite(loss) and grads["w1"].shape == (64, 128)
    losses = [mlp.step(x=x[:1], y=y[:1]) for _ in range(5)]
    assert losses[-1] < losses[0]


def test_step_needs_minimize():
    m = dlc.compile(INFERENCE_ONLY, backend="interp")
    x = np.ones((3, 4), np.float32)
    assert m.forward(x=x)["y"].shape == (3, 3)
    with pytest.raises(dlc.DlcError):
        m.step(x=x)
    with pytest.raises(dlc.DlcError):
        m.grad(x=x)


def test_frozen_params_stay_unchanged():
    m = dlc.compile(FROZEN, backend="interp")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    t = rng.standard_normal((16, 2)).astype(np.float32)
    before = {k: np.array(v) for k, v in m.params.items()}
    losses = [m.step(x=x, t=t) for _ in range(5)]
    assert losses[-1] < losses[0]
    np.testing.assert_array_equal(np.asarray(m.params["w1"]), before["w1"])
    np.testing.assert_array_equal(np.asarray(m.params["b1"]), before["b1"])
    assert not np.array_equal(np.asarray(m.params["w2"]), before["w2"])
    # gradients are reported for the trainable params only
    _, grads = m.grad(x=x, t=t)
    assert set(grads) == {"w2"}


# -- ir -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["forward", "backward", "train", "optimized"])
def test_ir_stage(mlp, stage):
    text = mlp.ir(stage)
    assert text.splitlines()[0] == f"model mlp stage={stage}"
    g = verify(parse_ir(text))
    assert g.meta.stage == stage
    assert set(g.params) == set(MLP_PARAMS)


def test_ir_default_stage_is_optimized(mlp):
    assert mlp.ir() == mlp.ir("optimized")


def test_ir_stages_grow_through_the_pipeline(mlp):
    n = {s: len(mlp.ir(s).splitlines()) for s in ("forward", "backward", "train")}
    assert n["forward"] < n["backward"] < n["train"]
    assert "matmul" in mlp.ir("backward")


def test_ir_unknown_stage(mlp):
    with pytest.raises(dlc.DlcError) as ei:
        mlp.ir("bogus")
    assert "forward" in str(ei.value)


def test_empty_source_text():
    with pytest.raises(dlc.DlcError) as ei:
        dlc.compile("", backend="interp")
    assert "no model" in str(ei.value)


def test_the_api_refuses_nan_as_the_cli_does(tmp_path):
    """Issue 23: `m.step` on an input with a NaN used to return nan and poison the weights for good;
    assigning a NaN param went through. Now each is refused before anything runs or changes, with
    the sentence the CLI uses for the same data file."""
    from conftest import dlc_cli
    m = dlc.compile(EXAMPLES / "mlp.dln", backend="interp", seed=0)
    before = {k: np.array(v) for k, v in m.params.items()}
    x = np.random.default_rng(0).uniform(0, 1, (8, 64)).astype(np.float32)
    y = np.arange(8, dtype=np.int32)
    x[3, 5] = np.nan
    said = "input 'x' has a NaN or infinity at index (3, 5)"
    for run in (lambda: m.step(x=x, y=y), lambda: m.grad(x=x, y=y), lambda: m.forward(x=x)):
        with pytest.raises(dlc.DlcError, match=re.escape(said)):
            run()
    for k, v in m.params.items():
        np.testing.assert_array_equal(v, before[k])          # nothing ran
    np.savez(tmp_path / "bad.npz", x=x, y=y)
    r = dlc_cli("run", EXAMPLES / "mlp.dln", "--data", tmp_path / "bad.npz", "--epochs", "1", rc=2)
    assert said in r.stderr, r.stderr
    with pytest.raises(dlc.DlcError, match=r"param 'b1' holds NaN or infinity \(at index \(0,\)\)"):
        m.params["b1"] = np.full(128, np.nan)
    with pytest.raises(dlc.DlcError, match=r"param 'w2' holds NaN or infinity \(at index \(1, 2\)\)"):
        w = np.array(before["w2"])
        w[1, 2] = np.inf
        m.set_state({"w2": w})
    np.testing.assert_array_equal(m.params["b1"], before["b1"])
