"""Checkpoints (`dlc run --checkpoint DIR`, `--resume DIR`) and the optimizer state in weights files
(`--save`, `--load`, `Model.save(state=True)`, `Model.load`).

The central claim: on the interpreter, 2 epochs, then a resume to 4, ends with weights and optimizer
state BIT-IDENTICAL to 4 epochs straight. The model under test has everything a resume must carry:
dropout (its masks are keyed by the step count), Adam (moments and the beta powers) and a
learning-rate schedule (its step counter), and a held-out split and shuffling (the generator state).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dlc
from dlc.cli import main
from dlc.ir.errors import DlcError
from dlc.runtime.files import read_npz
from dlc.runtime.weights import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from conftest import DIGITS

MODEL = """
model ck {
    input  x : f32[N, 64]
    input  y : i32[N]
    h      = dropout(relu(dense(x, 16)), 0.2)
    logits = linear(h, 10)
    loss   = softmax_xent(logits, y)
    output logits
    minimize loss with adam(lr = 0.01, schedule = exponential, gamma = 0.99, warmup = 5)
}
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder with the model, 200 digits as data, and the working directory there."""
    (tmp_path / "ck.dln").write_text(MODEL)
    with np.load(DIGITS) as z:
        np.savez(tmp_path / "d.npz", x=z["x"][:200], y=z["y"][:200])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args, model="ck.dln") -> int:
    return main(["run", model, "--data", "d.npz", "--backend", "interp", "--batch", "16", "--val-split", "0.2",
                 "--seed", "3", "--no-progress", *map(str, args)])


def arrays(path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_resume_is_bit_identical_to_an_uninterrupted_run(work, capsys):
    assert run("--epochs", 4, "--save", "straight.npz", "--metrics-json", "straight.json") == 0
    assert run("--epochs", 2, "--checkpoint", "cp") == 0
    meta = load_checkpoint(work / "cp", dlc.compile(work / "ck.dln", backend="interp").graph)[2]
    assert meta["epoch"] == 2 and meta["steps"] == 2 * 10  # 160 training examples, batch 16
    # --seed, --batch, --val-split are the checkpoint's (given again, they must agree)
    assert main(["run", "ck.dln", "--data", "d.npz", "--backend", "interp", "--no-progress", "--epochs", "4",
                 "--resume", "cp", "--checkpoint", "cp", "--save", "resumed.npz", "--metrics-json",
                 "resumed.json"]) == 0
    out = capsys.readouterr().out
    assert "resumed from cp/checkpoint.npz: epoch 2 done, 20 steps" in out
    assert "epoch   1/4" not in out.split("resumed from")[1] and "epoch   3/4" in out
    a, b = arrays("straight.npz"), arrays("resumed.npz")
    assert sorted(a) == sorted(b)
    state = [k for k in a if k.startswith("state/")]
    assert {"state/adam.one_minus_beta1_t", "state/adam.one_minus_beta2_t", "state/schedule.t", "state/h.w.m", "state/h.w.v"} <= set(state)
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} differs after resuming"
    assert a["state/schedule.t"] == 40
    ma, mb = (json.loads(Path(f).read_text()) for f in ("straight.json", "resumed.json"))
    for m in (ma, mb):
        m.pop("seconds")
    assert ma == mb  # the history of all 4 epochs, the final loss and accuracy
    assert load_checkpoint(work / "cp", dlc.compile(work / "ck.dln", backend="interp").graph)[2]["epoch"] == 4


def test_the_resumed_run_would_differ_without_the_generator_state(work):
    """The check above is not vacuous: resuming without restoring the shuffling generator (or the
    step count dropout is keyed by) does change the weights."""
    assert run("--epochs", 3, "--save", "straight.npz") == 0
    assert run("--epochs", 2, "--checkpoint", "cp") == 0
    m = dlc.compile(work / "ck.dln", backend="interp", seed=3)
    params, state, meta = load_checkpoint(work / "cp", m.graph)
    from dlc.runtime.datafiles import load_data
    from dlc.runtime.train import train
    feeds, n = load_data(work / "d.npz", m.graph)
    for broken in ({"rng": np.random.default_rng(4).bit_generator.state}, {"steps": 0}):
        m.params.update(params)
        m.set_state(state)
        train(m, feeds, n, 3, 16, 0.2, 3, progress=False, out=io.StringIO(), resume={**meta, **broken})
        assert not np.array_equal(np.asarray(m.params["h.w"]), arrays("straight.npz")["h.w"]), broken


def test_checkpoint_holds_params_state_and_metadata(work):
    assert run("--epochs", 1, "--checkpoint", "cp") == 0
    files = sorted(p.name for p in (work / "cp").iterdir())
    assert files == [CHECKPOINT_FILE]  # one file: nothing a reader could see half of
    z = read_npz(work / "cp" / CHECKPOINT_FILE)
    m = dlc.compile(work / "ck.dln", backend="interp")
    assert set(m.params) | {f"state/{n}" for n in m.graph.nodes_of("state")} | {"checkpoint/meta"} == set(z)
    meta = json.loads(z["checkpoint/meta"].tobytes())
    assert (meta["model"], meta["epoch"], meta["steps"], meta["seed"], meta["batch"], meta["val_split"]) == \
           ("ck", 1, 10, 3, 16, 0.2)
    assert meta["rng"]["bit_generator"] == "PCG64" and len(meta["history"]) == 1


# -- a checkpoint write that dies midway leaves the previous one ------------------------------------
@pytest.mark.parametrize("fail", ["replace", "fsync"])
def test_failed_write_keeps_the_previous_checkpoint(work, monkeypatch, capsys, fail):
    assert run("--epochs", 1, "--checkpoint", "cp") == 0
    before = (work / "cp" / CHECKPOINT_FILE).read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, fail, boom)
    assert run("--epochs", 3, "--resume", "cp", "--checkpoint", "cp") == 2
    assert "cannot write" in capsys.readouterr().err
    monkeypatch.undo()
    assert (work / "cp" / CHECKPOINT_FILE).read_bytes() == before
    assert sorted(p.name for p in (work / "cp").iterdir()) == [CHECKPOINT_FILE]  # the temporary is gone
    m = dlc.compile(work / "ck.dln", backend="interp")
    assert load_checkpoint(work / "cp", m.graph)[2]["epoch"] == 1


KILLED = """
import os, sys, numpy as np
from dlc.cli import main
real, calls = np.savez, []
def dying_savez(f, **arrays):   # the second checkpoint: half the bytes, then the process dies
    if "checkpoint/meta" in arrays:
        calls.append(1)
        if len(calls) == 2:
            import io
            buf = io.BytesIO(); real(buf, **arrays)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush()
            os._exit(9)
    return real(f, **arrays)
np.savez = dying_savez
sys.exit(main(["run", "ck.dln", "--data", "d.npz", "--backend", "interp", "--batch", "16", "--val-split", "0.2",
               "--seed", "3", "--no-progress", "--epochs", "3", "--checkpoint", "cp"]))
"""


def test_a_process_killed_while_writing_leaves_the_previous_checkpoint(work):
    """A real death mid-write (os._exit in the middle of the second checkpoint): DIR holds the
    complete epoch-1 checkpoint and a truncated temporary, which resuming ignores."""
    r = subprocess.run([sys.executable, "-c", KILLED], cwd=work, capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    names = sorted(p.name for p in (work / "cp").iterdir())
    assert CHECKPOINT_FILE in names and len(names) == 2 and names[0].endswith(".tmp"), names
    m = dlc.compile(work / "ck.dln", backend="interp")
    assert load_checkpoint(work / "cp", m.graph)[2]["epoch"] == 1
    assert run("--epochs", 2, "--resume", "cp", "--save", "after.npz") == 0
    assert run("--epochs", 2, "--save", "straight.npz") == 0
    a, b = arrays("after.npz"), arrays("straight.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)


# -- resuming checks the checkpoint against the run ---------------------------------------------------
def test_resume_errors(work, capsys):
    assert run("--epochs", 1, "--checkpoint", "cp") == 0
    capsys.readouterr()

    def err(*args, model="ck.dln"):
        assert run(*args, model=model) == 2
        e = capsys.readouterr().err
        assert e.count("\n") <= 3 and "Traceback" not in e
        return e

    (work / "wide.dln").write_text(MODEL.replace("dense(x, 16)", "dense(x, 32)"))
    assert "param 'h.w' should be f32[64, 32], found shape [64, 16]" in err("--resume", "cp", model="wide.dln")
    (work / "sgd.dln").write_text(MODEL.replace("adam(lr = 0.01,", "sgd(lr = 0.01,"))
    assert "does not match model ck's optimizer: it has optimizer state 'state/adam.one_minus_beta1_t'" in \
        err("--resume", "cp", model="sgd.dln")
    (work / "other.dln").write_text(MODEL.replace("model ck", "model other"))
    assert "the checkpoint is of model 'ck', not 'other'" in err("--resume", "cp", model="other.dln")
    assert main(["run", "ck.dln", "--data", "d.npz", "--backend", "interp", "--batch", "32", "--resume", "cp",
                 "--no-progress"]) == 2
    e = capsys.readouterr().err
    assert "--batch: 32 differs from the checkpoint's batch = 16" in e
    with np.load("d.npz") as z:
        np.savez("d2.npz", x=z["x"][::-1], y=z["y"][::-1])
    assert main(["run", "ck.dln", "--data", "d2.npz", "--backend", "interp", "--resume", "cp", "--no-progress"]) == 2
    assert "the checkpoint was trained on other data" in capsys.readouterr().err
    assert "no checkpoint here" in err("--resume", "nowhere")
    run("--epochs", 1, "--save", "w.npz")
    capsys.readouterr()
    assert "not a checkpoint" in err("--resume", "w.npz")
    assert "cannot be combined with --load" in err("--load", "w.npz", "--resume", "cp")
    Path("afile").write_text("x")
    assert "--checkpoint: afile is a file" in err("--checkpoint", "afile")


def test_resume_at_the_last_epoch_trains_nothing(work, capsys):
    assert run("--epochs", 2, "--checkpoint", "cp", "--save", "a.npz") == 0
    assert run("--epochs", 2, "--resume", "cp", "--save", "b.npz") == 0
    assert "nothing left to train up to epoch 2" in capsys.readouterr().out
    a, b = arrays("a.npz"), arrays("b.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)


# -- optimizer state in weights files -----------------------------------------------------------------
def test_save_writes_the_state_and_load_restores_it(work, capsys):
    assert run("--epochs", 1, "--save", "w.npz") == 0
    w = arrays("w.npz")
    m = dlc.compile(work / "ck.dln", backend="interp")
    assert {k for k in w if k.startswith("state/")} == {f"state/{n}" for n in m.graph.nodes_of("state")}
    c = np.float32(0)
    for _ in range(10):   # 1 - 0.9^t kept by its recurrence in float32 (passes/optimizer.py)
        c = np.float32(0.9) * c + np.float32(1 - 0.9)
    assert w["state/schedule.t"] == 10 and w["state/adam.one_minus_beta1_t"] == c
    assert abs(c - (1 - 0.9 ** 10)) < 1e-6
    m.load("w.npz")
    for k, v in m.state.items():
        assert np.array_equal(v, w[k if k in m.params else f"state/{k}"]), k
    # --load then says so; a params-only file leaves the state fresh and says that
    assert run("--epochs", 0, "--load", "w.npz") == 0
    assert "loaded 4 params from w.npz and the optimizer state" in capsys.readouterr().out
    np.savez("p.npz", **{k: v for k, v in w.items() if not k.startswith("state/")})
    assert run("--epochs", 0, "--load", "p.npz") == 0
    assert "optimizer state starts fresh: the file holds no optimizer state" in capsys.readouterr().out


def test_loaded_state_changes_the_next_step(work):
    """Restoring the moments matters: a step after load(with state) equals the original's next
    step; a step after loading the params only does not."""
    with np.load("d.npz") as z:
        x, y = z["x"][:16], z["y"][:16]
    a = dlc.compile(work / "ck.dln", backend="interp")
    for _ in range(5):
        a.step(x=x, y=y)
    a.save("full.npz", state=True)
    a.save("params.npz")
    assert not any(k.startswith("state/") for k in arrays("params.npz"))
    b = dlc.compile(work / "ck.dln", backend="interp").load("full.npz")
    c = dlc.compile(work / "ck.dln", backend="interp").load("params.npz")
    b.steps = c.steps = a.steps  # dropout's masks are keyed by the step count
    for m in (a, b, c):
        m.step(x=x, y=y)
    assert np.array_equal(np.asarray(a.params["h.w"]), np.asarray(b.params["h.w"]))
    assert not np.array_equal(np.asarray(a.params["h.w"]), np.asarray(c.params["h.w"]))


def test_state_of_another_optimizer_is_ignored_and_misshaped_state_is_an_error(work):
    a = dlc.compile(work / "ck.dln", backend="interp")
    a.save("adam.npz", state=True)
    sgd = dlc.compile(MODEL.replace("adam(lr = 0.01,", "sgd(lr = 0.01, momentum = 0.9,"), backend="interp")
    before = sgd.state
    sgd.load("adam.npz")  # params load; Adam's state is not sgd's: the velocities stay as they were
    assert all(np.array_equal(sgd.state[k], v) for k, v in before.items() if k not in sgd.params)
    w = arrays("adam.npz")
    w["state/h.w.m"] = np.zeros((3, 3), np.float32)
    np.savez("bad.npz", **w)
    with pytest.raises(DlcError, match=r"optimizer state 'state/h.w.m' should be f32\[64, 16\], found float32 "
                                       r"of shape \[3, 3\]"):
        dlc.compile(work / "ck.dln", backend="interp").load("bad.npz")


def test_save_checkpoint_api_round_trip(tmp_path):
    m = dlc.compile(MODEL, backend="interp")
    params, state = m.split_state()
    save_checkpoint(tmp_path / "new" / "dir", params, state, {"model": "ck", "epoch": 7})
    p, s, meta = load_checkpoint(tmp_path / "new" / "dir" / CHECKPOINT_FILE, m.graph)
    assert meta["epoch"] == 7 and meta["format"] == 1
    assert all(np.array_equal(p[k], params[k]) for k in params)
    assert all(np.array_equal(s[k], state[k]) for k in state)
