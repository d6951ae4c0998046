"""`dlc run --check-numerics` (and `Model.check_numerics`): stop at the first NaN or infinity and
name the op, the node (on emu: the kernel) and the `.dln` line that produced it.

The model is engineered to blow up: the gradient of `sum(s) + 0.01 * sum(log(relu(s)))` is above 1,
so with lr 0.3 the param s goes 1 -> 0.697 -> 0.383 -> 0.057 -> -0.296. At the fifth step (epoch
2, step 1 with 4 steps an epoch) relu(s) is 0 and the log on line 8 gives -inf; every earlier
value is finite.
"""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest

import dlc
from dlc.cli import main
from dlc.ir.errors import DlcError
from conftest import LOGREG, needs_emu

BLOWUP = """# s shrinks; once it is below 0, log(relu(s)) is log(0) = -inf
model blowup {
    input x : f32[N, 2]
    input y : f32[N, 1]
    param w : f32[2, 1] = zeros
    param s : f32[1] = ones
    p = x @ w
    g = log(relu(s))
    loss = mse(p, y) + sum(s) + 0.01 * sum(g)
    output p
    minimize loss with sgd(lr = 0.3)
}
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    (tmp_path / "blowup.dln").write_text(BLOWUP)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(8, 2)).astype(np.float32),
             y=rng.normal(size=(8, 1)).astype(np.float32))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args) -> int:
    return main(["run", "blowup.dln", "--data", "d.npz", "--batch", "2", "--epochs", "3", "--no-progress",
                 *map(str, args)])


def test_interp_names_the_node_and_the_line(work, capsys):
    assert run("--backend", "interp", "--check-numerics") == 2
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first == "blowup.dln:8:9: error: --check-numerics: log (node %g) produced -inf in epoch 2, step 1"
    assert err.splitlines()[1].strip() == "g = log(relu(s))"  # the line, and a caret under the log
    assert "Traceback" not in err


def test_without_the_flag_training_only_diverges(work, capsys):
    """The plain run reports the symptom (the loss) one step later in the pipeline, with no op; it
    names both causes and the flag that finds the op (issue 23: it advised only a smaller learning
    rate, wrong for a log of 0)."""
    assert run("--backend", "interp") == 2
    err = capsys.readouterr().err
    assert "training diverged" in err and "blowup.dln:8" not in err
    assert "(a learning rate too large, or an op outside its domain such as the log of 0: --check-numerics " \
           "names the first op and .dln line that made NaN or infinity)" in err


@needs_emu
@pytest.mark.parametrize("opt_level", [1, 2])
def test_emu_names_the_kernel_and_the_line(work, capsys, opt_level):
    assert run("--backend", "emu", "-O", opt_level, "--check-numerics") == 2
    first = capsys.readouterr().err.splitlines()[0]
    # the kernel that computes the log: alone at -O1; at -O2 the sum that reads it computes it,
    # and the message names the fused group's nodes, located at the first (the log's line)
    m = re.fullmatch(r"blowup\.dln:8:(\d+): error: --check-numerics: kernel (\w+) \((op \w+, node %[\w.]+|"
                     r"fused group %[\w.]+: [^)]*)\) produced -inf in epoch 2, step 1", first)
    assert m, first
    assert ("log" in m.group(2)) if opt_level == 1 else ("log %" in m.group(3))


def test_nan_through_the_api_and_the_first_bad_node_wins():
    """sqrt of a negative number gives NaN; the log after it would give NaN too, but the sqrt ran
    first and is the one named."""
    m = dlc.compile("model q {\n input x : f32[N, 3]\n param w : f32[3] = ones\n"
                    "  r = sqrt(x - w)\n  z = log(r)\n  loss = sum(z * w)\n output z\n"
                    "  minimize loss with sgd(lr = 0.1)\n}\n", backend="interp")
    x = np.array([[2.0, 3.0, 0.5]], np.float32)  # 0.5 - 1 < 0: one NaN of three
    m.check_numerics = True
    with pytest.raises(DlcError) as e, np.errstate(invalid="ignore"):
        m.step(x=x)
    assert e.value.message == "--check-numerics: sqrt (node %r) produced nan (1 of 3 values)"
    assert (e.value.loc.line, e.value.loc.col) == (4, 7)
    assert m.steps == 0 and np.array_equal(np.asarray(m.params["w"]), np.ones(3))  # the step did not commit
    # unchecked, the step returns the NaN loss as before, and the update makes w NaN; a checked
    # step then names the param that already holds NaN, not the sub that reads it
    m.check_numerics = False
    with np.errstate(invalid="ignore", divide="ignore"):
        assert np.isnan(m.step(x=x))
    m.check_numerics = True
    with pytest.raises(DlcError) as e, np.errstate(invalid="ignore"):
        m.step(x=x)
    assert e.value.message.startswith("--check-numerics: param w holds nan already, before sub (node %r.sub)")
    assert (e.value.loc.line, e.value.loc.col) == (3, 2)
    with pytest.raises(DlcError, match="check_numerics: must be True or False"):
        m.check_numerics = "yes"


def test_a_healthy_run_is_unchanged_by_the_checks(tmp_path):
    """No false alarm, and the same weights bit for bit (the checks only read values)."""
    common = ["run", str(LOGREG), "--backend", "interp", "--epochs", "2", "--no-progress"]
    assert main(common + ["--save", str(tmp_path / "a.npz")]) == 0
    assert main(common + ["--save", str(tmp_path / "b.npz"), "--check-numerics"]) == 0
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_inf_while_evaluating_says_so(work, capsys):
    """--epochs 0 with weights that make the forward pass overflow: the error says when."""
    np.savez("w.npz", w=np.zeros((2, 1), np.float32), s=np.zeros(1, np.float32))
    assert run("--backend", "interp", "--epochs", "0", "--load", "w.npz", "--check-numerics") == 2
    assert capsys.readouterr().err.splitlines()[0] == \
        "blowup.dln:8:9: error: --check-numerics: log (node %g) produced -inf while evaluating"


# -- the cuda backend's checks, on the CuPy stand-in (tests/fake_cupy.py: kernels on the emulator) --
@needs_emu
@pytest.mark.parametrize("opt_level", [1, 2])
def test_cuda_names_the_kernel_as_emu_does(work, capsys, monkeypatch, opt_level):
    """The cuda backend checks each launch's output on the device (`cupy.isfinite`): the same
    message as emu's, kernel and all."""
    assert run("--backend", "emu", "-O", opt_level, "--check-numerics") == 2
    emu = capsys.readouterr().err.splitlines()[0]
    from fake_cupy import fake_cupy
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    assert run("--backend", "cuda", "-O", opt_level, "--check-numerics") == 2
    assert capsys.readouterr().err.splitlines()[0] == emu


OVERFLOW = """# h = x @ w overflows: 3e38 + 3e38 is past the largest float
model over {
    input x : f32[N, 2]
    input y : f32[N, 1]
    param w : f32[2, 4] = ones
    param v : f32[4, 1] = ones
    h = x @ w
    p = h @ v
    loss = mse(p, y)
    output p
    minimize loss with sgd(lr = 0.1)
}
"""


@needs_emu
@pytest.mark.parametrize("backend", ["emu", "cuda"])
def test_a_16_bit_value_is_checked_too(tmp_path, monkeypatch, capsys, backend):
    """At bf16, h (a product read only by a product) lives in a 16-bit buffer (codegen/storage.py);
    its overflow to inf is found there, read as BF16 (on cuda through the exponent bits)."""
    (tmp_path / "over.dln").write_text(OVERFLOW)
    np.savez(tmp_path / "d.npz", x=np.full((4, 2), 3e38, np.float32), y=np.zeros((4, 1), np.float32))
    monkeypatch.chdir(tmp_path)
    if backend == "cuda":
        from fake_cupy import fake_cupy
        monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    assert "h" in dlc.build(OVERFLOW, opt_level=1, precision="bf16").module().half
    assert main(["run", "over.dln", "--data", "d.npz", "--batch", "2", "--epochs", "1", "--no-progress",
                 "--backend", backend, "--precision", "bf16", "--check-numerics"]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first == ("over.dln:7:11: error: --check-numerics: kernel matmul_nn_h (op matmul, node %h) produced inf "
                     "(8 of 8 values) in epoch 1, step 1"), first
