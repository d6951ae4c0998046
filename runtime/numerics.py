"""--check-numerics: what is not finite, and the located error that names the op (or kernel) that
made it. Shared by every backend."""
from __future__ import annotations

import numpy as np

from ..ir.errors import DlcError


class NumericsError(DlcError):
    """--check-numerics: a node or kernel produced NaN or infinity (the training loop adds when)."""


def nonfinite(v) -> str | None:
    """'nan', 'inf' or '-inf' (what a float array holds that is not finite, NaN first), or None."""
    v = np.asarray(v)
    if v.dtype.kind != "f" or np.isfinite(v).all():
        return None
    if np.isnan(v).any():
        return "nan"
    return "inf" if (v == np.inf).any() else "-inf"


def numerics_error(graph, n: str, what: str, v, kernel: str | None = None, source: str | None = None
                   ) -> NumericsError:
    """The located error for node `n` (or the kernel that computes it) producing `what`; with
    `source`, a param or state that held `what` already (`v`) when `n` read it."""
    v = np.asarray(v)
    if source is not None:
        loc = graph.loc(source)
        return NumericsError(f"--check-numerics: {graph.op(source)} {source} holds {what} already, before "
                             f"{graph.op(n)} (node %{n}) reads it (the step that made it ran without the check)",
                             loc, graph.sources.get(getattr(loc, "file", ""), None))
    bad = int((~np.isfinite(v)).sum())
    count = f" ({bad} of {v.size} values)" if v.size > 1 else ""
    by = f"kernel {kernel} (op {graph.op(n)}, node %{n})" if kernel else f"{graph.op(n)} (node %{n})"
    loc = graph.loc(n)
    root, members = n, [n]
    if kernel:  # the group n roots, or (a sibling reduction's output) the group n is a member of
        groups = graph.meta.groups
        root, members = next(((r, ms) for r, (_, ms) in groups.items() if r == n or n in ms), (n, [n]))
    if len(members) > 1:  # a fused kernel (-O2): name its nodes; locate at the first, where the chain starts
        ops = ", ".join(f"{graph.op(m)} %{m}" for m in members)
        by = f"kernel {kernel} (fused group %{root}: {ops})"
        loc = next((graph.loc(m) for m in members if graph.loc(m)), loc)
    return NumericsError(f"--check-numerics: {by} produced {what}{count}", loc,
                         graph.sources.get(getattr(loc, "file", ""), None))
