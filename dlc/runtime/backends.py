"""Backends by name. A backend is a small object over an optimized graph:

    b = make_backend("interp", graph, float_dtype)
    b.set_state({name: array})        # params and optimizer state
    b.get_state() -> {name: array}
    b.run(roots, feeds, commit=False) -> {root: array}   # commit applies the assignments

`available(name)` says whether a backend can run here, and if not, why.
"""
from __future__ import annotations

from ..ir.errors import DlcError

BACKENDS = ("interp", "emu", "cuda")


def available(name: str) -> tuple[bool, str]:
    if name == "interp":
        return True, "NumPy reference, always available"
    if name == "emu":
        try:
            from .emu import emu_available
        except ImportError:
            return False, "the emu backend is not part of this build yet"
        return emu_available()
    if name == "cuda":
        try:
            from .cuda import cuda_available
        except ImportError:
            return False, "the cuda backend is not part of this build yet"
        return cuda_available()
    return False, f"unknown backend '{name}' (known: {', '.join(BACKENDS)})"


def resolve(name: str) -> str:
    """`auto` picks cuda where a GPU is present and the interpreter otherwise."""
    if name == "auto":
        return "cuda" if available("cuda")[0] else "interp"
    if name not in BACKENDS:
        raise DlcError(f"unknown backend '{name}' (known: auto, {', '.join(BACKENDS)})")
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
