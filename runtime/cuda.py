"""The `cuda` backend: the generated module on an NVIDIA GPU through CuPy.

- The module is compiled once by NVRTC (`cupy.RawModule`); CuPy caches the binary on disk by a
  hash of the source and options (`~/.cupy/kernel_cache`, or `$CUPY_CACHE_DIR`).
- The run itself is the plan runner shared with `emu` (runtime/runner.py `BufferState`); this
  file supplies its primitives on CuPy arrays and one stream.
- Params and optimizer state live on the GPU for the life of the backend; inputs and temporaries
  are allocated once per batch size. A step copies the feeds in, launches the plan's kernels
  (bound to those buffers once per (roots, commit, fetch, batch size)), copies the fetched values
  to dedicated output buffers, runs the commits, and copies the fetched values (the loss) back
  with one wait for the device; `run(..., defer=True)` waits for nothing, and the first
  `result()` brings every deferred run's values down with one wait: no allocation and no Python
  work proportional to the data.
- `cuda_graph=True` captures that whole sequence once per (roots, commit, batch size) as a CUDA
  graph and replays it; feeds are copied into the same input buffers before each replay.
- Data parallel (one process per GPU, under an MPI launcher): the GPU is the rank's place among
  its machine's ranks, and the ops that communicate run on the stream, never on the host, as
  their registry entries say (`kernel["device"]`, ir/ops_comm.py): batch_share is a copy of a
  device scalar set before each step, a bucket's start a copy of its operand, and its wait NCCL's
  all-reduce (`cupy.cuda.nccl`, the NCCL id broadcast over MPI) on the same stream, so a whole
  step, all-reduces included, still captures into one CUDA graph. On one stream the all-reduce
  does not overlap the backward pass: that would take a second stream joined by events.
- Launch failures raise at the launch; faults inside a kernel surface at the end-of-step
  synchronisation (set `DLC_CUDA_SYNC=1` to synchronise after every launch and name the kernel).
"""
from __future__ import annotations

import os

import numpy as np

from ..ir.errors import DlcError
from ..ir.graph import Graph
from ..ir.ops import COMMUNICATES, OPS
from .collectives import started
from .runner import BufferState


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


TENSOR_CORE_CAPABILITY = 8   # mma.sync m16n8k8 .tf32 and m16n8k16 .bf16 need sm_80 (Ampere) or later


def check_tensor_cores(cp, precision: str) -> None:
    """Refuse, before NVRTC does with a PTX error, a tensor-core precision on a GPU older than
    sm_80. Where CuPy cannot say (an unknown device object), NVRTC will."""
    if precision == "fp32":
        return
    try:
        cc = str(cp.cuda.Device().compute_capability)   # "90" for sm_90
        major = int(cc[:-1])
    except Exception:
        return
    if major < TENSOR_CORE_CAPABILITY:
        raise DlcError(f"cuda: precision {precision} runs the products on the tensor cores (mma.sync), which need "
                       f"a GPU of compute capability {TENSOR_CORE_CAPABILITY}.0 or later; this one is {major}.{cc[-1]} "
                       "(use precision fp32 here)")


class CudaBackend(BufferState):
    """Buffers are CuPy arrays on one stream; a launch is a `RawModule` kernel call."""
    name = "cuda"
    waits = True
    check_numerics = False  # after every launch, synchronise and check what it wrote (no CUDA graph)

    def __init__(self, graph: Graph, float_dtype=np.float32, cuda_graph: bool = False, reuse: bool | None = None):
        self._prepare(graph, float_dtype, cuda_available, reuse)
        import cupy as cp
        self.cp = cp
        self._communicates = bool(graph.with_effect(COMMUNICATES))
        comm = started() if self._communicates else None
        if comm is not None:  # a data-parallel rank (every rank builds it): its own GPU, chosen before anything is
            gpus, (local, here) = cp.cuda.runtime.getDeviceCount(), comm.local_ranks  # allocated, kept by the process
            if here > gpus:
                raise DlcError(f"cuda: {here} ranks on this machine but {gpus} GPU{'s' * (gpus != 1)}: NCCL needs a "
                               f"GPU per rank (start at most {gpus} ranks per machine, or use --backend emu)")
            cp.cuda.Device(local % gpus).use()
        check_tensor_cores(cp, graph.meta.precision)
        self.cuda_graph = cuda_graph
        self.sync_each_launch = os.environ.get("DLC_CUDA_SYNC", "") not in ("", "0")
        try:
            self._raw = cp.RawModule(code=self.module.source, options=("--std=c++17",))
            self._raw.compile()  # now, not lazily inside a CUDA-graph capture
            self._kernels = {k: self._raw.get_function(k) for k in self.module.kernel_names}
        except Exception as e:  # cupy.cuda.compiler.CompileException carries NVRTC's log
            raise DlcError(f"cuda: NVRTC rejected the generated module: {e}")
        self.stream = cp.cuda.Stream(non_blocking=True)
        self._graphs: dict = {}
        self._slots: dict = {}  # (shape, dtype) -> device buffers free for staging fetched values
        self._start()
        self._share, self._share_value = self._alloc([], np.float32), None  # batch_share's value, set per step
        self._nccl = None
        if self._communicates and comm is not None:
            try:
                self._nccl = comm.nccl(cp)
            except DlcError:
                raise
            except Exception as e:
                raise DlcError(f"cuda: NCCL could not start over the {comm.size} ranks ({e}): the NCCL library comes "
                               "with CuPy's wheels (pip install nvidia-nccl-cu12, or -cu13)")

    # -- the runner's primitives (BufferState) -------------------------------------------------
    def _alloc(self, shape, dtype):
        with self.stream:
            return self.cp.zeros(shape, dtype)

    def _upload(self, buf, v):
        buf.set(v if v.flags.c_contiguous else np.ascontiguousarray(v), stream=self.stream)

    def _download(self, buf):
        return self.cp.asnumpy(buf, stream=self.stream)

    def _wait(self):
        self.stream.synchronize()

    def _bind(self, l, grid, ints, env):
        return self._kernels[l.kernel], l.kernel, grid, tuple(l.block), \
            tuple(env[a] for a in l.args) + tuple(np.int32(v) for v in ints)

    def _launch(self, bound):
        fn, name, grid, block, args = bound
        try:
            fn(grid, block, args)
            if self.sync_each_launch:
                self.stream.synchronize()
        except Exception as e:
            raise DlcError(f"cuda: kernel {name} failed: {e}")

    def _copy(self, dst, src):
        rt = self.cp.cuda.runtime
        rt.memcpyAsync(dst.data.ptr, src.data.ptr, src.nbytes, rt.memcpyDeviceToDevice, self.stream.ptr)

    def _host(self, l, env):
        """An op that communicates, on the stream (its entry's `kernel["device"]`): nothing waits
        for the device and nothing is captured that a CUDA graph could not replay."""
        out, args = env[l.args[0]], [env[a] for a in l.args[1:]]
        device = OPS[l.op].kernel["device"]
        if device == "share":
            self._copy(out, self._share)
        elif device == "copy" or self._nccl is None:  # a process of its own: the sum is the value itself
            if out.data.ptr != args[0].data.ptr:  # (memory planning may give both one buffer)
                self._copy(out, args[0])
        else:  # "sum": NCCL's all-reduce, in place of the host's MPI
            nccl = self.cp.cuda.nccl
            try:
                self._nccl.allReduce(args[0].data.ptr, out.data.ptr, args[0].size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM,
                                     self.stream.ptr)
            except Exception as e:  # cupy.cuda.nccl.NcclError: a lost peer, a broken transport, ...
                raise DlcError(f"cuda: NCCL's all-reduce of {l.args[1]} ({args[0].size} values) failed: {e}")

    def _finite(self, buf):
        if buf.dtype == np.uint16:  # a BF16 buffer (codegen/storage.py): finite unless the exponent is all ones
            return bool(((buf & 0x7f80) != 0x7f80).all())
        return bool(self.cp.isfinite(buf).all())

    def _stage(self, buf):
        """A device copy of a fetched value (the next run overwrites the output buffer), queued
        on the stream: nothing waits for the device here."""
        free = self._slots.setdefault((buf.shape, buf.dtype.str), [])
        slot = free.pop() if free else self._alloc(buf.shape, buf.dtype)
        self._copy(slot, buf)
        return slot

    def _collect(self, slot):
        host = np.empty(slot.shape, slot.dtype)
        slot.get(stream=self.stream, out=host, blocking=False)  # completes by the next _wait
        return host

    def _release(self, slot):
        self._slots[(slot.shape, slot.dtype.str)].append(slot)

    # -- running ----------------------------------------------------------------------------
    def _execute(self, prog) -> None:
        """The step's launches and copies; with `cuda_graph`, captured once per program and
        replayed as one graph launch (the feeds are in the same input buffers each time)."""
        if self._communicates:  # this step's share of the batch, uploaded before the step when it changed
            share = 1.0 if self.comm is None else float(self.comm.share)
            if share != self._share_value:
                self._upload(self._share, np.array(share, np.float32))
                self._share_value = share
        try:
            with self.stream:
                if self.cuda_graph and not self.check_numerics:
                    g = self._graphs.get(prog["key"])
                    if g is None:
                        g = self._graphs[prog["key"]] = self._capture(prog)
                    g.launch(stream=self.stream)
                else:
                    super()._execute(prog)
        except DlcError:
            raise
        except Exception as e:  # CUDARuntimeError / CUDADriverError from a kernel that faulted
            raise DlcError(f"cuda: a kernel of the step failed ({e}); run with DLC_CUDA_SYNC=1 to find which")

    def _resolve(self) -> None:
        try:
            super()._resolve()
        except DlcError:
            raise
        except Exception as e:  # a fault inside a kernel surfaces at the synchronisation
            raise DlcError(f"cuda: a kernel of the step failed ({e}); run with DLC_CUDA_SYNC=1 to find which")

    def _capture(self, prog):
        """The step as a CUDA graph: the same launches and copies, recorded once."""
        self.stream.begin_capture()
        try:
            saved, self.sync_each_launch = self.sync_each_launch, False
            BufferState._execute(self, prog)
        finally:
            self.sync_each_launch = saved
            graph = self.stream.end_capture()
        return graph
