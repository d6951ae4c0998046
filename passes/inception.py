"""Inception reductions (-O2): sibling 1x1 convolutions merged into one wider convolution.

In an inception module, three 1x1 convolutions read the same tensor (the 1x1 branch and the
reductions before the 3x3 and 5x5 branches). Each is a matrix product over the channels at every
pixel, so together they are one product with their kernels stacked along the output channels:

    conv2d(x, w1), conv2d(x, w3r), conv2d(x, w5r)
      ->  z = conv2d(x, concat(w1, w3r, w5r, axis 0));  branch i = slice(z, axis 1, ...)

The pointwise chain each branch applies to its convolution (the prelude's `+ b` then `relu`) is
merged too, when every branch applies the same ops: a per-channel operand of each branch ([o, 1, 1],
the bias) is concatenated the same way, an operand shared by all (a constant) is kept. So the
merged product keeps its epilogue (bias + activation in the GEMM's kernel, see fusion.py), and
the branches read slices of its one output.

The rewrite runs on the forward graph, before autodiff, so training gets the merge too (TensorRT
and TVM do it for inference only): the adjoint of the stacked kernel is one weight-gradient GEMM
whose result is the stacked dW (each branch's dW a slice of it), the adjoint of x one
input-gradient GEMM summing the three branches' contributions, and autodiff joins the slices'
adjoints into one concat (autodiff.py, `_join_slices`). The model computes the same function; only
the rounding of sums may differ.
"""
from __future__ import annotations

import json

from ..ir.graph import Graph
from ..ir.ops import OPS

_ONE = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}  # a plain 1x1 convolution


def _is_1x1(g: Graph, n: str) -> bool:
    if g.op(n) != "conv2d":
        return False
    a = g.attrs(n)
    return tuple(g.type(g.operands(n)[1]).shape[2:]) == (1, 1) and all(
        a[k] in (v, [v, v], (v, v)) for k, v in _ONE.items())


def _chain(g: Graph, conv: str) -> list[tuple]:
    """The pointwise steps applied to `conv` alone: (node, op, slot of the chain value, the other
    operand or None, its kind: 'channel' for [o, 1, 1] / [1, o, 1, 1], 'shared', or None)."""
    steps, v = [], conv
    o = g.type(conv).shape[1]
    while True:
        users = g.users(v)
        if len(users) != 1 or v in g.meta.outputs.values():
            return steps
        u = users[0]
        d = OPS[g.op(u)]
        args = g.operands(u)
        if d.family != "elementwise" or g.type(u) != g.type(conv) or args.count(v) != 1:
            return steps
        slot = args.index(v)
        other = args[1 - slot] if len(args) == 2 else None
        kind = None
        if other is not None:
            shape = tuple(g.type(other).shape)
            kind = "channel" if shape in ((o, 1, 1), (1, o, 1, 1)) else "shared"
        steps.append((u, g.op(u), slot, other, kind))
        v = u


def merge_1x1(g: Graph) -> Graph:
    """Merge every set of two or more 1x1 convolutions (stride 1, no padding) that read the same
    tensor, with the pointwise steps all of them apply."""
    g = g.copy()
    siblings: dict[tuple, list[str]] = {}
    for n in g.order():
        if _is_1x1(g, n):
            siblings.setdefault((g.operands(n)[0], json.dumps(g.attrs(n), sort_keys=True)), []).append(n)
    for (x, _), convs in siblings.items():
        if len(convs) >= 2:
            _merge(g, x, convs)
    return g


def _merge(g: Graph, x: str, convs: list[str]) -> None:
    chains = [_chain(g, c) for c in convs]
    k = 0  # the steps every branch applies alike
    while all(len(ch) > k for ch in chains):
        sig = {(op, slot, kind) for _, op, slot, _, kind in (ch[k] for ch in chains)}
        shared = {ch[k][3] for ch in chains}
        if len(sig) != 1 or (chains[0][k][4] == "shared" and len(shared) != 1) or (
                chains[0][k][4] == "channel" and len({g.type(ch[k][3]).rank for ch in chains}) != 1):
            break
        k += 1
    loc = g.loc(convs[0])
    base = _common_prefix(convs) + "conv1x1"
    weights = [g.operands(c)[1] for c in convs]
    wcat = g.add("concat", weights, {"axis": 0}, name=f"{base}.w", loc=loc)
    z = g.add("conv2d", [x, wcat], dict(g.attrs(convs[0])), name=base, loc=loc)
    for j in range(k):
        _, op, slot, other, kind = chains[0][j]
        if kind == "channel":
            parts = [ch[j][3] for ch in chains]
            other = g.add("concat", parts, {"axis": g.type(parts[0]).rank - 3}, name=f"{base}.{op}.arg", loc=loc)
        args = [z] if other is None else ([z, other] if slot == 0 else [other, z])
        z = g.add(op, args, dict(g.attrs(chains[0][j][0])), name=f"{base}.{op}", loc=g.loc(chains[0][j][0]))
    start = 0
    for c, ch in zip(convs, chains):
        last = ch[k - 1][0] if k else c
        o = g.type(c).shape[1]
        piece = g.add("slice", [z], {"axis": 1, "start": start, "stop": start + o}, name=f"{last}.slice", loc=g.loc(last))
        start += o
        g.replace_uses(last, piece)
        dead = [c] + [step[0] for step in ch[:k]]
        for n in reversed(dead):
            g.remove(n)
        g.rename(piece, last)          # the branch keeps its name: %i3a.b1 is now a slice
        g.remap_meta({piece: last})
    return None


def _common_prefix(names: list[str]) -> str:
    """The dotted scope the convolutions share (`i3a.` for i3a.b1.conv2d, i3a.r3.conv2d)."""
    parts = [n.split(".") for n in names]
    out = []
    for bits in zip(*parts):
        if len(set(bits)) != 1:
            break
        out.append(bits[0])
    return ".".join(out) + "." if out else ""
