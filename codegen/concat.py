"""Concat elimination (-O2): a plan step deciding, before any kernel is emitted, which concats
need no kernel of their own and where each of their parts is stored.

A concat is eliminated when every part is computed by a kernel whose store can be redirected (a
fusion group's root, whose kernel is pointwise.cu.j2 or a product's; or a matmul or convolution
outside any group: their templates end in store.cu.j2) and nothing else needs the part in a
buffer of its own. Each of those kernels then writes its part straight into its slice of the
concat's buffer, and fused kernels that read a part load it from that slice. (The concat's
adjoint is a set of slices, which fused kernels read in place.) The decision depends on the
graph and its fusion groups alone; the generator only follows it (`Concats`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ir.graph import Graph
from ..ir.ops import EPILOGUE_FAMILIES, OPS, POINTWISE_FAMILIES
from ..ir.types import normalize_axes
from .sizes import Size


@dataclass(frozen=True)
class Place:
    """Where a part of an eliminated concat is stored: its slice of the concat's buffer. Along
    the axes before the concat's, each step holds `total` elements of the concat, of which the
    part's `span` start at `offset` (a length along the concat's axis times the inner size)."""
    concat: str
    span: Size
    total: Size
    offset: Size

    def index(self, j: str) -> str:
        """C: the element of the concat's buffer that holds element `j` of the part."""
        s, t, o = self.span.c(), self.total.c(), self.offset.c()
        return f"(({j}) / {s}) * {t} + {o} + ({j}) % {s}"


@dataclass(frozen=True)
class Concats:
    """The decision: the eliminated concats (in graph order, each with its parts) and the place of
    every part. Empty for a graph without fusion groups (-O0, -O1)."""
    eliminated: dict[str, tuple[str, ...]] = field(default_factory=dict)
    parts: dict[str, Place] = field(default_factory=dict)


def plan_concats(g: Graph) -> Concats:
    """Which concats of a fused graph are eliminated, and where each part of them is stored."""
    out = Concats()
    if not g.meta.groups:
        return out
    member_of = {m: root for root, (_, members) in g.meta.groups.items() for m in members}
    m = g.meta
    wanted = set(m.outputs.values()) | {m.loss} | set(m.grads.values()) | set(g.eval_roots())
    for c in g.order():
        if OPS[g.op(c)].family != "concat" or c in member_of:
            continue
        parts = g.operands(c)
        shape = g.type(c).shape
        axis = normalize_axes(g.attrs(c)["axis"], len(shape))[0]
        inner = Size.of(shape[axis + 1:])
        if len(set(parts)) != len(parts) or not all(_redirectable(g, v, c, member_of, wanted) for v in parts):
            continue
        out.eliminated[c] = tuple(parts)
        start = 0
        for v in parts:
            length = g.type(v).shape[axis]
            out.parts[v] = Place(c, Size(length) * inner, Size(shape[axis]) * inner, Size(start) * inner)
            start += length
    return out


def _redirectable(g: Graph, v: str, c: str, member_of: dict, wanted: set) -> bool:
    """A part can be stored into the concat when its kernel's store can be redirected and
    every other reader is a pointwise member of a fusion group, which loads it from its slice
    (`pointwise_body`); a group's product (a convolution with an epilogue) reads its operands
    from their own buffers. Not: a value the model hands out, an optimizer update's output, a
    part used twice."""
    others = [u for u in g.users(v) if u != c]
    if v in wanted or g.meta.groups.get(member_of.get(v), ("",))[0] == "update" or list(
            g.operands(c)).count(v) != 1 or any(u not in member_of or u == v or OPS[g.op(u)].family
                                                not in POINTWISE_FAMILIES for u in others):
        return False
    if member_of.get(v) == v:  # a group's root: its kernel is pointwise.cu.j2 or a product's
        return True
    return v not in member_of and OPS[g.op(v)].family in EPILOGUE_FAMILIES
