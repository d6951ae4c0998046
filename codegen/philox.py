"""Philox4x32-10 in C, for the generated kernels (CUDA and the emulator share this text).

It is the same generator as the NumPy one in ir/philox.py, which the interpreter runs and whose
docstring gives the counters and keys dropout uses; the two give the same bits, so every backend
draws the same dropout masks from the same seed. The round count and constants come from there.
"""
from __future__ import annotations

from ..ir.philox import M0, M1, ROUNDS, W0, W1

PHILOX_C = r"""
/* Philox4x32-10: word 0 of the output for key (k0, k1) and counter (c0, c1, c2, c3). */
__device__ __forceinline__ unsigned int dlc_philox_word0(unsigned int k0, unsigned int k1,
        unsigned int c0, unsigned int c1, unsigned int c2, unsigned int c3) {
    for (int r = 0; r < %(rounds)d; ++r) {
        unsigned long long p0 = 0x%(m0)08Xull * (unsigned long long)c0;
        unsigned long long p1 = 0x%(m1)08Xull * (unsigned long long)c2;
        unsigned int hi0 = (unsigned int)(p0 >> 32), lo0 = (unsigned int)p0;
        unsigned int hi1 = (unsigned int)(p1 >> 32), lo1 = (unsigned int)p1;
        c0 = hi1 ^ c1 ^ k0; c1 = lo1; c2 = hi0 ^ c3 ^ k1; c3 = lo0;
        k0 += 0x%(w0)08Xu; k1 += 0x%(w1)08Xu;
    }
    return c0;
}
/* Uniform in [0, 1) for element i of a dropout op: the top 24 bits of word 0. */
__device__ __forceinline__ float dlc_uniform(unsigned int seed, unsigned int salt,
        unsigned long long i, unsigned int step) {
    unsigned int w = dlc_philox_word0(seed, salt, (unsigned int)i, (unsigned int)(i >> 32), step, 0u);
    return (float)(w >> 8) * 5.9604644775390625e-08f;
}
""" % dict(rounds=ROUNDS, m0=M0, m1=M1, w0=W0, w1=W1)
