"""Compile a generated module to PTX with NVRTC, on machines with or without a GPU.

NVRTC comes from pip: `pip install cuda-bindings nvidia-cuda-nvrtc`. `cuda.bindings` finds the
library shipped by the `nvidia-cuda-nvrtc` wheel itself (through `cuda-pathfinder`); where it
does not, set `DLC_NVRTC_LIB` to the path of `libnvrtc.so*` and it is loaded first.

    ptx = compile_ptx(mod.source, "sm_80")     # raises DlcError with NVRTC's log on failure
    check_module(mod)                           # every kernel, for sm_80 and sm_90
"""
from __future__ import annotations

import ctypes
import glob
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..ir.errors import DlcError

ARCHS = ("sm_80", "sm_90")


def _preload_library() -> None:
    """Make the wheel's libnvrtc loadable when cuda.bindings cannot find it on its own."""
    paths = [os.environ["DLC_NVRTC_LIB"]] if os.environ.get("DLC_NVRTC_LIB") else []
    for site in sys.path:
        paths += sorted(glob.glob(str(Path(site) / "nvidia" / "*" / "lib" / "libnvrtc.so*")))
        paths += sorted(glob.glob(str(Path(site) / "nvidia" / "cuda_nvrtc" / "lib" / "libnvrtc.so*")))
    for p in paths:
        if "builtins" in p:
            continue
        try:
            ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL)
            return
        except OSError:
            continue


def nvrtc_available() -> tuple[bool, str]:
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:
        return False, f"cuda-bindings is not installed ({e}); pip install cuda-bindings nvidia-cuda-nvrtc"
    try:
        err, major, minor = nvrtc.nvrtcVersion()
    except Exception:  # the library itself is missing: try the wheel's copy
        _preload_library()
        try:
            err, major, minor = nvrtc.nvrtcVersion()
        except Exception as e:
            return False, f"libnvrtc cannot be loaded ({e}); pip install nvidia-cuda-nvrtc or set DLC_NVRTC_LIB"
    return True, f"NVRTC {major}.{minor}"


def _check(result, what: str, log: str = ""):
    from cuda.bindings import nvrtc
    err = result[0]
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, msg = nvrtc.nvrtcGetErrorString(err)
        raise DlcError(f"NVRTC {what} failed: {msg.decode()}" + (f"\n{log}" if log else ""))
    return result[1:] if len(result) > 2 else (result[1] if len(result) == 2 else None)


def compile_ptx(source: str, arch: str = "sm_80", name: str = "dlc_module.cu") -> str:
    """PTX text for `arch` (sm_80 compiles for the virtual architecture compute_80)."""
    ok, why = nvrtc_available()
    if not ok:
        raise DlcError(f"cannot run NVRTC: {why}")
    from cuda.bindings import nvrtc
    prog = _check(nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], []), "program creation")
    try:
        # the options the cuda backend gives CuPy's RawModule, so that what passes here loads there
        opts = [f"--gpu-architecture={arch.replace('sm_', 'compute_')}".encode(), b"--std=c++17"]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
        log = _buffer(size)
        nvrtc.nvrtcGetProgramLog(prog, log)
        log = log[:size].decode(errors="replace").rstrip("\x00 \n")
        _check((err, None), f"compilation for {arch}", log)
        size = _check(nvrtc.nvrtcGetPTXSize(prog), "PTX size")
        ptx = _buffer(size)
        _check((nvrtc.nvrtcGetPTX(prog, ptx)[0], None), "PTX retrieval")
        return ptx[:size].decode().rstrip("\x00")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _buffer(size: int) -> bytes:
    """A fresh bytes object of at least `size` bytes for NVRTC to write into. Never one of length
    0 or 1: CPython shares those (b" " * 1 is the interpreter's one b" "), and NVRTC writing its
    terminating zero there turned every later " ".encode() into b"\x00" (Jinja then rendered the
    string literal " " as a NUL)."""
    return b" " * (size + 2)


def ptx_entries(ptx: str) -> list[str]:
    """Names of the kernels (`.entry`) in PTX text."""
    return re.findall(r"\.entry\s+(\w+)\s*\(", ptx)


def check_module(module, archs=ARCHS) -> dict[str, str]:
    """Compile a generated Module for each architecture; every kernel of its plan must be in
    the PTX. Returns arch -> PTX. The architectures compile side by side, one thread each: NVRTC
    releases the GIL and its programs are independent (GoogLeNet for sm_80 and sm_90: 35 s one
    after the other, 17 s side by side on two cores)."""
    ok, why = nvrtc_available()   # loads the library once, before the threads
    if not ok:
        raise DlcError(f"cannot run NVRTC: {why}")
    with ThreadPoolExecutor(max_workers=max(1, len(archs))) as pool:
        ptxs = [pool.submit(compile_ptx, module.source, arch) for arch in archs]
        out = {arch: f.result() for arch, f in zip(archs, ptxs)}   # the first arch's error first
    for arch, ptx in out.items():
        missing = sorted(set(module.kernel_names) - set(ptx_entries(ptx)))
        if missing:
            raise DlcError(f"NVRTC ({arch}): no PTX entry for kernel(s) {', '.join(missing)}")
    return out
