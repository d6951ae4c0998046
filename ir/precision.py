"""Precision of the matrix products (`--precision`, `Options.precision`, `Graph.meta.precision`).

    fp32  every product on the CUDA cores in fp32 (the default; today's code)
    tf32  matrix products and convolutions take TF32 operands (fp32 with a 10-bit mantissa,
          rounded to nearest, ties away from zero, as `cvt.rna.tf32.f32` rounds) and accumulate
          in fp32 on the tensor cores; everything else fp32
    bf16  products take BF16 operands (8-bit mantissa, rounded to nearest even, as
          `cvt.rn.bf16.f32` rounds) and accumulate in fp32

A product may carry a floor, its attribute `min_precision`: it then runs at the graph's precision
or at the floor, whichever keeps more mantissa bits (`product_precision`), and so do the products
of its derivative. `matmul(h, wh, min_precision = "tf32")` in a recurrent cell reads the state with
TF32's 10 bits at bf16, not BF16's 7 (docs/precision.md, "Recurrences"; the prelude's own cells
set no floor).

The functions here round NumPy arrays exactly as the hardware rounds an fp32 value, so that the
interpreter computes what the tensor cores compute, up to the order of the fp32 accumulation.
A float64 array is rounded from its own value (the interpreter's float64 mode) to the same
number of mantissa bits.
"""
from __future__ import annotations

import numpy as np

PRECISIONS = ("fp32", "tf32", "bf16")
MANTISSA_BITS = {"fp32": 23, "tf32": 10, "bf16": 7}   # explicit mantissa bits of an operand
MIN_PRECISION = "min_precision"   # a product's attribute: the coarsest precision it may run at, or None


def finer(a: str, b: str) -> str:
    """Of two precisions, the one whose operands keep more mantissa bits."""
    return a if MANTISSA_BITS[a] >= MANTISSA_BITS[b] else b


def product_precision(g, n: str) -> str:
    """The precision product node `n` of graph `g` runs at: the graph's, unless the node's
    `min_precision` is finer."""
    floor = g.attrs(n).get(MIN_PRECISION)
    return finer(g.meta.precision, floor) if floor else g.meta.precision


def _round_bits(x: np.ndarray, keep: int, ties_even: bool) -> np.ndarray:
    """x (float32 or float64) with its mantissa rounded to `keep` explicit bits. Infinities and
    NaNs pass through; a value that rounds past the largest finite one becomes infinite, as in
    the hardware conversion."""
    x = np.asarray(x)
    if x.dtype == np.float32:
        ui, total = np.uint32, 23
    elif x.dtype == np.float64:
        ui, total = np.uint64, 52
    else:
        raise TypeError(f"expected a float32 or float64 array, found {x.dtype}")
    drop = total - keep
    if drop <= 0:
        return x.copy()
    bits = x.view(ui)
    one = ui(1)
    half = ui(1) << ui(drop - 1)
    if ties_even:  # add half an ulp minus one, plus the lowest kept bit: ties go to the even neighbour
        bias = (half - one) + ((bits >> ui(drop)) & one)
    else:          # ties away from zero: add half an ulp to the magnitude
        bias = np.full_like(bits, half)
    mask = ~((one << ui(drop)) - one)
    rounded = ((bits + bias) & mask).view(x.dtype)   # sign-magnitude: the carry rounds |x| up
    return np.where(np.isfinite(x), rounded, x)


def round_tf32(x: np.ndarray) -> np.ndarray:
    """x rounded to TF32 (10 mantissa bits, nearest, ties away from zero: cvt.rna.tf32.f32)."""
    return _round_bits(x, 10, ties_even=False)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """x rounded to BF16 (7 mantissa bits, nearest, ties to even: cvt.rn.bf16.f32)."""
    return _round_bits(x, 7, ties_even=True)


def round_operand(x: np.ndarray, precision: str) -> np.ndarray:
    """A matrix product's operand as the tensor cores read it at `precision`."""
    if precision == "fp32":
        return x
    if precision == "tf32":
        return round_tf32(x)
    if precision == "bf16":
        return round_bf16(x)
    raise ValueError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")


def narrow_bf16(x: np.ndarray) -> np.ndarray:
    """float32 x as a 16-bit buffer holds it (codegen/storage.py, `dlc_bf16` in module.cu.j2): the
    high half of round_bf16(x)'s bits, a NaN as the quiet NaN of its sign (0x7fc0, 0xffc0)."""
    x = np.asarray(x, dtype=np.float32)
    high = (round_bf16(x).view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    sign = ((x.view(np.uint32) >> np.uint32(16)) & np.uint32(0x8000)).astype(np.uint16)
    return np.where(np.isnan(x), sign | np.uint16(0x7fc0), high)


def widen_bf16(bits: np.ndarray) -> np.ndarray:
    """The float32 values of a 16-bit buffer's elements (exact: BF16 is fp32's high half)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
