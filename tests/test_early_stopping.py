"""Early stopping (train(patience, monitor), --patience, --monitor), the test split (train(test_split),
--test-split) and what each printed score is measured on (runtime/train.py, api.py, cli.py).

The oracle for early stopping is dlc itself run without it: training is deterministic, so a run
that stops early and restores epoch B must end with exactly the weights (and optimizer state) of a
run of B epochs without early stopping, and a run resumed from a checkpoint must end exactly as
the uninterrupted one: both compared bit for bit.
"""
from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import dlc
from dlc.cli import main
from dlc.runtime.datafiles import load_data
from dlc.runtime.train import EarlyStopping, split_indices, holdout_indices, train
from dlc.runtime.weights import load_checkpoint
from conftest import DIGITS, dlc_cli, needs_emu

N = 240   # digits in the data: 48 test (0.2), 60 validation (0.25), 132 training
MODEL = """\
model es {
    input  x : f32[N, 64]
    input  y : i32[N]
    h      = relu(dense(x, 32))
    logits = linear(h, 10)
    loss   = softmax_xent(logits, y)
    output logits
    minimize loss with adamw(lr = 0.01, weight_decay = 0.05)
    train(epochs = 40, batch = 16, val_split = 0.25, test_split = 0.2, patience = 3)
}
"""
# what this model does on this data at the default seed (checked by the tests that use it): val_loss
# is lowest at epoch 22 and stays above it through epoch 25, where patience 3 stops training
BEST, STOP = 22, 25


@pytest.fixture
def work(tmp_path, monkeypatch):
    (tmp_path / "es.dln").write_text(MODEL)
    with np.load(DIGITS) as z:
        np.savez(tmp_path / "d.npz", x=z["x"][:N], y=z["y"][:N])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args, data="d.npz", backend="interp") -> int:
    return main(["run", "es.dln", "--data", data, "--backend", backend, "--no-progress", *map(str, args)])


def arrays(path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def same_arrays(a, b) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} differs"


def metrics(path) -> dict:
    m = json.loads(Path(path).read_text())
    m.pop("seconds")
    return m


# -- the splits ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, val, test", [(240, 0.25, 0.2), (1797, 0.2, 0.1), (10, 0.3, 0.05), (7, 0.0, 0.5)])
def test_the_splits_are_disjoint_complete_and_reproducible(n, val, test):
    tr, va, te = split_indices(n, val, 3, test)
    assert len(np.intersect1d(tr, va)) == len(np.intersect1d(tr, te)) == len(np.intersect1d(va, te)) == 0
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(n))
    assert len(te) == max(1, round(n * test)) and len(va) == (max(1, round(n * val)) if val else 0)
    again = split_indices(n, val, 3, test)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))
    other = split_indices(n, val, 4, test)   # another seed: another validation split, the same test split
    assert np.array_equal(other[2], te) and np.array_equal(te, holdout_indices(n, test))
    if val and n > 20:
        assert not np.array_equal(np.sort(other[1]), np.sort(va))


def test_without_a_test_split_the_validation_split_is_as_before():
    """test_split = 0 keeps the split every earlier run drew: the first round(n * val_split) of a
    permutation from the seed are held out."""
    tr, va, te = split_indices(1797, 0.2, 5)
    order = np.random.default_rng(5).permutation(1797)
    assert len(te) == 0 and np.array_equal(va, order[:359]) and np.array_equal(tr, order[359:])


def test_val_part_is_what_fit_holds_out_and_scores(work):
    """Model.val_part gives exactly fit's validation examples: scoring them after fit gives fit's
    val_loss and val_accuracy bit for bit, and wrong labels on them (and only them) change nothing
    that trained (the same training losses, the same weights) but the validation figures."""
    def fitted(y):
        m = dlc.compile(work / "es.dln", backend="interp")
        data = m.read_data(work / "d.npz")
        data.feeds["y"] = y
        s = replace(m.settings(), epochs=4, patience=0, seed=7)
        return m, data, s, m.fit(data, s, progress=False, out=io.StringIO())

    with np.load("d.npz") as z:
        y = z["y"].copy()
    m, data, s, got = fitted(y)
    part = m.val_part(data, s)
    assert part.n == got["val_examples"] == 60
    scored = m.score(part, s.batch)
    assert scored["loss"] == got["val_loss"] and scored["accuracy"] == got["val_accuracy"]
    _, va, te = split_indices(N, 0.25, 7, 0.2)   # the val split of seed 7, after the test split
    assert np.array_equal(part.feeds["y"], y[va]) and len(np.intersect1d(va, te)) == 0
    poisoned = y.copy()
    poisoned[va] = (poisoned[va] + 1) % 10
    m2, _, _, bad = fitted(poisoned)
    assert [h["loss"] for h in bad["history"]] == [h["loss"] for h in got["history"]]
    same_arrays(m.split_state()[0], m2.split_state()[0])
    assert bad["val_accuracy"] < 0.2 < got["val_accuracy"]
    assert m.val_part(data, replace(s, val_split=0.0)).n == 0   # nothing held out: nothing to score


def test_training_never_sees_the_test_examples(work, capsys):
    """Wrong labels on the test examples change the test score and nothing else: the same losses,
    accuracies and validation figures in every epoch, and bit-identical weights."""
    with np.load("d.npz") as z:
        x, y = z["x"], z["y"].copy()
    te = holdout_indices(N, 0.2)
    y[te] = (y[te] + 1) % 10
    np.savez("poisoned.npz", x=x, y=y)
    assert run("--epochs", 5, "--save", "a.npz", "--metrics-json", "a.json") == 0
    assert run("--epochs", 5, "--save", "b.npz", "--metrics-json", "b.json", data="poisoned.npz") == 0
    same_arrays(arrays("a.npz"), arrays("b.npz"))
    a, b = metrics("a.json"), metrics("b.json")
    assert a["history"] == b["history"]
    assert a["train_examples"] == 132 and a["val_examples"] == 60 and a["test_examples"] == 48
    assert a["test_accuracy"] > 0.5 and b["test_accuracy"] < 0.2 and a["test_accuracy"] != b["test_accuracy"]
    out = capsys.readouterr().out
    assert f"test accuracy {a['test_accuracy']:.4f} on 48 examples (held out from training and validation)" in out


# -- what each score is measured on ------------------------------------------------------------------
def test_scores_say_what_they_are_measured_on(work, capsys):
    assert run("--epochs", 3, "--patience", 0, "--save", "w.npz", "--metrics-json", "m.json") == 0
    acc = metrics("m.json")["test_accuracy"]
    capsys.readouterr()
    # the model declares test_split: --epochs 0 scores the test part, and says so
    assert run("--epochs", 0, "--load", "w.npz") == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.endswith(f"accuracy {acc:.4f} on the 48 test examples of d.npz (test_split = 0.2: held out "
                         "from training and validation)"), line
    r = dlc_cli("eval", "es.dln", "--load", "w.npz", "--data", "d.npz", "--backend", "interp", cwd=work, rc=0)
    assert r.stdout.splitlines()[1].endswith(f"accuracy {acc:.4f} on the 48 test examples of d.npz (test_split = "
                                             "0.2: held out from training and validation)"), r.stdout
    # without one, the whole file, with the caveat
    assert run("--epochs", 0, "--load", "w.npz", "--test-split", 0) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.endswith("on all 240 examples of d.npz (this includes the examples the model trained on, "
                         "unless that file was held out)"), line


# -- early stopping --------------------------------------------------------------------------------
class _Stub:
    def __init__(self):
        self.epoch = 0

    def split_state(self):
        return {"w": np.array([float(self.epoch)])}, {}


@pytest.mark.parametrize("monitor, values, best, stop", [
    ("val_loss", [1.0, 0.9, 0.95, 0.9, 0.97, 0.5], 2, 5),       # equal is no improvement
    ("val_loss", [1.0, 0.9, 0.95, 0.8, 0.97, 0.99, 0.85], 4, 7),
    ("val_accuracy", [0.5, 0.7, 0.6, 0.7, 0.69, 0.9], 2, 5),    # higher is better
])
def test_early_stopping_counts_epochs_without_improvement(monitor, values, best, stop):
    es, model = EarlyStopping(monitor, 3), _Stub()
    for epoch, v in enumerate(values, 1):
        model.epoch = epoch
        es.update(model, {"epoch": epoch, monitor: v})
        if es.stopped:
            break
    assert (es.best_epoch, es.stopped) == (best, stop)
    assert es.arrays[0]["w"][0] == best   # the weights kept are the best epoch's


def test_early_stopping_keeps_the_best_epoch(work, capsys):
    assert run("--save", "es.npz", "--metrics-json", "es.json") == 0
    out = capsys.readouterr().out
    assert f"stopped early at epoch {STOP}: val_loss has not improved for 3 epochs; restoring epoch {BEST}" in out
    assert f"epoch  {STOP + 1}/40" not in out
    m = metrics("es.json")
    assert (m["best_epoch"], m["stopped_epoch"], m["epochs_run"]) == (BEST, STOP, STOP)
    losses = [r["val_loss"] for r in m["history"]]
    assert len(losses) == STOP and min(losses) == losses[BEST - 1] and losses.index(min(losses)) == BEST - 1
    assert m["val_loss"] == losses[BEST - 1]   # the final metrics are the best epoch's
    assert f"held-out accuracy {m['val_accuracy']:.4f} on 60 examples (epoch {BEST}, the best)" in out
    # the weights (and optimizer state) are those of a run of BEST epochs without early stopping
    assert run("--epochs", BEST, "--patience", 0, "--save", "plain.npz") == 0
    same_arrays(arrays("es.npz"), arrays("plain.npz"))
    assert run("--epochs", STOP, "--patience", 0, "--save", "last.npz") == 0   # not vacuous
    assert not np.array_equal(arrays("es.npz")["h.w"], arrays("last.npz")["h.w"])


def test_a_resumed_run_stops_at_the_same_epoch_with_the_same_weights(work, capsys):
    assert run("--save", "straight.npz", "--metrics-json", "straight.json", "--checkpoint", "done") == 0
    # interrupted one epoch after the best: one epoch without improvement already counted
    assert run("--epochs", BEST + 1, "--checkpoint", "cp") == 0
    meta = load_checkpoint(work / "cp", dlc.compile(work / "es.dln", backend="interp").graph)[2]
    assert meta["early"] == {"monitor": "val_loss", "best": meta["history"][BEST - 1]["val_loss"],
                             "best_epoch": BEST, "wait": 1, "stopped": 0}
    capsys.readouterr()
    assert run("--resume", "cp", "--save", "resumed.npz", "--metrics-json", "resumed.json") == 0
    out = capsys.readouterr().out
    assert f"stopped early at epoch {STOP}: val_loss has not improved for 3 epochs; restoring epoch {BEST}" in out
    same_arrays(arrays("straight.npz"), arrays("resumed.npz"))
    assert metrics("straight.json") == metrics("resumed.json")
    # resuming a run that had stopped trains nothing and ends with the same weights
    assert run("--resume", "done", "--save", "again.npz") == 0
    assert f"that run stopped early at epoch {STOP}" in capsys.readouterr().out
    same_arrays(arrays("straight.npz"), arrays("again.npz"))


def test_resuming_without_the_early_stopping_state_would_differ(work):
    """The check above is not vacuous: a resume that forgets the best epoch and the count ends
    elsewhere."""
    assert run("--save", "straight.npz") == 0
    assert run("--epochs", BEST + 1, "--checkpoint", "cp") == 0
    m = dlc.compile(work / "es.dln", backend="interp")
    params, state, meta = load_checkpoint(work / "cp", m.graph)
    m.set_state(params)
    m.set_state(state)
    feeds, n = load_data(work / "d.npz", m.graph)
    got = train(m, feeds, n, 40, 16, 0.25, 0, progress=False, out=io.StringIO(), test_split=0.2, patience=3,
                resume={k: v for k, v in meta.items() if k not in ("early", "best_arrays")})
    assert got["best_epoch"] != BEST or not np.array_equal(np.asarray(m.params["h.w"]), arrays("straight.npz")["h.w"])


@needs_emu
def test_early_stopping_on_emu_restores_the_best_epoch(work, capsys):
    assert run("--save", "es.npz", "--metrics-json", "es.json", backend="emu") == 0
    m = metrics("es.json")
    assert m["stopped_epoch"] and m["best_epoch"] < m["stopped_epoch"]
    assert f"restoring epoch {m['best_epoch']}" in capsys.readouterr().out
    assert run("--epochs", m["best_epoch"], "--patience", 0, "--save", "plain.npz", backend="emu") == 0
    same_arrays(arrays("es.npz"), arrays("plain.npz"))


def test_monitor_val_accuracy(work, capsys):
    assert run("--monitor", "val_accuracy", "--metrics-json", "m.json") == 0
    m = metrics("m.json")
    accs = [r["val_accuracy"] for r in m["history"]]
    assert m["monitor"] == "val_accuracy" and accs.index(max(accs)) == m["best_epoch"] - 1
    assert all(a <= accs[m["best_epoch"] - 1] for a in accs[m["best_epoch"]:]) and len(accs) == m["best_epoch"] + 3


# -- errors ------------------------------------------------------------------------------------------
def _model_with(tmp_path, train_line: str) -> tuple[Path, int]:
    src = tmp_path / "bad.dln"
    src.write_text(MODEL.replace("    train(epochs = 40, batch = 16, val_split = 0.25, test_split = 0.2, patience = 3)",
                                 train_line))
    line = next(i for i, l in enumerate(src.read_text().splitlines(), 1) if "train(" in l)
    return src, line


@pytest.mark.parametrize("train_line, message", [
    ("    train(patience = 3)", "train(patience = 3): early stopping needs a held-out split to watch: give "
                                "val_split in train(...) or --val-split"),
    ("    train(val_split = 0.5, test_split = 0.5)", "train(test_split = 0.5): test_split 0.5 + val_split 0.5 must "
                                                     "be below 1, to leave examples to train on"),
    ("    train(val_split = 0.2, monitor = val_acc)", "train: monitor must be one of val_loss, val_accuracy, found "
                                                      "'val_acc' (did you mean 'val_accuracy'?)"),
    ("    train(test_split = 1.5)", "train: test_split must be in [0, 1), found 1.5"),
    ("    train(val_split = 0.2, patience = -2)", "train: patience must not be negative, found -2"),
])
def test_bad_train_settings_are_located(tmp_path, train_line, message):
    src, line = _model_with(tmp_path, train_line)
    r = dlc_cli("run", src, "--data", DIGITS, "--epochs", "1", "--no-progress", rc=2)
    assert r.stderr.startswith(f"{src}:{line}:"), r.stderr
    assert f"error: {message}" in r.stderr.splitlines()[0], r.stderr


@pytest.mark.parametrize("flags, message", [
    (["--patience", "2", "--val-split", "0"], "--patience: early stopping needs a held-out split to watch: give "
                                              "val_split in train(...) or --val-split"),
    (["--test-split", "0.8"], "--test-split: test_split 0.8 + val_split 0.25 must be below 1, to leave examples "
                              "to train on"),
    (["--monitor", "loss"], "--monitor: must be one of val_loss, val_accuracy, found 'loss'"),
    (["--patience", "-1"], "--patience: must be an integer >= 0 (0: no early stopping), found -1"),
    (["--test-split", "1"], "--test-split: must be in [0, 1), found 1.0"),
])
def test_bad_flags_name_the_flag(work, flags, message):
    r = dlc_cli("run", "es.dln", "--data", "d.npz", "--no-progress", *flags, cwd=work, rc=2)
    assert r.stderr == f"error: {message}\n", r.stderr


def test_val_accuracy_needs_an_accuracy(tmp_path):
    src = tmp_path / "r.dln"
    src.write_text("model r {\n    input x : f32[N, 2]\n    input t : f32[N, 1]\n    out = linear(x, 1)\n"
                   "    loss = mse(out, t)\n    output out\n    minimize loss with adamw(lr = 0.01)\n"
                   "    train(val_split = 0.3, patience = 2, monitor = val_accuracy)\n}\n")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "r.npz", x=rng.normal(size=(20, 2)).astype(np.float32),
             t=rng.normal(size=(20, 1)).astype(np.float32))
    r = dlc_cli("run", src, "--data", tmp_path / "r.npz", "--epochs", "2", "--no-progress", rc=2)
    assert "error: monitor = val_accuracy: model r has no accuracy" in r.stderr, r.stderr


def test_resume_refuses_another_test_split(work):
    assert run("--epochs", 2, "--checkpoint", "cp") == 0
    r = dlc_cli("run", "es.dln", "--data", "d.npz", "--resume", "cp", "--test-split", "0.1", cwd=work, rc=2)
    assert "error: --test-split: 0.1 differs from the checkpoint's test_split = 0.2" in r.stderr, r.stderr
