"""Reverse-mode automatic differentiation, as a pass over the graph.

Walk the nodes from the loss back to the params in reverse topological order. Each node's
adjoint is the sum of the contributions its users sent it (a value used twice receives both);
the op's derivative rule (in the registry) turns that adjoint into contributions for its
operands, built from ordinary IR ops; contributions to a broadcast operand are summed over the
broadcast axes. The result is the same graph plus gradient nodes, with `meta.grads` naming the
gradient of every trainable param.
"""
from __future__ import annotations

import networkx as nx

from ..ir.errors import DlcError
from ..ir.graph import Graph
from ..ir.ops import OPS, Builder, view
from ..ir.types import TensorType


def unbroadcast(b: Builder, c: str, target: TensorType) -> str:
    """Sum a contribution over the axes along which its operand was broadcast."""
    cs, ts = b.graph.type(c).shape, target.shape
    if cs == ts:
        return c
    lead = len(cs) - len(ts)
    if lead:
        c = b.sum(c, axis=list(range(lead)))
    ones = [i for i, d in enumerate(ts) if d == 1 and cs[lead + i] != 1]
    if ones:
        c = b.sum(c, axis=ones, keepdims=True)
    return c


def autodiff(g: Graph) -> Graph:
    if not g.meta.loss:
        return g
    g = g.copy()
    g.meta.stage = "backward"
    loss, wrt = g.meta.loss, g.trainable
    needed = nx.ancestors(g.nx, loss) | {loss}
    reaches = set(wrt).union(*(nx.descendants(g.nx, p) for p in wrt)) if wrt else set()
    active = needed & reaches

    adjoints: dict[str, list[str]] = {loss: [g.add("const", [], {"value": 1.0}, name=f"d.{loss}", loc=g.loc(loss))]}
    for n in reversed(g.order()):
        if n not in active or n not in adjoints:
            continue
        b = Builder(g, prefix=f"d.{n}", loc=g.loc(n))
        grad = _total(b, n, adjoints.pop(n))
        if g.op(n) == "param":
            g.meta.grads[n] = grad
            continue
        rule = OPS[g.op(n)].vjp
        if rule is None:
            raise DlcError(f"{g.op(n)} has no derivative rule, so %{n} cannot be differentiated", g.loc(n))
        node = view(g, n)
        for arg, thunk in zip(node.args, rule(b, node, grad)):
            if arg in active and thunk is not None:
                adjoints.setdefault(arg, []).append(unbroadcast(b, thunk(), g.type(arg)))
    for p in wrt:  # a param the loss does not depend on has a zero gradient
        if p not in g.meta.grads:
            b = Builder(g, prefix=f"d.{p}", loc=g.loc(p))
            g.meta.grads[p] = b.broadcast_like(b.const(0.0), p)
    g.meta.grads = {p: g.meta.grads[p] for p in wrt}
    return g


def _total(b: Builder, n: str, parts: list[str]) -> str:
    """The adjoint of `n`: its one contribution, or the sum of several (fan-out)."""
    total = parts[0]
    for p in parts[1:]:
        total = b.graph.add("add", [total, p], name=f"d.{n}", loc=b.loc)
    return total
