"""What `dlc check` prints of a model, computed from its forward graph: per layer (the model-level
binding a node belongs to: `i3a.b3.conv2d` -> `i3a`) its output type, the params it uses first and
its FLOPs per example."""
from __future__ import annotations

from .graph import Graph
from .ops import OPS, PARAM, flops


def layers(g: Graph) -> dict[str, dict]:
    """Forward nodes grouped by layer: name -> {"out": type or None, "params": [names], "flops": int}."""
    groups: dict[str, dict] = {}
    owner = {}
    for n in g.order():
        d = OPS[g.op(n)]
        if d.family in ("source", "const"):
            continue
        key = n.split(".")[0]
        grp = groups.setdefault(key, {"out": None, "params": [], "flops": 0})
        grp["flops"] += flops(g, n)
        if n == key:
            grp["out"] = g.type(n)
        for a in g.operands(n):
            if OPS[g.op(a)].holds == PARAM and a not in owner:
                owner[a] = key
                grp["params"].append(a)
    return groups
