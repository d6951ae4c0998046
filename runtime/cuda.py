"""The `cuda` backend: the generated module on an NVIDIA GPU through CuPy.

- The module is compiled once by NVRTC (`cupy.RawModule`); CuPy caches the binary on disk by a
  hash of the source and options (`~/.cupy/kernel_cache`, or `$CUPY_CACHE_DIR`).
- Params and optimizer state live on the GPU for the life of the backend; inputs and temporaries
  are allocated once per batch size. A step copies the feeds in, launches the plan's kernels
  (bound to those buffers once per (roots, batch size)), copies the wanted values to dedicated
  output buffers, runs the commits, and copies the outputs back: no allocation and no Python
  work proportional to the data.
- `cuda_graph=True` captures that whole sequence once per (roots, commit, batch size) as a CUDA
  graph and replays it; feeds are copied into the same input buffers before each replay.
- Launch failures raise at the launch; faults inside a kernel surface at the end-of-step
  synchronisation (set `DLC_CUDA_SYNC=1` to synchronise after every launch and name the kernel).
"""
from __future__ import annotations

import os

import numpy as np

from ..ir.errors import DlcError
from ..ir.graph import Graph
from ..ir.types import NUMPY_DTYPE
from ..codegen.generate import RNG_BUFFER
from .backends import BufferState
from .emu import check_labels, label_checks, rng_words
from .interp import nonfinite, numerics_error


def cuda_available() -> tuple[bool, str]:
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed (pip install 'dlc[cuda12]' or 'dlc[cuda13]')"
    except Exception as e:  # a broken CuPy install (missing CUDA libraries) raises other errors
        return False, f"CuPy cannot be imported: {e}"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return False, f"no usable CUDA driver or GPU ({e})"
    if n == 0:
        return False, "no CUDA GPU is visible"
    try:
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        name = name.decode() if isinstance(name, bytes) else name
    except Exception:
        name = "GPU 0"
    return True, f"{name} through CuPy {cupy.__version__}"


class CudaBackend(BufferState):
    name = "cuda"
    check_numerics = False  # after every launch, synchronise and check what it wrote (no CUDA graph)

    def __init__(self, graph: Graph, float_dtype=np.float32, cuda_graph: bool = False):
        self._prepare(graph, float_dtype, cuda_available)
        import cupy as cp
        self.cp = cp
        self.cuda_graph = cuda_graph
        self.sync_each_launch = os.environ.get("DLC_CUDA_SYNC", "") not in ("", "0")
        try:
            self._raw = cp.RawModule(code=self.module.source, options=("--std=c++17",))
            self._raw.compile()  # now, not lazily inside a CUDA-graph capture
            self._kernels = {k: self._raw.get_function(k) for k in self.module.kernel_names}
        except Exception as e:  # cupy.cuda.compiler.CompileException carries NVRTC's log
            raise DlcError(f"cuda: NVRTC rejected the generated module: {e}")
        self.stream = cp.cuda.Stream(non_blocking=True)
        with self.stream:
            self._persistent = {b.name: cp.zeros(b.shape, NUMPY_DTYPE[b.dtype])
                                for b in self.module.buffers.values() if b.kind in ("param", "state")}
            self._rng = cp.zeros(3, cp.uint32)  # [seed, step, training], read by dropout kernels
        self._rng_words = (0, 0, 0)
        # what a run asks of the host, counted: waits for the device, bytes and copies each way
        self.counters = {"runs": 0, "syncs": 0, "d2h_bytes": 0, "h2d_copies": 0}
        self._extra: dict[str, np.ndarray] = {}
        self._per_dims: dict = {}
        self._programs: dict = {}
        self._graphs: dict = {}
        self._needs: dict = {}
        self._labels = label_checks(graph)

    # -- state (set_state, get_state: BufferState) ------------------------------------------
    def _upload(self, buf, v):
        buf.set(v if v.flags.c_contiguous else np.ascontiguousarray(v), stream=self.stream)

    def _download(self, buf):
        return self.cp.asnumpy(buf, stream=self.stream)

    def _sync(self):
        self.stream.synchronize()

    # -- running ----------------------------------------------------------------------------
    def run(self, roots, feeds: dict[str, np.ndarray], commit: bool = False, dims=None,
            rng: tuple[int, int] | None = None, fetch=None) -> dict[str, np.ndarray]:
        """Evaluate `roots` from `feeds`; with `commit`, apply the assignments afterwards.
        `rng=(seed, step)` is training mode (dropout draws its Philox mask); None is inference.
        Only the values in `fetch` (default: every root) come back to the host: params and state
        stay on the device, and a training step that fetches its loss copies 4 bytes and waits
        for the device once (`counters` counts both)."""
        cp = self.cp
        roots = tuple(roots)
        fetch = roots if fetch is None else tuple(fetch)
        dims = dict(dims or self._dims(feeds))
        env = self._buffers(dims)
        missing = [n for n in self._inputs_needed(roots) if n not in feeds]
        if missing:
            raise DlcError(f"missing input '{missing[0]}' : {self.graph.type(missing[0])}")
        check_labels(self._labels, feeds)
        self._check_roots(roots, commit)
        prog = self._program(roots, dims, env, commit, fetch)
        for name, v in feeds.items():
            if name in env:
                buf = env[name]
                v = np.asarray(v, dtype=buf.dtype)
                v = v if v.flags.c_contiguous else np.ascontiguousarray(v)
                if v.shape != buf.shape:
                    raise DlcError(f"input '{name}' should have shape {list(buf.shape)}, found {list(v.shape)}")
                buf.set(v, stream=self.stream)
        words = rng_words(rng)
        if words != self._rng_words:  # the dropout key is uploaded only when it changes
            self._rng.set(np.array(words, np.uint32), stream=self.stream)
            self._rng_words = words
            self.counters["h2d_copies"] += 1
        try:
            if self.cuda_graph and not self.check_numerics:
                key = (roots, commit, fetch, tuple(sorted(dims.items())))
                g = self._graphs.get(key)
                if g is None:
                    g = self._graphs[key] = self._capture(prog)
                g.launch(stream=self.stream)
            else:
                self._execute(prog)
            outs = {}
            for r in fetch:  # queued on the stream; the one synchronisation below waits for all
                dev = prog["outs"][r]
                outs[r] = np.empty(dev.shape, dev.dtype)
                dev.get(stream=self.stream, out=outs[r], blocking=False)
                self.counters["d2h_bytes"] += outs[r].nbytes
            self.stream.synchronize()
            self.counters["syncs"] += 1
            self.counters["runs"] += 1
        except DlcError:
            raise
        except Exception as e:  # CUDARuntimeError / CUDADriverError from a kernel that faulted
            raise DlcError(f"cuda: a kernel of the step failed ({e}); run with DLC_CUDA_SYNC=1 to find which")
        return outs

    def _inputs_needed(self, roots) -> list[str]:
        need = self._needs.get(roots)
        if need is None:
            anc = self.graph.upstream(roots)
            need = self._needs[roots] = [n for n in self.graph.inputs if n in anc]
        return need

    def _execute(self, prog) -> None:
        cp = self.cp
        with self.stream:
            for kind, *what in prog["ops"]:
                if kind == "launch":
                    name, grid, block, args, launch = what
                    try:
                        self._kernels[name](grid, block, args)
                        if self.sync_each_launch:
                            self.stream.synchronize()
                    except Exception as e:
                        raise DlcError(f"cuda: kernel {name} failed: {e}")
                    if self.check_numerics:
                        self._check_launch(launch, args)
                else:  # a device-to-device copy of a wanted value
                    dst, src = what
                    cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, src.nbytes,
                                                cp.cuda.runtime.memcpyDeviceToDevice, self.stream.ptr)

    def _check_launch(self, l, args) -> None:
        """--check-numerics: the buffers launch `l` wrote (its output; an update kernel's targets),
        checked on the GPU right after it, before a later launch reuses them."""
        cp = self.cp
        for buf in args[:max(1, l.writes)]:
            if buf.dtype.kind == "f" and not bool(cp.isfinite(buf).all()):
                for name, src in zip(l.args[l.writes:], args[l.writes:]):  # a param or state not finite before
                    if self.module.buffers[name].kind in ("param", "state") and not bool(cp.isfinite(src).all()):
                        host = cp.asnumpy(src, stream=self.stream)
                        raise numerics_error(self.graph, l.node, nonfinite(host), host, source=name)
                host = cp.asnumpy(buf, stream=self.stream)
                raise numerics_error(self.graph, l.node, nonfinite(host), host, kernel=l.kernel)

    def _capture(self, prog):
        """The step as a CUDA graph: the same launches and copies, recorded once."""
        with self.stream:
            self.stream.begin_capture()
            try:
                saved, self.sync_each_launch = self.sync_each_launch, False
                self._execute(prog)
            finally:
                self.sync_each_launch = saved
                graph = self.stream.end_capture()
        return graph

    def _buffers(self, dims: dict) -> dict:
        key = tuple(sorted(dims.items()))
        env = self._per_dims.get(key)
        if env is None:
            cp = self.cp
            env = dict(self._persistent, **{RNG_BUFFER: self._rng})
            with self.stream:
                for b in self.module.buffers.values():
                    if b.kind in ("input", "temp"):
                        if any(isinstance(d, str) and d not in dims for d in b.shape):
                            continue  # depends on an input not fed: not needed by this run
                        env[b.name] = cp.zeros([dims[d] if isinstance(d, str) else d for d in b.shape],
                                               NUMPY_DTYPE[b.dtype])
            self._per_dims[key] = env
        return env

    def _program(self, roots, dims, env, commit, fetch):
        """Launches of one step and the copies of the fetched values, bound to this batch size's
        buffers."""
        key = (roots, commit, fetch, tuple(sorted(dims.items())))
        prog = self._programs.get(key)
        if prog is not None:
            return prog
        g, cp = self.graph, self.cp
        need = g.upstream(roots)
        ops, commits = [], []
        for l, grid, vals in self._launches(need, env, dims):
            args = tuple(env[a] for a in l.args) + tuple(np.int32(v) for v in vals)
            (commits if l.phase == "commit" else ops).append(("launch", l.kernel, grid, tuple(l.block), args, l))
        with self.stream:
            # a reshape (or an assign) shares its operand's buffer; its output has its own shape
            outs = {r: cp.empty(g.type(r).concrete(dims), env[self.module.node_buffer[r]].dtype) for r in fetch}
        late = self.module.after_commit  # values the in-place update writes: copied after it
        ops += [("copy", outs[r], env[self.module.node_buffer[r]]) for r in fetch if r not in late]
        if commit:
            ops += commits
            ops += [("copy", outs[r], env[self.module.node_buffer[r]]) for r in fetch if r in late]
        prog = self._programs[key] = {"ops": ops, "outs": outs}
        return prog
