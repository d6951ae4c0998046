"""A stand-in for CuPy, for dry runs of `gpu_check.sh` on a machine without a GPU.

    DLC_FAKE_CUPY=1 bash benchmarks/gpu_check.sh       # puts benchmarks/fake_cupy first on PYTHONPATH

It is the stand-in of tests/test_cuda.py (the generated kernels run on the emulator; stream
capture records and replays), extended with the few calls bench_gpu.py and gpu_step.py make
(events, allocators, device properties, cupy.matmul, cupy.random). It checks that the scripts'
GPU paths run end to end; the numbers it produces mean nothing.
"""
import importlib.util
import sys
import time
import types
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(_ROOT / "tests"))
# loaded under its own name: pytest may be importing tests/test_cuda.py (which imports CuPy) right now
_spec = importlib.util.spec_from_file_location("_dlc_fake_cupy_source", _ROOT / "tests" / "test_cuda.py")
_src = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_src)
_Array, _fake_cupy = _src._Array, _src._fake_cupy

_f = _fake_cupy()
_Array.T = property(lambda s: _Array(s.a.T))
_Array.__array__ = lambda s, dtype=None, copy=None: s.a if dtype is None else s.a.astype(dtype)

__version__ = "fake (emulator)"
uint32, float32, int32 = np.uint32, np.float32, np.int32
RawModule = _f.RawModule
zeros, empty, asnumpy = _f.zeros, _f.empty, _f.asnumpy


def ones(shape, dtype=np.float32):
    return _Array(np.ones(shape, dtype))


def matmul(a, b, out=None):
    r = a.a @ b.a
    if out is None:
        return _Array(r)
    out.a[...] = r
    return out


random = types.SimpleNamespace(
    standard_normal=lambda shape, dtype=np.float32: _Array(np.random.default_rng(0).standard_normal(shape).astype(dtype)))


class Event:
    def __init__(self, *a, **k):
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


rt = _f.cuda.runtime
rt.deviceSynchronize = lambda: None
rt.runtimeGetVersion = lambda: 0
rt.driverGetVersion = lambda: 0
rt.getDeviceProperties = lambda i: {"name": b"fake GPU (emulator)", "major": 0, "minor": 0,
                                    "multiProcessorCount": 0, "totalGlobalMem": 0, "l2CacheSize": 0}
cuda = types.SimpleNamespace(
    Stream=_f.cuda.Stream, runtime=rt, Event=Event,
    get_elapsed_time=lambda e0, e1: (e1.t - e0.t) * 1e3,
    set_allocator=lambda *a: None, set_pinned_memory_allocator=lambda *a: None)
