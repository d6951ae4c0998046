"""Initial values of params and optimizer state, drawn with NumPy from a seed.

All backends start from these arrays, so a given `--seed` gives the same model everywhere.
Fan-in and fan-out follow PyTorch: a [in, out] matrix has fan-in `in`; a convolution kernel
[out, in, kh, kw] has fan-in `in*kh*kw` and fan-out `out*kh*kw`.
"""
from __future__ import annotations

import numpy as np

from ..ir.graph import Graph
from ..ir.ops import STORED
from ..ir.optim import parse_init


def fans(shape) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    rf = int(np.prod(shape[2:]))
    return shape[1] * rf, shape[0] * rf


def draw(spec: str, shape, rng: np.random.Generator) -> np.ndarray:
    name, args = parse_init(spec)
    fan_in, fan_out = fans(shape)
    if name == "zeros":
        a = np.zeros(shape)
    elif name == "ones":
        a = np.ones(shape)
    elif name == "constant":
        a = np.full(shape, args[0])
    elif name == "normal":
        a = rng.normal(args[0], args[1], shape)
    elif name == "uniform":
        a = rng.uniform(args[0], args[1], shape)
    elif name == "xavier":  # Glorot uniform
        lim = np.sqrt(6.0 / (fan_in + fan_out))
        a = rng.uniform(-lim, lim, shape)
    elif name == "he":  # Kaiming normal, for ReLU
        a = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    else:
        raise ValueError(f"unknown initialiser {name}")
    return np.asarray(a, dtype=np.float32)


def initial_state(g: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Every stored value (in graph order, each from its own stream of the seed): params, optimizer
    state and model buffers."""
    out = {}
    for i, n in enumerate(g.holding(*STORED)):
        rng = np.random.default_rng([seed, i])
        out[n] = draw(g.attrs(n)["init"], g.type(n).shape, rng)
    return out
