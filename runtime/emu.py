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
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..codegen import EMU_HEADER
from ..codegen.generate import RNG_BUFFER
from ..ir.errors import DlcError
from .backends import BufferState
from .interp import nonfinite, numerics_error
from ..ir.graph import Graph
from ..ir.types import NUMPY_DTYPE

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
    name = "emu"
    check_numerics = False  # after every launch, check what it wrote (stop at NaN or infinity)

    def __init__(self, graph: Graph, float_dtype=np.float32):
        self._prepare(graph, float_dtype, emu_available)
        self.lib = ctypes.CDLL(str(build_library(self.module.emu_source())))
        self._fns = {}
        for k in self.module.launches:
            fn = getattr(self.lib, f"launch_{k.kernel}")
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
            fn.restype = None
            self._fns[k.kernel] = fn
        # params and state live as long as the backend; temps and inputs per batch size
        self._persistent = {b.name: np.zeros(b.shape, NUMPY_DTYPE[b.dtype])
                            for b in self.module.buffers.values() if b.kind in ("param", "state")}
        self._rng = np.zeros(3, np.uint32)  # [seed, step, training], read by dropout kernels
        self._extra: dict[str, np.ndarray] = {}   # state set for names this graph does not have
        self._per_dims: dict = {}
        self._programs: dict = {}
        self._labels = label_checks(graph)

    # -- state (set_state, get_state: BufferState) ------------------------------------------
    def _upload(self, buf, v):
        np.copyto(buf, v)

    def _download(self, buf):
        return buf.copy()

    # -- running ----------------------------------------------------------------------------
    def run(self, roots, feeds: dict[str, np.ndarray], commit: bool = False, dims=None,
            rng: tuple[int, int] | None = None, fetch=None) -> dict[str, np.ndarray]:
        """Evaluate `roots` from `feeds`; with `commit`, apply the assignments afterwards.
        `rng=(seed, step)` is training mode (dropout draws its Philox mask); None is inference."""
        roots = tuple(roots)
        self._rng[:] = rng_words(rng)
        dims = dict(dims or self._dims(feeds))
        env = self._buffers(dims)
        for name, v in feeds.items():
            if name in env:
                buf = env[name]
                v = np.asarray(v)
                if v.shape != buf.shape:
                    raise DlcError(f"input '{name}' should have shape {list(buf.shape)}, found {list(v.shape)}")
                np.copyto(buf, v, casting="unsafe")
        check_labels(self._labels, feeds)
        self._check_roots(roots, commit)
        step, commits = self._program(roots, dims, env, feeds)
        check = self.check_numerics
        for fn, args, l in step:
            fn(*args)
            if check:
                self._check_launch(l, env)
        values, late = self.module.node_buffer, self.module.after_commit

        def read(r):  # a reshape (or an assign) shares its operand's buffer: view it in its own shape
            return env[values[r]].reshape(self.graph.type(r).concrete(dims)).copy()
        fetch = roots if fetch is None else tuple(fetch)  # the values handed back
        out = {r: read(r) for r in fetch if r not in late}
        if commit:
            for fn, args, l in commits:
                fn(*args)
                if check:
                    self._check_launch(l, env)
            out.update({r: read(r) for r in fetch if r in late})  # written in place by the update
        return out

    def _buffers(self, dims: dict) -> dict[str, np.ndarray]:
        key = tuple(sorted(dims.items()))
        env = self._per_dims.get(key)
        if env is None:
            env = dict(self._persistent, **{RNG_BUFFER: self._rng})
            for b in self.module.buffers.values():
                if b.kind in ("input", "temp"):
                    missing = [d for d in b.shape if isinstance(d, str) and d not in dims]
                    if missing:
                        continue  # depends on an input not fed: not needed by this run
                    env[b.name] = np.zeros([dims[d] if isinstance(d, str) else d for d in b.shape],
                                           NUMPY_DTYPE[b.dtype])
            self._per_dims[key] = env
        return env

    def _program(self, roots, dims, env, feeds):
        """The launches the roots need, bound to this batch size's buffers: (fn, ctypes args)."""
        key = (roots, tuple(sorted(dims.items())))
        prog = self._programs.get(key)
        if prog is not None:
            for n in prog[2]:
                if n not in feeds:
                    raise DlcError(f"missing input '{n}' : {self.graph.type(n)}")
            return prog[:2]
        g = self.graph
        need = g.upstream(roots)
        inputs = [n for n in g.inputs if n in need]
        for n in inputs:
            if n not in feeds:
                raise DlcError(f"missing input '{n}' : {g.type(n)}")
        step, commits = [], []
        for l, grid, vals in self._launches(need, env, dims):
            shape = (ctypes.c_uint * 6)(*grid, *l.block)
            ptrs = (ctypes.c_void_p * max(1, len(l.args)))(*[env[a].ctypes.data for a in l.args])
            ints = (ctypes.c_int * max(1, len(vals)))(*vals)
            (commits if l.phase == "commit" else step).append((self._fns[l.kernel], (shape, ptrs, ints), l))
        self._programs[key] = (step, commits, inputs)
        return step, commits

    def _check_launch(self, l, env) -> None:
        """--check-numerics: the buffers launch `l` wrote (its output; an update kernel's targets),
        read right after it, before a later launch reuses them."""
        for b in l.args[:max(1, l.writes)]:
            what = nonfinite(env[b])
            if what:
                for a in l.args[l.writes:]:  # a param or state that was not finite to begin with
                    if self.module.buffers[a].kind in ("param", "state") and nonfinite(env[a]):
                        raise numerics_error(self.graph, l.node, nonfinite(env[a]), env[a], source=a)
                raise numerics_error(self.graph, l.node, what, env[b], kernel=l.kernel)


def rng_words(rng) -> tuple[int, int, int]:
    """The dropout kernels' [seed, step, training] words for `rng=(seed, step)` or None."""
    if rng is None:
        return 0, 0, 0
    seed, step = rng
    return int(seed) & 0xFFFFFFFF, int(step) & 0xFFFFFFFF, 1


def check_labels(checks, feeds) -> None:
    """Class labels must be in range: a kernel cannot raise, so the backends check first."""
    for labels, classes, loc in checks:
        lab = feeds.get(labels)
        if lab is not None and np.size(lab):
            lab = np.asarray(lab)
            if lab.min() < 0 or lab.max() >= classes:
                bad = lab[(lab < 0) | (lab >= classes)][0]
                raise DlcError(f"label {int(bad)} is out of range for {classes} classes", loc)


def label_checks(g: Graph) -> list:
    """(labels input, class count, location) for every softmax_xent reading an input."""
    out = []
    for n in g.nodes_of("softmax_xent", "softmax_xent_grad"):
        logits, labels = g.operands(n)[:2]
        classes = g.type(logits).shape[1]
        if isinstance(classes, int) and g.op(labels) == "input":
            out.append((labels, classes, g.loc(n)))
    return out
