"""Backends by name: a table. A backend is a small object over an optimized graph:

    b = make_backend("interp", graph, float_dtype)
    b.set_state({name: array})        # params, optimizer state and model buffers
    b.get_state() -> {name: array}
    b.run(roots, feeds, commit=False, training=False) -> {root: array}   # commit applies the assignments
    b.run(roots, feeds, fetch=[loss], defer=True) -> Fetched  # .result() waits, later

`available(name)` says whether a backend can run here, and if not, why. The plan runner the
generated-code backends share is runtime/runner.py; no backend imports this module.
"""
from __future__ import annotations

from ..ir.errors import DlcError
from .cuda import CudaBackend, cuda_available
from .emu import EmuBackend, emu_available
from .interp import Interpreter


def _always() -> tuple[bool, str]:
    return True, "NumPy reference, always available"


# name -> (backend class, available() -> (ok, why), the options it takes besides the float dtype)
TABLE = {
    "interp": (Interpreter, _always, ()),
    "emu": (EmuBackend, emu_available, ("reuse",)),
    "cuda": (CudaBackend, cuda_available, ("cuda_graph", "reuse")),  # cuda_available imports CuPy only inside
}
BACKENDS = tuple(TABLE)


def available(name: str) -> tuple[bool, str]:
    if name not in TABLE:
        return False, f"unknown backend '{name}' (known: {', '.join(BACKENDS)})"
    return TABLE[name][1]()


def resolve(name: str, what: str = "backend") -> str:
    """`auto` picks cuda where a GPU is present and the interpreter otherwise; `what` names the
    argument or flag in the error for an unknown name."""
    if name == "auto":
        return "cuda" if available("cuda")[0] else "interp"
    if name not in TABLE:
        raise DlcError(f"{what}: unknown backend {name!r} (known: auto, {', '.join(BACKENDS)})")
    return name


def option_problem(name: str, option: str) -> str | None:
    """Why backend `name` cannot take `option` (a backend-specific switch), or None when it can."""
    takers = [k for k, (_, _, options) in TABLE.items() if option in options]
    if option in TABLE[name][2]:
        return None
    return f"needs backend {' or '.join(map(repr, takers))}, not {name!r}"


def make_backend(name: str, graph, float_dtype="float32", **options):
    """A backend over `graph`; `options` are backend-specific switches (cuda: `cuda_graph`, replay
    each step as one captured CUDA graph; emu and cuda: `reuse`, memory planning on or off), each
    refused, when set, by a backend that does not take it."""
    ok, why = available(name)
    if not ok:
        raise DlcError(f"backend '{name}' cannot run here: {why}")
    cls, _, takes = TABLE[name]
    for k, v in options.items():
        if v and option_problem(name, k):
            raise DlcError(f"{k}: {option_problem(name, k)}")
    return cls(graph, float_dtype, **{k: v for k, v in options.items() if k in takes})
