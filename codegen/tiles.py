"""GEMM tiles and split-K: the launch shape of the tiled product (matmul.cu.j2).

Every product (a matmul, a batched matmul, a convolution or one of its adjoints as an implicit
GEMM) runs one template; what varies is its tile (`gemm_tile`: BM x BN outputs a block, BK-deep
slices of K, TM x TN outputs a thread) and whether K is summed in parts (`split_k`). Both are
decided from the product's sizes alone, here, with the constants they are measured against.
"""
from __future__ import annotations

from .sizes import Size

GEMM_TILE = (64, 64, 16, 8, 8)  # matmul: BM x BN outputs per block, BK-deep slices, TM x TN per thread
# ... and for a static side too short to fill 64 (a convolution's few channels, 10 classes), a tile
# that wastes fewer FMAs on rows or columns past the end (`gemm_tile`); 64 threads in each, at
# least 8 FMAs per shared-memory load (TM/4 + TN/4 float4 loads for TM x TN FMAs per k step)
GEMM_SHORT_TILES = [  # (most rows, most columns) -> tile, the first that fits
    ((32, 32), (32, 32, 16, 4, 4)),
    ((16, None), (16, 128, 16, 4, 8)),
    ((32, None), (32, 64, 16, 4, 8)),
    ((None, 16), (128, 16, 16, 8, 4)),
    ((None, 32), (64, 32, 16, 8, 4)),
]
# Split-K (`split_k`): a product whose output is static and has fewer tiles than
# SPLIT_TARGET_BLOCKS (a weight gradient: its K runs over the batch, or over batch x pixels for a
# convolution) would leave most of a GPU idle, each block walking a long K alone. It sums K in S
# parts instead, one per blockIdx.z, and a second kernel adds the S partial tiles in a fixed order
# (no atomics: the same step gives the same bits, as `--resume` promises). S brings the blocks up
# to about one wave on an H100 (132 SMs), each part keeping at least SPLIT_MIN_K of K (the
# estimate, a symbol taken as Size.estimate's guess) so that its FMAs (SPLIT_MIN_K per output)
# outweigh the round trip of its partial tile through the workspace (2 accesses per output).
SPLIT_TARGET_BLOCKS = 132
SPLIT_MIN_K = 32
SPLIT_MIN_PARTS = 4  # fewer parts save at most 1/2..2/3 of a product short enough to have them:
                     # less than the second launch costs (mlp's weight gradients, K = batch, stay whole)


def gemm_tile(M: Size, N: Size) -> tuple:
    """(BM, BN, BK, TM, TN) for an M x N product: GEMM_TILE, unless a static side is short."""
    def within(size: Size, most) -> bool:
        return most is None or (size.static is not None and size.static <= most)
    return next((tile for (rows, cols), tile in GEMM_SHORT_TILES if within(M, rows) and within(N, cols)), GEMM_TILE)


def split_k(M: Size, K: Size, N: Size, tile=GEMM_TILE) -> int:
    """How many parts split-K sums K in (1: no split): for a static output of fewer tiles than
    SPLIT_TARGET_BLOCKS, enough parts to bring the blocks up to it, each part at least
    SPLIT_MIN_K of K's estimate, and no split into fewer than SPLIT_MIN_PARTS. An output that
    grows with the batch fills the GPU by itself."""
    BM, BN = tile[:2]
    if M.static is None or N.static is None:
        return 1
    tiles = -(-M.static // BM) * -(-N.static // BN)
    parts = min(-(-SPLIT_TARGET_BLOCKS // tiles), K.estimate() // SPLIT_MIN_K)
    return parts if parts >= SPLIT_MIN_PARTS else 1


MMA_WARP_SIDE = 32  # the tensor-core product (matmul_mma.cu.j2): a warp computes up to 32x32 outputs


def mma_warps(tile) -> tuple:
    """(WM, WN): the warps of a tensor-core block, WM along rows and WN along columns, for a
    (BM, BN, ...) tile: each warp a MMA_WARP_SIDE-wide share of each side (the whole side when
    it is shorter: 16 rows is one m16 fragment, 16 columns two n8 fragments). The 64x64 tile
    runs 4 warps of 32x32 outputs, 2x4 m16n8 fragments each; a short tile 1 to 4 (16x128: 4
    warps of 16x32). A tile must be made of whole fragments and mma steps: BM a multiple of 16,
    BN of 8, BK of 16 (the BF16 step)."""
    BM, BN, BK = tile[:3]
    assert BM % 16 == 0 and BN % 8 == 0 and BK % 16 == 0, f"tile {tile} is not made of m16n8k16 fragments"
    return max(1, BM // MMA_WARP_SIDE), max(1, BN // MMA_WARP_SIDE)
