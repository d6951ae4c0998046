"""Recurrent networks: `scan` unrolled at compile time, shared weights, backpropagation through
time, batched products, gradient clipping, and the sequence examples.

Gradient checks use central differences in float64 on the interpreter, with the tolerance of
test_gradcheck.py (assert_grad_close: |analytic - numeric| <= 1e-7 max(1, |L|) + 1e-6 |numeric|,
argued there). Backend comparisons use float32 on both sides; their tolerance is stated where used.
"""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.cli import main
from dlc.dsl.frontend import lower
from test_gradcheck import assert_grad_close, compile64, numeric_grad, set_params
from conftest import EXAMPLES, import_torch, needs_emu


def seq_model(layer: str, steps: int, features: int = 2, units: int = 3) -> str:
    return f"""
model seq {{
    input x : f32[N, {steps}, {features}]
    input y : f32[N, 1]
    h    = {layer}(x, {units})
    pred = linear(last(h), 1)
    loss = mse(pred, y) + 0.1 * mean(h * h)
    output pred
    minimize loss with sgd(lr = 0.1)
}}
"""


def seq_feeds(steps: int, features: int = 2, batch: int = 3, seed: int = 0) -> dict:
    r = np.random.default_rng(seed)
    return {"x": r.normal(size=(batch, steps, features)).astype(np.float32).astype(np.float64),
            "y": r.normal(size=(batch, 1)).astype(np.float32).astype(np.float64)}


# -- the unrolled IR ---------------------------------------------------------------------------

def test_scan_unrolls_once_per_step_and_shares_the_cells_params():
    g = lower(seq_model("lstm", 7), "seq.dln")
    params = sorted(n for n in g.nx if g.op(n) == "param")
    assert params == ["h.b", "h.s.wh", "h.wx", "pred.b", "pred.w"]
    wh = "h.s.wh"
    assert len(g.users(wh)) == 7                       # one recurrent product per step
    steps = {n.split(".")[2] for n in g.nx if n.startswith("h.s.t")}
    assert steps == {f"t{t}" for t in range(7)}
    assert g.type("h.s") .shape == ("N", 7, 6)          # the stacked states, h and c side by side
    assert g.type("h").shape == ("N", 7, 3)
    assert g.loc("h.s.t3.a").file == "prelude.dln"     # each step's values point at the cell's lines


def test_shared_weight_gets_one_gradient_and_an_adjoint_per_step():
    m = dlc.compile(seq_model("elman", 5), backend="interp", opt_level=0)
    g = m.stages["backward"]
    assert set(g.meta.grads) == {"h.wx", "h.b", "h.wh", "pred.w", "pred.b"}
    # the adjoint of wh is the sum of one contribution per step (each a product read from the step)
    contributions = [n for n in g.nx if n.startswith("d.h.wh.from.")]
    assert len(contributions) == 5


# -- backpropagation through time against finite differences ---------------------------------

@pytest.mark.parametrize("steps", [5, 12, 20])
@pytest.mark.parametrize("layer", ["elman", "lstm"])
def test_bptt_gradients_match_finite_differences(layer, steps):
    m = compile64(seq_model(layer, steps))
    rng = np.random.default_rng(steps)
    values = {k: np.asarray(v, np.float64) + 0.3 * rng.normal(size=np.shape(v)) for k, v in m.params.items()}
    set_params(m, values)
    feeds = seq_feeds(steps)
    loss, grads = m.grad(**feeds)
    for name, value in values.items():  # every element of every param
        assert_grad_close(name, grads[name], numeric_grad(m, feeds, name, value), loss)


def unrolled_by_hand(steps: int, batch: int) -> str:
    """The Elman network of seq_model written out step by step, each step with its own copy of
    the recurrent weight (wh0, wh1, ...), the input weight and bias shared; mean(h * h) over
    [batch, steps, 3] written as a sum divided by the count."""
    lines = ["model byhand {", f"    input x : f32[N, {steps}, 2]", "    input y : f32[N, 1]",
             "    param wx : f32[2, 3]", "    param b : f32[3]", "    param v : f32[3, 1]", "    param c : f32[1]",
             "    h0 = zeros([N, 3])"]
    for t in range(steps):
        lines += [f"    param wh{t} : f32[3, 3]",
                  f"    x{t} = reshape(slice(x, axis = 1, start = {t}, stop = {t + 1}), [N, 2])",
                  f"    h{t + 1} = tanh(x{t} @ wx + b + h{t} @ wh{t})"]
    squares = " + ".join(f"sum(h{t + 1} * h{t + 1})" for t in range(steps))
    lines += [f"    loss = mse(h{steps} @ v + c, y) + 0.1 * ({squares}) / {batch * steps * 3}",
              "    minimize loss with sgd(lr = 0.1)", "}"]
    return "\n".join(lines)


def test_shared_weight_gradient_is_the_sum_of_per_step_contributions():
    """An independent check of weight sharing: the same network with a separate recurrent weight
    per step, all set to the shared value, has per-step gradients that add up to the shared one."""
    steps = 6
    shared = compile64(seq_model("elman", steps))
    rng = np.random.default_rng(1)
    values = {k: np.asarray(v, np.float64) + 0.3 * rng.normal(size=np.shape(v)) for k, v in shared.params.items()}
    set_params(shared, values)
    feeds = seq_feeds(steps)
    loss, grads = shared.grad(**feeds)

    by_hand = dlc.compile(unrolled_by_hand(steps, batch=3), backend="interp", float_dtype="float64")
    hand_values = {"wx": values["h.wx"], "b": values["h.b"], "v": values["pred.w"],
                   "c": values["pred.b"], **{f"wh{t}": values["h.wh"] for t in range(steps)}}
    set_params(by_hand, hand_values)
    hand_loss, hand_grads = by_hand.grad(**feeds)
    assert hand_loss == pytest.approx(loss, rel=1e-12)
    per_step = [hand_grads[f"wh{t}"] for t in range(steps)]
    assert not per_step[0].any()                                  # step 0 reads the zero state
    assert all(np.abs(p).max() > 1e-6 for p in per_step[1:])    # every later step contributes
    np.testing.assert_allclose(grads["h.wh"], np.sum(per_step, axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["h.wx"], hand_grads["wx"], rtol=1e-10, atol=1e-12)


# -- batched products -----------------------------------------------------------------------

BATCHED = {  # body, shapes of a and b, NumPy reference for the product
    "3d_2d": ("a @ b", (4, 3, 5), (5, 2), lambda a, b: a @ b),
    "2d_3d": ("a @ b", (3, 5), (4, 5, 2), lambda a, b: a @ b),
    "3d_3d": ("a @ b", (4, 3, 5), (4, 5, 2), lambda a, b: a @ b),
    "3d_ta": ("matmul(a, b, ta = true)", (4, 5, 3), (5, 2), lambda a, b: a.transpose(0, 2, 1) @ b),
    "3d_tb": ("matmul(a, b, tb = true)", (4, 3, 5), (4, 2, 5), lambda a, b: a @ b.transpose(0, 2, 1)),
    "2d_3d_tt": ("matmul(a, b, ta = true, tb = true)", (5, 3), (4, 2, 5), lambda a, b: a.T @ b.transpose(0, 2, 1)),
}


@pytest.mark.parametrize("case", list(BATCHED))
def test_batched_matmul_values_and_gradients(case):
    body, sa, sb, ref = BATCHED[case]
    r = np.random.default_rng(len(case))
    a, b = r.normal(size=sa), r.normal(size=sb)
    c = r.normal(size=ref(a, b).shape)
    dims = lambda s: ", ".join(map(str, s))
    src = (f"model bm {{\n input c : f32[{dims(c.shape)}]\n param a : f32[{dims(sa)}]\n param b : f32[{dims(sb)}]\n"
           f" p = {body}\n loss = sum(tanh(p) * c)\n output p\n minimize loss with sgd(lr = 0.1)\n}}\n")
    m = compile64(src)
    set_params(m, {"a": a, "b": b})
    loss, grads = m.grad(c=c)
    assert loss == pytest.approx(float(np.sum(np.tanh(ref(a, b)) * c)), rel=1e-12)
    for k, v in (("a", a), ("b", b)):
        assert_grad_close(k, grads[k], numeric_grad(m, {"c": c}, k, v), loss)


def test_batched_matmul_shape_errors_are_located():
    src = "model e {\n input x : f32[N, 3, 4]\n param w : f32[2, 4, 5]\n y = x @ w\n output y\n}\n"
    with pytest.raises(dlc.DlcError) as ei:
        lower(src, "e.dln")
    assert "batch dimensions N and 2 differ" in str(ei.value) and ei.value.loc.line == 4
    src = "model e {\n input x : f32[N, 3, 4, 2]\n param w : f32[2, 5]\n y = x @ w\n output y\n}\n"
    with pytest.raises(dlc.DlcError, match="rank 2 or 3"):
        lower(src, "e.dln")


# -- interpreter against the generated CUDA (emu) ----------------------------------------------

@needs_emu
@pytest.mark.parametrize("opt", [0, 2])
@pytest.mark.parametrize("layer", ["elman", "lstm"])
def test_emu_runs_the_recurrent_layers_like_the_interpreter(layer, opt):
    """Loss, every gradient and the params after two clipped Adam steps. Tolerance: float32 on
    both sides, sums in a different order over at most 12 steps of depth: 2e-5 relative to the
    largest entry (about 170 ulp), far below an error of the rules or the kernels (O(1))."""
    src = seq_model(layer, 12).replace("sgd(lr = 0.1)", "adam(lr = 0.05, clip = 0.5)")
    ref = dlc.compile(src, backend="interp", seed=4)
    emu = dlc.compile(src, backend="emu", seed=4, opt_level=opt)
    feeds = {k: v.astype(np.float32) for k, v in seq_feeds(12, batch=5, seed=2).items()}
    (l0, g0), (l1, g1) = ref.grad(**feeds), emu.grad(**feeds)
    assert l1 == pytest.approx(l0, rel=2e-5)
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], rtol=0, atol=2e-5 * np.abs(g0[k]).max(), err_msg=k)
    for _ in range(2):
        ref.step(**feeds)
        emu.step(**feeds)
    for k, v in ref.params.items():
        np.testing.assert_allclose(emu.params[k], v, rtol=0, atol=2e-5 * max(1.0, np.abs(v).max()), err_msg=k)


# -- PyTorch's LSTM ---------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 9])
def test_lstm_matches_torch_lstm_outputs_and_gradients(steps):
    """dlc's prelude LSTM against torch.nn.LSTM with the same weights: the gate order is the same
    (input, forget, cell, output); dlc's weights are the transposes of PyTorch's; dlc's one bias
    plus forget_bias on the forget block is PyTorch's bias_ih + bias_hh. Float64 on both sides, so
    the only difference is summation order: 1e-10 relative."""
    torch = import_torch()  # fails where the test extra installs torch, else skips without it
    n, f = 4, 3
    src = f"""
model l {{
    input x : f32[N, {steps}, {f}]
    input c : f32[N, {steps}, {n}]
    h = lstm(x, {n}, forget_bias = 0.7)
    loss = sum(h * c)
    output h
    minimize loss with sgd(lr = 0.1)
}}"""
    m = compile64(src)
    r = np.random.default_rng(steps)
    values = {k: r.normal(scale=0.5, size=np.shape(v)) for k, v in m.params.items()}
    set_params(m, values)
    x, c = r.normal(size=(2, steps, f)), r.normal(size=(2, steps, n))
    loss, grads = m.grad(x=x, c=c)
    out = m.forward(x=x)["h"]

    net = torch.nn.LSTM(f, n, batch_first=True).double()
    with torch.no_grad():
        net.weight_ih_l0.copy_(torch.tensor(values["h.wx"].T))
        net.weight_hh_l0.copy_(torch.tensor(values["h.s.wh"].T))
        net.bias_ih_l0.copy_(torch.tensor(values["h.b"]))
        net.bias_hh_l0.zero_()
        net.bias_hh_l0[n:2 * n] = 0.7
    states, _ = net(torch.tensor(x))
    tloss = (states * torch.tensor(c)).sum()
    tloss.backward()
    np.testing.assert_allclose(out, states.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert loss == pytest.approx(tloss.item(), rel=1e-10)
    for k, tp in (("h.wx", net.weight_ih_l0), ("h.s.wh", net.weight_hh_l0), ("h.b", net.bias_ih_l0)):
        np.testing.assert_allclose(grads[k], tp.grad.numpy().T if k != "h.b" else tp.grad.numpy(),
                                   rtol=1e-10, atol=1e-12, err_msg=k)


# -- gradient clipping ----------------------------------------------------------------------

CLIP = """
model c {
    input x : f32[N, 3]
    param w : f32[3, 2] = xavier
    param v : f32[2] = ones
    loss = sum(tanh(x @ w + v) * 3)
    minimize loss with sgd(lr = 0.5, clip = CLIP)
}
"""


@pytest.mark.parametrize("backend", ["interp", pytest.param("emu", marks=needs_emu)])
@pytest.mark.parametrize("clip", [0.1, 1e3])
def test_clipping_scales_the_gradients_to_the_global_norm(backend, clip):
    """p <- p - lr * g * min(1, clip / (|g| + 1e-6)) with |g| the norm over all params, as
    torch.nn.utils.clip_grad_norm_; the gradients come from the model, the update is recomputed in
    NumPy. With clip = 1000 the norm (about 14) is under it and the step is plain SGD."""
    m = dlc.compile(CLIP.replace("CLIP", repr(clip)), backend=backend, opt_level=2)
    x = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    before = {k: np.array(v, np.float64) for k, v in m.params.items()}
    _, grads = m.grad(x=x)
    norm = np.sqrt(sum(np.sum(np.square(grads[k], dtype=np.float64)) for k in grads))
    assert norm > 1.0
    scale = min(1.0, clip / (norm + 1e-6))
    m.step(x=x)
    for k in before:  # float32 arithmetic: a few ulp of values of order 1
        np.testing.assert_allclose(m.params[k], before[k] - 0.5 * scale * grads[k], rtol=0, atol=1e-6, err_msg=k)


def test_clipping_must_be_positive():
    with pytest.raises(dlc.DlcError) as ei:
        dlc.compile(CLIP.replace("CLIP", "0"), backend="interp")
    assert "clip" in str(ei.value) and "greater than 0" in str(ei.value)


def test_clipping_is_ir_named_in_the_train_stage():
    m = dlc.compile(CLIP.replace("CLIP", "1.0"), backend="interp")
    assert "%clip.norm" in m.ir("train") and "%clip.scale" in m.ir("train")


# -- mistakes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("body, message", [
    ("s = scan(nothing, x, zeros([N, 3]))", "scan: 'nothing' is not a function"),
    ("s = scan(step, x)", "scan(cell, xs, init, ...) takes"),
    ("s = scan(grow, x, zeros([N, 4]))", "returns f32[N, 6], but the state is f32[N, 4]"),
    ("s = scan(step, reshape(x, [N, 14]), zeros([N, 3]))", "shape mismatch: step() expects x: [B, F]"),
    ("s = scan(step, zeros([N, 2]), zeros([N, 3]))", "shape mismatch: step() expects x"),
])
def test_scan_mistakes_are_located_errors(body, message):
    src = ("def step(x: [B, F], h: [B, H]) {\n param w : f32[F, H] = xavier\n return tanh(x @ w + h)\n}\n"
           "def grow(x: [B, F], h: [B, H]) {\n return concat(h, x, axis = 1)\n}\n"
           f"model m {{\n input x : f32[N, 7, 2]\n {body}\n output s\n}}\n")
    with pytest.raises(dlc.DlcError) as ei:
        lower(src, "m.dln")
    assert message in str(ei.value)
    assert ei.value.loc is not None


def test_scan_over_a_symbolic_length_is_refused():
    src = "model m {\n input x : f32[N, T, 2]\n s = elman(x, 3)\n output s\n}\n"
    with pytest.raises(dlc.DlcError, match="sequence length must be known when compiling"):
        lower(src, "m.dln")


def test_a_sequence_of_the_wrong_length_is_a_clear_error(tmp_path, capsys):
    m = dlc.compile(EXAMPLES / "sine.dln", backend="interp")
    with pytest.raises(dlc.DlcError) as ei:
        m.step(x=np.zeros((4, 30, 1), np.float32), y=np.zeros((4, 1), np.float32))
    assert "input 'x' should be f32[N, 20, 1], found an array of shape [4, 30, 1]" in str(ei.value)
    data = tmp_path / "long.npz"
    np.savez(data, x=np.zeros((8, 30, 1), np.float32), y=np.zeros((8, 1), np.float32))
    assert main(["run", str(EXAMPLES / "sine.dln"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "needs 20 values per example" in err and "30 per example" in err and "Traceback" not in err


# -- the examples train ---------------------------------------------------------------------

def test_sine_example_beats_predicting_the_last_value(capsys):
    """Held-out MSE after the example's 20 epochs, against the persistence forecast (the last
    sample: 0.072 on this data) and a least-squares linear predictor over the 20 samples (0.022);
    the noise alone gives 0.01. Documented in docs/sequences.md."""
    assert main(["run", str(EXAMPLES / "sine.dln"), "--backend", "interp"]) == 0
    out = capsys.readouterr().out
    val = float(out.split("held-out loss ")[1].split()[0])
    d = np.load(EXAMPLES / "data" / "sine.npz")
    persistence = float(np.mean((d["x"][:, -1] - d["y"]) ** 2))
    assert val < persistence / 2, out


def test_lstm_solves_the_adding_problem_that_the_elman_network_does_not(capsys):
    """Ten epochs each (a third of the examples' 30): the LSTM's held-out MSE is far below the 1/6
    of always answering 1, and below the Elman network's, the point of the example pair."""
    vals = {}
    for layer in ("lstm", "elman"):
        assert main(["run", str(EXAMPLES / f"adding_{layer}.dln"), "--epochs", "10", "--backend", "interp"]) == 0
        out = capsys.readouterr().out
        vals[layer] = float(out.split("held-out loss ")[1].split()[0])
    assert vals["lstm"] < 0.03 and vals["lstm"] < vals["elman"] / 2, vals


@pytest.mark.parametrize("opt", [1, 2])
@pytest.mark.parametrize("layer", ["elman", "lstm"])
def test_the_cuda_module_does_not_grow_with_the_sequence(layer, opt):
    """Each step's kernels read like the others' (a slice's offset is an argument, not a
    literal), so the module holds the same kernels for 5 or 15 steps; only the launches grow."""
    from dlc.codegen import generate
    from dlc.passes.manager import run_pipeline
    mods = [generate(run_pipeline(lower(seq_model(layer, t), "seq.dln"), opt).stages["optimized"]) for t in (5, 15)]
    assert len(mods[0].kernels) == len(mods[1].kernels)
    assert len(mods[1].launches) > len(mods[0].launches)
