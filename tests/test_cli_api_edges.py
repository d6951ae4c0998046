"""Edges of the command line and the Python API: every flag and argument checked with a message
that names it, file modes under the umask, no NumPy warnings on divergence, empty batches,
predictions (`--predict`), saving and loading through the API, and the API's documentation."""
from __future__ import annotations

import csv
import inspect
import json
import os
import re
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

import dlc
from dlc.runtime.backends import available
from dlc.runtime.files import atomic_write
from dlc.runtime.weights import save_weights
from conftest import DIGITS, EXAMPLES, LOGREG, MLP, ROOT, dlc_cli

# mean squared error with a far too large learning rate: the loss overflows within a few steps
DIVERGES = """model diverges {
    input x : f32[N, 8]
    input t : f32[N, 1]
    param w : f32[8, 1] = ones
    out  = x @ w
    loss = mse(out, t)
    output out
    minimize loss with sgd(lr = 1000.0)
}
"""


def user_error(r: subprocess.CompletedProcess) -> str:
    """Exit 2, no traceback; returns the first line of stderr."""
    assert r.returncode == 2, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr.splitlines()[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """200 digits as a data file."""
    d = tmp_path_factory.mktemp("small")
    with np.load(DIGITS) as z:
        x, y = z["x"][:200].copy(), z["y"][:200].copy()
    np.savez(d / "data.npz", x=x, y=y)
    return d / "data.npz", x, y


# -- 1. every flag and argument is checked, and the message names it --------------------------------
BAD_FLAGS = [
    (["--seed", "-1"], "--seed: must be an integer >= 0, found -1"),
    (["--epochs", "-1"], "--epochs: must be >= 0, found -1"),
    (["--batch", "0"], "--batch: must be >= 1, found 0"),
    (["--val-split", "1"], "--val-split: must be in [0, 1), found 1.0"),
    (["--val-split", "-0.5"], "--val-split: must be in [0, 1), found -0.5"),
    (["--val-split", "nan"], "--val-split: must be in [0, 1), found nan"),
    (["--backend", "tpu"], "--backend: unknown backend 'tpu'"),
    (["--predict", "out.txt"], "--predict: expected a file name ending in .npz or .csv"),
    (["--backend", "interp", "--cuda-graph"], "--cuda-graph: needs backend 'cuda'"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_run_flag_is_named(flags, message, tmp_path):
    r = dlc_cli("run", LOGREG, "--no-progress", "--metrics-json", "m.json", *flags, cwd=tmp_path)
    line = user_error(r)
    assert line.startswith(f"error: {message}"), line
    assert r.stdout == "", r.stdout  # nothing printed before the error, no backend line
    assert not (tmp_path / "m.json").exists()


def test_bad_opt_level_flag_is_named(tmp_path):
    for cmd in (["run", LOGREG], ["compile", LOGREG, "-o", "out"]):
        r = dlc_cli(*cmd, "-O", "7", cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "-O" in r.stderr and "7" in r.stderr, r.stderr


def test_bad_value_in_the_models_train_line_says_so(tmp_path, small):
    data, _, _ = small
    text = LOGREG.read_text().replace('train(data = "data/digits.npz", epochs = 30, batch = 32, val_split = 0.2)',
                                      f'train(data = "{data}", epochs = 1, batch = 0)')
    assert "batch = 0" in text
    (tmp_path / "m.dln").write_text(text)
    line = user_error(dlc_cli("run", "m.dln", "--no-progress", cwd=tmp_path))
    assert line.startswith("m.dln: error: train(batch = 0)"), line
    assert "--batch" in line and ">= 1" in line, line
    # the flag overrides the model's value
    dlc_cli("run", "m.dln", "--no-progress", "--batch", "50", cwd=tmp_path, rc=0)


BAD_ARGS = [
    (dict(seed=-1), "seed: must be an integer >= 0, found -1"),
    (dict(seed=2.5), "seed: must be an integer >= 0, found 2.5"),
    (dict(seed=True), "seed: must be an integer >= 0"),
    (dict(backend="tpu"), "backend: unknown backend 'tpu'"),
    (dict(backend=3), "backend: unknown backend 3"),
    (dict(model=7), "model: expected a model name"),
    (dict(opt_level=7), "opt_level: must be one of 0, 1"),  # and every higher level the pass manager has
    (dict(opt_level="1"), "opt_level: must be one of"),
    (dict(float_dtype="float16"), "float_dtype: must be float32 or float64, found 'float16'"),
    (dict(float_dtype="int32"), "float_dtype: must be float32 or float64"),
    (dict(float_dtype=None), "float_dtype: must be float32 or float64, found None"),
    (dict(float_dtype="bogus"), "float_dtype: must be float32 or float64"),
    (dict(check="yes"), "check: must be True or False"),
    (dict(backend="interp", cuda_graph=1), "cuda_graph: must be True or False"),
    (dict(backend="interp", cuda_graph=True), "cuda_graph: needs backend 'cuda'"),
]


@pytest.mark.parametrize("kwargs,message", BAD_ARGS, ids=[repr(k) for k, _ in BAD_ARGS])
def test_bad_compile_argument_is_named(kwargs, message):
    with pytest.raises(dlc.DlcError) as ei:
        dlc.compile(LOGREG, **kwargs)
    assert str(ei.value).startswith(f"error: {message}"), str(ei.value)


def test_bad_source_argument():
    with pytest.raises(dlc.DlcError, match="source: expected a .dln path or .dln text"):
        dlc.compile(42)


@pytest.mark.parametrize("dtype", ["float32", "float64", np.float64, np.dtype("float32")])
def test_supported_float_dtypes(dtype, small):
    _, x, _ = small
    m = dlc.compile(LOGREG, backend="interp", float_dtype=dtype)
    assert m.float_dtype == np.dtype(dtype)
    assert m.forward(x=x[:3])["logits"].shape == (3, 10)


# -- 2. the backend is reported once, with the data, not before errors ------------------------------
def test_no_backend_line_before_errors(tmp_path):
    r = dlc_cli("run", "nofile.dln", cwd=tmp_path)
    assert user_error(r).startswith("nofile.dln: error: no such file")
    assert r.stdout == ""
    r = dlc_cli("run", LOGREG, "--data", "missing.npz", cwd=tmp_path)
    assert user_error(r).startswith("missing.npz: error:")
    assert "backend" not in r.stdout, r.stdout


def test_backend_named_in_the_model_line(tmp_path, small):
    data, _, _ = small
    r = dlc_cli("run", LOGREG, "--data", data, "--epochs", "1", "--no-progress", cwd=tmp_path, rc=0)
    auto = "cuda" if available("cuda")[0] else "interp"
    reason = "a GPU is present" if auto == "cuda" else "no GPU found"
    first = r.stdout.splitlines()[0]
    assert first == f"model logreg: 200 examples from {data}, backend {auto} (auto: {reason})", first
    assert r.stdout.count("backend") == 1, r.stdout
    r = dlc_cli("run", LOGREG, "--data", data, "--epochs", "1", "--no-progress", "--backend", "interp",
                cwd=tmp_path, rc=0)
    assert r.stdout.splitlines()[0].endswith("backend interp"), r.stdout


# -- 3. output files follow the umask ----------------------------------------------------------------
def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("umask,want", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_respects_the_umask(umask, want, tmp_path):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.txt", lambda f: f.write(b"hello"))
        save_weights(tmp_path / "w.npz", {"w": np.ones(3, np.float32)})
        m = dlc.compile(LOGREG, backend="interp")
        m.save(tmp_path / "m.npz")
        atomic_write(tmp_path / "a.txt", lambda f: f.write(b"again"))  # replacing an existing file
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_bytes() == b"again"
    for name in ("a.txt", "w.npz", "m.npz"):
        assert _mode(tmp_path / name) == want, (name, oct(_mode(tmp_path / name)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "m.npz", "w.npz"]  # no temporaries


def test_failed_write_leaves_nothing(tmp_path):
    def boom(f):
        f.write(b"half")
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "a.txt", boom)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask,want", [(0o022, 0o644), (0o077, 0o600)])
def test_cli_outputs_respect_the_umask(umask, want, tmp_path, small):
    data, _, _ = small
    dlc_cli("compile", LOGREG, "-o", "out", "--emit", "ir,dot,cuda,plan", cwd=tmp_path, umask=umask, rc=0)
    dlc_cli("run", LOGREG, "--data", data, "--epochs", "1", "--no-progress", "--save", "w.npz",
            "--metrics-json", "m.json", "--predict", "p.npz", cwd=tmp_path, umask=umask, rc=0)
    files = [tmp_path / f for f in ("w.npz", "m.json", "p.npz")] + sorted((tmp_path / "out").iterdir())
    assert len(files) == 7, files
    for f in files:
        assert _mode(f) == want, (f.name, oct(_mode(f)))


# -- 4. divergence: one clean error, no NumPy warnings ---------------------------------------------
def test_divergence_is_one_clean_error(tmp_path):
    (tmp_path / "div.dln").write_text(DIVERGES)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "div.npz", x=rng.standard_normal((64, 8)).astype(np.float32),
             t=rng.standard_normal((64, 1)).astype(np.float32))
    r = dlc_cli("run", "div.dln", "--data", "div.npz", "--backend", "interp", "--epochs", "20",
                "--no-progress", "--save", "w.npz", cwd=tmp_path)
    line = user_error(r)
    assert "training diverged" in line, r.stderr
    assert "RuntimeWarning" not in r.stderr and "overflow" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "w.npz").exists()


# -- 5. empty batches through the API --------------------------------------------------------------
@pytest.mark.parametrize("call", ["step", "grad", "forward"])
def test_empty_batch_is_an_error_and_changes_nothing(call, small):
    _, x, y = small
    m = dlc.compile(MLP, backend="interp")
    before = {k: np.array(v) for k, v in m.state.items()}
    feeds = dict(x=x[:0]) if call == "forward" else dict(x=x[:0], y=y[:0])
    with pytest.raises(dlc.DlcError) as ei:
        getattr(m, call)(**feeds)
    assert "'x'" in str(ei.value) and "no examples" in str(ei.value), str(ei.value)
    after = m.state
    assert set(after) == set(before)
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)
    assert m.steps == 0


# -- 7. evaluating saved weights says over how many examples ---------------------------------------
def test_epochs_zero_says_how_many_examples(tmp_path, small):
    data, x, y = small
    m = dlc.compile(LOGREG, backend="interp", seed=3)
    for _ in range(5):
        m.step(x=x, y=y)
    m.save(tmp_path / "w.npz")
    r = dlc_cli("run", LOGREG, "--data", data, "--epochs", "0", "--load", "w.npz", "--backend", "interp",
                "--metrics-json", "m.json", cwd=tmp_path, rc=0)
    # issue 23: the line also says which examples (all of the file, which may include training examples)
    found = re.search(r"^loss ([0-9.]+)  accuracy ([0-9.]+) on all (\d+) examples of .*data\.npz \(this includes "
                      r"the examples the model trained on, unless that file was held out\)$", r.stdout, re.M)
    assert found, r.stdout
    assert int(found.group(3)) == len(x)
    acc = float((m.forward(x=x)["logits"].argmax(1) == y).mean())
    assert float(found.group(2)) == pytest.approx(acc, abs=5e-5)
    assert json.loads((tmp_path / "m.json").read_text())["examples"] == len(x)


# -- 8. output folders are created; the README writes under build/ ---------------------------------
def test_output_folders_are_created(tmp_path, small):
    data, _, _ = small
    dlc_cli("run", LOGREG, "--data", data, "--epochs", "1", "--no-progress", "--save", "a/b/w.npz",
            "--metrics-json", "c/m.json", "--predict", "d/e/p.csv", cwd=tmp_path, rc=0)
    for f in ("a/b/w.npz", "c/m.json", "d/e/p.csv"):
        assert (tmp_path / f).is_file(), f


def test_readme_commands_write_under_build():
    text = (ROOT / "README.md").read_text()
    commands = [line for line in text.splitlines() if line.lstrip().startswith("dlc ")]
    assert commands
    outputs = []
    for line in commands:
        words = line.split("#")[0].split()
        outputs += [words[i + 1] for i, w in enumerate(words[:-1])
                    if w in ("--save", "--metrics-json", "--predict", "-o")]
    assert outputs, commands
    assert all(o.startswith("build/") for o in outputs), outputs
    # the README says what range the shipped digits are in
    with np.load(DIGITS) as z:
        lo, hi = float(z["x"].min()), float(z["x"].max())
    assert (lo, hi) == (0.0, 1.0)
    assert "[0, 1]" in text and "[0, 1]" in (ROOT / "docs" / "runtime.md").read_text()


# -- 9. predictions ----------------------------------------------------------------------------------
def test_predict_npz_and_csv_match_forward(tmp_path, small):
    data, x, y = small
    m = dlc.compile(LOGREG, backend="interp", seed=1)
    for _ in range(3):
        m.step(x=x, y=y)
    m.save(tmp_path / "w.npz")
    want = m.forward(x=x)["logits"]
    dlc_cli("run", LOGREG, "--data", data, "--epochs", "0", "--load", "w.npz", "--backend", "interp",
            "--batch", "64", "--predict", "p.npz", cwd=tmp_path, rc=0)   # 200 = 3 * 64 + 8: a partial batch
    with np.load(tmp_path / "p.npz") as z:
        assert z.files == ["logits"]
        np.testing.assert_allclose(z["logits"], want, rtol=1e-5, atol=1e-6)

    dlc_cli("run", LOGREG, "--data", data, "--epochs", "0", "--load", "w.npz", "--backend", "interp",
            "--predict", "p.csv", cwd=tmp_path, rc=0)
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["class"] + [f"logits_{i}" for i in range(10)]
    body = np.array(rows[1:], dtype=np.float64)
    assert body.shape == (len(x), 11)
    np.testing.assert_array_equal(body[:, 0].astype(int), want.argmax(1))
    np.testing.assert_allclose(body[:, 1:], want, rtol=1e-6, atol=1e-6)


def test_predict_after_training_uses_the_trained_weights(tmp_path, small):
    data, x, _ = small
    dlc_cli("run", LOGREG, "--data", data, "--epochs", "2", "--no-progress", "--backend", "interp",
            "--save", "w.npz", "--predict", "p.npz", cwd=tmp_path, rc=0)
    trained = dlc.load(LOGREG, tmp_path / "w.npz", backend="interp")
    with np.load(tmp_path / "p.npz") as z:
        got = z["logits"]
    assert got.shape == (len(x), 10)   # the whole data, the held-out part included
    np.testing.assert_allclose(got, trained.forward(x=x)["logits"], rtol=1e-5, atol=1e-6)
    untrained = dlc.compile(LOGREG, backend="interp").forward(x=x)["logits"]
    assert not np.allclose(got, untrained)


def test_predict_csv_for_a_non_classifier(tmp_path):
    with np.load(EXAMPLES / "data" / "xor.npz") as z:
        x = z["x"]
    dlc_cli("run", EXAMPLES / "xor.dln", "--epochs", "0", "--backend", "interp", "--predict", "p.csv",
            cwd=tmp_path, rc=0)
    rows = list(csv.reader(open(tmp_path / "p.csv", newline="")))
    assert rows[0] == ["out"] and len(rows) == len(x) + 1
    m = dlc.compile(EXAMPLES / "xor.dln", backend="interp")
    np.testing.assert_allclose(np.array(rows[1:], float)[:, 0], m.forward(x=x)["out"][:, 0], rtol=1e-6, atol=1e-7)


# -- 10. the Python API ------------------------------------------------------------------------------
def test_repr_says_what_the_model_is():
    m = dlc.compile(MLP, backend="interp")
    text = repr(m)
    total = sum(np.asarray(v).size for v in m.params.values())
    for part in ("mlp", "backend interp", "x: f32[N, 64]", "y: i32[N]", f"{total:,} params",
                 "logits: f32[N, 10]", "trainable"):
        assert part in text, (part, text)
    frozen = dlc.compile(EXAMPLES / "bottleneck.dln", backend="interp")
    assert "inference only" in repr(frozen) and "trainable" not in repr(frozen)


def test_state_is_a_property_like_params(small):
    _, x, y = small
    m = dlc.compile(MLP, backend="interp")
    assert isinstance(type(m).state, property) and isinstance(type(m).params, property)
    s = m.state
    assert set(m.params) < set(s)              # params and the optimizer's momentum buffers
    assert any(k.endswith("velocity") for k in s), sorted(s)
    for k in m.params:
        np.testing.assert_array_equal(s[k], np.asarray(m.params[k]))
    m.step(x=x[:16], y=y[:16])
    assert not np.array_equal(m.state["w1"], s["w1"])  # a snapshot, not a live view


def test_save_and_load_round_trip(tmp_path, small):
    _, x, y = small
    a = dlc.compile(MLP, backend="interp", seed=0)
    a.step(x=x[:32], y=y[:32])
    a.save(tmp_path / "sub" / "w.npz")       # creates the folder, like --save
    with np.load(tmp_path / "sub" / "w.npz") as z:
        assert sorted(z.files) == sorted(a.params)
    b = dlc.compile(MLP, backend="interp", seed=5)
    assert b.load(tmp_path / "sub" / "w.npz") is b
    for k in a.params:
        np.testing.assert_array_equal(np.asarray(b.params[k]), np.asarray(a.params[k]))
    c = dlc.load(MLP, tmp_path / "sub" / "w.npz", backend="interp", seed=7)
    np.testing.assert_array_equal(c.forward(x=x)["logits"], a.forward(x=x)["logits"])
    d = dlc.load(MLP.read_text(), tmp_path / "sub" / "w.npz", backend="interp")  # from .dln text
    np.testing.assert_array_equal(d.forward(x=x)["logits"], a.forward(x=x)["logits"])


def test_load_of_wrong_weights_changes_nothing(tmp_path):
    m = dlc.compile(MLP, backend="interp")
    before = {k: np.array(v) for k, v in m.params.items()}
    w = dict(before)
    w["w1"] = np.zeros((3, 3), np.float32)
    np.savez(tmp_path / "bad.npz", **w)
    with pytest.raises(dlc.DlcError, match="w1"):
        m.load(tmp_path / "bad.npz")
    with pytest.raises(dlc.DlcError, match="no such file"):
        m.load(tmp_path / "none.npz")
    for k, v in before.items():
        np.testing.assert_array_equal(np.asarray(m.params[k]), v)


def _public(obj):
    return [n for n, _ in inspect.getmembers(obj) if not n.startswith("_")]


def test_every_public_method_has_a_docstring_and_a_reference_entry():
    doc = (ROOT / "docs" / "api.md").read_text()
    assert "docs/api.md" in (ROOT / "README.md").read_text()
    assert dlc.Model.__doc__ and dlc.compile.__doc__ and dlc.load.__doc__
    for name in dlc.__all__:
        assert f"dlc.{name}" in doc, name
    for name in _public(dlc.Model):
        member = getattr(dlc.Model, name)
        assert inspect.getdoc(member), f"Model.{name} has no docstring"
        assert f"`m.{name}" in doc, f"docs/api.md does not describe m.{name}"
    m = dlc.compile(MLP, backend="interp")
    attributes = set(vars(m)) - {n for n in vars(m) if n.startswith("_")}
    for name in attributes:
        assert f"`m.{name}" in doc, f"docs/api.md does not describe the attribute m.{name}"


    assert available("emu")[1] and available("cuda")[1]  # a real reason either way


def test_readme_commands_name_files_the_project_ships():
    """Issue 23: the README's IDX line named `M.dln` and MNIST files the project does not have. Every
    input file a README command names exists (outputs go under build/, made by earlier lines)."""
    text = (ROOT / "README.md").read_text()
    missing = []
    for line in text.splitlines():
        if not line.lstrip().startswith("dlc "):
            continue
        for w in line.split("#")[0].split():
            for part in w.split(","):
                part = part.split("=", 1)[-1]
                if part.endswith((".dln", ".npz", ".gz", ".csv", ".onnx")) and not part.startswith("build/"):
                    if not (ROOT / part).is_file():
                        missing.append((part, line))
    assert not missing, missing


def test_the_shipped_idx_digits_are_digits_npz_in_mnist_format():
    from dlc.runtime.datafiles import read_idx
    data = ROOT / "examples" / "data"
    with np.load(DIGITS) as z:
        x, y = z["x"], z["y"]
    images, labels = read_idx(data / "digits-images-idx3-ubyte.gz"), read_idx(data / "digits-labels-idx1-ubyte.gz")
    assert images.dtype == np.uint8 and images.shape == (len(x), 8, 8)
    np.testing.assert_array_equal(labels, y)
    # --normalize scale divides uint8 by 255: within half a grey step (1/510) of digits.npz's x
    np.testing.assert_allclose(images.reshape(len(x), 64) / 255.0, x, atol=0.5 / 255 + 1e-7)
