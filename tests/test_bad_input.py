"""Bad input: every mistake a user can make ends in a located one-line error, exit status 2,
no Python traceback, and no output file left behind.

Every case runs through the real `dlc` command in a subprocess (`python -m dlc.cli`), and, where
it applies, through the Python API (`dlc.compile`, `Model.step`, ...), which raises `DlcError`.

The first line of stderr must be
  - `FILE:LINE:COL: error: MESSAGE` for a mistake in a `.dln` file, with the right LINE;
  - a line naming the offending file (`PATH: ...`) for data, weights and unreadable model files;
  - a line naming the offending flag for a bad command-line value.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

import dlc
from conftest import DIGITS, MLP, dlc_cli


# -- helpers ------------------------------------------------------------------------------------
def first_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.splitlines()
    return lines[0] if lines else ""


def assert_user_error(r: subprocess.CompletedProcess, must=(), head: str | None = None) -> str:
    """Exit 2, no traceback, a one-line error first; returns that line."""
    where = f"\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert r.returncode == 2, f"exit status {r.returncode}, expected 2{where}"
    assert "Traceback" not in r.stderr, f"a Python traceback for a user mistake{where}"
    line = first_line(r)
    assert line.strip(), f"no error message on stderr{where}"
    if head is not None:
        assert re.match(head, line), f"first line {line!r} does not match {head!r}{where}"
    for s in must:
        assert says(line, s), f"first line {line!r} does not say {s!r}{where}"
    return line


def says(line: str, s: str) -> bool:
    """`s` occurs in `line`; a plain word must occur as a word ('expected' is not in 'unexpected')."""
    if re.fullmatch(r"\w[\w ]*\w", s):
        return re.search(rf"\b{re.escape(s)}\b", line) is not None
    return s in line


def path_head(path) -> str:
    """A first line naming `path`: `PATH: ...` (an `error: ` prefix is tolerated here; see
    test_file_errors_start_with_the_path for the strict form)."""
    return rf"^(error: )?{re.escape(str(path))}:"


def assert_no_outputs(*paths):
    for p in paths:
        assert not Path(p).exists(), f"{p} was left behind after an error"
    for p in paths:  # no half-written temporaries either
        parent = Path(p).parent
        if parent.exists():
            left = [q.name for q in parent.iterdir() if q.name.startswith(f".{Path(p).name}.")]
            assert not left, f"temporary files left behind: {left}"


# -- mistakes in .dln files --------------------------------------------------------------------------
# (id, source, line of the error, substrings the first line must contain)
DLN_CASES = [
    ("syntax-missing-brace", """model m {
    input x : f32[N, 4]
    param w : f32[4, 2] = zeros
    y = x @ w
    output y""", 5, ["syntax error", "end of file", "expected", "'}'"]),
    ("syntax-bad-token", """model m {
    input x : f32[N, 4]
    y = x $ 2
    output y
}""", 3, ["syntax error", "'$'"]),
    ("syntax-double-operator", """model m {
    input x : f32[N, 4]
    y = x @ @ x
    output y
}""", 3, ["syntax error", "unexpected '@'", "expected"]),
    ("syntax-unterminated-string", """model m {
    input x : f32[N, 4]
    train(data = "digits.npz)
    y = relu(x)
    output y
}""", 3, ["syntax error", '"']),
    ("syntax-unclosed-paren", """model m {
    input x : f32[N, 4]
    y = relu(x
    output y
}""", 4, ["syntax error", "unexpected 'output'", "expected", "')'"]),
    ("syntax-empty-file", "", 1, ["no model", "expected"]),
    ("unknown-name", """model m {
    input x : f32[N, 4]
    y = relu(z)
    output y
}""", 3, ["unknown name 'z'"]),
    ("unknown-name-hint", """model m {
    input x : f32[N, 4]

    y = relu(xs)
    output y
}""", 4, ["unknown name 'xs'", "did you mean 'x'"]),
    ("unknown-op", """model m {
    input x : f32[N, 4]
    y = rleu(x)
    output y
}""", 3, ["'rleu'", "did you mean 'relu'"]),
    ("unknown-function", """model m {
    input x : f32[N, 4]
    # a comment line
    h = dence(x, 3)
    output h
}""", 4, ["'dence'", "did you mean 'dense'"]),
    ("arity-op", """model m {
    input x : f32[N, 4]
    y = relu(x, x)
    output y
}""", 3, ["relu()", "takes 1", "found 2"]),
    ("arity-function-too-few", """model m {
    input x : f32[N, 4]
    h = dense(x)
    output h
}""", 3, ["dense()", "missing", "'n'"]),
    ("arity-function-too-many", """model m {
    input x : f32[N, 4]
    h = dense(x, 3, 4)
    output h
}""", 3, ["dense()", "takes 2", "found 3"]),
    ("shape-add", """model m {
    input x : f32[N, 4]
    param b : f32[3] = zeros
    y = x + b
    output y
}""", 4, ["shape mismatch", "f32[N, 4]", "f32[3]"]),
    ("shape-matmul", """model m {
    input x : f32[N, 4]
    param w : f32[3, 2] = zeros
    y = x @ w
    output y
}""", 4, ["shape mismatch", "f32[N, 4]", "f32[3, 2]"]),
    ("shape-mse", """model m {
    input x : f32[N, 4]
    input t : f32[N, 3]
    param w : f32[4, 2] = zeros
    y = x @ w
    loss = mse(y, t)
    minimize loss with sgd(lr = 0.1)
}""", 6, ["shape mismatch", "mse", "f32[N, 2]", "f32[N, 3]"]),
    ("shape-softmax-xent", """model m {
    input x : f32[4, 3]
    input t : i32[5]
    loss = softmax_xent(x, t)
    minimize loss with sgd(lr = 0.1)
}""", 4, ["shape mismatch", "softmax_xent", "f32[4, 3]", "i32[5]"]),
    ("function-pattern-mismatch", """model m {
    input x : f32[N, 4, 2]
    h = dense(x, 3)
    output h
}""", 3, ["shape mismatch", "dense()", "[B, K]", "f32[N, 4, 2]"]),
    ("dtype-f32-labels", """model m {
    input x : f32[N, 4]
    input t : f32[N]
    param w : f32[4, 2] = zeros
    y = x @ w
    loss = softmax_xent(y, t)
    minimize loss with sgd(lr = 0.1)
}""", 6, ["softmax_xent", "i32[N]", "f32[N]"]),
    ("unknown-optimizer", """model m {
    input x : f32[N, 4]
    input t : f32[N, 2]
    param w : f32[4, 2] = zeros
    loss = mse(x @ w, t)
    minimize loss with sgdd(lr = 0.1)
}""", 6, ["unknown optimizer 'sgdd'", "did you mean 'sgd'", "adam"]),
    ("unknown-optimizer-setting", """model m {
    input x : f32[N, 4]
    input t : f32[N, 2]
    param w : f32[4, 2] = zeros
    loss = mse(x @ w, t)
    minimize loss with sgd(lr = 0.1, momentun = 0.9)
}""", 6, ["'momentun'", "did you mean 'momentum'"]),
    ("unknown-initialiser", """model m {
    input x : f32[N, 4]
    param w : f32[4, 2] = hee
    y = x @ w
    output y
}""", 3, ["unknown initialiser 'hee'", "did you mean 'he'"]),
    ("redefined-name", """model m {
    input x : f32[N, 4]
    y = relu(x)
    y = tanh(x)
    output y
}""", 4, ["'y'", "already defined", "line 3"]),
    ("return-outside-function", """model m {
    input x : f32[N, 4]
    y = relu(x)
    return y
}""", 4, ["`return`", "function"]),
]


@pytest.mark.parametrize("case", DLN_CASES, ids=[c[0] for c in DLN_CASES])
def test_dln_mistake(case, tmp_path):
    name, text, line, must = case
    f = tmp_path / f"{name}.dln"
    f.write_text(text)
    head = rf"^{re.escape(f.name)}:{line}:\d+: error: "
    src_line = text.splitlines()[line - 1] if text.splitlines() else ""

    # dlc run, with every output flag: nothing may be written
    save, metrics = tmp_path / "w.npz", tmp_path / "m.json"
    r = dlc_cli("run", f.name, "--data", DIGITS, "--epochs", "1", "--no-progress",
                "--save", save.name, "--metrics-json", metrics.name, cwd=tmp_path)
    assert_user_error(r, must, head)
    if src_line.strip():  # the offending line is shown with a caret under it
        lines = r.stderr.splitlines()
        assert len(lines) >= 3 and lines[1].strip() == src_line.strip() and lines[2].strip() == "^", r.stderr
    assert_no_outputs(save, metrics)

    # dlc compile -o: the folder is not created
    out = tmp_path / "build"
    r = dlc_cli("compile", f.name, "-o", out.name, "--emit", "ir,dot", "--dump-ir-after", "all", cwd=tmp_path)
    assert_user_error(r, must, head)
    assert not out.exists(), "compile -o left a folder behind after an error"

    # the API: from the path and from the text
    with pytest.raises(dlc.DlcError) as ei:
        dlc.compile(str(f), backend="interp")
    assert ei.value.loc is not None and ei.value.loc.line == line, str(ei.value)
    assert ei.value.loc.file == str(f)
    msg = str(ei.value).splitlines()[0]
    for s in must:
        assert says(msg, s), msg
    if text.strip():  # empty text is not distinguishable from an empty path
        with pytest.raises(dlc.DlcError) as ei:
            dlc.compile(text, backend="interp")
        assert ei.value.loc is not None and ei.value.loc.line == line, str(ei.value)


# -- model files that cannot be read ---------------------------------------------------------------
def _unreadable(tmp_path) -> Path:
    """A .dln that cannot be read as text: chmod 000 where that works (not as root), otherwise
    a binary file that is not UTF-8."""
    p = tmp_path / "locked.dln"
    p.write_text(MLP.read_text())
    os.chmod(p, 0)
    if os.access(p, os.R_OK):  # root reads anything: use a non-text file instead
        os.chmod(p, 0o644)
        p.write_bytes(b"\xff\xfe\x00\x01\x89PNG\r\n\x1a\n\x00\x00binary")
    return p


def _model_file(kind, tmp_path) -> Path:
    if kind == "nonexistent":
        return tmp_path / "nope.dln"
    if kind == "directory":
        d = tmp_path / "dir.dln"
        d.mkdir()
        return d
    if kind == "binary":
        p = tmp_path / "binary.dln"
        p.write_bytes(bytes(range(256)) * 4)
        return p
    return _unreadable(tmp_path)


@pytest.mark.parametrize("kind,must", [
    ("nonexistent", ["no such file"]),
    ("directory", ["directory", "expected"]),
    ("binary", ["not"]),
    ("unreadable", []),
])
def test_unreadable_model_file(kind, must, tmp_path):
    p = _model_file(kind, tmp_path)
    try:
        for cmd in (["check", p.name], ["compile", p.name, "-o", "build"]):
            r = dlc_cli(*cmd, cwd=tmp_path)
            assert_user_error(r, must, path_head(p.name))
        assert not (tmp_path / "build").exists()
        with pytest.raises(dlc.DlcError) as ei:
            dlc.compile(str(p), backend="interp")
        assert str(p) in str(ei.value)
    finally:
        if p.exists() and not p.is_dir():
            os.chmod(p, 0o644)


# -- data files --------------------------------------------------------------------------------------
def _digits(n=50):
    d = np.load(DIGITS)
    return d["x"][:n].copy(), d["y"][:n].copy()


def _data_file(kind, tmp_path) -> Path:
    x, y = _digits()
    p = tmp_path / f"{kind}.npz"
    if kind == "float-labels":
        np.savez(p, x=x, y=y.astype(np.float32))
    elif kind == "missing-input":
        np.savez(p, x=x)
    elif kind == "wrong-shape":
        np.savez(p, x=x[:, :32], y=y)
    elif kind == "inconsistent-n":
        np.savez(p, x=x, y=y[:40])
    elif kind == "nan":
        x[3, 5] = np.nan
        np.savez(p, x=x, y=y)
    elif kind == "not-npz":
        p.write_text("x,y\n1,2\n3,4\n")
    elif kind == "directory":
        p.mkdir()
    # "nonexistent": nothing written
    return p


DATA_CASES = [
    ("float-labels", ["'y'", "i32", "float32"]),
    ("missing-input", ["'y'", "i32[N]"]),
    ("wrong-shape", ["'x'", "f32[N, 64]", "[50, 32]"]),
    ("inconsistent-n", ["'x'", "'y'", "50", "40"]),
    ("nan", ["'x'", "NaN"]),
    ("nonexistent", ["no such file"]),
    ("not-npz", [".npz"]),
    ("directory", ["directory"]),
]


@pytest.mark.parametrize("kind,must", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_file(kind, must, tmp_path):
    p = _data_file(kind, tmp_path)
    save, metrics = tmp_path / "w.npz", tmp_path / "m.json"
    r = dlc_cli("run", MLP, "--data", p.name, "--epochs", "1", "--no-progress",
                "--save", save.name, "--metrics-json", metrics.name, cwd=tmp_path)
    assert_user_error(r, must, path_head(p.name))
    assert_no_outputs(save, metrics)


def test_label_out_of_range_found_while_training(tmp_path):
    """A label beyond the classes is only seen when the loss runs: still exit 2, nothing written."""
    x, y = _digits()
    y[7] = 12
    np.savez(tmp_path / "labels.npz", x=x, y=y)
    r = dlc_cli("run", MLP, "--data", "labels.npz", "--epochs", "1", "--no-progress",
                "--save", "w.npz", "--metrics-json", "m.json", cwd=tmp_path)
    assert_user_error(r, ["12", "10 classes"])
    assert_no_outputs(tmp_path / "w.npz", tmp_path / "m.json")


@pytest.mark.parametrize("kind", ["float-labels", "missing-input", "wrong-shape", "inconsistent-n"])
def test_bad_arrays_through_the_api(kind):
    """The same array mistakes given to the Python API raise DlcError naming the input."""
    m = dlc.compile(MLP, backend="interp")
    x, y = _digits(8)
    feeds = {"float-labels": dict(x=x, y=y.astype(np.float32)), "missing-input": dict(x=x),
             "wrong-shape": dict(x=x[:, :32], y=y), "inconsistent-n": dict(x=x, y=y[:5])}[kind]
    before = {k: np.array(v) for k, v in m.params.items()}
    with pytest.raises(dlc.DlcError) as ei:
        m.step(**feeds)
    assert "'x'" in str(ei.value) or "'y'" in str(ei.value), str(ei.value)
    for k, v in before.items():  # a refused step changes nothing
        np.testing.assert_array_equal(np.asarray(m.params[k]), v)


# -- weights files -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_weights(tmp_path_factory):
    m = dlc.compile(MLP, backend="interp")
    return {k: np.array(v) for k, v in m.params.items()}


WEIGHT_CASES = [
    ("missing", ["'b2'", "f32[10]"]),
    ("extra", ["'zz'", "not a param"]),
    ("misshaped", ["'w1'", "f32[64, 128]", "[64, 100]"]),
    ("nonexistent", ["no such file"]),
]


@pytest.mark.parametrize("kind,must", WEIGHT_CASES, ids=[c[0] for c in WEIGHT_CASES])
def test_bad_weights_file(kind, must, tmp_path, good_weights):
    w = dict(good_weights)
    if kind == "missing":
        del w["b2"]
    elif kind == "extra":
        w["zz"] = np.zeros(3, np.float32)
    elif kind == "misshaped":
        w["w1"] = np.zeros((64, 100), np.float32)
    p = tmp_path / f"{kind}.npz"
    if kind != "nonexistent":
        np.savez(p, **w)
    save, metrics = tmp_path / "out.npz", tmp_path / "m.json"
    r = dlc_cli("run", MLP, "--data", DIGITS, "--epochs", "1", "--no-progress", "--load", p.name,
                "--save", save.name, "--metrics-json", metrics.name, cwd=tmp_path)
    assert_user_error(r, must, path_head(p.name))
    assert_no_outputs(save, metrics)


# -- command-line values ------------------------------------------------------------------------------
def test_bad_emit_value(tmp_path):
    r = dlc_cli("compile", MLP, "-o", "build", "--emit", "ir,foo", cwd=tmp_path)
    assert_user_error(r, ["'foo'", "ir", "dot", "cuda", "plan"], r"^(error: )?--emit\b")
    assert not (tmp_path / "build").exists()


def test_bad_dump_ir_after_value(tmp_path):
    r = dlc_cli("compile", MLP, "-o", "build", "--dump-ir-after", "bogus", cwd=tmp_path)
    assert_user_error(r, ["'bogus'", "autodiff", "all"], r"^(error: )?--dump-ir-after\b")
    assert not (tmp_path / "build").exists()


def test_unknown_backends_name(tmp_path):
    r = dlc_cli("diff", MLP, "--backends", "interp,bogus", cwd=tmp_path)
    assert_user_error(r, ["'bogus'", "interp"], r"^(error: )?--backends\b")


def test_unknown_backend_name_for_run(tmp_path):
    r = dlc_cli("run", MLP, "--backend", "bogus", "--epochs", "1", "--no-progress",
                "--metrics-json", "m.json", cwd=tmp_path)
    assert_user_error(r, ["'bogus'", "interp"])
    assert_no_outputs(tmp_path / "m.json")
    with pytest.raises(dlc.DlcError):
        dlc.compile(MLP, backend="bogus")


def _cuda_available() -> bool:
    from dlc.runtime.backends import available
    return available("cuda")[0]


@pytest.mark.skipif(_cuda_available(), reason="a GPU and the cuda backend are present here")
def test_cuda_backend_without_gpu(tmp_path):
    r = dlc_cli("run", MLP, "--backend", "cuda", "--epochs", "1", "--no-progress",
                "--save", "w.npz", "--metrics-json", "m.json", cwd=tmp_path)
    line = assert_user_error(r, ["cuda"])
    assert "cannot run here" in line or "no GPU" in line or "not" in line, line
    assert_no_outputs(tmp_path / "w.npz", tmp_path / "m.json")
    with pytest.raises(dlc.DlcError) as ei:
        dlc.compile(MLP, backend="cuda")
    assert "cuda" in str(ei.value)


@pytest.mark.parametrize("flag", ["--save", "--metrics-json", "--predict"])
def test_output_under_a_file(flag, tmp_path):
    """Missing folders above an output file are created (see test_cli_api_edges.py), but not
    through a file: that is an error naming the flag, found before any training."""
    (tmp_path / "afile").write_text("x")
    r = dlc_cli("run", MLP, "--epochs", "1", "--no-progress", flag, "afile/sub/out.npz", cwd=tmp_path)
    assert_user_error(r, [flag, "afile"], rf"^(error: )?{flag}\b")
    assert "epoch" not in r.stdout, r.stdout
    assert (tmp_path / "afile").read_text() == "x"


# -- gaps found while writing these tests, now fixed --
def test_file_errors_start_with_the_path(tmp_path):
    p = _data_file("missing-input", tmp_path)
    r = dlc_cli("run", MLP, "--data", p.name, "--epochs", "1", "--no-progress", cwd=tmp_path)
    assert_user_error(r, head=rf"^{re.escape(p.name)}: ")


def test_unexpected_character_says_what_was_expected(tmp_path):
    f = tmp_path / "bad.dln"
    f.write_text(DLN_CASES[1][1])  # y = x $ 2
    r = dlc_cli("check", f.name, cwd=tmp_path)
    assert_user_error(r, ["'$'", "expected"], r"^bad\.dln:3:\d+: error: ")


def test_non_npz_message_does_not_talk_about_pickles(tmp_path):
    p = _data_file("not-npz", tmp_path)
    r = dlc_cli("run", MLP, "--data", p.name, "--epochs", "1", "--no-progress", cwd=tmp_path)
    line = assert_user_error(r, [".npz"], path_head(p.name))
    assert "pickle" not in line, line


@pytest.mark.parametrize("flag", ["--save", "--metrics-json"])
def test_output_path_is_a_directory(flag, tmp_path):
    (tmp_path / "taken").mkdir()
    r = dlc_cli("run", MLP, "--epochs", "1", "--no-progress", flag, "taken", cwd=tmp_path)
    assert_user_error(r, ["taken"])


def test_compile_output_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    r = dlc_cli("compile", MLP, "-o", "afile/build", cwd=tmp_path)
    assert_user_error(r, ["afile"])


@pytest.mark.parametrize("line,word,keyword", [("inptu x : f32[N, 64]", "inptu", "input"),
                                               ("parm w : f32[64, 3] = he", "parm", "param"),
                                               ("bufer m : f32[3] = zeros", "bufer", "buffer")])
def test_a_misspelt_keyword_is_named_with_the_keyword_meant(tmp_path, line, word, keyword):
    """Issue 23: `inptu x : f32[N, 64]` said "unexpected 'x'; expected '='". The caret now points at
    the word and the message names the keyword; a word close to none keeps the plain message."""
    src = tmp_path / "typo.dln"
    src.write_text(f"model m {{\n    input y : f32[N, 64]\n    {line}\n    output y\n}}\n")
    r = dlc_cli("check", src, rc=2)
    assert f"typo.dln:3:5: error: syntax error: '{word}' is not a keyword: did you mean `{keyword}`?" in r.stderr
    assert "Traceback" not in r.stderr
    src.write_text("model m {\n    input y : f32[N, 64]\n    foo x\n    output y\n}\n")
    r = dlc_cli("check", src, rc=2)
    assert "typo.dln:3:9: error: syntax error: unexpected 'x'; expected '='" in r.stderr


def test_a_missing_train_data_file_names_the_train_line_and_the_folder(tmp_path):
    """Issue 23: `train(data = "nope/digits.npz")` said only "nope/digits.npz: error: no such file"."""
    src = tmp_path / "m.dln"
    src.write_text(MLP.read_text().replace('train(data = "data/digits.npz"', 'train(data = "nope/digits.npz"'))
    line = next(i for i, l in enumerate(src.read_text().splitlines(), 1) if "train(" in l)
    r = dlc_cli("run", src, "--epochs", "1", rc=2)
    assert r.stderr.startswith(f"{src}:{line}:5: error: train(data = \"nope/digits.npz\"): no such file "
                               f"{tmp_path / 'nope' / 'digits.npz'} (a path in train(...) is relative to the "
                               f"folder of the .dln file, {tmp_path.resolve()})"), r.stderr


def test_a_data_mapping_without_the_labels_says_so(tmp_path):
    """Issue 23: `--data x=digits.npz` said the file had no `y`; it has, the mapping lacks `y=`."""
    r = dlc_cli("run", MLP, "--data", f"x={DIGITS}", "--epochs", "1", rc=2)
    assert r.stderr == (f"error: --data: no file for input 'y' : i32[N]: the mapping gives only x={DIGITS} "
                        "(add y=FILE, or give one .npz holding every input)\n"), r.stderr


def test_an_unknown_optimizer_setting_points_at_the_setting_and_suggests_weight_decay(tmp_path):
    """Issue 23: `adam(weight_decay = ...)` put its caret on `minimize`; it is a setting now (coupled
    decay, as torch.optim.Adam; adamw for the decoupled one). A misspelt setting still gets the
    caret on its name, and the suggestion."""
    src = tmp_path / "wd.dln"
    src.write_text(MLP.read_text().replace("minimize loss with sgd(lr = 0.1, momentum = 0.9, nesterov = true)",
                                           "minimize loss with adam(lr = 0.01, weight_deca = 0.1)"))
    text = src.read_text().splitlines()
    line = next(i for i, l in enumerate(text, 1) if "weight_deca" in l)
    col = text[line - 1].index("weight_deca") + 1
    r = dlc_cli("check", src, rc=2)
    assert r.stderr.startswith(f"{src}:{line}:{col}: error: optimizer adam has no setting 'weight_deca' "
                               "(did you mean 'weight_decay'?)"), r.stderr
    assert r.stderr.splitlines()[2] == " " * (4 + col - 1) + "^"
    src.write_text(src.read_text().replace("weight_deca ", "weight_decay "))
    r = dlc_cli("check", src, rc=0)
    assert "minimize loss with adam(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-08, weight_decay=0.1)" in r.stdout, r.stdout


# -- deep nesting: a stated limit, located ---------------------------------------------------------
def _nested(levels: int, make) -> str:
    e = "x"
    for _ in range(levels):
        e = make(e)
    return f"model deep {{\n    input x : f32[N, 4]\n\n    y = {e}\n    output y\n}}\n"


@pytest.mark.parametrize("make", [lambda e: f"relu({e})", lambda e: f"({e} + x)"], ids=["calls", "operators"])
def test_nesting_up_to_the_stated_limit_lowers_and_one_more_is_a_located_error(tmp_path, make):
    from dlc.dsl.frontend import MAX_NESTING, lower
    g = lower(_nested(MAX_NESTING, make), "deep.dln")  # the 500 levels failed at 1:1
    assert len(g.nodes_of("relu", "add")) == MAX_NESTING
    f = tmp_path / "deep.dln"
    f.write_text(_nested(MAX_NESTING + 1, make))
    r = dlc_cli("check", f)
    line = assert_user_error(r, must=[f"more than {MAX_NESTING} levels", "name some inner results"],
                             head=re.escape(f"{f}:4:"))  # the expression's line, not 1:1
    # the 5,000-character line is shown cut around the caret, which still stands under the column
    col = int(line.split(":")[2])
    shown, caret = r.stderr.splitlines()[1:3]
    assert len(shown) < 120 and shown.strip().startswith("...")
    src = f.read_text().splitlines()[3]
    at = caret.index("^")
    assert shown[at] == src[col - 1], (shown, caret)


# -- param names: the documented rule, and suggestions for a dotted name that names no param ------
_NAMING = """def block(x: [B, K]) {{
    h = relu(dense(x, K))
    return relu(x + dense(h, K))
}}
model m {{
    input x : f32[N, 8]
    input y : i32[N]
    b = block(x)
    fc = linear(flatten(reshape(b, [N, 2, 2, 2])), 3)
    two = dense(x, 3) + dense(x, 3)
    loss = softmax_xent(fc + two, y){extra}
    output fc
    minimize loss with sgd(lr = 0.1)
}}
"""


def test_params_are_named_as_the_language_reference_says():
    from dlc.dsl.frontend import lower
    g = lower(_NAMING.format(extra=""), "naming.dln")
    # docs/language.md, "Params are named by the call site": flatten makes no params and does not
    # count; a return expression's call is PREFIX.FUNCTION; two calls are NAME.FUNCTION, NAME.FUNCTION1
    assert sorted(g.nodes_of("param")) == sorted(["b.h.w", "b.h.b", "b.dense.w", "b.dense.b", "fc.w", "fc.b",
                                                  "two.dense.w", "two.dense.b", "two.dense1.w", "two.dense1.b"])


@pytest.mark.parametrize("extra, must", [
    (" + 1e-4 * l2(b.dens.w)", ["unknown name 'b.dens.w'", "did you mean 'b.dense.w'?"]),
    (" + 1e-4 * l2(fc.linear.w)", ["unknown name 'fc.linear.w'", "the params of 'fc' are fc.w, fc.b"]),
    (" + 1e-4 * l2(zz.w)", ["unknown name 'zz.w'", "h1 = dense(x, 8)` makes h1.w and h1.b", "dlc check"]),
    ("\n    freeze two.dense2.w", ["unknown name 'two.dense2.w'", "did you mean 'two.dense"]),
], ids=["close", "under-its-head", "nothing-near", "freeze"])
def test_a_dotted_name_that_names_no_param_suggests_the_params(tmp_path, extra, must):
    f = tmp_path / "naming.dln"
    f.write_text(_NAMING.format(extra=extra))
    assert_user_error(dlc_cli("check", f), must=must, head=re.escape(f"{f}:1{1 + extra.startswith(chr(10))}:"))


def test_a_string_where_a_fraction_belongs_is_a_located_error():
    """train(val_split = "") (found by test_fuzz) is refused at the setting, not with a TypeError
    from comparing a string with 0."""
    text = 'model m {\n    input x : f32[N, 2]\n    output x\n    train(val_split = "")\n}\n'
    try:
        dlc.compile(text, backend="interp")
    except dlc.DlcError as e:
        assert 'train: val_split must be in [0, 1), found the string ""' in e.message
        assert e.loc is not None and e.loc.line == 4
    else:
        raise AssertionError("a string val_split compiled")
