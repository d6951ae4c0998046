"""The cuda backend against the interpreter. Needs CuPy and an NVIDIA GPU: skipped, with the
reason, where either is missing. What runs everywhere: the availability report, the backend's
bookkeeping on the CuPy stand-in of tests/fake_cupy.py, that stand-in's `cupy` for the GPU
scripts (tests/fake_cupy_path/) giving way to a real CuPy, and (last test) every GPU test of this
module on the stand-in, in a child process."""
import os
import sys

import numpy as np
import pytest

import dlc
from dlc.ir.errors import DlcError
from dlc.runtime.backends import available, make_backend
from dlc.runtime.cuda import cuda_available
from dlc.runtime.diff import synth_feeds
from dlc.runtime.init import initial_state
from dlc.runtime.interp import Interpreter
from test_codegen import MODELS
from test_emu import assert_close, compare_step, step_roots
from conftest import EXAMPLES, needs_emu
from fake_cupy import fake_cupy

OK, WHY = cuda_available()
needs_gpu = pytest.mark.skipif(not OK, reason=f"cuda backend unavailable: {WHY}")


@pytest.mark.parametrize("cupy,ok,why", [
    (None, False, "CuPy is not installed (pip install 'dlc[cuda12]' or 'dlc[cuda13]')"),
    ("no GPU", False, "no CUDA GPU is visible"),
    ("one GPU", True, "fake GPU through CuPy fake"),
])
def test_availability_is_reported_with_a_reason(monkeypatch, cupy, ok, why):
    # sys.modules["cupy"] = None makes `import cupy` fail; otherwise the stand-in with 0 or 1 GPUs
    monkeypatch.setitem(sys.modules, "cupy", None if cupy is None else fake_cupy(devices=int(cupy == "one GPU")))
    assert cuda_available() == (ok, why)
    assert available("cuda") == (ok, why)
    g = dlc.compile(MODELS["ew"], backend="interp").graph
    if not ok:
        with pytest.raises(DlcError, match=f"backend 'cuda' cannot run here: {why[:20]}"):
            make_backend("cuda", g)


@pytest.fixture(scope="module")
def models():
    from dlc.runtime.cuda import CudaBackend
    out = {}
    for name, text in MODELS.items():
        g = dlc.compile(text, backend="interp").graph
        out[name] = (g, CudaBackend(g), CudaBackend(g, cuda_graph=True))
    return out


@needs_gpu
@pytest.mark.parametrize("batch", [1, 7, 40])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_step_matches_interpreter(models, name, batch):
    g, plain, graphed = models[name]
    compare_step(g, plain, batch, seed=batch, rng=(11, 3))
    compare_step(g, graphed, batch, seed=batch, rng=(11, 3))


@needs_gpu
def test_cuda_graph_replays_many_steps(models):
    g, plain, graphed = models["mm"]
    ref = Interpreter(g)
    state = initial_state(g, 0)
    for b in (ref, plain, graphed):
        b.set_state(state)
    roots = step_roots(g)
    for i in range(4):
        feeds = synth_feeds(g, 9, i)  # new data in the same input buffers each replay
        want = ref.run(roots, feeds, commit=True)
        for b in (plain, graphed):
            got = b.run(roots, feeds, commit=True)
            for r in roots:
                assert_close(got[r], want[r], f"{b.name} step {i}: {r}")
    # one graph for batch 9, replayed (a program key ends with the batch's dims: BufferState._program)
    assert sum(1 for k in graphed._graphs if dict(k[-1]).get("N") == 9) == 1


@needs_gpu
@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.dln")), ids=lambda p: p.stem)
def test_example_matches_interpreter(path):
    from dlc.runtime.cuda import CudaBackend
    g = dlc.compile(path, backend="interp").graph
    compare_step(g, CudaBackend(g), 5, rng=(0, 1))


@needs_gpu
def test_api_backend_cuda():
    ref = dlc.compile(MODELS["red"], backend="interp", seed=1)
    gpu = dlc.compile(MODELS["red"], backend="cuda", seed=1)
    feeds = synth_feeds(ref.graph, 16, 1)
    assert_close(gpu.step(**feeds), ref.step(**feeds), "loss")
    for k, v in ref.state.items():
        assert_close(gpu.state[k], v, k)
    with pytest.raises(DlcError, match="float32"):
        from dlc.runtime.cuda import CudaBackend
        CudaBackend(ref.graph, np.float64)


# -- the backend's bookkeeping, without a GPU ---------------------------------------------------
# tests/fake_cupy.py stands in for the few CuPy calls the backend makes (kernels on the emulator,
# stream capture recorded and replayed). This checks the backend's buffers, launch binding,
# output copies, commits and graph replay; it says nothing about CuPy itself or the GPU, which
# only the tests above check.

@needs_emu  # the fake CuPy runs kernels on the emulator
@pytest.mark.parametrize("graphed", [False, True], ids=["launches", "cuda-graph"])
@pytest.mark.parametrize("name", ["red", "cnn", "mm"])  # mm trains with Adam: 0-d state buffers
def test_backend_bookkeeping_with_a_fake_cupy(monkeypatch, name, graphed):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    from dlc.runtime.cuda import CudaBackend
    g = dlc.compile(MODELS[name], backend="interp").graph
    backend = CudaBackend(g, cuda_graph=graphed)
    for batch in (3, 8, 3):
        compare_step(g, backend, batch, seed=batch, rng=(7, batch))
    if graphed:
        assert len(backend._graphs) == 2  # one per batch size, replayed


@needs_emu  # the fake CuPy runs kernels on the emulator
@pytest.mark.parametrize("level, graphed", [(1, False), (2, False), (2, True)])
def test_a_training_step_waits_once_and_downloads_the_loss_only(monkeypatch, level, graphed):
    """What the stand-in sees (its own counts of stream synchronisations and device-to-host
    bytes) and what the runtime counts agree: one wait and 4 bytes (the f32 loss) per step,
    whatever the params and optimizer state; reading the params is a separate, explicit download."""
    import fake_cupy as fc
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    m = dlc.compile(EXAMPLES / "mlp.dln", backend="cuda", opt_level=level, cuda_graph=graphed)
    backend = m.engine
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 64)).astype(np.float32), rng.integers(0, 10, 16).astype(np.int32)
    m.step(x=x, y=y)  # the first step builds the program (and the graph)
    for _ in range(3):
        seen, counted = dict(fc._Array.observed), dict(backend.counters)
        m.step(x=x, y=y)
        assert fc._Array.observed["syncs"] - seen["syncs"] == backend.counters["syncs"] - counted["syncs"] == 1
        assert fc._Array.observed["d2h_bytes"] - seen["d2h_bytes"] == 4
        assert backend.counters["d2h_bytes"] - counted["d2h_bytes"] == 4
    seen = fc._Array.observed["d2h_bytes"]
    assert m.params["w1"].shape == (64, 128)  # on demand: w1 alone comes down
    assert fc._Array.observed["d2h_bytes"] - seen == 64 * 128 * 4


def _fake_cuda_mlp(monkeypatch, graphed=False, level=1):
    """The mlp example on the cuda backend over the CuPy stand-in, and the same model on interp."""
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    ref = dlc.compile(EXAMPLES / "mlp.dln", backend="interp", opt_level=level)
    m = dlc.compile(EXAMPLES / "mlp.dln", backend="cuda", opt_level=level, cuda_graph=graphed)
    return m, ref, m.engine


@needs_emu  # the fake CuPy runs kernels on the emulator
@pytest.mark.parametrize("graphed", [False, True], ids=["launches", "cuda-graph"])
def test_deferred_steps_wait_once_for_all(monkeypatch, graphed):
    """Steps taken with wait=False queue their losses without waiting for the device: k steps
    then cost no sync and no download until a result is read, and then one sync and 4 bytes per
    step for all of them together; the losses are those of steps that wait (interp reference;
    float32 on both sides, 1e-4 relative covers summation order in the kernels)."""
    import fake_cupy as fc
    m, ref, backend = _fake_cuda_mlp(monkeypatch, graphed)
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((16, 64)).astype(np.float32), rng.integers(0, 10, 16).astype(np.int32))
               for _ in range(5)]
    want = [ref.step(x=x, y=y) for x, y in batches]
    seen, counted = dict(fc._Array.observed), dict(backend.counters)
    pending = [m.train_step({"x": x, "y": y}, wait=False) for x, y in batches]
    assert fc._Array.observed["syncs"] == seen["syncs"] and backend.counters["syncs"] == counted["syncs"]
    assert fc._Array.observed["d2h_bytes"] == seen["d2h_bytes"]
    got = [pending[2].result()[0]]  # any one of them brings every queued step down
    assert fc._Array.observed["syncs"] - seen["syncs"] == backend.counters["syncs"] - counted["syncs"] == 1
    assert fc._Array.observed["d2h_bytes"] - seen["d2h_bytes"] == 4 * len(batches)
    got = [p.result()[0] for p in pending]
    assert fc._Array.observed["syncs"] - seen["syncs"] == 1
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert m.steps == len(batches)


@needs_emu  # the fake CuPy runs kernels on the emulator
def test_unread_deferred_steps_are_brought_down_at_the_limit(monkeypatch):
    """A caller that never reads its deferred steps does not hold device buffers forever: at
    MAX_PENDING unread runs they come down (one wait), and their results stay readable."""
    from dlc.runtime import runner as bk
    m, ref, backend = _fake_cuda_mlp(monkeypatch)
    monkeypatch.setattr(bk, "MAX_PENDING", 3)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((8, 64)).astype(np.float32), rng.integers(0, 10, 8).astype(np.int32)
    before = backend.counters["syncs"]
    pending = [m.train_step({"x": x, "y": y}, wait=False) for _ in range(7)]
    assert backend.counters["syncs"] - before == 2 and len(backend._pending) == 1  # at the 3rd and 6th
    want = [ref.step(x=x, y=y) for _ in range(7)]
    np.testing.assert_allclose([p.result()[0] for p in pending], want, rtol=1e-4)
    assert backend.counters["syncs"] - before == 3


@needs_emu  # the fake CuPy runs kernels on the emulator
def test_the_training_loop_waits_once_per_interval(monkeypatch):
    """`dlc run`'s loop reads the losses every SYNC_EVERY steps and at the end of an epoch: one
    host sync each, not one per step; the epoch's loss is the interpreter's (the same batches)."""
    from dlc.runtime import train as training
    m, ref, backend = _fake_cuda_mlp(monkeypatch, level=2)
    monkeypatch.setattr(training, "SYNC_EVERY", 4)
    rng = np.random.default_rng(2)
    n, batch = 90, 8  # 12 steps an epoch (the last one of 2 examples): 3 reads
    feeds = {"x": rng.random((n, 64)).astype(np.float32), "y": rng.integers(0, 10, n).astype(np.int32)}
    before = backend.counters["syncs"]
    got = training.train(m, feeds, n, epochs=2, batch=batch, val_split=0, seed=0, progress=False, out=open(os.devnull, "w"))
    assert backend.counters["syncs"] - before == 2 * 3
    want = training.train(ref, feeds, n, epochs=2, batch=batch, val_split=0, seed=0, progress=False,
                          out=open(os.devnull, "w"))
    np.testing.assert_allclose([h["loss"] for h in got["history"]], [h["loss"] for h in want["history"]], rtol=1e-4)
    assert [h["accuracy"] for h in got["history"]] == [h["accuracy"] for h in want["history"]]


# -- tests/fake_cupy_path: the `cupy` of dry runs never shadows a real one -------------------------

import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

FAKE_PATH = Path(__file__).resolve().parent / "fake_cupy_path"


def _which_cupy(*path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, path)))
    r = subprocess.run([sys.executable, "-c", "import cupy; c = cupy.cuda; print(cupy.__version__, '|', "
                        "c.WHERE if hasattr(c, 'WHERE') else c.runtime.getDeviceCount())"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip(), r.stderr


@pytest.fixture
def real_cupy(tmp_path):
    """A folder holding a package `cupy` (with a submodule) that plays an installed CuPy."""
    pkg = tmp_path / "site" / "cupy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('__version__ = "13.9-real"\nfrom . import cuda\n')
    (pkg / "cuda.py").write_text('WHERE = "real cupy.cuda"\n')
    return tmp_path / "site"


def _cupy_installed() -> bool:
    import importlib.util
    return sys.modules.get("cupy") is not None or importlib.util.find_spec("cupy") is not None


@needs_emu  # the stand-in runs kernels on the emulator
@pytest.mark.skipif(_cupy_installed(), reason="a real CuPy is installed here: the stand-in gives way to it")
def test_fake_cupy_path_is_the_stand_in_where_no_cupy_is_installed():
    out, _ = _which_cupy(FAKE_PATH)
    assert out == "fake (emulator) | 1"


@pytest.mark.parametrize("order", ["stand-in first", "stand-in last"])
def test_fake_cupy_path_gives_way_to_a_real_cupy(real_cupy, order):
    path = [FAKE_PATH, real_cupy] if order == "stand-in first" else [real_cupy, FAKE_PATH]
    out, err = _which_cupy(*path)
    assert out == "13.9-real | real cupy.cuda"
    if order == "stand-in first":  # the stand-in ran, found the real one and loaded it instead
        assert "a real CuPy is installed" in err and "using it, not the stand-in" in err


@needs_emu  # the stand-in runs kernels on the emulator
@pytest.mark.skipif(_cupy_installed() or OK, reason="a real CuPy is installed here: the GPU tests above ran on it")
def test_the_gpu_tests_pass_on_the_stand_in():
    """The tests above that need a GPU (skipped here) run on the stand-in in a child process, so
    that they cannot rot between the rare runs on a GPU. They once did: a program key grew by one
    item and test_cuda_graph_replays_many_steps failed only in benchmarks/gpu_check.sh's dry run."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAKE_PATH), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", __file__,
                        "-k", "not test_the_gpu_tests_pass_on_the_stand_in"],
                       cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "cuda backend unavailable" not in r.stdout, r.stdout[-4000:]  # every GPU test ran
