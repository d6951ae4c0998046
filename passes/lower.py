"""Lowering: composite ops written in other ops, before anything else sees them.

A composite op (registry family "composite", e.g. `batch_norm`) declares `lower(graph, node)`,
which adds the ops that compute it and returns the node holding its value. This pass calls that
rule for every composite node, moves the node's users to the result and gives the result the
node's name, so the value a model names keeps its name in every later dump. It runs first in every
pipeline (level 0): autodiff, the optimizer, fusion, codegen and the backends see only the
lowered form. The forward stage (`dlc check`, ONNX export) keeps the composite op.
"""
from __future__ import annotations

from ..ir.graph import Graph
from ..ir.ops import OPS


def lower_composites(g: Graph) -> Graph:
    todo = [n for n in g.order() if OPS[g.op(n)].lower is not None]
    if not todo:
        return g   # nothing to lower: the input, unedited
    g = g.copy()
    for n in todo:
        y = OPS[g.op(n)].lower(g, n)
        g.replace_uses(n, y, meta=False)
        g.remove(n)
        g.rename(y, n)
    return g
