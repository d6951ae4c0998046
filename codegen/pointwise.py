"""Pointwise kernels: element i of the output from element(s) of the operands.

The machinery every one-thread-per-element kernel shares: `pointwise` (a grid-stride loop,
float4s where every load reads the stored element), `pointwise_body` (the C statements of a
fusion group's pointwise members: their loads, one `const float tK` per member, the root's
expression; the same body serves a fused kernel, an epilogue, a reduction's prologue and an
optimizer update), the C text of scalars (`c_expr`, `c_float`) and where a slice reads. And the
emitters of the families whose kernel is that loop or simpler: `source` (a buffer, no kernel),
`const` and `shape` (one thread writes a literal), `elementwise` and `dropout`.
"""
from __future__ import annotations

import re

from ..ir.graph import Graph
from ..ir.ops import OPS
from ..ir.types import normalize_axes
from .core import VALUE_CTYPE, Emission, Generator
from .plan import Buffer
from .sizes import Size, broadcast_index, capped_div, ceil_div, gather_index, strides

ELEMENTWISE_BLOCK = 256      # threads per block of one-thread-per-element kernels

# Elementwise kernels are grid-stride loops, the grid capped at ELEMENTWISE_MAX_BLOCKS: about four
# waves of 8 resident 256-thread blocks on 132 SMs. Beyond that more blocks add no parallelism,
# only block scheduling, while a thread that loops amortises its index setup; the cap also keeps
# the grid far from any launch limit. (An elementwise kernel whose every load reads the store's own
# element moves float4s: 4 elements a thread and step.)
ELEMENTWISE_MAX_BLOCKS = 4096


# -- the pointwise kernel and the statements of fused members -------------------------------------

def pointwise(gen: Generator, n, out, ins, expr, loads, stem=None, phase="step", what=None, consts=(), lets=(),
              extra_dims=(), comment=None):
    """A pointwise kernel writing every element i of buffer `out`: `loads` are (name, buffer
    index, C index expr), `lets` (name, C) computed in order, `expr` the value stored.
    A grid-stride loop; float4s when every load reads element i of a float buffer and the
    store is not redirected into a concat (`vectorised`), else one element a step."""
    # (a value stored into its slice of a concat's buffer has its own size, not the buffer's)
    size = Size.of((gen.g.type(n) if n in gen.into else gen.buffers[out]).shape)
    vector = vectorised(gen, n, out, ins, loads, size)
    ctx = dict(size=size.c(), loads=loads, lets=list(lets), expr=expr, ctype=VALUE_CTYPE[gen.buffers[out].dtype],
               vector=vector)
    blocks, _ = capped_div(size, ELEMENTWISE_BLOCK * (4 if vector else 1), ELEMENTWISE_MAX_BLOCKS)
    return gen.add(n, "pointwise.cu.j2", ctx, out, ins, [blocks, 1, 1], [ELEMENTWISE_BLOCK, 1, 1],
                   phase=phase, stem=stem, what=what, consts=consts, extra_dims=extra_dims, comment=comment)


def vectorised(gen: Generator, n, out, ins, loads, size: Size) -> bool:
    """Whether a pointwise kernel can move float4s: it stores floats at their own place (not
    into a slice of a concat's buffer) and every load reads a float buffer at the element the
    store writes (no broadcast, gather, slice or concat slice), so that four neighbours are
    four neighbours in every buffer. Buffers are whole allocations, 16-byte aligned (CuPy:
    256 bytes; the emu backend's NumPy arrays: malloc's 16, checked in tests), so
    `reinterpret_cast<float4*>(buf)[q]` is an aligned 16-byte access. A static size under 4
    has no float4 to move."""
    return (gen.buffers[out].dtype == "f32" and n not in gen.into
            and (size.static is None or size.static >= 4)
            and all(index == "i" and gen.buffers[ins[slot]].dtype == "f32" for _, slot, index in loads))


def pointwise_body(gen: Generator, members, root, index: str, slot0: int, known: dict, prefix: str = "",
                   consts: list | None = None) -> dict:
    """C statements for pointwise members at flat element `index` of the root: the buffers
    they load (as in{slot0}, in{slot0 + 1}, ... with the root's broadcast index), their lets,
    the root's expression and the symbols they need. `known` gives C for values already at
    hand (an epilogue's accumulator); constants and static sizes become literals. With a
    `consts` list, slice offsets become kernel arguments `off<i>` appended to it instead, so
    that slices at different places (a scan's steps) share one kernel."""
    g = gen.g
    inside, shape = set(members), g.type(root).shape
    bufs, loads, lets, dims, expr = [], [], [], set(), dict(known)

    def outside(a):
        if a not in expr:
            fam = OPS[g.op(a)].family
            if fam == "const":
                expr[a] = c_float(float(g.attrs(a)["value"]))
            elif fam == "shape":
                count = element_count(g, a)
                dims.update(count.syms)
                expr[a] = f"(float)({count.c()})"
            else:
                var = f"{prefix}x{len(bufs)}"
                at = broadcast_index(index, shape, g.type(a).shape)
                if a in gen.into:  # stored in its slice of a concat's buffer
                    buf, at = gen.into[a].concat, gen.into[a].index(at)
                else:
                    buf = gen.node_buffer[a]
                loads.append((var, slot0 + len(bufs), at))
                bufs.append(buf)
                expr[a] = var
        return expr[a]
    for k, m in enumerate(members):
        d = OPS[g.op(m)]
        if d.family == "slice":  # its operand, gathered: the slice's element `index`
            a = g.operands(m)[0]
            off = slice_offset(g, m) if consts is not None else None
            if off is not None:
                consts.append(off)
            at = slice_index(g, m, index, f"off{len(consts) - 1}" if off is not None else None)
            var = f"{prefix}x{len(bufs)}"
            loads.append((var, slot0 + len(bufs), at))
            bufs.append(gen.node_buffer[a])
            lets.append((f"{prefix}t{k}", var))
            expr[m] = f"{prefix}t{k}"
            continue
        args = g.operands(m)[:1] if d.family == "broadcast" else g.operands(m)
        vals = [expr[a] if a in inside else outside(a) for a in args]
        if d.family == "mode_select":  # if_training: the run's mode word, rng[2], picks an operand
            var = f"{prefix}x{len(bufs)}"
            loads.append((var, slot0 + len(bufs), "2"))
            bufs += gen.mode(m)
            lets.append((f"{prefix}t{k}", f"({var} != 0.0f ? {vals[0]} : {vals[1]})"))
            expr[m] = f"{prefix}t{k}"
            continue
        lets.append((f"{prefix}t{k}", _ewise(c_expr(g, m), *vals) if d.family == "elementwise" else vals[0]))
        expr[m] = f"{prefix}t{k}"
    return dict(bufs=bufs, loads=loads, lets=lets, expr=expr[root], dims=sorted(dims), vars=expr)


def element_count(g: Graph, n) -> Size:
    """The element count a `size` node stands for."""
    t = g.type(g.operands(n)[0])
    return Size.of(t.shape[a] for a in normalize_axes(g.attrs(n)["axis"], t.rank))


def slice_index(g: Graph, n, index: str, offset: str | None = None) -> str:
    """The operand element that element `index` of slice `n` reads; `offset` names the
    slice's start offset in the body instead of writing it as a literal."""
    at = gather_index(index, g.type(n).shape, strides(g.type(g.operands(n)[0]).shape))
    if offset:
        return f"{at} + {offset}"
    return at if g.attrs(n)["start"] == 0 else f"{at} + {slice_start(g, n).c()}"


def slice_start(g: Graph, n) -> Size:
    """Where slice `n` starts in its operand, as an element offset."""
    in_shape = g.type(g.operands(n)[0]).shape
    a = g.attrs(n)
    return Size(a["start"]) * strides(in_shape)[normalize_axes(a["axis"], len(in_shape))[0]]


def slice_offset(g: Graph, n) -> int | None:
    """A slice's start offset when it is a number (it is unless a later axis is symbolic)."""
    return slice_start(g, n).static


# -- scalars as C ---------------------------------------------------------------------------------

def c_expr(g: Graph, n: str) -> str:
    """The registry's C expression of elementwise node `n`, over its operands `a` and `b`, with
    each attribute the expression names (`slope`) written in as a C literal of its value."""
    attrs = g.attrs(n)
    return re.sub(r"\b[A-Za-z_]\w*\b", lambda m: _c_literal(attrs[m.group(0)]) if m.group(0) in attrs else m.group(0),
                  OPS[g.op(n)].c_of(attrs))


def _c_literal(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    return c_float(float(v))


def _ewise(c: str, a: str | None = None, b: str | None = None) -> str:
    """A C expression over `a` and `b` (see `c_expr`), applied to the C expressions a and b."""
    return "(" + re.sub(r"\b([ab])\b", lambda m: f"({a})" if m.group(1) == "a" else f"({b})", c) + ")"


def c_float(v: float) -> str:
    """A float as a C literal; NaN and the infinities as bit patterns."""
    if v != v:
        return "__int_as_float(0x7fc00000)"
    if v in (float("inf"), float("-inf")):
        return ("" if v > 0 else "-") + "__int_as_float(0x7f800000)"
    return f"{v!r}f" if ("e" in repr(v) or "." in repr(v)) else f"{v!r}.0f"


# -- emitters -------------------------------------------------------------------------------------

def emit_source(gen: Generator, n: str, em: Emission) -> None:
    """input, param, state: a buffer of their own, no kernel."""
    t = gen.g.type(n)
    gen.buffers[n] = Buffer(n, t.dtype, list(t.shape), gen.g.op(n))
    gen.node_buffer[n] = n


def emit_const(gen: Generator, n: str, em: Emission) -> None:
    """One thread writes the value."""
    value = float(gen.g.attrs(n)["value"])
    gen.add(n, "const.cu.j2", dict(value=c_float(value)), gen.temp(n), [], [1, 1, 1], [1, 1, 1])


def emit_size(gen: Generator, n: str, em: Emission) -> None:
    """One thread writes the element count of some axes of the operand (symbols as arguments)."""
    count = element_count(gen.g, n)
    # the operand is not read, only its (possibly symbolic) shape: pass no buffer for it
    gen.add(n, "const.cu.j2", dict(value=f"(float){count.c()}"), gen.temp(n), [], [1, 1, 1], [1, 1, 1],
            extra_dims=count.syms)


def emit_elementwise(gen: Generator, n: str, em: Emission) -> None:
    """The registry's `c` expression, each operand loaded at its broadcast index."""
    g = gen.g
    out_shape = g.type(n).shape
    loads = [(var, i, broadcast_index("i", out_shape, g.type(a).shape))
             for i, (var, a) in enumerate(zip("ab", g.operands(n)))]
    pointwise(gen, n, gen.temp(n), gen.ins(n), c_expr(g, n), loads)


def emit_mode_select(gen: Generator, n: str, em: Emission) -> None:
    """if_training(a, b): a in a training run (rng[2] != 0), b in an evaluation run."""
    size = Size.of(gen.g.type(n).shape)
    gen.add(n, "mode_select.cu.j2", dict(size=size.c()), gen.temp(n), gen.ins(n) + gen.mode(n),
            [ceil_div(size, ELEMENTWISE_BLOCK), 1, 1], [ELEMENTWISE_BLOCK, 1, 1], extra_dims=size.syms)


def emit_dropout(gen: Generator, n: str, em: Emission) -> None:
    """Training (rng[2] != 0): keep x * 1/(1-p) where Philox's uniform >= p; evaluation: x."""
    a = gen.g.attrs(n)
    p = float(a["p"])
    size = Size.of(gen.g.type(n).shape)
    ctx = dict(size=size.c(), p=c_float(p), scale=c_float(1.0 / (1.0 - p)), salt=f"{int(a['salt']) & 0xFFFFFFFF}u")
    gen.add(n, "dropout.cu.j2", ctx, gen.temp(n), gen.ins(n) + gen.mode(n),
            [ceil_div(size, ELEMENTWISE_BLOCK), 1, 1], [ELEMENTWISE_BLOCK, 1, 1])
