"""Layout families: values that are another value's elements, moved or not.

`alias` (reshape) is its operand's buffer under another shape; `transpose`, `broadcast` and
`slice` are gathers, a pointwise copy `out[i] = in0[index(i)]`; `pad` and `concat` place one or
more operands along an axis (a concat whose parts are stored into its buffer has no kernel at
all: see concat.py).
"""
from __future__ import annotations

from ..ir.types import normalize_axes
from .core import Emission, Generator
from .pointwise import ELEMENTWISE_BLOCK, pointwise, slice_index, slice_offset
from .sizes import Size, broadcast_index, ceil_div, gather_index, strides


def emit_alias(gen: Generator, n: str, em: Emission) -> None:
    """reshape: the operand's buffer under another shape, no kernel."""
    gen.node_buffer[n] = gen.node_buffer[gen.g.operands(n)[0]]


def _copy(gen: Generator, n: str, index: str) -> None:
    """A layout op: out[i] = in0[index(i)]."""
    pointwise(gen, n, gen.temp(n), [gen.node_buffer[gen.g.operands(n)[0]]], "a", [("a", 0, index)])


def emit_transpose(gen: Generator, n: str, em: Emission) -> None:
    """A gather through the permuted strides of the operand (no perm: the axes reversed)."""
    g = gen.g
    out_shape, in_shape = g.type(n).shape, g.type(g.operands(n)[0]).shape
    perm = g.attrs(n)["perm"]
    perm = list(reversed(range(len(in_shape)))) if perm is None else list(perm)
    st = strides(in_shape)
    _copy(gen, n, gather_index("i", out_shape, [st[p] for p in perm]))


def emit_broadcast(gen: Generator, n: str, em: Emission) -> None:
    """A gather at the operand's broadcast index."""
    g = gen.g
    _copy(gen, n, broadcast_index("i", g.type(n).shape, g.type(g.operands(n)[0]).shape))


def emit_slice(gen: Generator, n: str, em: Emission) -> None:
    """A gather of the slice's elements; its start offset is a kernel argument `off0` (when it
    is a number), so the slices of one tensor at different places (the steps of a scan, the
    adjoint of a concat) are one kernel however many there are."""
    off = slice_offset(gen.g, n)
    if off is None:
        _copy(gen, n, slice_index(gen.g, n, "i"))
        return
    pointwise(gen, n, gen.temp(n), [gen.node_buffer[gen.g.operands(n)[0]]], "a",
              [("a", 0, slice_index(gen.g, n, "i", "off0"))], consts=[off])


def emit_pad(gen: Generator, n: str, em: Emission) -> None:
    """out[..., c, ...] = in0[..., c - start, ...] where start <= c < start + length, else 0."""
    g = gen.g
    out_shape = g.type(n).shape
    a = g.attrs(n)
    axis = normalize_axes(a["axis"], len(out_shape))[0]
    length = g.type(g.operands(n)[0]).shape[axis]
    size = Size.of(out_shape)
    ctx = dict(size=size.c(), inner=Size.of(out_shape[axis + 1:]).c(), total=a["total"], start=a["start"],
               stop=a["start"] + length, length=length)
    gen.add(n, "pad.cu.j2", ctx, gen.temp(n), gen.ins(n), [ceil_div(size, ELEMENTWISE_BLOCK), 1, 1],
            [ELEMENTWISE_BLOCK, 1, 1])


def emit_concat(gen: Generator, n: str, em: Emission) -> None:
    """out[..., c, ...] along the axis comes from the operand whose range holds c."""
    g = gen.g
    out_shape = g.type(n).shape
    axis = normalize_axes(g.attrs(n)["axis"], len(out_shape))[0]
    inner = Size.of(out_shape[axis + 1:])
    parts, start = [], 0
    for slot, a in enumerate(g.operands(n)):
        length = g.type(a).shape[axis]
        parts.append(dict(slot=slot, start=start, stop=start + length, length=length))
        start += length
    size = Size.of(out_shape)
    ctx = dict(size=size.c(), inner=inner.c(), total=start, parts=parts)
    gen.add(n, "concat.cu.j2", ctx, gen.temp(n), gen.ins(n), [ceil_div(size, ELEMENTWISE_BLOCK), 1, 1],
            [ELEMENTWISE_BLOCK, 1, 1])
