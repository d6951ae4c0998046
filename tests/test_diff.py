"""`dlc diff`: agreement, and a divergence named by its first tensor in execution order and its
.dln line. The divergence is injected into a stand-in backend (the interpreter with one op's
result perturbed, or with another dropout seed), so the test does not depend on any generated
code being wrong. Also: what was compared is said, comparing nothing is an error (exit 2), and
dropout runs in training mode with the same masks on every backend."""
import numpy as np
import pytest

import dlc
import dlc.runtime.diff as diff_mod
from dlc.cli import main
from dlc.runtime.init import initial_state
from dlc.runtime.interp import Interpreter
from test_codegen import MODELS
from conftest import needs_emu


class Perturbed(Interpreter):
    """The interpreter, but the value of one node comes out 1% too large."""
    name = "emu"
    node = "h"

    def run(self, roots, feeds, commit=False, dims=None, training=False, rng=None):
        out = super().run(roots, feeds, commit=commit, dims=dims, training=training, rng=rng)
        return {k: (v * 1.01 if k == self.node else v) for k, v in out.items()}


@pytest.fixture
def fake_emu(monkeypatch):
    real = diff_mod.make_backend
    monkeypatch.setattr(diff_mod, "available", lambda name: (True, "") if name == "emu" else (False, "not here"))
    monkeypatch.setattr(diff_mod, "make_backend",
                        lambda name, g, *a, **k: Perturbed(g) if name == "emu" else real(name, g, *a))


def test_diff_names_the_first_diverging_tensor_and_its_line(fake_emu, capsys, examples_dir):
    rc = main(["diff", str(examples_dir / "mlp.dln"), "--backends", "interp,emu,cuda"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "result: DIVERGES" in out
    # %h is the relu on line 12 of mlp.dln; nothing before it in execution order was perturbed
    line = next(ln for ln in out.splitlines() if "first divergence" in ln)
    assert "%h (relu)" in line and "mlp.dln:12:" in line and "relu(x @ w1 + b1)" in line
    assert "cuda: skipped (not here)" in out
    assert "compared: emu against interp; skipped: cuda (not here)" in out


def test_diff_agrees_when_values_agree(monkeypatch, capsys, examples_dir):
    monkeypatch.setattr(Perturbed, "node", "no such node")
    monkeypatch.setattr(diff_mod, "available", lambda name: (True, ""))
    monkeypatch.setattr(diff_mod, "make_backend", lambda name, g, *a, **k: Perturbed(g))
    rc = main(["diff", str(examples_dir / "mlp.dln"), "--backends", "interp,emu"])
    out = capsys.readouterr().out
    assert rc == 0 and "result: agree" in out
    assert "DIVERGES" not in out


def test_compare_tolerance_is_the_documented_one():
    ref = np.array([1.0, 100.0])
    # |err| <= 1e-4 + 1e-3 * |ref|: 1e-4 + 1e-3 at 1, 1e-4 + 0.1 at 100
    assert diff_mod.compare(ref + [0.9e-3, 0.09], ref)[2]
    assert not diff_mod.compare(ref + [1.2e-3, 0.0], ref)[2]
    assert not diff_mod.compare(ref[:1], ref)[2]  # a shape mismatch never agrees


# -- what was compared ------------------------------------------------------------------------

def test_diff_with_only_the_reference_is_an_error(capsys, examples_dir):
    rc = main(["diff", str(examples_dir / "mlp.dln"), "--backends", "interp"])
    cap = capsys.readouterr()
    assert rc == 2
    assert "nothing to compare" in cap.err and "result:" not in cap.out
    assert len(cap.err.strip().splitlines()) == 1 and "Traceback" not in cap.err


def test_diff_where_every_other_backend_is_skipped_is_an_error(monkeypatch, capsys, examples_dir):
    monkeypatch.setattr(diff_mod, "available", lambda name: (False, "no GPU here"))
    rc = main(["diff", str(examples_dir / "mlp.dln"), "--backends", "interp,cuda"])
    cap = capsys.readouterr()
    assert rc == 2
    assert "cuda: skipped (no GPU here)" in cap.out
    assert "compared: nothing; skipped: cuda (no GPU here)" in cap.out
    assert "result: agree" not in cap.out
    assert "nothing to compare" in cap.err and "cuda: no GPU here" in cap.err


# -- dropout: training mode, the same masks on every backend -------------------------------------

class SeedShifted(Interpreter):
    """The interpreter, but dropout draws from another seed than the one it is given."""
    name = "emu"

    def run(self, roots, feeds, commit=False, dims=None, training=False, rng=None):
        rng = None if rng is None else (rng[0] + 1, rng[1])
        return super().run(roots, feeds, commit=commit, dims=dims, training=training, rng=rng)


@pytest.fixture(scope="module")
def cnn():
    """The test model with dropout (tests/test_codegen.py), its initial state and a batch."""
    g = dlc.compile(MODELS["cnn"], backend="interp").graph
    return g, initial_state(g, 0), diff_mod.synth_feeds(g, 6, 0)


def test_the_step_runs_in_training_mode(cnn):
    g, state, feeds = cnn
    d = "d"  # d = dropout(reshape(p, [N, 84]), 0.3); its gradient is a dropout with the same mask
    assert d in diff_mod.random_nodes(g)
    src = g.operands(d)[0]
    vals, _ = diff_mod.run_step(Interpreter(g), g, state, feeds)
    dropped = (vals[d] == 0) & (vals[src] != 0)
    assert dropped.any()  # a mask was drawn: inference would be the identity
    again, _ = diff_mod.run_step(Interpreter(g), g, state, feeds)
    np.testing.assert_array_equal(again[d], vals[d])  # the same rng, the same mask


def test_a_different_dropout_mask_is_a_divergence(monkeypatch, cnn):
    g, state, feeds = cnn
    d = diff_mod.random_nodes(g)[0]  # the first in execution order: the forward dropout
    assert d == "d"
    monkeypatch.setattr(diff_mod, "available", lambda name: (True, ""))
    monkeypatch.setattr(diff_mod, "make_backend",
                        lambda name, g, *a, **k: SeedShifted(g) if name == "emu" else Interpreter(g))
    rows, first = diff_mod.diff(g, ["interp", "emu"], state, feeds, rng=(5, 0))["emu"]
    assert first == d
    row = next(r for r in rows if r.node == d)
    assert row.kind == "dropout" and not row.ok


@needs_emu
def test_dropout_outputs_are_compared_and_agree_on_emu(tmp_path, capsys):
    f = tmp_path / "cnn.dln"
    f.write_text(MODELS["cnn"])
    rc = main(["diff", str(f), "--backends", "interp,emu", "--batch", "6", "--seed", "3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "dropout draws its masks from seed 3, step 0 on every backend" in out
    rows = {ln.split()[1]: ln.split()[-1] for ln in out.splitlines() if ln.strip().startswith("dropout ")}
    assert rows == {"d": "ok", "d.d.reshape": "ok"}, out  # the forward mask and the gradient's
    assert "compared: emu against interp\n" in out and "result: agree" in out


# -- an optimizer step that turns on a gradient's last bits -----------------------------------------

class Stepped(Interpreter):
    """The interpreter, but after the step param `h.w` is moved by `by` where `where(grad)` holds."""
    name = "emu"
    by, where = 0.0, None

    def run(self, roots, feeds, commit=False, dims=None, training=False, rng=None):
        out = super().run(roots, feeds, commit=commit, dims=dims, training=training, rng=rng)
        grad = out[self.graph.meta.grads["h.w"]]
        self.values["h.w"] = self.values["h.w"] + np.where(type(self).where(grad), type(self).by, 0.0)
        return out


def _step_diff(monkeypatch, examples_dir, by, where, optimizer="adam(lr = 0.05)"):
    src = (examples_dir / "xor.dln").read_text().replace("adam(lr = 0.05)", optimizer)
    monkeypatch.setattr(Stepped, "by", by)
    monkeypatch.setattr(Stepped, "where", staticmethod(where))
    monkeypatch.setattr(diff_mod, "available", lambda name: (True, ""))
    real = diff_mod.make_backend
    monkeypatch.setattr(diff_mod, "make_backend", lambda name, g, *a, **k: Stepped(g) if name == "emu" else real(name, g, *a))
    d = dlc.diff(src, backends=("interp", "emu"), batch=8)
    rows = {r.name: r for r in d.results["emu"][0]}
    return d.agree, rows["h.w"].ok


def test_an_ill_conditioned_adam_step_is_compared_to_within_lr(monkeypatch, examples_dir):
    """Adam's first step is lr * g / (|g| + eps): where |g| <= 1e3 * eps the step turns on the
    gradient's last bits (charlm at tf32 on emu: gradients -2.66e-8 and -2.87e-8 step 1.5e-4 apart),
    so there the param need only agree to within lr (0.05); everywhere else the fp32 tolerance holds."""
    tiny = lambda g: np.abs(g) <= 1e-5  # noqa: E731 (the elements diff forgives: eps = 1e-8)
    big = lambda g: np.abs(g) > 1e-5    # noqa: E731
    # xor's 8 gradients of h.w are far from eps: moving them by 0.04 (< lr) is a divergence
    assert _step_diff(monkeypatch, examples_dir, 0.04, big) == (False, False)
    assert _step_diff(monkeypatch, examples_dir, 0.04, tiny) == (True, True)  # none that small: nothing moved
    # the rule itself, on gradients made by hand: element [0, 1] is 3e-9, the others 0.5
    g = dlc.build((examples_dir / "xor.dln").read_text()).graph
    mask = np.zeros((2, 4), bool)
    mask[0, 1] = True
    loose = diff_mod._ill_step(g, "h.w", {g.meta.grads["h.w"]: np.where(mask, 3e-9, 0.5)})
    assert loose[1] == pytest.approx(0.05) and (loose[0] == mask).all()
    ref = np.zeros((2, 4))
    assert diff_mod.compare(ref + np.where(mask, 0.04, 0.0), ref, loose=loose)[2]       # within lr: forgiven
    assert not diff_mod.compare(ref + np.where(mask, 0.06, 0.0), ref, loose=loose)[2]   # beyond lr: not
    assert not diff_mod.compare(ref + np.where(~mask, 0.04, 0.0), ref, loose=loose)[2]  # a gradient of 0.5: not


def test_rmsprop_step_bound_and_sgd_has_none(examples_dir):
    src = (examples_dir / "xor.dln").read_text()
    g = dlc.build(src.replace("adam(lr = 0.05)", "rmsprop(lr = 0.01, alpha = 0.99)")).graph
    grad = g.meta.grads["h.w"]
    # RMSprop's first step is lr * g / (0.1 |g| + eps): at most 10 lr
    assert diff_mod._ill_step(g, "h.w", {grad: np.zeros((2, 4))})[1] == pytest.approx(0.1)
    g = dlc.build(src.replace("adam(lr = 0.05)", "sgd(lr = 0.1)")).graph
    assert diff_mod._ill_step(g, "h.w", {grad: np.zeros((2, 4))}) is None  # sgd's step is linear in g


def test_charlm_at_tf32_agrees_on_emu(capsys, examples_dir):
    """The case that showed the ill-conditioned step: charlm's recurrent weights at tf32, -O0."""
    needs_emu()
    rc = main(["diff", str(examples_dir / "charlm.dln"), "--backends", "interp,emu", "-O0", "--precision", "tf32"])
    out = capsys.readouterr().out
    assert rc == 0 and "result: agree" in out, out


# -- inherited differences: what interp computes from the backend's own values --------------------

AMPLIFY = """model amp {
    input x : f32[N, 4]
    h = x + 1.0
    z = (h - 1.0) * 1000.0
    output z
}"""


class Upstream(Interpreter):
    """The interpreter, but %h comes out `scale` times its value and everything after it is
    computed from that (a backend whose one kernel is off, consistently carried on)."""
    name = "emu"
    scale = 1.0

    def run(self, roots, feeds, commit=False, dims=None, training=False, rng=None, **kw):
        h = super().run(["h"], feeds, dims=dims, training=training, rng=rng)["h"] * np.float32(self.scale)
        out = super().run([r for r in roots if r != "h"], feeds, commit=commit, dims=dims, training=training,
                          rng=rng, given={"h": h})
        return {**out, "h": h} if "h" in roots else out


def _amplified(monkeypatch, scale):
    monkeypatch.setattr(Upstream, "scale", scale)
    monkeypatch.setattr(diff_mod, "available", lambda name: (True, ""))
    monkeypatch.setattr(diff_mod, "make_backend",
                        lambda name, g, *a, **k: Upstream(g) if name == "emu" else Interpreter(g))
    g = dlc.build(AMPLIFY).graph
    feeds = {"x": np.array([[1e-3, -2e-3, 5e-3, 1e-2]], np.float32)}
    return diff_mod.diff(g, ["interp", "emu"], {}, feeds, rng=None)["emu"]


def test_a_difference_carried_on_from_within_the_tolerance_is_inherited(monkeypatch):
    """%h off by 1e-5 of itself (within the tolerance) becomes, through the cancellation in
    (h - 1) * 1000, a z off by 1% of itself: beyond the tolerance of interp's z, but z is what
    interp computes from this backend's own %h, so the row says `inherited` and the step agrees."""
    rows, first = _amplified(monkeypatch, 1 + 1e-5)
    z = next(r for r in rows if r.kind == "output")
    assert not z.ok and z.inherited and z.agrees and first is None


def test_a_wrong_value_is_found_where_it_is_made_and_what_follows_is_inherited(monkeypatch, capsys):
    """%h off by 1% is the first divergence (interp's h from the same operands differs); z, computed
    right from the wrong h, is inherited; the result diverges."""
    rows, first = _amplified(monkeypatch, 1.01)
    z = next(r for r in rows if r.kind == "output")
    assert first == "h" and z.inherited
