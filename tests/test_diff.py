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
                        lambda name, g, *a: Perturbed(g) if name == "emu" else real(name, g, *a))


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
    monkeypatch.setattr(diff_mod, "make_backend", lambda name, g, *a: Perturbed(g))
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
                        lambda name, g, *a: SeedShifted(g) if name == "emu" else Interpreter(g))
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
