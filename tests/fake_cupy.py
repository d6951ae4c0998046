"""A stand-in for the few CuPy calls dlc's cuda backend and the GPU scripts make, for machines
without a GPU. It is test code: it lives here, is imported by tests/test_cuda.py, and reaches
the scripts only through tests/fake_cupy_path/ (`DLC_FAKE_CUPY=1 bash benchmarks/gpu_check.sh`),
whose `cupy` gives way to a real CuPy wherever one is installed.

Arrays are NumPy arrays; the RawModule runs the generated source through the emulator (a generic
launcher per kernel, built from the kernel signatures); stream capture records and replays. It
checks the backend's buffers, launch binding, output copies, commits and graph replay, and that
the scripts' GPU paths run end to end; it says nothing about CuPy itself or a GPU, and the
numbers it produces mean nothing.
"""
from __future__ import annotations

import ctypes
import os
import re
import time
import types

import numpy as np

from dlc.runtime.emu import build_library


class _Array:
    def __init__(self, a):
        self.a = a
        self.data = types.SimpleNamespace(ptr=a.ctypes.data)
        self.nbytes, self.dtype, self.shape, self.size = a.nbytes, a.dtype, a.shape, a.size

    def set(self, v, stream=None):
        assert v.shape == self.shape and v.dtype == self.dtype and v.flags.c_contiguous
        self.a[...] = v
        _Array.observed["h2d_copies"] += 1

    def get(self, stream=None, out=None, blocking=True):
        """A device-to-host copy (counted, as a GPU's profiler would see it)."""
        _Array.observed["d2h_bytes"] += self.nbytes
        if out is None:
            return self.a.copy()
        out[...] = self.a
        return out

    observed = {"syncs": 0, "d2h_bytes": 0, "h2d_copies": 0}  # what the stand-in saw, for tests

    @property
    def T(self):
        return _Array(self.a.T)

    def __array__(self, dtype=None, copy=None):
        return self.a if dtype is None else self.a.astype(dtype)

    # what --check-numerics does to a device buffer (runtime/runner.py _check_launch, cuda.py _finite):
    # a 16-bit buffer viewed as uint16, its first elements in the value's shape, its exponent bits
    def view(self, dtype):
        return _Array(self.a.view(dtype))

    def reshape(self, *shape):
        return _Array(self.a.reshape(*shape))

    def __getitem__(self, index):
        return _Array(self.a[index])

    def __and__(self, other):
        return self.a & other


def fake_cupy(devices: int = 1) -> types.SimpleNamespace:
    """A fresh stand-in: what `import cupy as cp` gives the cuda backend (`cp.RawModule`,
    `cp.zeros`, `cp.cuda.Stream`, ...). `devices` is what `getDeviceCount()` says."""
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
            _Array.observed["syncs"] += 1

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

    def use(i):
        state["device"] = i  # what the backend chose, for tests
    state["device"] = 0

    runtime = types.SimpleNamespace(
        CUDARuntimeError=RuntimeError, memcpyDeviceToDevice=3, getDeviceCount=lambda: devices,
        getDeviceProperties=lambda i: {"name": b"fake GPU"},
        memcpyAsync=lambda dst, src, n, kind, stream: record_or_run(lambda: ctypes.memmove(dst, src, n)))
    return types.SimpleNamespace(
        __version__="fake", uint32=np.uint32, RawModule=RawModule,
        zeros=lambda shape, dtype: _Array(np.zeros(shape, dtype)),
        empty=lambda shape, dtype: _Array(np.empty(shape, dtype)),
        asnumpy=lambda a, stream=None: a.get(),
        isfinite=lambda a: np.isfinite(a.a),
        cuda=types.SimpleNamespace(Stream=Stream, runtime=runtime, nccl=_nccl(record_or_run),
                                   Device=lambda i: types.SimpleNamespace(id=i, use=lambda: use(i))),
        device_state=state)


FAKE_NCCL_ID = ("a stand-in NCCL id",)


def _nccl(record_or_run) -> types.SimpleNamespace:
    """`cupy.cuda.nccl` as the cuda backend calls it: a communicator from the id rank 0 made, and
    allReduce(send pointer, receive pointer, count, float32, sum, stream). NOT NCCL: the sum is
    MPI's (mpi4py's Allreduce) between the processes of the run, on the host, run or captured as
    a kernel would be. It checks the backend's calls (which buffers, how many values, that the id
    came from rank 0, that the call is recorded in a CUDA-graph capture), nothing about NCCL."""
    class NcclCommunicator:
        def __init__(self, ndev, uid, rank):
            from mpi4py import MPI
            self.mpi, self.comm = MPI, MPI.COMM_WORLD
            assert (ndev, rank) == (self.comm.Get_size(), self.comm.Get_rank()), (ndev, rank)
            assert uid == FAKE_NCCL_ID, uid  # broadcast from rank 0
            if os.environ.get("DLC_FAKE_NCCL_FAIL") == "init":  # as a missing libnccl or a bad id fails
                raise RuntimeError("NCCL_ERROR_SYSTEM_ERROR: stand-in failure at ncclCommInitRank")
            self.calls = []  # the count of every allReduce call (once per capture in a CUDA graph), in order
            self.sums = 0    # how many sums ran (a replayed graph runs its captured ones again)

        def allReduce(self, send, recv, count, dtype, op, stream):
            assert (dtype, op) == (NCCL_FLOAT32, NCCL_SUM) and count > 0
            if os.environ.get("DLC_FAKE_NCCL_FAIL") == "allreduce":  # as a lost peer fails a collective
                raise RuntimeError("NCCL_ERROR_REMOTE_ERROR: stand-in failure at ncclAllReduce")
            self.calls.append(count)

            def run():
                a = np.ctypeslib.as_array((ctypes.c_float * count).from_address(send)).copy()
                b = np.ctypeslib.as_array((ctypes.c_float * count).from_address(recv))
                self.comm.Allreduce(a, b, op=self.mpi.SUM)
                self.sums += 1
            record_or_run(run)

    NCCL_FLOAT32, NCCL_SUM = 7, 0  # ncclFloat32, ncclSum
    return types.SimpleNamespace(NCCL_FLOAT32=NCCL_FLOAT32, NCCL_SUM=NCCL_SUM, get_unique_id=lambda: FAKE_NCCL_ID,
                                 NcclCommunicator=NcclCommunicator)


class _Event:
    def __init__(self, *a, **k):
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


def script_cupy() -> dict:
    """The stand-in extended with the calls benchmarks/bench_gpu.py and gpu_step.py make
    (events, allocators, device properties, `cupy.matmul`, `cupy.random`): the namespace of the
    `cupy` module in tests/fake_cupy_path/."""
    f = fake_cupy(devices=int(os.environ.get("DLC_FAKE_GPUS", "1")))  # how many GPUs it says there are
    rt = f.cuda.runtime
    rt.deviceSynchronize = lambda: None
    rt.runtimeGetVersion = lambda: 0
    rt.driverGetVersion = lambda: 0
    rt.getDeviceProperties = lambda i: {"name": b"fake GPU (emulator)", "major": 0, "minor": 0,
                                        "multiProcessorCount": 0, "totalGlobalMem": 0, "l2CacheSize": 0}

    def ones(shape, dtype=np.float32):
        return _Array(np.ones(shape, dtype))

    def matmul(a, b, out=None):
        r = a.a @ b.a
        if out is None:
            return _Array(r)
        out.a[...] = r
        return out

    return dict(
        __version__="fake (emulator)", uint32=np.uint32, float32=np.float32, int32=np.int32,
        device_state=f.device_state, RawModule=f.RawModule, zeros=f.zeros, empty=f.empty, asnumpy=f.asnumpy, ones=ones, matmul=matmul,
        random=types.SimpleNamespace(standard_normal=lambda shape, dtype=np.float32: _Array(
            np.random.default_rng(0).standard_normal(shape).astype(dtype))),
        cuda=types.SimpleNamespace(
            Stream=f.cuda.Stream, runtime=rt, Event=_Event, nccl=f.cuda.nccl, Device=f.cuda.Device,
            get_elapsed_time=lambda e0, e1: (e1.t - e0.t) * 1e3,
            set_allocator=lambda *a: None, set_pinned_memory_allocator=lambda *a: None))
