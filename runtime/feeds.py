"""Feeds: arrays checked against the model's declared inputs (names, ranks, dims that must agree,
dtypes, values) before any backend sees them."""
from __future__ import annotations

import numpy as np

from ..ir.errors import DlcError
from ..ir.graph import Graph
from ..ir.types import fmt_shape


def check_feeds(g: Graph, feeds: dict, where: str = "", check_finite: bool = False,
                float_dtype="float32", allow_extra: bool = False) -> tuple[dict, dict]:
    """Check arrays against the model's inputs; returns (feeds cast to the input dtypes, bound dims).
    `where` prefixes each message (e.g. "inputs: "); `allow_extra` ignores arrays that are not inputs."""
    unknown = sorted(set(feeds) - set(g.inputs))
    if unknown and not allow_extra:
        raise DlcError(f"{where}'{unknown[0]}' is not an input of model {g.meta.name} "
                       f"(inputs: {', '.join(g.inputs)})")
    dims: dict[str, tuple[int, str]] = {}
    out = {}
    for n in g.inputs:
        t = g.type(n)
        if n not in feeds:
            have = ", ".join(sorted(feeds)) or "nothing"
            raise DlcError(f"{where}no array for input '{n}' : {t} (it has: {have})")
        a = np.asarray(feeds[n])
        if a.ndim != t.rank:
            raise DlcError(f"{where}input '{n}' should be {t}, found an array of shape {fmt_shape(a.shape)}")
        for d, v in zip(t.shape, a.shape):
            if isinstance(d, str):
                if d in dims and dims[d][0] != v:
                    raise DlcError(f"{where}input '{n}' has {d}={v}, but input '{dims[d][1]}' has "
                                   f"{d}={dims[d][0]}")
                dims.setdefault(d, (v, n))
            elif d != v:
                raise DlcError(f"{where}input '{n}' should be {t}, found an array of shape {fmt_shape(a.shape)}")
        if t.dtype == "i32":
            if a.dtype.kind not in "iu":
                raise DlcError(f"{where}input '{n}' holds integer labels ({t}), found {a.dtype} values")
            fits = a.dtype == np.int32 or a.dtype.itemsize < 4  # nothing to check
            if a.size and not fits and (a.max() > 2**31 - 1 or a.min() < -2**31):
                raise DlcError(f"{where}input '{n}' has values beyond the i32 range")
            a = a.astype(np.int32, copy=False)
        else:
            if a.dtype.kind not in "fiub":
                raise DlcError(f"{where}input '{n}' should hold numbers, found {a.dtype}")
            a = a.astype(float_dtype, copy=False)
            if check_finite and not np.isfinite(a).all():
                bad = np.argwhere(~np.isfinite(a))[0]
                raise DlcError(f"{where}input '{n}' has a NaN or infinity at index {tuple(int(i) for i in bad)}")
        out[n] = a
    return out, {k: v for k, (v, _) in dims.items()}
