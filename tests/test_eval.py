"""`dlc eval` (runtime/evaluate.py): loss, accuracy, per-class precision/recall/F1/support and the
confusion matrix, checked against values computed by hand on tiny data sets whose predictions
are known: the weights are set so that the logits are the input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import dlc
from dlc.runtime.evaluate import evaluate_classes
from conftest import ROOT, dlc_cli

# logits = x @ w + b; with w = I and b = 0 the logits are the input
IDENTITY = """model ident {
    input x : f32[N, 4]
    input y : i32[N]
    param w : f32[4, 4] = zeros
    param b : f32[4] = zeros
    logits = x @ w + b
    loss = softmax_xent(logits, y)
    output logits
    minimize loss with sgd(lr = 0.1)
    train(batch = 4)
}
"""
# (true class, predicted class) of each example; class 3 is never predicted
PAIRS = [(0, 0), (0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 2), (2, 0), (3, 0)]
CONFUSION = [[2, 1, 0, 0],   # rows: true class, columns: predicted class
             [0, 1, 1, 0],
             [1, 0, 2, 0],
             [1, 0, 0, 0]]
PRECISION = [2 / 4, 1 / 2, 2 / 3, None]   # column sums 4, 2, 3, 0
RECALL = [2 / 3, 1 / 2, 2 / 3, 0.0]       # row sums 3, 2, 3, 1
F1 = [2 * p * r / (p + r) if p is not None else None for p, r in zip(PRECISION, RECALL)]
SUPPORT = [3, 2, 3, 1]
# each row of logits is 2 at the predicted class and 0 elsewhere: -log softmax is
# log(e^2 + 3) - 2 when the prediction is right (5 examples), log(e^2 + 3) when wrong (4)
LOSS = math.log(math.e ** 2 + 3) - 2 * 5 / 9


def tiny(tmp_path):
    model = tmp_path / "ident.dln"
    model.write_text(IDENTITY)
    x = np.zeros((len(PAIRS), 4), np.float32)
    for i, (_, p) in enumerate(PAIRS):
        x[i, p] = 2.0
    y = np.array([t for t, _ in PAIRS], np.int32)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    np.savez(tmp_path / "w.npz", w=np.eye(4, dtype=np.float32), b=np.zeros(4, np.float32))
    return model, tmp_path / "data.npz", tmp_path / "w.npz"


def check(metrics):
    assert metrics["examples"] == 9 and metrics["classes"] == 4
    assert metrics["confusion"] == CONFUSION
    assert metrics["accuracy"] == pytest.approx(5 / 9)
    assert metrics["loss"] == pytest.approx(LOSS, rel=1e-6)
    for row, p, r, f, s in zip(metrics["per_class"], PRECISION, RECALL, F1, SUPPORT):
        assert row["support"] == s
        assert row["precision"] == (pytest.approx(p) if p is not None else None)
        assert row["recall"] == pytest.approx(r)
        assert row["f1"] == (pytest.approx(f) if f is not None else None)
    assert metrics["macro"]["precision"] == pytest.approx((1 / 2 + 1 / 2 + 2 / 3) / 3)  # class 3: undefined
    assert metrics["macro"]["recall"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3 + 0) / 4)


@pytest.mark.parametrize("batch", [1, 4, 100])
def test_metrics_by_hand(tmp_path, batch):
    model, data, w = tiny(tmp_path)
    m = dlc.load(model, w, backend="interp")
    d = np.load(data)
    check(evaluate_classes(m, {"x": d["x"], "y": d["y"]}, batch))


def test_eval_command_prints_and_writes_json(tmp_path):
    model, data, w = tiny(tmp_path)
    out = tmp_path / "out" / "m.json"
    r = dlc_cli("eval", model, "--load", w, "--data", data, "--metrics-json", out, "--backend", "interp")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"model ident: weights {w}, 9 examples from {data}, backend interp"
    # issue 23: the line says what the score is measured on
    assert lines[1] == (f"loss {LOSS:.4f}  accuracy {5 / 9:.4f} on all 9 examples of {data} (this includes the "
                        "examples the model trained on, unless that file was held out)")
    at = lines.index("confusion matrix (rows: true class, columns: predicted class):")
    table = lines[at + 2:]
    assert [[int(v) for v in row.split()[1:]] for row in table] == CONFUSION
    assert [row.split()[0] for row in table] == ["0", "1", "2", "3"]
    assert lines[3].split() == ["class", "precision", "recall", "f1", "support"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[4:at] if ln.strip()}
    assert list(rows) == ["0", "1", "2", "3", "macro"]
    assert rows["3"] == ["-", "0.0000", "-", "1"]  # no prediction of class 3: precision undefined
    assert rows["0"] == ["0.5000", "0.6667", f"{4 / 7:.4f}", "3"]
    metrics = json.loads(out.read_text())
    check(metrics)
    assert metrics["backend"] == "interp" and metrics["weights"] == str(w)
    assert metrics["per_class"][3]["precision"] is None


def test_eval_binary_targets(tmp_path):
    """A single-unit output against 0/1 targets: the classes 0 and 1, the output thresholded at 0.5."""
    model = tmp_path / "bin.dln"
    model.write_text("""model bin {
    input x : f32[N, 2]
    input y : f32[N, 1]
    param w : f32[2, 1] = ones
    out = x @ w
    loss = mse(out, y)
    output out
    minimize loss with sgd(lr = 0.1)
}""")
    x = np.array([[0.9, 0], [0.2, 0], [0.7, 0], [0.1, 0], [0.6, 0]], np.float32)  # out = x[:, 0]
    y = np.array([[1], [0], [0], [1], [1]], np.float32)
    m = dlc.compile(model, backend="interp")
    got = evaluate_classes(m, {"x": x, "y": y}, 2)
    assert got["confusion"] == [[1, 1], [1, 2]]
    assert got["accuracy"] == pytest.approx(3 / 5)
    assert got["loss"] == pytest.approx(float(np.mean((x[:, :1] - y) ** 2)), rel=1e-6)
    assert [r["precision"] for r in got["per_class"]] == [pytest.approx(1 / 2), pytest.approx(2 / 3)]


def test_eval_errors(tmp_path):
    model, data, w = tiny(tmp_path)
    r = dlc_cli("eval", model, "--data", data)  # --load is required
    assert r.returncode == 2 and "--load" in r.stderr
    r = dlc_cli("eval", model, "--load", w, "--data", data, "--batch", "0")
    assert r.returncode == 2 and r.stderr.strip() == "error: --batch: must be >= 1, found 0"
    # the default batch comes from the model's train(...) line
    bad = tmp_path / "bad.dln"
    bad.write_text(IDENTITY.replace("train(batch = 4)", "train(batch = 0)"))
    r = dlc_cli("eval", bad, "--load", w, "--data", data)
    assert r.returncode == 2 and "train(batch = 0)" in r.stderr, r.stderr
    # labels out of range: a data error naming the file, before anything runs
    d = np.load(data)
    y = d["y"].copy()
    y[0] = 7
    np.savez(tmp_path / "bad.npz", x=d["x"], y=y)
    out = tmp_path / "m.json"
    r = dlc_cli("eval", model, "--load", w, "--data", tmp_path / "bad.npz", "--metrics-json", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"{tmp_path / 'bad.npz'}: error: labels 'y': 7 is out of range for the 4 classes"), \
        r.stderr
    assert not out.exists()
    # nothing to evaluate: no loss, no labels
    r = dlc_cli("eval", ROOT / "examples" / "bottleneck.dln", "--load", w, "--data", data)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_eval_on_the_shipped_digits(tmp_path):
    """mlp's own data (train(data = ...)) with weights trained one epoch: the printed accuracy is
    that of `dlc run --epochs 0 --load`, and the confusion matrix sums to the examples."""
    w = tmp_path / "w.npz"
    r = dlc_cli("run", ROOT / "examples" / "logreg.dln", "--epochs", "1", "--no-progress", "--save", w,
                "--backend", "interp")
    assert r.returncode == 0, r.stderr
    r0 = dlc_cli("run", ROOT / "examples" / "logreg.dln", "--epochs", "0", "--load", w, "--backend", "interp")
    j = tmp_path / "m.json"
    r = dlc_cli("eval", ROOT / "examples" / "logreg.dln", "--load", w, "--metrics-json", j, "--backend", "interp")
    assert r.returncode == 0, r.stderr
    m = json.loads(j.read_text())
    assert np.sum(m["confusion"]) == m["examples"] == 1797
    assert f"accuracy {m['accuracy']:.4f} on all 1797 examples of " in r0.stdout
    assert f"loss {m['loss']:.4f}" in r0.stdout
