"""`dlc diff`: agreement, and a divergence named by its first tensor in execution order and its
.dln line. The divergence is injected into a stand-in backend (the interpreter with one op's
result perturbed), so the test does not depend on any generated code being wrong."""
import numpy as np
import pytest

import dlc.runtime.diff as diff_mod
from dlc.cli import main
from dlc.runtime.interp import Interpreter


class Perturbed(Interpreter):
    """The interpreter, but the value of one node comes out 1% too large."""
    name = "emu"
    node = "h"

    def run(self, roots, feeds, commit=False, dims=None, rng=None):
        out = super().run(roots, feeds, commit=commit, dims=dims, rng=rng)
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
