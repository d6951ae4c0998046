"""The README's training claims, checked by running the examples exactly as documented."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import ROOT, dlc_cli


def _metrics(example: str, tmp_path: Path) -> dict:
    out = tmp_path / "m.json"
    dlc_cli("run", f"examples/{example}.dln", "--no-progress", "--metrics-json", out, rc=0)
    return json.loads(out.read_text())


def test_quick_start_mlp(tmp_path):
    """`dlc run examples/mlp.dln`, exactly as the README's quick start, from the project root."""
    r = dlc_cli("run", "examples/mlp.dln", rc=0)
    m = re.search(r"held-out accuracy ([0-9.]+) on (\d+) examples", r.stdout)
    assert m, r.stdout
    shown, n_val = float(m.group(1)), int(m.group(2))
    assert shown >= 0.95, r.stdout
    assert n_val == round(0.2 * 1797)  # 20% of the digits held out
    assert re.search(r"epoch\s+20/20", r.stdout), r.stdout  # every epoch reported

    metrics = _metrics("mlp", tmp_path)
    assert metrics["val_accuracy"] >= 0.95
    assert metrics["val_accuracy"] == pytest.approx(shown, abs=5e-5)  # same run, same seed
    assert metrics["val_examples"] == n_val
    assert metrics["epochs"] == 20 and len(metrics["history"]) == 20


@pytest.mark.parametrize("example,at_least", [("logreg", 0.93), ("deep_mlp", 0.95)])
def test_digits_examples_reach_their_accuracy(example, at_least, tmp_path):
    metrics = _metrics(example, tmp_path)
    assert metrics["val_examples"] > 0
    assert metrics["val_accuracy"] >= at_least, metrics
    hist = metrics["history"]
    assert hist[-1]["loss"] < hist[0]["loss"], "the training loss did not go down"


def test_xor_is_solved(tmp_path):
    metrics = _metrics("xor", tmp_path)
    assert metrics["accuracy"] == 1.0, metrics
    assert metrics["loss"] < 0.05, metrics


def test_readme_logreg_commands_write_under_build(tmp_path):
    """The README's save / load / predict commands, run as written, from a folder with no build/:
    they create it and write only there."""
    readme = (ROOT / "README.md").read_text()
    commands = [line.split("#")[0].split() for line in readme.splitlines()
                if line.startswith("dlc run examples/logreg.dln ")]
    assert len(commands) >= 3, commands
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    for words in commands:
        dlc_cli(*words[1:], "--no-progress", cwd=tmp_path, rc=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "examples"]
    assert {"w.npz", "m.json", "p.csv"} <= {p.name for p in (tmp_path / "build").iterdir()}
    metrics = json.loads((tmp_path / "build" / "m.json").read_text())
    assert metrics["epochs"] == 5
    rows = (tmp_path / "build" / "p.csv").read_text().splitlines()
    assert rows[0].startswith("class,logits_0") and len(rows) == 1797 + 1


def test_accuracy_target_is_an_input_the_output_does_not_read():
    """x : f32[N, 1] has the output's type, but the output depends on it: the target is y."""
    import dlc
    from dlc.runtime.train import accuracy_rule
    g = dlc.compile("""model m {
    input x : f32[N, 1]
    input y : f32[N, 1]
    param w : f32[1, 1] = ones
    out = sigmoid(x @ w)
    loss = mse(out, y)
    output out
    minimize loss with sgd(lr = 0.1)
}""", backend="interp").graph
    assert accuracy_rule(g) == ("out", "y", "threshold")
