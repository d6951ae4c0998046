"""`cupy` for dry runs of the GPU check on a machine without a GPU:

    DLC_FAKE_CUPY=1 bash benchmarks/gpu_check.sh     # puts tests/fake_cupy_path first on PYTHONPATH

It is the stand-in of tests/fake_cupy.py (the generated kernels run on the emulator; numbers
meaningless). It never shadows a real CuPy: when a `cupy` can be imported from any other entry
of `sys.path`, this module loads that one in its place (and says so on stderr), so a machine with
CuPy installed always gets the real thing, whatever the order of the path.
"""
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parents[1]   # tests/fake_cupy_path


def _elsewhere(entry) -> bool:
    try:
        return Path(entry or ".").resolve() != _HERE
    except (OSError, TypeError, ValueError):
        return True


_real = importlib.machinery.PathFinder.find_spec(__name__, [p for p in sys.path if _elsewhere(p)])
if _real is not None:
    print(f"tests/fake_cupy_path: a real CuPy is installed ({_real.origin}): using it, not the stand-in",
          file=sys.stderr)
    _module = importlib.util.module_from_spec(_real)
    sys.modules[__name__] = _module   # what `import cupy` returns once this file has run
    _real.loader.exec_module(_module)
else:
    _spec = importlib.util.spec_from_file_location("_dlc_fake_cupy", _HERE.parent / "fake_cupy.py")
    _stand_in = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_stand_in)
    globals().update(_stand_in.script_cupy())
    IS_DLC_STAND_IN = True
