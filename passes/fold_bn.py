"""Batch norm folded into the product before it (-O2), in the evaluation form.

In an evaluation run, batch norm after a convolution is arithmetic by constants per channel:

    y = conv(x, w) + b;   out = (y - mean) * gamma / sqrt(var + eps) + beta

and a chain of such steps is `conv(x, w) * s + t` with s, t per output channel. A product is
linear in its weight per output channel (`OpDef.channel_weight`), so this is

    out = conv(x, w * s) + t        s = gamma / sqrt(var + eps),  t = (b - mean) * s + beta

The pass finds, in the evaluation form only (nodes that the evaluation outputs need and the rest
of the plan does not: the training step is never touched), a product (conv2d, or matmul with one
weight matrix) followed by a chain of elementwise steps that the registry declares affine in the
chain's operand (`OpDef.affine`: add, sub, mul, div), each by a value per channel (1 on every
other axis) computed from params, buffers and constants alone, each intermediate value read by
the next step only. With at least one scaling step in the chain, it writes

    %END.scale, %END.shift   s and t, composed from the steps' constants (work on weights only)
    %END.weight              the weight times s, reshaped along the weight's channel axis
    %END.product             the product on the scaled weight
    %END = add(%END.product, %END.shift)   (the chain's last node, under its name)

and drops the old chain. `-O2`'s fusion then runs `+ t` (and a following ReLU or residual add) in
the product's epilogue: the activation path of a conv + batch norm + ReLU is one kernel, and the
per-channel and weight arithmetic a few small kernels over C values and the weights.
"""
from __future__ import annotations

from ..ir.graph import Graph
from ..ir.ops import OPS
from ..ir.registry import view
from ..ir.types import TensorType
from .canonicalize import _drop_dead

SHIFTS = ("add", "sub")   # affine roles that move t only; "mul" and "div" scale both s and t


def _per_channel(k: TensorType, out: TensorType, axis: int) -> bool:
    """Whether `k` broadcast against `out` varies along `axis` only (a constant per channel)."""
    if k.rank > out.rank or not k.is_float:
        return False
    shape = (1,) * (out.rank - k.rank) + tuple(k.shape)
    return all(d == 1 for i, d in enumerate(shape) if i != axis) and shape[axis] in (1, out.shape[axis])


def fold_batch_norm(g: Graph) -> Graph:
    if not g.eval_roots():
        return g
    only_eval = g.upstream(g.eval_roots()) - g.upstream(g.roots(evaluation=False))
    if not any(OPS[g.op(n)].channel_weight for n in only_eval):
        return g
    g = g.copy()
    wanted = set(g.roots())
    varies = g.downstream(g.inputs)   # values that depend on the data fed
    for p in g.order():
        d = OPS[g.op(p)]
        if p not in only_eval or p not in g or d.channel_weight is None:
            continue
        where = d.channel_weight(view(g, p))
        if where is None:
            continue
        axis, slot, waxis = where
        w = g.operands(p)[slot]
        if w in varies or not isinstance(g.type(p).shape[axis], int):
            continue   # only a weight (params, constants) is scaled: work that does not grow with the batch
        steps, end = _chain(g, p, axis, only_eval, wanted, varies)
        if not any(role not in SHIFTS for role, _ in steps):
            continue   # only biases: nothing to fold
        _fold(g, p, end, steps, axis, slot, waxis)
    return _drop_dead(g)


def _chain(g: Graph, p: str, axis: int, only_eval: set, wanted: set, varies: set):
    """The affine steps after product `p`: [(role, constant)], and the last node of the chain."""
    steps, cur = [], p
    while cur not in wanted:
        users = g.users(cur)
        if len(users) != 1 or users[0] not in only_eval:
            break
        u = users[0]
        args, affine = g.operands(u), OPS[g.op(u)].affine
        if affine is None or args.count(cur) != 1 or g.type(u) != g.type(p):
            break
        i = args.index(cur)
        k = args[1 - i]
        if affine[i] is None or k in varies or not _per_channel(g.type(k), g.type(p), axis) \
                or p in g.upstream([k]):
            break
        steps.append((affine[i], k))
        cur = u
    return steps, cur


def _fold(g: Graph, p: str, end: str, steps: list, axis: int, slot: int, waxis: int) -> None:
    loc = g.loc(end)

    def add(op, args, hint, at=None, **attrs):
        return g.add(op, args, attrs, name=f"{end}.{hint}", loc=at or loc)
    s = t = None   # the chain is p * s + t
    for role, k in steps:
        if role in SHIFTS:
            t = (k if role == "add" else add("neg", [k], "shift")) if t is None else add(role, [t, k], "shift")
        else:
            s = (k if role == "mul" else add("div", [add("const", [], "one", value=1.0), k], "scale")) \
                if s is None else add(role, [s, k], "scale")
            t = None if t is None else add(role, [t, k], "shift")
    c = g.type(p).shape[axis]
    weight = g.operands(p)[slot]
    wshape = [1] * g.type(weight).rank
    wshape[waxis] = c if g.type(s).numel() == c else 1
    scaled = add("mul", [weight, add("reshape", [s], "scale_w", shape=wshape)], "weight", g.loc(p))
    args = g.operands(p)
    args[slot] = scaled
    y = add(g.op(p), args, "product", g.loc(p), **g.attrs(p))
    if t is not None:
        y = add("add", [y, t], "folded")
    assert g.type(y) == g.type(end), (g.type(y), g.type(end))
    g.replace_uses(end, y, meta=False)   # the chain's last node keeps its name: references stay valid
    g.remove(end)
    g.rename(y, end)

