"""The op contract beyond a pure function: effects, kinds of state, training and evaluation mode.

- Every op declares its effects and, for a source, what it holds (ir/registry.py); the stages read
  the declarations (a model's stored values, what a step commits, what DCE and CSE must keep).
- A model buffer (model state that is not learned, such as a running mean) is updated by training
  steps only, saved and loaded with the weights, restored by --resume, loaded by name by
  load_partial, exported to ONNX, and never differentiated or given optimizer state. The model
  here keeps a running mean of its input, as batch norm keeps its statistics.
- Training and evaluation are explicit on every backend: `run(training=...)`, and `m.train()` /
  `m.eval()` for `forward` in the API; an op with the TRAINING effect and no randomness sees it.
- leaky_relu is one registry entry (its C expression reads its `slope`): interp against PyTorch,
  emu against interp, ONNX against onnxruntime.
"""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.ir.ops import (INPUT, MODEL, OPS, OPTIMIZER, PARAM, RANDOM, STORED, TRAINING, UPDATES_STATE, op,
                        _unary_float)
from dlc.ir.text import parse_ir
from conftest import import_torch, needs_emu

# -- the declarations --------------------------------------------------------------------------------


def test_sources_declare_what_they_hold_and_effects_are_declared():
    holds = {k: d.holds for k, d in OPS.items() if d.family == "source"}
    assert holds == {"input": INPUT, "param": PARAM, "state": OPTIMIZER, "buffer": MODEL}
    assert all(d.holds is None for d in OPS.values() if d.family != "source")
    assert OPS["dropout"].effects == {TRAINING, RANDOM}
    assert OPS["assign"].effects == {UPDATES_STATE}
    pure = [k for k, d in OPS.items() if d.pure]
    assert "matmul" in pure and "dropout" not in pure and "assign" not in pure


def test_a_bad_declaration_is_refused_when_the_op_is_registered():
    with pytest.raises(ValueError, match="unknown effects"):
        op("t_bad_effect", 1, _unary_float("t"), lambda x: x, c="a", effects={"teleports"})
    with pytest.raises(ValueError, match="salt"):
        op("t_bad_random", 1, _unary_float("t"), lambda x: x, c="a", effects={RANDOM})
    with pytest.raises(ValueError, match="a or b"):
        op("t_bad_attr", 1, _unary_float("t"), lambda x, a: x, c="a", attrs={"a": 1.0})
    assert not {"t_bad_effect", "t_bad_random", "t_bad_attr"} & set(OPS)


# -- a model with a buffer: a running mean of the input ----------------------------------------------
# out = (x - rm) @ w; each training step also sets rm <- 0.9 rm + 0.1 mean(x over the batch)
RUNNING = """model running stage=forward
%x : f32[N, 3] = input()
%y : f32[N, 2] = input()
%w : f32[3, 2] = param[init=xavier]()
%rm : f32[3] = buffer[init=zeros]()
%c : f32[N, 3] = sub(%x, %rm)
%out : f32[N, 2] = matmul[ta=false, tb=false](%c, %w)
%loss : f32[] = mse(%out, %y)
%mu : f32[3] = mean[axis=0, keepdims=false](%x)
%k1 : f32[] = const[value=0.9]()
%k2 : f32[] = const[value=0.1]()
%a : f32[3] = mul(%k1, %rm)
%b : f32[3] = mul(%k2, %mu)
%rm.new : f32[3] = add(%a, %b)
%rm.assign : f32[3] = assign(%rm, %rm.new)
output out = %out
loss %loss
optimizer sgd[lr=0.1, momentum=0.0, nesterov=false]
"""


def running(backend="interp", opt_level=1, seed=0):
    return dlc.compile(parse_ir(RUNNING, "running.ir"), backend=backend, opt_level=opt_level, seed=seed)


def batches(k=3, n=8, seed=0):
    r = np.random.default_rng(seed)
    return [(r.normal(1.0, 1.0, (n, 3)).astype(np.float32), r.normal(size=(n, 2)).astype(np.float32))
            for _ in range(k)]


def expected_running_mean(bs) -> np.ndarray:
    """The running mean after training steps on `bs`, computed here in float32 as the op says."""
    rm = np.zeros(3, np.float32)
    for x, _ in bs:
        rm = np.float32(0.9) * rm + np.float32(0.1) * x.mean(axis=0, dtype=np.float32)
    return rm


def test_a_buffer_is_model_state_not_a_param():
    m = running()
    g = m.graph
    assert g.buffers == ["rm"] and g.params == ["w"] and g.optimizer_state == []
    assert set(m.graph.meta.grads) == {"w"}  # never differentiated
    assert set(g.holding(*STORED)) == {"w", "rm"}
    weights, opt = m.split_state()
    assert set(weights) == {"w", "rm"} and opt == {}
    assert set(m.buffers) == {"rm"} and "rm" not in m.params


def test_training_steps_update_the_buffer_and_evaluation_leaves_it():
    m = running()
    bs = batches()
    x0 = bs[0][0]
    before = m.forward(x=x0)["out"]
    m.forward(x=x0)
    m.evaluate({"x": x0, "y": bs[0][1]})
    m.grad(x=x0, y=bs[0][1])  # a gradient is not a step: nothing is committed
    np.testing.assert_array_equal(m.buffers["rm"], np.zeros(3, np.float32))
    for x, y in bs:
        m.step(x=x, y=y)
    # float32 on both sides, the same order of operations: equal to a few ulps
    np.testing.assert_allclose(m.buffers["rm"], expected_running_mean(bs), rtol=1e-6)
    assert not np.allclose(m.forward(x=x0)["out"], before)  # the output reads the buffer


@needs_emu
@pytest.mark.parametrize("level", [0, 2])
def test_the_buffer_on_emu_matches_the_interpreter(level):
    ref, emu = running(), running("emu", level)
    for x, y in batches():
        np.testing.assert_allclose(emu.step(x=x, y=y), ref.step(x=x, y=y), rtol=1e-5)
    np.testing.assert_allclose(emu.buffers["rm"], ref.buffers["rm"], rtol=1e-6)
    np.testing.assert_allclose(emu.params["w"], ref.params["w"], rtol=1e-5, atol=1e-7)


def test_buffers_travel_with_the_weights(tmp_path):
    m = running()
    for x, y in batches():
        m.step(x=x, y=y)
    m.save(tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz") as z:
        assert sorted(z.files) == ["rm", "w"]
    fresh = running(seed=5)
    fresh.load(tmp_path / "w.npz")
    np.testing.assert_array_equal(fresh.buffers["rm"], m.buffers["rm"])
    np.testing.assert_array_equal(fresh.params["w"], m.params["w"])
    other = running(seed=7)
    report = other.load_partial(tmp_path / "w.npz")
    assert sorted(report["loaded"]) == ["rm", "w"]
    np.testing.assert_array_equal(other.buffers["rm"], m.buffers["rm"])
    np.savez(tmp_path / "nobuf.npz", w=m.params["w"])
    with pytest.raises(dlc.DlcError, match="no array for model buffer 'rm'"):
        running().load(tmp_path / "nobuf.npz")


def test_resume_restores_the_buffer_bit_for_bit(tmp_path):
    x = np.concatenate([b[0] for b in batches(4)])
    y = np.concatenate([b[1] for b in batches(4)])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    straight = running(seed=2)
    data = straight.read_data(tmp_path / "d.npz")
    s = straight.settings(epochs=4, batch=8)
    straight.fit(data, s, progress=False)
    first = running(seed=2)
    first.fit(data, first.settings(epochs=2, batch=8), progress=False, checkpoint=tmp_path / "ck")
    later = running(seed=2)
    meta, s2, _ = later.resume(tmp_path / "ck", data, later.settings(epochs=4, batch=8))
    later.fit(data, s2, progress=False, resume=meta)
    np.testing.assert_array_equal(later.buffers["rm"], straight.buffers["rm"])
    np.testing.assert_array_equal(later.params["w"], straight.params["w"])
    assert not np.array_equal(later.buffers["rm"], np.zeros(3, np.float32))


def test_buffers_are_exported_to_onnx(onnx_runtime):
    _, ort = onnx_runtime
    m = running()
    for x, y in batches():
        m.step(x=x, y=y)
    proto, summary = m.to_onnx()
    assert {i.name for i in proto.graph.initializer} >= {"w", "rm"}
    assert "1 model-state arrays" in summary
    x = batches(1, 5, seed=9)[0][0]
    s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = s.run(None, {"x": x})[0]
    # onnxruntime and NumPy sum the 3-term products in their own orders: a few ulps
    np.testing.assert_allclose(got, m.forward(x=x)["out"], rtol=1e-5, atol=1e-6)


def test_passes_keep_state_updates_and_do_not_merge_them():
    """DCE keeps an assignment nothing reads (its effect is the point); the step commits it."""
    m = running(opt_level=1)
    g = m.graph
    assert "rm.assign" in g.with_effect(UPDATES_STATE)
    assert "rm.assign" in m.roots("step")


# -- the mode ------------------------------------------------------------------------------------------

@pytest.fixture
def train_only_double():
    """A test op that doubles its operand in training and passes it through in evaluation: it
    declares TRAINING but draws no random numbers (as batch norm will)."""
    op("t_train_double", 1, _unary_float("t_train_double"), lambda x, training: x * 2 if training else x,
       lambda b, n, g: [lambda: g], c="a", effects={TRAINING}, eval_operand=0)
    yield
    del OPS["t_train_double"]


def test_an_op_that_reads_the_mode_sees_it_without_randomness(train_only_double):
    m = dlc.compile("model m {\n input x : f32[N, 2]\n input y : f32[N, 2]\n param w : f32[2, 2] = xavier\n"
                    " h = t_train_double(x @ w)\n loss = mse(h, y)\n output h\n"
                    " minimize loss with sgd(lr = 0.1)\n}", backend="interp")
    x = np.ones((3, 2), np.float32)
    base = x @ m.params["w"]
    np.testing.assert_allclose(m.forward(x=x)["h"], base)            # evaluation, the default
    np.testing.assert_allclose(m.train().forward(x=x)["h"], 2 * base)
    np.testing.assert_allclose(m.eval().forward(x=x)["h"], base)
    loss, _ = m.grad(x=x, y=np.zeros((3, 2), np.float32))             # a gradient is training
    assert loss == pytest.approx(float(np.mean((2 * base) ** 2)), rel=1e-6)
    run = m.roots("outputs")
    np.testing.assert_allclose(m.run(run, {"x": x}, training=True)[run[0]], 2 * base)


DROP = """model drop {
    input x : f32[N, 64]
    h = dropout(x, 0.5)
    output h
}"""


def test_held_out_data_is_evaluated_in_evaluation_mode_whatever_the_mode(train_only_double, tmp_path):
    """fit's held-out loss is computed with the op in evaluation mode even after m.train()."""
    src = ("model m {\n input x : f32[N, 2]\n input y : f32[N, 2]\n param w : f32[2, 2] = xavier\n"
           " h = t_train_double(x @ w)\n loss = mse(h, y)\n output h\n minimize loss with sgd(lr = 0.0)\n}")
    r = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=r.normal(size=(10, 2)).astype(np.float32), y=np.zeros((10, 2), np.float32))
    m = dlc.compile(src, backend="interp").train()
    data = m.read_data(tmp_path / "d.npz")
    metrics = m.fit(data, m.settings(epochs=1, batch=10, val_split=0.5), progress=False, out=open(tmp_path / "log", "w"))
    assert m.training  # the caller's mode is left as it was
    x_val = data.feeds["x"][np.random.default_rng(0).permutation(10)[:5]]  # the split: train.split's rule
    want = float(np.mean((x_val @ m.params["w"]) ** 2))  # lr 0: w is the initial w; evaluation: no doubling
    assert metrics["val_loss"] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("backend", ["interp", pytest.param("emu", marks=needs_emu)])
def test_dropout_follows_the_mode_on_every_backend(backend):
    m = dlc.compile(DROP, backend=backend)
    ref = dlc.compile(DROP, backend="interp")
    x = np.ones((4, 64), np.float32)
    np.testing.assert_array_equal(m.forward(x=x)["h"], x)             # evaluation: the identity
    got, want = m.train().forward(x=x)["h"], ref.train().forward(x=x)["h"]
    assert (got == 0).any() and (got == 2).any()
    np.testing.assert_array_equal(got, want)                          # the same Philox mask
    np.testing.assert_array_equal(m.eval().forward(x=x)["h"], x)


# -- leaky_relu: one entry -----------------------------------------------------------------------------
LEAKY = """model leaky {
    input x : f32[N, 5]
    input y : i32[N]
    param w : f32[5, 7] = normal(0, 1)
    param v : f32[7, 3] = xavier
    h = leaky_relu(x @ w, slope = 0.2)
    logits = leaky_relu(h) @ v
    loss = softmax_xent(logits, y)
    output logits
    minimize loss with sgd(lr = 0.1)
}"""


def leaky_batch(n=6, seed=0):
    r = np.random.default_rng(seed)
    return r.normal(size=(n, 5)).astype(np.float32), r.integers(0, 3, n).astype(np.int32)


def test_leaky_relu_is_one_entry():
    d = OPS["leaky_relu"]
    assert d.attrs == {"slope": 0.01} and "slope" in d.c and d.vjp is not None and d.onnx is not None
    assert not [k for k in OPS if k.startswith("leaky_relu") and k != "leaky_relu"]


def test_leaky_relu_agrees_with_pytorch():
    torch = import_torch()
    m = dlc.compile(LEAKY, backend="interp", float_dtype="float64")
    x, y = leaky_batch()
    loss, grads = m.grad(x=x, y=y)
    w = torch.tensor(np.asarray(m.params["w"]), dtype=torch.float64, requires_grad=True)
    v = torch.tensor(np.asarray(m.params["v"]), dtype=torch.float64, requires_grad=True)
    h = torch.nn.functional.leaky_relu(torch.tensor(x, dtype=torch.float64) @ w, negative_slope=0.2)
    logits = torch.nn.functional.leaky_relu(h) @ v   # PyTorch's default slope is 0.01, as dlc's
    want = torch.nn.functional.cross_entropy(logits, torch.tensor(y, dtype=torch.long))
    want.backward()
    # float64 on both sides: equal to rounding
    assert loss == pytest.approx(want.item(), rel=1e-12)
    np.testing.assert_allclose(grads["w"], w.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["v"], v.grad.numpy(), rtol=1e-10, atol=1e-12)


@needs_emu
@pytest.mark.parametrize("level", [0, 2])
def test_leaky_relu_on_emu_matches_the_interpreter(level):
    ref, emu = dlc.compile(LEAKY, backend="interp"), dlc.compile(LEAKY, backend="emu", opt_level=level)
    for s in range(3):
        x, y = leaky_batch(seed=s)
        # float32 kernels against float32 NumPy: summation order differs in the products
        np.testing.assert_allclose(emu.step(x=x, y=y), ref.step(x=x, y=y), rtol=1e-5)
    for p in ref.params:
        np.testing.assert_allclose(emu.params[p], ref.params[p], rtol=1e-5, atol=1e-6)


def test_leaky_relu_exports_to_onnx_and_agrees_with_onnxruntime(onnx_runtime):
    _, ort = onnx_runtime
    m = dlc.compile(LEAKY, backend="interp")
    proto, _ = m.to_onnx()
    alphas = sorted(a.f for n in proto.graph.node if n.op_type == "LeakyRelu" for a in n.attribute)
    assert alphas == pytest.approx([0.01, 0.2])
    x, _ = leaky_batch()
    s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(s.run(None, {"x": x})[0], m.forward(x=x)["logits"], rtol=1e-5, atol=1e-6)
