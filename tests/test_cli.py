"""The `dlc` command end to end, in subprocesses: help, check, compile, run (train, save, load,
metrics, determinism) and diff."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

import dlc
from dlc.ir.text import parse_ir, print_ir
from dlc.ir.verify import verify
from conftest import EXAMPLE_NAMES, EXAMPLES, MLP, dlc_cli, needs_emu

SUBCOMMANDS = ["check", "compile", "run", "diff", "bench"]

# The params of every example, read off the .dln files by hand (prelude functions create
# NAME.w : [K, n] and NAME.b : [n]), so the counts `dlc check` prints are checked independently.
EXPECTED = {
    "mlp": {
        "inputs": {"x": "f32[N, 64]", "y": "i32[N]"},
        "params": {"w1": (64, 128), "b1": (128,), "w2": (128, 10), "b2": (10,)},
        "outputs": {"logits": "f32[N, 10]"},
    },
    "logreg": {
        "inputs": {"x": "f32[N, 64]", "y": "i32[N]"},
        "params": {"w": (64, 10), "b": (10,)},
        "outputs": {"logits": "f32[N, 10]"},
    },
    "deep_mlp": {
        "inputs": {"x": "f32[N, 64]", "y": "i32[N]"},
        "params": {"h1.w": (64, 128), "h1.b": (128,), "h2.w": (128, 64), "h2.b": (64,),
                   "logits.w": (64, 10), "logits.b": (10,)},
        "outputs": {"logits": "f32[N, 10]"},
    },
    "xor": {
        "inputs": {"x": "f32[N, 2]", "y": "f32[N, 1]"},
        "params": {"h.w": (2, 4), "h.b": (4,), "out.w": (4, 1), "out.b": (1,)},
        "outputs": {"out": "f32[N, 1]"},
    },
}
REGRESSIONS = ("sine", "adding_elman", "adding_lstm")  # real-valued targets: a loss, no accuracy
NO_ACCURACY = REGRESSIONS + ("charlm",)  # and a label per position ([N, T]): the accuracy rule compares
                                         # one label per example with an [N, C] output, so a loss only
SMALL_EPOCHS = {"xor": 20}   # others: 2 epochs on a 300-example subset of their data


def test_the_documented_examples_exist():
    assert set(EXPECTED) <= set(EXAMPLE_NAMES)


# -- help ---------------------------------------------------------------------------------------
def test_help_lists_every_command():
    r = dlc_cli("--help", rc=0)
    for c in SUBCOMMANDS:
        assert re.search(rf"^\s+{c}\s", r.stdout, re.M), f"`dlc --help` does not list {c}:\n{r.stdout}"


def test_entry_point_on_path():
    """The `dlc` command that `pip install` writes ([project.scripts]): on PATH, or (the virtual
    environment not activated) beside this Python. Missing is a failure: a renamed entry point."""
    exe = shutil.which("dlc") or shutil.which("dlc", path=sysconfig.get_path("scripts"))
    assert exe, f"no `dlc` command on PATH or in {sysconfig.get_path('scripts')}"
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage: dlc" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_subcommand_help(cmd):
    r = dlc_cli(cmd, "--help", rc=0)
    assert r.stdout.startswith(f"usage: dlc {cmd}"), r.stdout
    assert "--debug" in r.stdout


def test_no_command_is_a_usage_error():
    r = dlc_cli()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "usage: dlc" in r.stdout + r.stderr


@pytest.mark.parametrize("args,said", [
    (["run", "examples/mlp.dln", "--epochs", "1.5"], "dlc run: error: argument --epochs: invalid int value: '1.5'"),
    (["run", "examples/mlp.dln", "--nope"], "dlc run: error: unrecognized arguments: --nope"),
    (["eval", "examples/mlp.dln", "--load", "w.npz", "--rate", "3"], "dlc eval: error: unrecognized arguments: --rate 3"),
])
def test_a_bad_option_is_one_line_naming_the_command(args, said):
    """Issue 23: `--epochs 1.5` printed argparse's twelve-line usage before the error, and a
    subcommand's unknown flag printed the top-level usage. Now: one line, the command's name, where
    the options are listed, exit 2."""
    r = dlc_cli(*args, rc=2)
    cmd = args[0]
    assert r.stderr == f"{said} (dlc {cmd} --help lists the options)\n", r.stderr
    assert r.stdout == ""


# -- check --------------------------------------------------------------------------------------
def _sections(text: str) -> dict[str, list[str]]:
    out, cur = {}, None
    for line in text.splitlines():
        if line.rstrip().endswith(":") and not line.startswith(" "):
            cur = line.rstrip()[:-1]
            out[cur] = []
        elif cur and line.startswith("  "):
            out[cur].append(line.strip())
    return out


def _shape(text: str) -> tuple:
    m = re.fullmatch(r"f32\[([\d, ]*)\]", text)
    assert m, text
    return tuple(int(d) for d in m.group(1).split(",") if d.strip())


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_check(name):
    r = dlc_cli("check", EXAMPLES / f"{name}.dln", rc=0)
    m = dlc.compile(EXAMPLES / f"{name}.dln", backend="interp")
    want = EXPECTED.get(name) or {
        "inputs": {n: str(m.graph.type(n)) for n in m.graph.inputs},
        "params": {k: tuple(np.shape(v)) for k, v in m.params.items()},
        "outputs": {k: str(m.graph.type(v)) for k, v in m.graph.meta.outputs.items()},
    }
    assert f"model {m.name}" in r.stdout.splitlines()[0]
    sec = _sections(r.stdout)
    assert set(sec) >= {"inputs", "params", "outputs"}, r.stdout

    inputs = dict(line.split(None, 1) for line in sec["inputs"])
    assert {k: v.strip() for k, v in inputs.items()} == want["inputs"]

    rows = {}
    for line in sec["params"]:
        m = re.match(r"(\S+)\s+(f32\[[^\]]*\])?\s*([\d,]+)\b", line)
        assert m, f"unreadable params line {line!r}"
        rows[m.group(1)] = (m.group(2), int(m.group(3).replace(",", "")))
    total_row = rows.pop("total", None)
    assert list(rows) == list(want["params"]), r.stdout
    total = 0
    for p, shape in want["params"].items():
        shape_text, count = rows[p]
        assert _shape(shape_text) == shape, (p, shape_text)
        assert count == math.prod(shape), f"{p}: count {count}, expected {math.prod(shape)}"
        total += math.prod(shape)
    assert total_row is not None and total_row[1] == total, r.stdout

    outputs = dict(line.split(None, 1) for line in sec["outputs"])
    assert {k: v.strip() for k, v in outputs.items()} == want["outputs"]


# -- compile ------------------------------------------------------------------------------------
def test_compile_writes_ir_dot_dumps_and_stats(tmp_path):
    out = tmp_path / "build"
    r = dlc_cli("compile", EXAMPLES / "mlp.dln", "-o", out, "--emit", "ir,dot", "--dump-ir-after", "all",
                "--stats", rc=0)
    ir_file, dot_file = out / "mlp.ir", out / "mlp.dot"
    assert ir_file.is_file() and dot_file.is_file()
    assert dot_file.read_text().lstrip().startswith("digraph")

    text = ir_file.read_text()
    g = parse_ir(text, str(ir_file))
    verify(g)
    assert print_ir(g) == text, "the IR does not print back to the same text after parsing"
    assert g.meta.name == "mlp"
    assert set(g.params) == set(EXPECTED["mlp"]["params"])

    dumps = sorted((out / "dumps").glob("*.ir"))
    assert len(dumps) >= 2, dumps
    for d in dumps:
        assert re.match(r"\d+-", d.name), d.name
        verify(parse_ir(d.read_text(), str(d)))

    # --stats: one row per pass that ran, with a time and a node count
    stat_rows = [line.split() for line in r.stdout.splitlines()
                 if re.fullmatch(r"\S+\s+\d+(\.\d+)?\s+\d+", line.strip())]
    assert len(stat_rows) >= len(dumps) - 1, r.stdout
    for d in dumps[1:]:  # 00-input is the input; the others are named after passes
        assert any(row[0] == d.stem.split("-", 1)[1] for row in stat_rows), (d.name, r.stdout)
    for f in (ir_file, dot_file, *dumps):
        assert str(f.name) in r.stdout  # it says what it wrote


# -- run ------------------------------------------------------------------------------------------
def _example_info(name):
    m = dlc.compile(EXAMPLES / f"{name}.dln", backend="interp")
    return m


def _small_data(name, m, folder: Path) -> Path:
    """The example's own data cut to 300 examples, or random data where it names none."""
    g = m.graph
    data = g.meta.train.get("data")
    if data:
        with np.load(EXAMPLES / data) as z:
            arrays = {k: z[k][:300] for k in g.inputs}
    else:
        rng = np.random.default_rng(0)
        arrays = {}
        for n in g.inputs:
            t = g.type(n)
            shape = tuple(2 if isinstance(d, str) else d for d in t.shape)
            arrays[n] = rng.standard_normal(shape).astype(np.float32) if t.dtype == "f32" else \
                np.zeros(shape, np.int32)
    p = folder / "data.npz"
    np.savez(p, **arrays)
    return p


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each example run briefly with --save and --metrics-json, from another folder."""
    out = {}
    for name in EXAMPLE_NAMES:
        d = tmp_path_factory.mktemp(name)
        m = _example_info(name)
        data = _small_data(name, m, d)
        epochs = SMALL_EPOCHS.get(name, 2) if m.trainable else 0
        r = dlc_cli("run", EXAMPLES / f"{name}.dln", "--backend", "interp", "--data", data.name,
                    "--epochs", epochs, "--no-progress", "--save", "w.npz", "--metrics-json", "m.json", cwd=d, rc=0)
        out[name] = (r, d, m, epochs)
    return out


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_run_writes_metrics_and_weights(name, runs):
    r, d, model, epochs = runs[name]
    metrics = json.loads((d / "m.json").read_text())
    assert metrics["epochs"] == epochs
    assert metrics["backend"] == "interp"
    if model.trainable:
        assert isinstance(metrics["loss"], float) and math.isfinite(metrics["loss"])
        hist = metrics["history"]
        assert [h["epoch"] for h in hist] == list(range(1, epochs + 1))
        assert all(math.isfinite(h["loss"]) for h in hist)
        if name in NO_ACCURACY:  # no accuracy for a regression; the held-out loss is printed instead
            assert "accuracy" not in metrics and all("accuracy" not in h for h in hist)
        else:
            assert 0.0 <= metrics["accuracy"] <= 1.0
            assert all(0 <= h["accuracy"] <= 1 for h in hist)
        assert hist[-1]["loss"] == metrics["loss"]
        assert re.search(rf"epoch\s+{epochs}/{epochs}", r.stdout), r.stdout

    with np.load(d / "w.npz") as z:
        saved = {k: z[k] for k in z.files}
    state = {k[len("state/"):]: saved.pop(k) for k in list(saved) if k.startswith("state/")}
    assert sorted(state) == sorted(model.graph.nodes_of("state"))  # --save writes the optimizer state too
    shapes = {k: v.shape for k, v in saved.items()}   # the weights: params and model buffers
    assert shapes == {k: tuple(np.shape(v)) for k, v in {**model.params, **model.buffers}.items()}
    if name in EXPECTED:
        assert shapes == EXPECTED[name]["params"]
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in saved.values())
    assert not [p.name for p in d.iterdir() if p.name.startswith(".")], "temporary files left behind"


def _accuracy(m, weights: dict, data: Path) -> float:
    """The accuracy of `weights` on a data file, computed through the API: arg-max against
    integer labels, or a single-unit output thresholded at 0.5 against 0/1 targets."""
    m.set_state(weights)   # params and model buffers (running statistics)
    g = m.graph
    with np.load(data) as z:
        feeds = {k: z[k] for k in z.files}
    # all inputs are given: forward() without the labels fails for models with reshape
    # (see test_api.py::test_forward_without_labels_reshape_model)
    out = m.forward(**{k: feeds[k] for k in g.inputs})[m.outputs[0]]
    labels = [n for n in g.inputs if g.type(n).dtype == "i32"]
    if labels:
        return float((out.argmax(1) == feeds[labels[0]]).mean())
    target = [n for n in g.inputs[1:] if feeds[n].shape == out.shape][0]
    return float(((out > 0.5) == (feeds[target] > 0.5)).mean())


# only models that train have an accuracy to reproduce (bottleneck minimises nothing)
@pytest.mark.parametrize("name", [n for n in EXAMPLE_NAMES if "minimize" in (EXAMPLES / f"{n}.dln").read_text()])
def test_load_with_zero_epochs_reproduces_saved_accuracy(name, runs):
    _, d, _, _ = runs[name]
    m = _example_info(name)
    dlc_cli("run", EXAMPLES / f"{name}.dln", "--backend", "interp", "--data", "data.npz", "--epochs", "0",
            "--load", "w.npz", "--no-progress", "--metrics-json", "m0.json", cwd=d, rc=0)
    m0 = json.loads((d / "m0.json").read_text())
    assert m0["epochs"] == 0 and math.isfinite(m0["loss"])
    with np.load(d / "w.npz") as z:
        saved = {k: z[k] for k in z.files if not k.startswith("state/")}
    if name in NO_ACCURACY:
        assert "accuracy" not in m0
        return
    assert m0["accuracy"] == pytest.approx(_accuracy(m, saved, d / "data.npz"), abs=1e-12)


def test_same_seed_is_deterministic_and_a_different_seed_differs(tmp_path):
    mlp = EXAMPLES / "mlp.dln"
    res = {}
    for tag, seed in (("a", 3), ("b", 3), ("c", 4)):
        dlc_cli("run", mlp, "--backend", "interp", "--epochs", "1", "--seed", seed, "--no-progress",
                "--save", f"w{tag}.npz", "--metrics-json", f"m{tag}.json", cwd=tmp_path, rc=0)
        m = json.loads((tmp_path / f"m{tag}.json").read_text())
        m.pop("seconds", None)
        with np.load(tmp_path / f"w{tag}.npz") as z:
            res[tag] = (m, {k: z[k] for k in z.files})
    (ma, wa), (mb, wb), (mc, wc) = res["a"], res["b"], res["c"]
    assert ma == mb, "the same --seed gave different metrics"
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=f"the same --seed gave different {k}")
    assert any(not np.array_equal(wa[k], wc[k]) for k in wa), "a different --seed gave the same weights"
    assert mc != ma, "a different --seed gave the same metrics"


# -- diff -------------------------------------------------------------------------------------------
@needs_emu
def test_diff_interp_emu(tmp_path):
    """The real command end to end (interp alone is refused: see test_diff.py)."""
    r = dlc_cli("diff", EXAMPLES / "mlp.dln", "--backends", "interp,emu", cwd=tmp_path, rc=0)
    assert re.search(r"^result: \S+", r.stdout, re.M), r.stdout
    assert "result: agree" in r.stdout


def test_a_long_run_prints_about_25_epoch_lines_and_keeps_every_epoch(tmp_path):
    """Issue 23: `dlc run examples/xor.dln` printed 500 epoch lines. Now every 20th (with the first
    and the last), a line saying so, and the metrics file still has all 500."""
    mj = tmp_path / "m.json"
    r = dlc_cli("run", EXAMPLES / "xor.dln", "--backend", "interp", "--no-progress", "--metrics-json", mj, rc=0)
    shown = [int(m.group(1)) for m in re.finditer(r"^epoch +(\d+)/500 ", r.stdout, re.M)]
    assert shown == [1] + list(range(20, 501, 20)), shown
    assert "(every 20th epoch of 500 is printed; --metrics-json keeps them all)" in r.stdout
    assert [h["epoch"] for h in json.loads(mj.read_text())["history"]] == list(range(1, 501))


def test_lr_overrides_the_models_learning_rate(tmp_path):
    """Issue 23: `--lr` (and `dlc.compile(lr=)`) for sweeps: a run with `--lr 0.5` is the run of the
    same model with `lr = 0.5` written in its file, metric for metric; bad values and a model that
    minimises nothing are located errors."""
    edited = tmp_path / "mlp.dln"
    edited.write_text(MLP.read_text().replace("sgd(lr = 0.1,", "sgd(lr = 0.5,"))
    assert edited.read_text() != MLP.read_text()
    runs = {}
    for tag, path, extra in (("flag", MLP, ["--lr", "0.5"]), ("file", edited, [])):
        mj = tmp_path / f"{tag}.json"
        dlc_cli("run", path, "--backend", "interp", "--epochs", "2", "--no-progress", "--metrics-json", mj,
                "--data", EXAMPLES / "data" / "digits.npz", *extra, rc=0)
        runs[tag] = json.loads(mj.read_text())
        runs[tag].pop("seconds")
    assert runs["flag"] == runs["file"]
    default = dlc.compile(MLP, backend="interp")
    assert dlc.compile(MLP, backend="interp", lr=0.5).graph.meta.optimizer[1]["lr"] == 0.5 != \
        default.graph.meta.optimizer[1]["lr"]
    r = dlc_cli("run", MLP, "--lr", "0", rc=2)
    assert r.stderr == "error: --lr: must be a number greater than 0, found 0.0\n", r.stderr
    infer = tmp_path / "infer.dln"
    infer.write_text("model infer {\n    input x : f32[N, 4]\n    y = relu(x)\n    output y\n}\n")
    r = dlc_cli("check", infer, "--lr", "0.1", rc=2)
    assert r.stderr == "error: --lr: model infer minimises nothing, so it has no learning rate\n", r.stderr


# -- compile progress (ir/progress.py): shown on a terminal after 2 s, or as DLC_PROGRESS_AFTER says --
def test_compile_progress_names_each_stage_when_asked_and_is_silent_otherwise():
    r = dlc_cli("run", MLP, "--epochs", "1", env={"DLC_PROGRESS_AFTER": "0"}, rc=0)
    lines = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.startswith("compil")]
    stages = [ln.split(": ", 1)[1].rsplit(" (", 1)[0] for ln in lines[:-1]]
    assert stages[0] == "reading the .dln and lowering it to IR"
    assert stages[1].startswith("pass lower (1 of ") and stages[2].startswith("pass autodiff (2 of ")
    assert stages[-1] == "preparing the interp backend"
    assert re.fullmatch(r"compiled mlp\.dln in \d+\.\d s", lines[-1])
    assert r.stdout.startswith("model mlp:")  # progress goes to stderr only
    # not a terminal and no DLC_PROGRESS_AFTER (as in this subprocess): nothing; --no-progress: nothing
    for args, env in (((), {"DLC_PROGRESS_AFTER": None}), (("--no-progress",), {"DLC_PROGRESS_AFTER": "0"})):
        r = dlc_cli("run", MLP, "--epochs", "1", *args, env=env, rc=0)
        assert "compil" not in r.stderr, r.stderr


def test_compile_progress_starts_only_after_its_delay(monkeypatch, capsys):
    from dlc.ir import progress
    import dlc
    monkeypatch.setenv("DLC_PROGRESS_AFTER", "60")  # a minute: mlp compiles long before
    dlc.compile(MLP)
    assert "compil" not in capsys.readouterr().err
    monkeypatch.setenv("DLC_PROGRESS_AFTER", "0.3")
    with progress.compiling("slow.dln"):
        progress.stage("first")
        time.sleep(0.8)  # the timer prints the stage running when the delay is up ...
        progress.stage("second")  # ... and every stage after it as it starts
        progress.stage("second, step 2", detail=True)  # a step within a stage: not within EVERY s
    err = capsys.readouterr().err.splitlines()
    assert [ln.split(" (")[0] for ln in err[:2]] == ["compiling slow.dln: first", "compiling slow.dln: second"]
    assert len(err) == 3 and err[2].startswith("compiled slow.dln in ")


def test_check_counts_a_weight_penalty_once_per_batch_not_per_example():
    """mlp's loss is softmax_xent(logits, y) + 1e-4 * l2(w1, w2): the penalty's work (w1 and w2 have
    64*128 + 128*10 = 9,472 weights, each squared and summed) does not grow with the batch."""
    out = dlc_cli("check", MLP, rc=0).stdout
    assert "FLOPs per example, and once per batch" in out
    loss = next(ln.split() for ln in out.splitlines() if ln.strip().startswith("loss "))
    per_example, per_batch = (int(v.replace(",", "")) for v in loss[-2:])
    assert per_example < 100  # the cross-entropy of 10 logits (it was 9,485 with the penalty in it)
    assert 9472 <= per_batch <= 3 * 9472
    # without a penalty there is no per-batch column, and the per-example total is unchanged by it
    plain = dlc_cli("check", EXAMPLES / "lenet.dln", rc=0).stdout
    assert "layers (forward, per example):" in plain and "per batch" not in plain
