"""The cuda backend against the interpreter. Needs CuPy and an NVIDIA GPU: skipped, with the
reason, where either is missing; only the "not available" path runs everywhere."""
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
from test_emu import EXAMPLES, assert_close, compare_step, step_roots

OK, WHY = cuda_available()
needs_gpu = pytest.mark.skipif(not OK, reason=f"cuda backend unavailable: {WHY}")


def test_availability_is_reported_with_a_reason():
    ok, why = available("cuda")
    assert (ok, why) == (OK, WHY) and why
    if not ok:
        with pytest.raises(DlcError, match="cannot run here"):
            make_backend("cuda", dlc.compile(MODELS["ew"], backend="interp").graph)


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
    assert sum(1 for k in graphed._graphs if dict(k[2]).get("N") == 9) == 1  # one graph for batch 9, replayed


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
    for k, v in ref.state().items():
        assert_close(gpu.state()[k], v, k)
    with pytest.raises(DlcError, match="float32"):
        from dlc.runtime.cuda import CudaBackend
        CudaBackend(ref.graph, np.float64)


# -- the backend's bookkeeping, without a GPU ---------------------------------------------------
# A stand-in for the few CuPy calls the backend makes: arrays are NumPy arrays, the RawModule
# runs the same generated source through the emulator (a generic launcher per kernel, built
# from the kernel signatures), stream capture records and replays. This checks the backend's
# buffers, launch binding, output copies, commits and graph replay; it says nothing about CuPy
# itself or the GPU, which only the tests above check.

import ctypes  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

from dlc.runtime.emu import build_library, emu_available  # noqa: E402


class _Array:
    def __init__(self, a):
        self.a = a
        self.data = types.SimpleNamespace(ptr=a.ctypes.data)
        self.nbytes, self.dtype, self.shape = a.nbytes, a.dtype, a.shape

    def set(self, v, stream=None):
        assert v.shape == self.shape and v.dtype == self.dtype and v.flags.c_contiguous
        self.a[...] = v


def _fake_cupy():
    state = {"capture": None}

    def record_or_run(op):
        if state["capture"] is not None:
            state["capture"].append(op)
        else:
            op()

    class Stream:
        ptr = 1

        def __init__(self, non_blocking=False):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def synchronize(self):
            pass

        def begin_capture(self):
            state["capture"] = []

        def end_capture(self):
            ops, state["capture"] = state["capture"], None
            return types.SimpleNamespace(launch=lambda stream=None: [op() for op in ops], ops=ops)

    class RawModule:
        def __init__(self, code, options=()):
            kernels = re.findall(r'extern "C" __global__ void (\w+)\(([^)]*)\)', code)
            glue = ['#include "cuda_emu.h"', code]
            for name, params in kernels:
                args = []
                for i, decl in enumerate(p.strip() for p in params.split(",")):
                    ctype = decl.rsplit(" ", 1)[0].replace("__restrict__", "").strip()
                    args.append(f"*(int*)p[{i}]" if ctype == "int" else f"({ctype})p[{i}]")
                glue.append(f'extern "C" void go_{name}(const unsigned* s, void** p) {{ dlc_emu::launch('
                            f'dim3(s[0], s[1], s[2]), dim3(s[3], s[4], s[5]), true, [&] {{ {name}({", ".join(args)}); }}); }}')
            self.lib = ctypes.CDLL(str(build_library("\n".join(glue))))

        def compile(self):
            pass

        def get_function(self, name):
            fn = getattr(self.lib, f"go_{name}")

            def launch(grid, block, args):
                assert len(grid) == len(block) == 3 and min(grid) > 0
                keep = [np.array([int(a)], np.int32) if isinstance(a, np.integer) else a for a in args]
                ptrs = (ctypes.c_void_p * len(keep))(*[k.ctypes.data if isinstance(k, np.ndarray) else k.data.ptr
                                                        for k in keep])
                shape = (ctypes.c_uint * 6)(*grid, *block)
                record_or_run(lambda: (keep, fn(shape, ptrs)))
            return launch

    runtime = types.SimpleNamespace(
        CUDARuntimeError=RuntimeError, memcpyDeviceToDevice=3, getDeviceCount=lambda: 1,
        getDeviceProperties=lambda i: {"name": b"fake GPU"},
        memcpyAsync=lambda dst, src, n, kind, stream: record_or_run(lambda: ctypes.memmove(dst, src, n)))
    return types.SimpleNamespace(
        __version__="fake", uint32=np.uint32, RawModule=RawModule,
        zeros=lambda shape, dtype: _Array(np.zeros(shape, dtype)),
        empty=lambda shape, dtype: _Array(np.empty(shape, dtype)),
        asnumpy=lambda a, stream=None: a.a.copy(),
        cuda=types.SimpleNamespace(Stream=Stream, runtime=runtime))


@pytest.mark.skipif(not emu_available()[0], reason=f"the fake CuPy runs kernels on the emulator: {emu_available()[1]}")
@pytest.mark.parametrize("graphed", [False, True], ids=["launches", "cuda-graph"])
@pytest.mark.parametrize("name", ["red", "cnn", "mm"])  # mm trains with Adam: 0-d state buffers
def test_backend_bookkeeping_with_a_fake_cupy(monkeypatch, name, graphed):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    from dlc.runtime.cuda import CudaBackend
    g = dlc.compile(MODELS[name], backend="interp").graph
    backend = CudaBackend(g, cuda_graph=graphed)
    for batch in (3, 8, 3):
        compare_step(g, backend, batch, seed=batch, rng=(7, batch))
    if graphed:
        assert len(backend._graphs) == 2  # one per batch size, replayed
