"""Reductions and the row kernels built on them: `reduce` (sum, mean, l1, l2, mse), `softmax`,
`xent` (softmax cross-entropy) and `xent_grad`.

A reduction picks its kernel from its axes and sizes: columns (leading axes into many outputs),
a block per output, or, for few outputs over a long extent, two launches through a workspace
whose partials are added in a fixed order (no atomics). Over the batch (a symbolic extent) the
plan holds both forms, one launch and two, and the bound batch picks one (`_one_or_two`). A
reduction fused with its pointwise
producers (-O2, rule `reduce`) computes them where it reads its operand (the emission's
prologue). Each threshold below says why it is what it is (an H100 has 132 SMs).
"""
from __future__ import annotations

import re

from ..ir.errors import DlcError
from ..ir.ops import OPS
from ..ir.types import normalize_axes
from .core import CTYPE, Emission, Generator
from .plan import Kernel, Launch
from .pointwise import ELEMENTWISE_BLOCK, pointwise, pointwise_body
from .sizes import Size, at_most, beyond, capped_div, ceil_div, gated, gather_index, strides, symbols_of

REDUCE_BLOCK = (32, 256)     # reductions: a power of two in this range, from the extent
COLUMN_OUTPUTS = 8           # reducing leading axes into at least this many outputs: the column kernel (below)
# Reductions in two launches (`emit_reduce`, `emit_xent`): stage 1 spreads one output's elements
# over many blocks, each writing its partial sum to a workspace; stage 2 adds the partials in a
# fixed order (no atomics: the same step gives the same bits, as `--resume` promises). How many
# partials is a plan expression, min(ceil(extent / chunk), cap), so it grows with the batch.
REDUCE_BLOCKS = 512          # stage-1 blocks a reduction aims at: about 4 resident 256-thread blocks
                             # on each of an H100's 132 SMs, half its threads, enough loads in flight
                             # to stream at bandwidth; more would only lengthen stage 2
REDUCE_CHUNK = 2048          # elements per stage-1 block at least (8 per thread of 256), so that its
                             # sum outweighs the round trip of its partial through the workspace
# One launch or two (issue 24): the crossover. Where a reduction has few outputs, one launch means
# a few blocks walking the whole extent while most SMs idle; two launches cost a second launch
# (about 2-4 us from the host, 1 us replayed in a CUDA graph) and a round trip through the
# workspace. A thread adding ONE_LAUNCH_TERMS elements (independent loads, a few in flight)
# takes about as long as that second launch, so up to that many a thread the reduction stays one
# launch, and beyond it the GPU argument wins: two. For a static extent the plan decides; for an
# extent over the batch it holds both forms, each launch's grid gated (sizes.at_most / beyond) on
# the extent, and the batch bound at run time picks one (a launch of an empty grid is left out).
# So mlp's and LeNet's bias gradients are one launch at batch 128 and two from batch 513, a
# convolution's bias gradient over N x 8 x 8 pixels one launch up to batch 256.
ONE_LAUNCH_TERMS = 64
REDUCE_ONE_BLOCK = 256 * ONE_LAUNCH_TERMS  # an extent up to this (16384) stays one 256-thread block per output
COLUMN_TILE, COLUMN_LANES = 32, 8  # column reductions: a block is 32 neighbouring columns (a warp
                             # reads them from one row, coalesced) x 8 row lanes (256 threads)
COLUMN_ONE_LAUNCH_ROWS = COLUMN_LANES * ONE_LAUNCH_TERMS  # an extent up to this (512 rows) stays one launch
COLUMN_CHUNK_ROWS = 64       # rows of a stage-1 chunk at least (8 per row lane)
XENT_WARP_CLASSES = 1024     # softmax_xent(_grad): a warp per row up to this many classes (32 per lane:
                             # three passes over a 4 KB row that stays in L1), several rows a block;
                             # more classes: a block per row, whose 256 threads share its passes
XENT_ROWS_PER_BLOCK = 8      # warps (rows) per block of the warp-per-row form: 256 threads


def emit_reduce(gen: Generator, n: str, em: Emission) -> None:
    """sum, mean, l1, l2, mse (the op's `map` and `finish`) over some axes: the index of each
    element as C, its operands loaded (or computed, `em.prologue`), then the column kernel
    (`_reduce_columns`) or a block per output (`_reduce_blocks`)."""
    g = gen.g
    op, args = g.op(n), g.operands(n)
    shape = g.type(args[0]).shape
    axes, kept, extent, outputs, index = _layout(shape, g.attrs(n).get("axis"))
    kernel = OPS[op].kernel
    # an operand that a fusion group computes (rule `reduce`) is computed where it is read:
    # its members' lets at element `index` of it, in the reduction's loop (a prologue)
    folded = em.prologue
    # the operand's symbols size the loop even when no buffer of that shape is passed (a folded
    # operand computed from smaller, broadcast ones)
    loads, prologues, ins, dims = [], [], [], list(Size.of(shape).syms)
    for i, (var, a) in enumerate(zip("ab", args)):
        if a in folded:
            body = pointwise_body(gen, folded[a], a, f"i{var}", 0, {}, prefix=f"{var}_")
            slot = len(ins)
            prologues.append(dict(index_var=f"i{var}", index=index, var=var, expr=body["expr"], lets=body["lets"],
                                  loads=[(v, slot + s, at) for v, s, at in body["loads"]]))
            ins += body["bufs"]
            dims += body["dims"]
        else:
            loads.append((var, len(ins), index))
            ins.append(gen.node_buffer[a])
    ctx = dict(extent=extent.c(), loads=loads, prologues=prologues, expr=kernel["map"], finish=kernel["finish"],
               size=outputs.c())
    if index == f"r * {outputs.c()} + o" and outputs.estimate() >= COLUMN_OUTPUTS:
        _reduce_columns(gen, n, ctx, ins, dims, extent, outputs, [shape[i] for i in kept], em)
    else:
        _reduce_blocks(gen, n, ctx, ins, dims, extent, outputs, em)


def _layout(shape, axis):
    """A reduction of an operand of `shape` over `axis`: (axes, kept axes, extent, outputs, the C
    index of element r of output o) — rows of the extent (trailing axes), columns (leading axes),
    or a gather for any other set of axes."""
    axes = normalize_axes(axis, len(shape))
    kept = [i for i in range(len(shape)) if i not in axes]
    st = strides(shape)
    extent = Size.of(shape[i] for i in axes)
    outputs = Size.of(shape[i] for i in kept)
    if list(axes) == list(range(len(kept), len(shape))):    # trailing axes: rows of `extent`
        index = "r" if not kept else f"o * {extent.c()} + r"
    elif list(axes) == list(range(len(axes))):               # leading axes: columns
        index = f"r * {outputs.c()} + o"
    else:
        base = gather_index("o", [shape[i] for i in kept], [st[i] for i in kept])
        offset = gather_index("r", [shape[i] for i in axes], [st[i] for i in axes])
        index = offset if base == "0" else (base if offset == "0" else f"{base} + {offset}")
    return axes, kept, extent, outputs, index


def _reduce_columns(gen: Generator, n: str, ctx: dict, ins: list, dims: list, extent: Size, outputs: Size,
                    kept_shape: list, em: Emission) -> None:
    """Leading axes reduced into columns (a bias gradient, [N, C] -> [C]). One launch: a block
    per tile of COLUMN_TILE columns, its COLUMN_LANES row lanes walking every row, their sums
    added in order and stored. Two: stage 1 is the same kernel over a chunk of the rows (grid
    y), writing a workspace [chunks, columns]; chunks = min(ceil(extent / COLUMN_CHUNK_ROWS),
    REDUCE_BLOCKS / tiles), so a batch of any size fills the GPU; stage 2, a thread per column,
    adds its chunks in order and applies the op's `finish`. One launch where the extent is at
    most COLUMN_ONE_LAUNCH_ROWS rows, or the tiles fill REDUCE_BLOCKS alone (`_one_or_two`).
    The operand's fused producers (`prologues`) run in the kernel that reads the operand."""
    comment, stem = em.comment, em.stem
    tiles, most, chunks, chunks_c, ctx, block = _columns(extent, outputs, ctx)

    def one(gate, note):
        gen.add(n, "reduce_columns.cu.j2", dict(ctx, chunks="1", final=True), gen.temp(n), ins,
                [gated(tiles, gate), 1, 1], block, barriers=True, extra_dims=dims, comment=_noted(gen, n, comment, note),
                stem=stem)

    def two(gate, note):
        ws = gen.workspace(n, "chunks", [most if extent.static is None else chunks] + list(kept_shape))
        gen.add(n, "reduce_columns.cu.j2", dict(ctx, chunks=chunks_c, final=False), ws, ins,
                [gated(tiles, gate), chunks, 1], block, barriers=True, extra_dims=dims,
                comment=_noted(gen, n, comment, note), stem=(stem or f"{gen.g.op(n)}_{n}") + "_chunks", partial=True)
        gen.add(n, "reduce_columns_finish.cu.j2", dict(ctx, chunks=chunks_c), gen.temp(n), [ws],
                [gated(ceil_div(outputs, ELEMENTWISE_BLOCK), gate), 1, 1], [ELEMENTWISE_BLOCK, 1, 1],
                extra_dims=extent.syms, comment=_noted(gen, n, comment, note), stem=(stem or f"{gen.g.op(n)}_{n}") + "_finish")
    _one_or_two(extent, COLUMN_ONE_LAUNCH_ROWS if most > 1 else None, one, two)


def _columns(extent: Size, outputs: Size, ctx: dict):
    """The column kernels' launch shape: (tiles of COLUMN_TILE columns, chunks at most, chunks and
    its C expression, the template context with the tile, the block)."""
    tiles = ceil_div(outputs, COLUMN_TILE)
    most = max(1, REDUCE_BLOCKS // -(-outputs.estimate() // COLUMN_TILE))
    chunks, chunks_c = capped_div(extent, COLUMN_CHUNK_ROWS, most)
    return tiles, most, chunks, chunks_c, dict(ctx, tile=COLUMN_TILE, lanes=COLUMN_LANES), [COLUMN_TILE, COLUMN_LANES, 1]


def _one_or_two(extent: Size, most, one, two) -> None:
    """Emit a reduction in one launch (`one(gate, note)`) or two (`two(gate, note)`): one where the extent
    is at most `most` elements (None: always one), two beyond. A static extent decides here;
    over the batch the plan holds both, each launch's grid times its 0/1 gate, so that the
    bound batch runs exactly one of them (see ONE_LAUNCH_TERMS)."""
    if most is None or (extent.static is not None and extent.static <= most):
        one(1, None)
    elif extent.static is not None:
        two(1, None)
    else:
        one(at_most(extent, most), f"runs while {extent.py()} <= {most}: one launch (else two)")
        two(beyond(extent, most), f"runs while {extent.py()} > {most}: two launches (else one)")


def _noted(gen: Generator, n: str, comment, note):
    """A kernel's comment, with a first line saying when it runs (`note`: a gated form), if any."""
    return comment if note is None else [note] + (comment or gen.comment(n))


def _reduce_blocks(gen: Generator, n: str, ctx: dict, ins: list, dims: list, extent: Size, outputs: Size,
                   em: Emission) -> None:
    """One block per output, its threads striding over the extent, then a tree (block_sum).
    Few outputs over a long extent (a full reduction; a convolution's bias gradient, a few
    channels over batch x pixels) split in two launches. Stage 1: grid (outputs, parts), the
    parts of an output taking turns over stretches of its elements (a grid stride), each
    writing its block's sum to a workspace [outputs, parts]; parts = min(ceil(extent /
    REDUCE_CHUNK), REDUCE_BLOCKS / outputs). Stage 2: a block per output adds its parts (a
    tree of fixed shape) and applies the op's `finish`. An extent of at most REDUCE_ONE_BLOCK,
    or outputs enough to fill the GPU alone, stays one launch (`_one_or_two`). The operand's
    fused producers (`prologues`) run in the kernel that reads the operand."""
    comment, stem = em.comment, em.stem
    most = REDUCE_BLOCKS // outputs.static if outputs.static else 0   # parts per output at most
    parts, parts_c = capped_div(extent, REDUCE_CHUNK, most)

    def one(gate, note):
        # (over the batch, up to REDUCE_ONE_BLOCK elements: the largest block, whatever the guess)
        threads = _pow2_block(extent) if gate == 1 else REDUCE_BLOCK[1]
        gen.add(n, "reduce.cu.j2", dict(ctx, parts=None), gen.temp(n), ins, [gated(outputs.plan(), gate), 1, 1],
                [threads, 1, 1], barriers=True, extra_dims=dims, comment=_noted(gen, n, comment, note), stem=stem)

    def two(gate, note):
        cap = most if extent.static is None else parts
        ws = gen.workspace(n, "parts", [outputs.static, cap])
        gen.add(n, "reduce.cu.j2", dict(ctx, parts=parts_c), ws, ins, [gated(outputs.static, gate), parts, 1],
                [REDUCE_BLOCK[1], 1, 1], barriers=True, extra_dims=dims, comment=_noted(gen, n, comment, note),
                stem=(stem or f"{gen.g.op(n)}_{n}") + "_parts", partial=True)
        gen.add(n, "reduce_finish.cu.j2", dict(ctx, parts=parts_c), gen.temp(n), [ws],
                [gated(outputs.static, gate), 1, 1], [_pow2_block(Size(cap)), 1, 1], barriers=True,
                extra_dims=extent.syms, comment=_noted(gen, n, comment, note), stem=(stem or f"{gen.g.op(n)}_{n}") + "_finish")
    _one_or_two(extent, REDUCE_ONE_BLOCK if most >= 2 else None, one, two)


def emit_softmax(gen: Generator, n: str, em: Emission) -> None:
    """softmax, log_softmax over one axis (any): one block per row, the op's `out` expression."""
    g = gen.g
    src = g.operands(n)[0]
    shape = g.type(src).shape
    (axis,) = normalize_axes(g.attrs(n)["axis"], len(shape))
    extent = Size.of([shape[axis]])
    inner = Size.of(shape[axis + 1:])
    rows = Size.of(shape[:axis]) * inner
    ctx = dict(extent=extent.c(), inner=inner.c(), expr=OPS[g.op(n)].kernel["out"])
    gen.add(n, "softmax.cu.j2", ctx, gen.temp(n), gen.ins(n), [rows.plan(), 1, 1],
            [_pow2_block(extent), 1, 1], barriers=True)


def _xent_rows(gen: Generator, n: str):
    """What softmax_xent and its gradient share: the rows, and how a row's classes are split.
    Up to XENT_WARP_CLASSES classes a warp per row, XENT_ROWS_PER_BLOCK rows a block; more, a
    block per row. Returns (the rows' dimensions, template context, grid, block)."""
    g = gen.g
    *rows, classes = g.type(g.operands(n)[0]).shape  # [N, C], or [N, T, C]: a row per position
    R, C = Size.of(rows), Size.of([classes])
    warp = C.estimate() <= XENT_WARP_CLASSES
    ctx = dict(rows=R.c(), classes=C.c(), warp=warp, rows_per_block=XENT_ROWS_PER_BLOCK)
    if warp:
        return rows, ctx, [ceil_div(R, XENT_ROWS_PER_BLOCK), 1, 1], [32 * XENT_ROWS_PER_BLOCK, 1, 1]
    return rows, ctx, [R.plan(), 1, 1], [_pow2_block(C), 1, 1]


def emit_xent(gen: Generator, n: str, em: Emission) -> None:
    """softmax_xent, the mean over rows of max + log(sum(exp(x - max))) - x[label]. Two launches:
    stage 1 writes each row's loss to a workspace [rows] (`_xent_rows`), stage 2 (one block)
    adds them as a tree of fixed shape and divides by the rows. One launch (`xent_whole.cu.j2`):
    a single block of the same teams (warps, or the block) takes the rows a team at a time and
    stores the mean; chosen while each lane makes at most ONE_LAUNCH_TERMS trips (rows per team
    x loads per pass over a row: 512 rows of 10 classes), through `_one_or_two`."""
    rows, ctx, grid, block = _xent_rows(gen, n)
    R = Size.of(rows)
    classes = Size.of(gen.g.type(gen.g.operands(n)[0]).shape[-1:])
    teams, team = (XENT_ROWS_PER_BLOCK, 32) if ctx["warp"] else (1, block[0])
    loads = -(-classes.static // team) if classes.static else None   # a lane's loads in one pass over a row
    most = teams * (ONE_LAUNCH_TERMS // max(1, loads)) if loads else 0  # rows one block takes at most
    stem = f"{gen.g.op(n)}_{n}"

    def one(gate, note):
        gen.add(n, "xent_whole.cu.j2", ctx, gen.temp(n), gen.ins(n), [gate, 1, 1], block, barriers=True, stem=stem,
                comment=_noted(gen, n, None, note))

    def two(gate, note):
        ws = gen.workspace(n, "rows", rows)
        gen.add(n, "xent.cu.j2", ctx, ws, gen.ins(n), [gated(grid[0], gate), 1, 1], block, barriers=True,
                stem=f"{stem}_rows", partial=True, comment=_noted(gen, n, None, note))
        # (the batch: as many threads as a block of REDUCE_BLOCK has, whatever its guess)
        threads = _pow2_block(R) if R.static is not None else REDUCE_BLOCK[1]
        gen.add(n, "xent_mean.cu.j2", dict(rows=R.c()), gen.temp(n), [ws], [gate, 1, 1], [threads, 1, 1],
                barriers=True, stem=f"{stem}_mean", comment=_noted(gen, n, None, note))
    if most:
        _one_or_two(R, most, one, two)
    else:
        two(1, None)


def emit_xent_grad(gen: Generator, n: str, em: Emission) -> None:
    """softmax_xent_grad: (softmax(x) - onehot) * g / rows, the rows as `_xent_rows`."""
    _, ctx, grid, block = _xent_rows(gen, n)
    gen.add(n, "xent_grad.cu.j2", ctx, gen.temp(n), gen.ins(n), grid, block, barriers=True)


def _pow2_block(extent: Size) -> int:
    """Threads of a block that strides over `extent`: a power of two in REDUCE_BLOCK, from its estimate."""
    lo, hi = REDUCE_BLOCK
    want = extent.estimate()
    b = lo
    while b < want and b < hi:
        b *= 2
    return b


# -- sibling reductions (-O2, rule `siblings`): several reductions in one pass ------------------------

def emit_siblings(gen: Generator, reductions: list[str], prologues: dict, em: Emission, after=(), stored=()) -> None:
    """Sibling reductions (rule `siblings`, passes/fusion.py): reductions over the same axes of
    operands of one shape, computed by one kernel with an accumulator each, in one loop over the
    elements (batch norm's `sum(g)` and `sum(g * xhat)`; its statistics). `prologues`: operand ->
    the group members that compute it (a member computed for several reductions, the statistics'
    shared `x - shift`, is computed in each one's prologue: the same loads, which the compiler
    shares). The kernels are those of a single reduction (columns, or blocks, in one launch or two,
    the same thresholds) with one accumulator per reduction; a two-launch form's workspace holds
    every reduction's partial sums, and its second launch adds them in the same fixed order. A
    result stored into a concat's slice takes the plain kernels, one per reduction.

    `after`: the group's members computed from the results (their per-channel arithmetic, in the
    graph's order), by the thread that stores the results, at the same element o; `stored`: those
    of them whose value is needed outside, each stored by an output of its own after the results."""
    g = gen.g
    if after and any(m in gen.into for m in list(stored) + reductions):
        raise DlcError(f"codegen: sibling reductions %{reductions[-1]} with fused arithmetic store into a concat's "
                       f"slice, which they do not support; compile at -O1")
    if any(r in gen.into for r in reductions):
        for r in reductions:
            emit_reduce(gen, r, Emission(prologue={a: prologues[a] for a in g.operands(r) if a in prologues},
                                         comment=em.comment))
        return
    shape = g.type(g.operands(reductions[0])[0]).shape
    axes, kept, extent, outputs, index = _layout(shape, g.attrs(reductions[0]).get("axis"))
    terms, ins, dims = [], [], list(Size.of(shape).syms)
    for k, r in enumerate(reductions):
        kernel = OPS[g.op(r)].kernel
        loads, pro, names = [], [], {}
        for v, a in zip("ab", g.operands(r)):
            var = names[v] = f"{v}{k}"
            if a in prologues:
                body = pointwise_body(gen, prologues[a], a, f"i{var}", len(ins), {}, prefix=f"{var}_")
                pro.append(dict(index_var=f"i{var}", index=index, var=var, expr=body["expr"], lets=body["lets"],
                                loads=body["loads"]))
                ins += body["bufs"]
                dims += body["dims"]
            else:
                loads.append((var, len(ins), index))
                ins.append(gen.node_buffer[a])
        acc = f"acc{k}"
        terms.append(dict(loads=loads, prologues=pro, acc=acc,
                          expr=_rename(kernel["map"], dict(names)),
                          finish=_rename(kernel["finish"], {"acc": acc})))
    uses_extent = any("extent" in OPS[g.op(r)].kernel["finish"] for r in reductions)
    ctx = dict(extent=extent.c(), terms=terms, size=outputs.c(), uses_extent=uses_extent,
               after=(list(after), list(stored)))
    outs = [gen.temp(r) for r in reductions] + [gen.temp(m) for m in stored]
    stem = em.stem or f"siblings_{reductions[-1]}"
    if index == f"r * {outputs.c()} + o" and outputs.estimate() >= COLUMN_OUTPUTS:
        _siblings_columns(gen, reductions, ctx, outs, ins, dims, extent, outputs, [shape[i] for i in kept], em, stem)
    else:
        _siblings_blocks(gen, reductions, ctx, outs, ins, dims, extent, outputs, em, stem)


def _rename(expr: str, names: dict) -> str:
    """A registry C expression with its variables (a, b; acc) renamed for one of several sums."""
    return re.sub(r"\b(" + "|".join(map(re.escape, names)) + r")\b", lambda m: names[m.group(1)], expr)


def _siblings_blocks(gen, reductions, ctx, outs, ins, dims, extent, outputs, em, stem) -> None:
    """As `_reduce_blocks` (the same choice of one launch or two, `_one_or_two`), each block keeping
    an accumulator per reduction; the workspace is [reductions, outputs, parts]."""
    n = reductions[-1]
    most = REDUCE_BLOCKS // outputs.static if outputs.static else 0   # parts per output at most
    parts, parts_c = capped_div(extent, REDUCE_CHUNK, most)

    def one(gate, note):
        threads = _pow2_block(extent) if gate == 1 else REDUCE_BLOCK[1]
        _add_outputs(gen, reductions, "reduce_siblings.cu.j2", dict(ctx, parts=None), outs, ins,
                     [gated(outputs.plan(), gate), 1, 1], [threads, 1, 1], dims, em, stem, note)

    def two(gate, note):
        cap = most if extent.static is None else parts
        ws = gen.workspace(n, "parts", [len(reductions), outputs.static, cap])
        gen.add(n, "reduce_siblings.cu.j2", dict(ctx, parts=parts_c), ws, ins, [gated(outputs.static, gate), parts, 1],
                [REDUCE_BLOCK[1], 1, 1], barriers=True, extra_dims=dims, comment=_noted(gen, n, em.comment, note),
                stem=stem + "_parts", partial=True)
        _add_outputs(gen, reductions, "reduce_siblings_finish.cu.j2", dict(ctx, parts=parts_c), outs, [ws],
                     [gated(outputs.static, gate), 1, 1], [_pow2_block(Size(cap)), 1, 1], list(extent.syms), em,
                     stem + "_finish", note)
    _one_or_two(extent, REDUCE_ONE_BLOCK if most >= 2 else None, one, two)


def _siblings_columns(gen, reductions, ctx, outs, ins, dims, extent, outputs, kept_shape, em, stem) -> None:
    """As `_reduce_columns` (the same tiles, chunks and choice of one launch or two, `_one_or_two`),
    a lane sum per reduction; the workspace is [chunks, reductions, columns]."""
    n = reductions[-1]
    tiles, most, chunks, chunks_c, ctx, block = _columns(extent, outputs, ctx)

    def one(gate, note):
        _add_outputs(gen, reductions, "reduce_columns_siblings.cu.j2", dict(ctx, chunks="1", final=True), outs, ins,
                     [gated(tiles, gate), 1, 1], block, dims, em, stem, note)

    def two(gate, note):
        ws = gen.workspace(n, "chunks", [most if extent.static is None else chunks, len(reductions)] + list(kept_shape))
        gen.add(n, "reduce_columns_siblings.cu.j2", dict(ctx, chunks=chunks_c, final=False), ws, ins,
                [gated(tiles, gate), chunks, 1], block, barriers=True, extra_dims=dims,
                comment=_noted(gen, n, em.comment, note), stem=stem + "_chunks", partial=True)
        _add_outputs(gen, reductions, "reduce_columns_siblings_finish.cu.j2", dict(ctx, chunks=chunks_c), outs, [ws],
                     [gated(ceil_div(outputs, ELEMENTWISE_BLOCK), gate), 1, 1], [ELEMENTWISE_BLOCK, 1, 1],
                     list(extent.syms), em, stem + "_finish", note)
    _one_or_two(extent, COLUMN_ONE_LAUNCH_ROWS if most > 1 else None, one, two)


def _add_outputs(gen: Generator, reductions: list[str], template: str, ctx: dict, outs: list[str], ins: list[str],
                 grid, block, extra_dims, em: Emission, stem: str, note=None) -> None:
    """A kernel storing several results, out0, out1, ... (one per reduction, then one per stored
    value of the arithmetic after them), then reading in0, in1, ...: `Generator.add` for a kernel
    with more than one output. The plan lists the outputs first and counts them in `writes`, so
    --check-numerics checks each of them (stats count those few per-channel values as read and
    written). The arithmetic after the results (`ctx["after"]`) loads its other operands after
    `ins`, at the results' element o."""
    g, n = gen.g, reductions[-1]
    after, stored = ctx["after"]
    fin = None
    if after:
        known = {r: f"res{k}" for k, r in enumerate(reductions)}
        body = pointwise_body(gen, after, after[-1], "o", len(ins), known, prefix="f_")
        fin = dict(loads=body["loads"], lets=body["lets"],
                   stores=[(len(reductions) + j, body["vars"][m]) for j, m in enumerate(stored)])
        ins = ins + body["bufs"]
        extra_dims = list(extra_dims) + body["dims"]
    ctx = dict(ctx, after=fin)
    dims = sorted(set(symbols_of(*[gen.buffers[b].shape for b in outs + ins])) | set(extra_dims))
    name = gen.kernel_name(stem)
    params = [f"float* __restrict__ out{k}" for k in range(len(outs))]
    params += [f"const {CTYPE[gen.buffers[b].dtype]}* __restrict__ in{i}" for i, b in enumerate(ins)]
    params += [f"int dim_{d}" for d in dims]
    launch = Launch(name, n, g.op(n), "step", outs + ins, dims, list(grid), list(block), True, writes=len(outs),
                    half_args=gen.half_args(outs + ins))
    comment = list(_noted(gen, n, em.comment, note) or gen.comment(n)) + [f"stores %{r} as out{k}"
                                                                         for k, r in enumerate(reductions + stored)]
    gen.register(Kernel(name, template, dict(ctx, epilogue=None), launch, comment, params))


def emit_first(gen: Generator, n: str, em: Emission) -> None:
    """channel_first: out[c] = the operand's element at index 0 of every axis but the channel's,
    one thread per channel (the shift of batch norm's one-pass statistics)."""
    g = gen.g
    src = g.operands(n)[0]
    shape = g.type(src).shape
    ax = g.attrs(n)["axis"] % len(shape)
    index = gather_index("i", g.type(n).shape, [st if i == ax else None for i, st in enumerate(strides(shape))])
    pointwise(gen, n, gen.temp(n), [gen.node_buffer[src]], "a", [("a", 0, index)], extra_dims=list(Size.of(shape).syms))
