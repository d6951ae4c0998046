"""Philox4x32-10, the counter-based random generator behind dropout, in NumPy.

Counter-based means a random number is a pure function of (key, counter): no state to carry,
any element drawn independently. The generated kernels carry the same generator in C
(codegen/philox.py), which gives the same bits as the NumPy version here.
dropout draws, for element i of the op with salt s at training step t under seed S,
    key = (S mod 2^32, s),  counter = (i mod 2^32, i div 2^32, t, 0)
and keeps the element when (word0 >> 8) * 2^-24 >= p. The constants are those of Salmon et al.,
"Parallel random numbers: as easy as 1, 2, 3" (SC'11).
"""
from __future__ import annotations

import numpy as np

M0, M1 = 0xD2511F53, 0xCD9E8D57   # round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85   # key schedule increments (golden ratio, sqrt(3) - 1)
ROUNDS = 10
_MASK = np.uint64(0xFFFFFFFF)


def philox_word0(k0: int, k1: int, c0, c1, c2: int, c3: int = 0) -> np.ndarray:
    """The first output word of Philox4x32-10 for arrays of counters (c0, c1) and scalar c2, c3."""
    c0 = np.asarray(c0, np.uint64)
    c1 = np.asarray(c1, np.uint64)
    c2 = np.full_like(c0, c2)
    c3 = np.full_like(c0, c3)
    k0, k1 = np.uint64(k0 & 0xFFFFFFFF), np.uint64(k1 & 0xFFFFFFFF)
    for r in range(ROUNDS):
        p0 = np.uint64(M0) * c0
        p1 = np.uint64(M1) * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & _MASK
        hi1, lo1 = p1 >> np.uint64(32), p1 & _MASK
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + np.uint64(W0)) & _MASK
        k1 = (k1 + np.uint64(W1)) & _MASK
    return c0.astype(np.uint32)


def uniform(seed: int, salt: int, step: int, n: int) -> np.ndarray:
    """n float32 values in [0, 1), element i from counter (i, step)."""
    i = np.arange(n, dtype=np.uint64)
    w = philox_word0(seed, salt, i & _MASK, i >> np.uint64(32), step)
    return ((w >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24))


def keep_mask(seed: int, salt: int, step: int, shape, p: float) -> np.ndarray:
    return uniform(seed, salt, step, int(np.prod(shape))).reshape(shape) >= np.float32(p)
