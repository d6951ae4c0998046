"""What `dlc check` prints of a model, computed from its forward graph: per layer (the model-level
binding a node belongs to: `i3a.b3.conv2d` -> `i3a`) its output type, the params it uses first,
its FLOPs per example and the FLOPs it does once per batch whatever the batch size (a weight
penalty such as `1e-4 * l2(w)`)."""
from __future__ import annotations

from .graph import Graph
from .ops import OPS, PARAM, flops


def batch_symbol(g: Graph) -> str | None:
    """The symbolic dimension that counts examples: the first axis of the inputs (N)."""
    for n in g.inputs:
        shape = g.type(n).shape
        if shape and isinstance(shape[0], str):
            return shape[0]
    return None


def layers(g: Graph) -> dict[str, dict]:
    """Forward nodes grouped by layer: name -> {"out": type or None, "params": [names], "flops": FLOPs
    per example, "batch_flops": FLOPs once per batch}. A node's FLOPs at batch sizes 1 and 2 split it:
    the difference grows with the batch, the rest does not (every FLOP rule is linear in N)."""
    groups: dict[str, dict] = {}
    owner = {}
    batch = batch_symbol(g)
    for n in g.order():
        d = OPS[g.op(n)]
        if d.family in ("source", "const"):
            continue
        key = n.split(".")[0]
        grp = groups.setdefault(key, {"out": None, "params": [], "flops": 0, "batch_flops": 0})
        one = flops(g, n)
        each = flops(g, n, {batch: 2}) - one if batch else one
        grp["flops"] += each
        grp["batch_flops"] += one - each
        if n == key:
            grp["out"] = g.type(n)
        for a in g.operands(n):
            if OPS[g.op(a)].holds == PARAM and a not in owner:
                owner[a] = key
                grp["params"].append(a)
    return groups
