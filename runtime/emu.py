"""The `emu` backend: the generated CUDA module, compiled by the host C++ compiler against
`codegen/cuda_emu.h` and run on the CPU (blocks in parallel with OpenMP, the threads of a
block as fibers). Slow, but it runs the very kernels the GPU would, on any machine.

The shared library is cached on disk by a hash of its source and compiler flags, under
`$DLC_CACHE_DIR`, else `$XDG_CACHE_HOME/dlc`, else `~/.cache/dlc`. One library serves every
batch size: symbolic dimensions are kernel arguments. Buffers are NumPy arrays, allocated once
per batch size; a step is one ctypes call per launch of the plan.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..codegen import EMU_HEADER
from ..ir.errors import DlcError
from .runner import BufferState
from ..ir.graph import Graph

CXX = os.environ.get("CXX", "g++")
# -U_FORTIFY_SOURCE: the fibers of cuda_emu.h longjmp between stacks, which the fortified
# longjmp rejects; -Bsymbolic: a library calls its own kernels even if another loaded library
# has kernels of the same names
CXXFLAGS = ["-O2", "-fopenmp", "-shared", "-fPIC", "-std=c++17", "-U_FORTIFY_SOURCE", "-Wl,-Bsymbolic"]


def emu_available() -> tuple[bool, str]:
    cxx = shutil.which(CXX)
    if cxx is None:
        return False, f"no C++ compiler '{CXX}' on PATH (set CXX to one with OpenMP)"
    return True, f"generated CUDA compiled with {cxx} against cuda_emu.h, run on the CPU"


def check_order_setting() -> None:
    """DLC_EMU_ORDER (the order the emulator runs a block's threads in, cuda_emu.h) must read
    forward, reverse or shuffle[:seed]; the library would abort on anything else."""
    value = os.environ.get("DLC_EMU_ORDER", "")
    if not re.fullmatch(r"(forward|reverse|shuffle(:\d+)?)?", value):
        raise DlcError(f"DLC_EMU_ORDER={value}: expected forward, reverse or shuffle[:seed] (a number)")


def cache_dir() -> Path:
    if os.environ.get("DLC_CACHE_DIR"):
        return Path(os.environ["DLC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dlc"


def build_library(source: str) -> Path:
    """Compile emu source (which includes cuda_emu.h) into a cached shared library."""
    header = EMU_HEADER.read_text()
    key = hashlib.sha256("\0".join([source, header, CXX, *CXXFLAGS]).encode()).hexdigest()[:20]
    out = cache_dir() / f"emu-{key}.so"
    if out.exists():
        _debug(f"emu: cached {out}")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlc-emu-") as tmp:
        src = Path(tmp) / "module.cpp"
        src.write_text(source)
        lib = Path(tmp) / "module.so"
        cmd = [CXX, *CXXFLAGS, f"-I{EMU_HEADER.parent}", str(src), "-o", str(lib)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise DlcError(f"emu: the host compiler rejected the generated module:\n{proc.stderr[-4000:]}")
        part = out.with_suffix(f".{os.getpid()}.part")
        shutil.copyfile(lib, part)
        os.replace(part, out)  # atomic: a concurrent build of the same source is harmless
    out.with_suffix(".cpp").write_text(source)  # beside the library, for reading and debugging
    _debug(f"emu: compiled {out} in {time.perf_counter() - t0:.1f}s (source: {out.with_suffix('.cpp')})")
    return out


def _debug(msg: str) -> None:
    """DLC_DEBUG=3 shows where the generated source and its library are."""
    try:
        level = int(os.environ.get("DLC_DEBUG", "0") or 0)
    except ValueError:
        level = 0
    if level >= 3:
        print(msg, file=sys.stderr)


class EmuBackend(BufferState):
    """Buffers are NumPy arrays; a launch is one ctypes call into the compiled module."""
    name = "emu"
    check_numerics = False  # after every launch, check what it wrote (stop at NaN or infinity)

    def __init__(self, graph: Graph, float_dtype=np.float32, reuse: bool | None = None):
        self._prepare(graph, float_dtype, emu_available, reuse)
        check_order_setting()
        self.lib = ctypes.CDLL(str(build_library(self.module.emu_source())))
        self._fns = {}
        for k in self.module.launches:
            if k.host:
                continue  # computed on the host by the runner: no kernel
            fn = getattr(self.lib, f"launch_{k.kernel}")
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
            fn.restype = None
            self._fns[k.kernel] = fn
        self._start()

    # -- the runner's primitives (BufferState) -------------------------------------------------
    def _alloc(self, shape, dtype):
        return np.zeros(shape, dtype)

    def _upload(self, buf, v):
        np.copyto(buf, v)

    def _download(self, buf):
        return buf.copy()

    def _bind(self, l, grid, ints, env):
        shape = (ctypes.c_uint * 6)(*grid, *l.block)
        ptrs = (ctypes.c_void_p * max(1, len(l.args)))(*[env[a].ctypes.data for a in l.args])
        return self._fns[l.kernel], (shape, ptrs, (ctypes.c_int * max(1, len(ints)))(*ints))

    def _launch(self, bound):
        fn, args = bound
        fn(*args)

    def _copy(self, dst, src):
        np.copyto(dst, src.reshape(dst.shape))
