"""Canonicalisation: transpose folding, constant folding, common-subexpression elimination and
dead-code elimination. Each is a function from graph to a new graph."""
from __future__ import annotations

import json

import numpy as np

from ..ir.graph import Graph
from ..ir.ops import OPS


def _kept(d) -> bool:
    """Sources (the model's interface) and ops with effects stay, whether or not a root needs them."""
    return d.family == "source" or not d.pure


def replace_node(g: Graph, n: str, op: str, operands, attrs) -> None:
    """Put a new op application in the place of `n`: same name, same position in the order."""
    seq, loc = g.nx.nodes[n]["seq"], g.loc(n)
    new = g.add(op, operands, attrs, name=f"{n}.new", loc=loc)
    g.replace_uses(n, new, meta=False)  # the new node takes the old name: references stay valid
    g.remove(n)
    g.rename(new, n)
    g.nx.nodes[n]["seq"] = seq


def fold_transpose(g: Graph) -> Graph:
    """matmul(transpose(a), b) -> matmul[ta](a, b): the product reads its operand transposed,
    so no transpose kernel runs."""
    g = g.copy()
    for n in g.nodes_of("matmul"):
        args = g.operands(n)
        attrs = dict(g.attrs(n))
        changed = False
        for i, flag in ((0, "ta"), (1, "tb")):
            a = args[i]
            if g.op(a) == "transpose" and g.attrs(a)["perm"] in (None, [1, 0], (1, 0)):
                args[i] = g.operands(a)[0]
                attrs[flag] = not attrs[flag]
                changed = True
        if changed:
            replace_node(g, n, "matmul", args, attrs)
    return _drop_dead(g)  # on this pass's own copy


def constant_fold(g: Graph) -> Graph:
    """Evaluate scalar ops whose operands are all constants, and sizes of static shapes."""
    g = g.copy()
    for n in g.order():
        op, args = g.op(n), g.operands(n)
        d = OPS[op]
        value = None
        if op == "size":
            t = g.type(args[0])
            axes = range(t.rank) if g.attrs(n)["axis"] is None else np.atleast_1d(g.attrs(n)["axis"])
            dims = [t.shape[a] for a in axes]
            if all(isinstance(x, int) for x in dims):
                value = float(np.prod(dims))
        elif d.family != "source" and d.pure and args and g.type(n).shape == () \
                and all(OPS[g.op(a)].family == "const" for a in args) and not d.needs_dims:
            vals = [np.float64(g.attrs(a)["value"]) for a in args]
            with np.errstate(all="ignore"):
                value = float(d.ref(*vals, **g.attrs(n)))
            if not np.isfinite(value):
                value = None  # keep it visible rather than bake an inf into the model
        if value is not None:
            replace_node(g, n, "const", [], {"value": value})
    return _drop_dead(g)  # on this pass's own copy


def cse(g: Graph) -> Graph:
    """Merge nodes that apply the same op with the same attributes to the same operands."""
    g = g.copy()
    seen: dict[tuple, str] = {}
    merged: dict[str, str] = {}
    for n in g.order():
        op = g.op(n)
        if _kept(OPS[op]):
            continue
        key = (op, json.dumps(g.attrs(n), sort_keys=True), tuple(g.operands(n)), str(g.type(n)))
        if key in seen:
            g.replace_uses(n, seen[key], meta=False)
            g.remove(n)
            merged[n] = seen[key]
        else:
            seen[key] = n
    g.remap_meta(merged)  # once, not per merge: linear in the graph
    return g


def dce(g: Graph) -> Graph:
    """Remove nodes that nothing wanted (outputs, loss, gradients, assignments) depends on."""
    return _drop_dead(g.copy())


def _drop_dead(g: Graph) -> Graph:
    """DCE in place, on a graph the calling pass has already copied."""
    live = g.upstream(g.roots())
    for n in list(g.nx):
        if n not in live and not _kept(OPS[g.op(n)]):
            g.remove(n)
    return g

