"""What the test modules share: the repository's paths, the `dlc` command in a subprocess, and what
a machine may lack: the marker for tests that need the emu backend (a C++ compiler), and PyTorch.

pytest puts tests/ on sys.path, so a module imports these as `from conftest import ROOT, dlc_cli`.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dlc.runtime.emu import emu_available

# -- paths ------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.dln"))
EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLE_FILES)
TRAINING_EXAMPLES = [p for p in EXAMPLE_FILES if "minimize" in p.read_text()]  # the files that train
IMAGENET_FILES = sorted((EXAMPLES / "imagenet").glob("*.dln"))  # the full-size nets (no data shipped)
DIGITS = EXAMPLES / "data" / "digits.npz"
MLP = EXAMPLES / "mlp.dln"
LOGREG = EXAMPLES / "logreg.dln"
XOR = EXAMPLES / "xor.dln"
GOLDEN = ROOT / "tests" / "golden"


@pytest.fixture
def examples_dir():
    return EXAMPLES


@pytest.fixture(scope="module")
def backends():
    """(.dln text, -O level) -> (optimized graph, emu backend): one build per model and level in a
    test module (the emu backend compiles the module's CUDA for the CPU once)."""
    import dlc
    from dlc.runtime.emu import EmuBackend
    cache = {}

    def get(text, level):
        if (text, level) not in cache:
            g = dlc.compile(text, backend="interp", opt_level=level).graph
            cache[text, level] = (g, EmuBackend(g))
        return cache[text, level]
    return get


# -- the `dlc` command --------------------------------------------------------------------------
def dlc_cli(*args, cwd=ROOT, env: dict | None = None, umask: int | None = None, rc: int | None = None,
            timeout: float | None = 300) -> subprocess.CompletedProcess:
    """Run the real command line, `python -m dlc.cli ARGS`, in a fresh interpreter, from `cwd`, with
    text output captured. DLC_DEBUG is never passed on (a user's run, no tracebacks on purpose).

    env: variables set on top of os.environ; a value None removes that variable.
    umask: the child's umask.
    rc: where given, the exit status must be rc and stderr must hold no Python traceback."""
    full = dict(os.environ)
    full.pop("DLC_DEBUG", None)
    for k, v in (env or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = str(v)
    r = subprocess.run([sys.executable, "-m", "dlc.cli", *map(str, args)], cwd=cwd, env=full,
                       capture_output=True, text=True, timeout=timeout,
                       preexec_fn=None if umask is None else (lambda: os.umask(umask)))
    if rc is not None:
        assert r.returncode == rc, f"dlc {' '.join(map(str, args))}: exit {r.returncode}, expected {rc}\n" \
                                   f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
        assert "Traceback" not in r.stderr, r.stderr
    return r


# -- what a machine may lack ----------------------------------------------------------------------
EMU = emu_available()  # (ok, why): the emu backend compiles the generated CUDA with $CXX (g++)
needs_emu = pytest.mark.skipif(not EMU[0], reason=f"the emu backend cannot run here: {EMU[1]}")


def test_requirement(dist: str):
    """The test extra's requirement for distribution `dist` in pyproject.toml, or None."""
    from packaging.requirements import Requirement
    block = re.search(r"^test = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    for m in re.finditer(r"""(["'])(.+?)\1""", block.group(1) if block else ""):
        req = Requirement(m.group(2))
        if req.name == dist:
            return req
    return None


def expected(dist: str) -> bool:
    """Whether `pip install -e '.[test]'` installs `dist` on this machine (its marker holds)."""
    req = test_requirement(dist)
    return req is not None and (req.marker is None or req.marker.evaluate({"extra": "test"}))


def need(module: str, dist: str | None = None):
    """`module`, for a test of an optional feature or a comparison with another implementation.
    Where the test extra installs its distribution `dist` (default: the module's top name) on this
    machine, a missing one FAILS the calling test, as any missing test dependency would; elsewhere
    the test is skipped with the reason. Never a skip into green where the suite should run it."""
    import importlib
    dist = dist or module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        req = test_requirement(dist)
        if expected(dist):
            pytest.fail(f"{module} is not importable ({e}), but the test extra installs it on this platform "
                        f"({req}): pip install -e '.[test]'", pytrace=False)
        pytest.skip(f"{module} is not installed; the test extra installs it only where {req} holds"
                    if req else f"{module} is not installed (not a test requirement)")


def import_torch():
    """torch, for a comparison with PyTorch (see `need`: the extra installs its CPU wheel where
    one exists, Python 3.11 on x86_64 Linux)."""
    return need("torch")


def import_torch_models():
    """(torch, benchmarks/torch_models.py): the PyTorch twins of the examples and of the full-size
    networks, which import torch (without it, the calling test fails or is skipped, as above)."""
    torch = import_torch()
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch_models
    return torch, torch_models


@pytest.fixture
def onnx_runtime():
    """(onnx, onnxruntime): `dlc export` and the reference its files are run with."""
    return need("onnx"), need("onnxruntime")


@pytest.fixture
def nvrtc():
    """NVRTC from pip (cuda-bindings): the generated kernels compiled to PTX without a GPU."""
    return need("cuda.bindings.nvrtc", "cuda-bindings")


@pytest.fixture
def matplotlib_installed():
    return need("matplotlib")


# -- the collection -------------------------------------------------------------------------------
def pytest_collection_modifyitems(session, config, items):
    """The repository root is the package `dlc` itself (it has an __init__.py), so pytest makes it a
    Package node and, before the first test, imports its __init__.py to look for a setup_module.
    It imports it under the checkout folder's name (`main` -> a second copy of dlc as `main`), or,
    where that name is no Python identifier (`wt-tests`, `dlc-fork`), as a top-level `__init__`
    whose relative imports fail: every test then errors at setup. dlc's __init__.py has no
    setup_module or teardown_module, so that import is skipped."""
    for node in {n for item in items for n in item.listchain()}:
        if isinstance(node, pytest.Package) and node.path.resolve() == ROOT:
            node.setup = lambda: None


@pytest.fixture(scope="session")
def lenet_held_out(tmp_path_factory) -> float:
    """The held-out accuracy of examples/lenet.dln trained as `dlc run` trains it (interp): the bar
    the small classic variants (alexnet_small, resnet_small) must reach. Run once per session."""
    import json
    mj = tmp_path_factory.mktemp("lenet") / "m.json"
    dlc_cli("run", EXAMPLES / "lenet.dln", "--backend", "interp", "--no-progress", "--metrics-json", mj, rc=0,
            timeout=None)
    return json.loads(mj.read_text())["val_accuracy"]
