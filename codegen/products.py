"""Products: `matmul` (batched too) and the convolutions (`conv`, `conv_grad_x`, `conv_grad_w`)
as implicit GEMMs, all through one tiled template (matmul.cu.j2, `gemm`).

An emitter here gives `gemm` the product's sizes and the C index of A's, B's and out's elements
(a convolution's operands read in place through index arithmetic, no im2col buffer); the tile
and split-K come from tiles.py. A fusion group with the product as its producer (-O2, rule
`epilogue`) runs on the accumulator before the one store (the emission's `Epilogue`).
"""
from __future__ import annotations

import re
from dataclasses import replace

from ..ir.precision import product_precision
from .core import CTYPE, PLAIN, Emission, Generator
from .pointwise import ELEMENTWISE_BLOCK
from .sizes import Size, ceil_div, pair, symbols_of
from .tiles import gemm_tile, mma_warps, split_k

MMA_K = {"tf32": 8, "bf16": 16}  # the depth of one mma.sync: m16n8k8 (TF32), m16n8k16 (BF16)


def emit_matmul(gen: Generator, n: str, em: Emission) -> None:
    """A @ B, either operand transposed (`ta`, `tb`), batched or not: one `gemm`."""
    g = gen.g
    a, b = g.operands(n)
    ta, tb = g.attrs(n)["ta"], g.attrs(n)["tb"]
    sa, sb, so = g.type(a).shape, g.type(b).shape, g.type(n).shape
    m, k = sa[-1:-3:-1] if ta else sa[-2:]
    cols = so[-1]
    M, K, N = (Size.of([d]) for d in (m, k, cols))
    variant = ("t" if ta else "n") + ("t" if tb else "n")
    a_fast, b_fast = ("m" if ta else "k"), ("k" if tb else "n")
    what = f"{'A^T' if ta else 'A'} @ {'B^T' if tb else 'B'}"
    b_index = f"col * {K.c()} + kb" if tb else f"kb * {N.c()} + col"
    if len(so) == 3 and len(sa) == 3 and len(sb) == 2 and not ta:
        # a batch of row blocks times one matrix: the batch folds into the rows (one GEMM)
        M = Size.of([sa[0]]) * M
        what += ", the batch folded into the rows"
    elif len(so) == 3:
        # a batch of products, one per blockIdx.z; a matrix operand is shared by every item
        def at(shape, index, size):
            return f"blockIdx.z * {size.c()} + {index}" if len(shape) == 3 else index
        a_index = at(sa, f"ka * {M.c()} + row" if ta else f"row * {K.c()} + ka", M * K)
        gemm(gen, n, M, K, N, a_index, at(sb, b_index, K * N), at(so, "row * N + col", M * N),
             f"bmatmul_{variant}_{n}", what + ", one product per item of the batch", a_fast=a_fast,
             b_fast=b_fast, batch=so[0], em=em)
        return
    # A is [M, K] (or [K, M] when ta); B is [K, N] (or [N, K] when tb). An operand whose rows
    # (the stride of its slow index) are a static multiple of 4 floats long is staged with
    # float4 loads: every 4 neighbours along its fast index start at an aligned address
    a_index = f"ka * {M.c()} + row" if ta else f"row * {K.c()} + ka"
    a_stride, b_stride = Size.of([m if ta else k]), Size.of([k if tb else cols])
    gemm(gen, n, M, K, N, a_index, b_index, "row * N + col", f"matmul_{variant}_{n}", what,
         a_fast=a_fast, b_fast=b_fast, a_vec=_fours(a_stride), b_vec=_fours(b_stride), em=em)


def gemm(gen: Generator, n: str, M: Size, K: Size, N: Size, a_index, b_index, out_index, stem, what,
         a_in="in0", b_in="in1", a_fast="k", b_fast="n", batch=1, b_lets=(), b_valid=None, a_vec=False,
         b_vec=False, em: Emission = PLAIN) -> None:
    """The register-blocked product out[row, col] = sum_k A[row, k] B[k, col], with the
    element addresses of A, B and out given as C expressions of row, col and ka / kb; A and B
    are the operands named `a_in` and `b_in`. `a_fast` ("m" or "k") and `b_fast` ("n" or "k")
    say which index runs along memory in each operand, so that staging reads coalesce. An
    implicit product (a convolution) names coordinates of B's element in `b_lets` ((name, C
    int expression of col and kb), computed before the load) and loads it only where
    `b_valid` holds (zero elsewhere: padding). With a `batch` dimension, one product per
    blockIdx.z (the index expressions offset by it). `a_vec`/`b_vec`: stage that operand with
    float4 loads, 4 neighbours along its fast index (the caller vouches that its rows are a
    static multiple of 4 floats long, so they are aligned). A static output of few tiles with a
    long K is split-K (see SPLIT_TARGET_BLOCKS): partial products of parts of K into a
    workspace, then a second kernel adds them in order and does the store (epilogue, concat).
    `em`: the fusion group whose epilogue the storing kernel runs, if any. At the product's
    precision (the graph's, or the node's floor where finer: ir/precision.py product_precision)
    tf32 or bf16 the same tile runs on the tensor cores (matmul_mma.cu.j2: warps of mma.sync
    fragments, `mma_warps`), its operands rounded as ir/precision.py says; at bf16 the product is
    rounded to BF16 before the store (a split one in the finishing kernel)."""
    BM, BN, BK, TM, TN = tile = gemm_tile(M, N)
    threads = (BM // TM) * (BN // TN)
    splits = split_k(M, K, N, tile) if batch == 1 else 1
    ctx = dict(M=M.c(), N=N.c(), K=K.c(), BM=BM, BN=BN, BK=BK, TM=TM, TN=TN, threads=threads,
               a_index=a_index, b_index=b_index, out_index=out_index, what=what, a_in=a_in, b_in=b_in,
               a_fast=a_fast, b_fast=b_fast, b_lets=list(b_lets), b_valid=b_valid, splits=splits,
               a_vec=a_vec, b_vec=b_vec and not b_lets and not b_valid,
               k_end="kend" if splits > 1 else "K")
    template, precision = "matmul.cu.j2", product_precision(gen.g, n)
    if precision != "fp32":  # on the tensor cores: warps of m16n8 fragments (matmul_mma.cu.j2)
        WM, WN = mma_warps(tile)
        threads = 32 * WM * WN
        ctx.update(threads=threads, precision=precision, WM=WM, WN=WN, FM=BM // WM // 16, FN=BN // WN // 8,
                   MMA_K=MMA_K[precision], round_result=precision == "bf16" and splits == 1)
        # an operand in a 16-bit buffer (storage.py) is staged as BF16: 8-byte copies of 4 neighbours
        ins = gen.ins(n)
        ctx.update({f"{x}_type": CTYPE[gen.buffers[ins[int(name[2:])]].dtype] for x, name in (("a", a_in), ("b", b_in))})
        template = "matmul_mma.cu.j2"
    tiles = [ceil_div(N, BN), ceil_div(M, BM)]
    if splits == 1:
        gen.add(n, template, ctx, gen.temp(n, em), gen.ins(n), tiles + [Size.of([batch]).plan()],
                [threads, 1, 1], barriers=True, stem=stem, extra_dims=symbols_of((batch,)), em=em)
        return
    work = gen.workspace(n, "split", [splits, M.static, N.static])
    gen.add(n, template, ctx, work, gen.ins(n), tiles + [splits], [threads, 1, 1], barriers=True,
            stem=stem, partial=True, what=f"split-K, part blockIdx.z of {splits}: {what}")
    # the sum reads the workspace as in0: a fused epilogue's loads, numbered after the
    # product's operands, move down to follow it
    epi = em.epilogue
    if epi and epi.producer == n:
        shift = 1 - len(gen.g.operands(n))
        em = replace(em, epilogue=replace(epi, loads=[(var, slot + shift, at) for var, slot, at in epi.loads]))
    gen.add(n, "split_sum.cu.j2", dict(M=M.c(), N=N.c(), splits=splits, out_index=out_index,
                                       round_bf16=precision == "bf16"),
            gen.temp(n, em), [work], [ceil_div(M * N, ELEMENTWISE_BLOCK), 1, 1], [ELEMENTWISE_BLOCK, 1, 1],
            stem=f"{stem}_sum", what=f"split-K: the {splits} parts of {what}, added in order", em=em)


def emit_conv(gen: Generator, n: str, em: Emission) -> None:  # (x, w) -> y
    x, w = gen.g.operands(n)
    _convolution(gen, n, x, n, w, "forward", em)


def emit_conv_grad_x(gen: Generator, n: str, em: Emission) -> None:  # (g, w, x) -> dx
    gy, w, x = gen.g.operands(n)
    _convolution(gen, n, x, gy, w, "grad_x", em)


def emit_conv_grad_w(gen: Generator, n: str, em: Emission) -> None:  # (x, g, w) -> dw
    x, gy, w = gen.g.operands(n)
    _convolution(gen, n, x, gy, w, "grad_w", em)


def _convolution(gen: Generator, n: str, x: str, y: str, w: str, which: str, em: Emission) -> None:
    """A convolution or one of its adjoints as an implicit GEMM: the tiled product (`gemm`),
    its operands read in place through index arithmetic (no im2col matrix is built), given the
    input x, the output-side tensor y (the output, or the adjoint g) and the kernel w [O, C,
    KH, KW]. The kernel (or g, for grad_w) is operand 1 and plays A; operand 0 plays B.

        forward  y[b, o, oy, ox]  M = O, N = (b, oy, ox), K = (c, fy, fx): w @ the taps of x
        grad_x   dx[b, c, iy, ix] M = C, N = (b, iy, ix), K = (o, fy, fx): w^T @ g, where the
                 tap lands on an output (iy + PH - fy*DH a multiple of the stride, in range)
        grad_w   dw[o, c, fy, fx] M = O, N = (c, fy, fx), K = (b, oy, ox): g @ the taps of x^T;
                 K runs over the batch and every output pixel, so it is split-K

    where a tap reads x at iy = oy*SH - PH + fy*DH (ix likewise) and padding reads zero.
    Conditions that always hold for the geometry (no padding, stride 1) are left out."""
    g = gen.g
    images, C, H, W = g.type(x).shape
    O, _, KH, KW = g.type(w).shape
    Ho, Wo = g.type(y).shape[2:]
    attrs = g.attrs(n)
    (SH, SW), (PH, PW), (DH, DW) = (pair(attrs[k]) for k in ("stride", "padding", "dilation"))
    T, P, Q = KH * KW, Ho * Wo, H * W
    # groups: one product per group (blockIdx.z), each over its group's channels; the operands'
    # and the output's addresses are offset by the group's first channel
    G = attrs["groups"]
    Cg, Og = C // G, O // G
    lets: list = []

    def group(expr: str, step: int) -> str:  # expr, offset by `step` per group
        return expr if G == 1 else f"{expr} + blockIdx.z * {step}"

    def let(name, value):  # a named coordinate, unless it is a name or a number already
        if re.fullmatch(r"-?\w+", value):
            return value
        lets.append((name, value))
        return name

    def taps(out_flat, tap_flat):
        """(image, channel, offset of the x element within the channel, its validity) read by
        output pixel number `out_flat` through channel-and-tap number `tap_flat`."""
        im, oy, ox = (let(v, e) for v, e in zip(("im", "oy", "ox"), _coords(out_flat, [Ho, Wo])))
        ch, fy, fx = (let(v, e) for v, e in zip(("ch", "fy", "fx"), _coords(tap_flat, [KH, KW])))
        if (KH, KW, SH, SW, PH, PW) == (1, 1, 1, 1, 0, 0):  # the same pixel of x
            return im, ch, let("px", _coords(out_flat, [P])[1]), None
        iy = let("iy", _affine([(oy, SH), (fy, DH)], -PH))
        ix = let("ix", _affine([(ox, SW), (fx, DW)], -PW))
        # iy runs over [-PH, (Ho - 1) * SH + (KH - 1) * DH - PH], ix likewise
        valid = [f"{iy} >= 0"] * (PH > 0) + [f"{iy} < {H}"] * ((Ho - 1) * SH + (KH - 1) * DH - PH >= H)
        valid += [f"{ix} >= 0"] * (PW > 0) + [f"{ix} < {W}"] * ((Wo - 1) * SW + (KW - 1) * DW - PW >= W)
        return im, ch, _affine([(iy, W), (ix, 1)]), " && ".join(valid) or None

    def flat(index, extent, stride):  # (index / extent) * stride + row * extent + index % extent
        outer, inner = _coords(index, [extent])
        return _affine([(outer, stride), ("row", extent), (inner, 1)])

    pixels = Size.of([images]) * Size(P)
    per_group = f", one product per group of {Cg} channels (blockIdx.z)" if G > 1 else ""
    if which == "forward":    # y[b, o, p] = sum over (c, fy, fx) of w[o, c, fy, fx] x[b, c, iy, ix]
        im, ch, at, valid = taps("col", "kb")
        at = group(_affine([(im, C * Q), (ch, Q), (at, 1)]), Cg * Q)
        gemm(gen, n, Size(Og), Size(Cg * T), pixels, group(_affine([("row", Cg * T), ("ka", 1)]), Og * Cg * T), at,
             group(flat("col", P, O * P), Og * P), f"conv_{n}", "w @ the taps of x, K over (channel, tap)" + per_group,
             "in1", "in0", batch=G, b_lets=_used(lets, at, valid), b_valid=valid, em=em)
    elif which == "grad_x":   # dx[b, c, q] = sum over (o, fy, fx) of w[o, c, fy, fx] g[b, o, ty / SH, tx / SW]
        im, iy, ix = (let(v, e) for v, e in zip(("im", "iy", "ix"), _coords("col", [H, W])))
        oc, fy, fx = (let(v, e) for v, e in zip(("oc", "fy", "fx"), _coords("kb", [KH, KW])))
        ty = let("ty", _affine([(iy, 1), (fy, -DH)], PH))  # over [PH - (KH - 1) * DH, H - 1 + PH]
        tx = let("tx", _affine([(ix, 1), (fx, -DW)], PW))
        valid = [f"{ty} >= 0"] * (PH - (KH - 1) * DH < 0) + [f"{ty} % {SH} == 0"] * (SH > 1)
        valid += [f"{ty} < {SH * Ho}"] * (H - 1 + PH >= SH * Ho)
        valid += [f"{tx} >= 0"] * (PW - (KW - 1) * DW < 0) + [f"{tx} % {SW} == 0"] * (SW > 1)
        valid += [f"{tx} < {SW * Wo}"] * (W - 1 + PW >= SW * Wo)
        valid = " && ".join(valid) or None
        oy, ox = (ty if SH == 1 else f"{ty} / {SH}"), (tx if SW == 1 else f"{tx} / {SW}")
        at = group(_affine([(im, O * P), (oc, P), (oy, Wo), (ox, 1)]), Og * P)
        o_of, tap_of = _coords("ka", [T])
        gemm(gen, n, Size(Cg), Size(Og * T), Size.of([images]) * Size(Q),
             group(_affine([(o_of, Cg * T), ("row", T), (tap_of, 1)]), Og * Cg * T), at,
             group(flat("col", Q, C * Q), Cg * Q), f"conv_grad_x_{n}",
             "w^T @ g, K over (output channel, tap)" + per_group, "in1", "in0", batch=G,
             a_fast="m" if T == 1 else "k", b_lets=_used(lets, at, valid), b_valid=valid, em=em)
    else:                     # dw[o, c, fy, fx] = sum over (b, oy, ox) of g[b, o, oy, ox] x[b, c, iy, ix]
        im, ch, at, valid = taps("kb", "col")
        at = group(_affine([(im, C * Q), (ch, Q), (at, 1)]), Cg * Q)
        gemm(gen, n, Size(Og), pixels, Size(Cg * T), group(flat("ka", P, O * P), Og * P), at,
             group("row * N + col", Og * Cg * T), f"conv_grad_w_{n}",
             "g @ the taps of x^T, K over (image, output pixel)" + per_group, "in1", "in0", batch=G,
             b_fast="k", b_lets=_used(lets, at, valid), b_valid=valid, em=em)


def _fours(stride: Size) -> bool:
    """A static row length that is a multiple of 4 floats (16 bytes): float4 loads stay aligned."""
    return stride.static is not None and stride.static % 4 == 0


def _coords(flat: str, inner: list[int]) -> list[str]:
    """C for the row-major coordinates of index `flat` over (unbounded, *inner): the first is
    `flat` divided by the product of `inner`, never reduced; coordinates of extent 1 are 0."""
    out, step = [], 1
    for e in reversed(inner):
        at = flat if step == 1 else f"({flat} / {step})"
        out.append("0" if e == 1 else f"{at} % {e}")
        step *= e
    out.append(flat if step == 1 else f"{flat} / {step}")
    return out[::-1]


def _affine(terms, const: int = 0) -> str:
    """C for sum(expr * k for expr, k in terms) + const, without zero terms or unit factors."""
    out = ""
    for e, k in list(terms) + [("1", const)]:
        if k == 0 or e == "0":
            continue
        e = e if re.fullmatch(r"\w+", e) else f"({e})"
        mag = e if abs(k) == 1 else (str(abs(k)) if e == "1" else f"{e} * {abs(k)}")
        out += (" - " if k < 0 else " + ") + mag if out else ("-" if k < 0 else "") + mag
    return out or "0"


def _used(lets: list, *exprs) -> list:
    """The lets (name, value) that `exprs` (C, or None) need, directly or through later lets."""
    text, kept = " ".join(e for e in exprs if e), []
    for name, value in reversed(lets):
        if re.search(rf"\b{name}\b", text):
            kept.append((name, value))
            text += " " + value
    return kept[::-1]
