"""Backends by name. A backend is a small object over an optimized graph:

    b = make_backend("interp", graph, float_dtype)
    b.set_state({name: array})        # params and optimizer state
    b.get_state() -> {name: array}
    b.run(roots, feeds, commit=False) -> {root: array}   # commit applies the assignments

`available(name)` says whether a backend can run here, and if not, why.
"""
from __future__ import annotations

import numpy as np

from ..codegen import generate
from ..codegen.sizes import evaluate
from ..ir.errors import DlcError
from ..ir.graph import Graph

BACKENDS = ("interp", "emu", "cuda")


def available(name: str) -> tuple[bool, str]:
    if name == "interp":
        return True, "NumPy reference, always available"
    if name == "emu":
        from .emu import emu_available
        return emu_available()
    if name == "cuda":
        from .cuda import cuda_available  # imports CuPy only inside, and says why it cannot run
        return cuda_available()
    return False, f"unknown backend '{name}' (known: {', '.join(BACKENDS)})"


def resolve(name: str, what: str = "backend") -> str:
    """`auto` picks cuda where a GPU is present and the interpreter otherwise; `what` names the
    argument or flag in the error for an unknown name."""
    if name == "auto":
        return "cuda" if available("cuda")[0] else "interp"
    if name not in BACKENDS:
        raise DlcError(f"{what}: unknown backend {name!r} (known: auto, {', '.join(BACKENDS)})")
    return name


def make_backend(name: str, graph, float_dtype="float32", cuda_graph: bool = False):
    """A backend over `graph`; `cuda_graph` (cuda only) replays each step as one captured CUDA graph."""
    ok, why = available(name)
    if not ok:
        raise DlcError(f"backend '{name}' cannot run here: {why}")
    if cuda_graph and name != "cuda":
        raise DlcError(f"--cuda-graph needs the cuda backend, not {name}")
    if name == "interp":
        from .interp import Interpreter
        return Interpreter(graph, float_dtype)
    if name == "emu":
        from .emu import EmuBackend
        return EmuBackend(graph, float_dtype)
    from .cuda import CudaBackend
    return CudaBackend(graph, float_dtype, cuda_graph=cuda_graph)


def input_shapes(graph) -> list:
    """[(input, declared shape)]: computed once per backend (graph.inputs sorts the graph)."""
    return [(n, graph.type(n).shape) for n in graph.inputs]


def bind_dims(shapes: list, feeds: dict) -> dict[str, int]:
    """Values of the symbolic dims (N) from the inputs that were fed."""
    dims = {}
    for n, shape in shapes:
        if n in feeds:
            for d, v in zip(shape, np.shape(feeds[n])):
                if isinstance(d, str):
                    dims[d] = int(v)
    return dims


class BufferState:
    """State handling shared by the generated-code backends (emu, cuda): params and optimizer
    state live in buffers allocated once (`self._persistent`); values for names the graph does
    not hold are kept aside. A backend says how to copy in (`_upload`) and out (`_download`)."""

    def _launches(self, need, env: dict, dims: dict):
        """The plan's launches of the nodes in `need` at these symbol values, as (launch, grid,
        ints): ints are what the kernel takes after its buffers, the symbols' values and then the
        launch's consts. Launches over empty tensors are left out; a shape no GPU runs is an error."""
        for n in need:
            if n in self.module.node_buffer and self.module.node_buffer[n] not in env:  # (fused: no buffer)
                raise DlcError(f"the size of a dimension of '{n}' is unknown (feed an input that has it)")
        for l in self.module.launches:
            if l.node not in need:
                continue
            grid = tuple(evaluate(x, dims) for x in l.grid)
            check_launch(l.kernel, grid, l.block)
            if min(grid) <= 0:
                continue  # an empty tensor: nothing to compute
            yield l, grid, [dims[d] for d in l.dims] + list(l.consts)

    def _upload(self, buf, v: np.ndarray) -> None:
        raise NotImplementedError

    def _download(self, buf) -> np.ndarray:
        raise NotImplementedError

    def _sync(self) -> None:
        pass

    def _prepare(self, graph: Graph, float_dtype, available) -> None:
        """What both generated-code backends do first: float32 only, the backend can run here
        (`available()` -> (ok, why)), the module generated from the graph."""
        if np.dtype(float_dtype) != np.float32:
            raise DlcError(f"the {self.name} backend computes in float32, not {np.dtype(float_dtype).name} "
                           "(use the interp backend for float64)")
        ok, why = available()
        if not ok:
            raise DlcError(f"backend '{self.name}' cannot run here: {why}")
        self.graph = graph
        self.module = generate(graph)

    def keeps(self, n: str) -> bool:
        """Whether `run` can hand out node `n`'s value: at -O2 a fused group's inner values live
        only in registers and a planned buffer is overwritten by later values."""
        return n in self.module.node_buffer and n not in self.module.reused

    def _check_roots(self, roots, commit: bool) -> None:
        for r in roots:
            if not self.keeps(r):
                raise DlcError(f"%{r} is not kept by this compiled step (fused into a kernel, or its buffer "
                               f"reused, at -O2): ask for it at -O1")
            if r in self.module.after_commit and not commit:
                raise DlcError(f"%{r} is written in place by the optimizer update: it exists only after a commit")

    def set_state(self, values: dict[str, np.ndarray]) -> None:
        for k, v in values.items():
            if k in self._persistent:
                buf = self._persistent[k]
                v = np.asarray(v, dtype=buf.dtype)
                if v.shape != buf.shape:
                    raise DlcError(f"'{k}' should have shape {list(buf.shape)}, found {list(v.shape)}")
                self._upload(buf, v)
            else:
                self._extra[k] = np.array(v, dtype=np.float32)
        self._sync()

    def get_value(self, k: str) -> np.ndarray:
        """One param or state, downloaded on its own (reading `m.params["w1"]` moves w1 only)."""
        if k in self._persistent:
            v = self._download(self._persistent[k])
            self._sync()
            return v
        return self._extra[k].copy()

    def get_state(self) -> dict[str, np.ndarray]:
        out = {k: self._download(v) for k, v in self._persistent.items()}
        self._sync()
        out.update({k: v.copy() for k, v in self._extra.items()})
        return out

    def _dims(self, feeds) -> dict[str, int]:
        if getattr(self, "_input_shapes", None) is None:
            self._input_shapes = input_shapes(self.graph)
        return bind_dims(self._input_shapes, feeds)


# What a GPU accepts in a launch (compute capability 7.0 and later): the emulator refuses the
# same, so that a plan a GPU would reject fails on every machine, not only on the GPU.
MAX_GRID = (2 ** 31 - 1, 65535, 65535)
MAX_BLOCK = (1024, 1024, 64)
MAX_THREADS = 1024


def check_launch(kernel: str, grid, block) -> None:
    """A located error for a launch shape no NVIDIA GPU runs."""
    for axis, (n, most) in enumerate(zip(grid, MAX_GRID)):
        if n > most:
            raise DlcError(f"kernel {kernel}: grid.{'xyz'[axis]} = {n} is more than a GPU launches ({most}); "
                           f"the batch or the tensor is too large for this kernel's launch shape")
    threads = int(np.prod(block))
    if threads > MAX_THREADS or any(b > m for b, m in zip(block, MAX_BLOCK)):
        raise DlcError(f"kernel {kernel}: a block of {list(block)} threads is more than a GPU runs "
                       f"({MAX_THREADS} in all, {list(MAX_BLOCK)} per axis)")
