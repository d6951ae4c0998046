"""The graph IR: a networkx multi-digraph of op applications.

A node is one op application, keyed by its SSA name (derived from the `.dln` name). Its data:
`op` (a registry name), `attrs` (a dict of plain values), `type` (a TensorType), `loc` (the `.dln`
place it came from, or None) and `seq` (insertion order, which makes every listing
deterministic). An edge `a -> n` with key `i` says "a is operand i of n"; the same value may be
used twice, hence the multigraph.

Model-level facts live beside the nodes: the named outputs, the loss, the gradient of each
parameter, the optimizer and its settings, frozen parameters and training defaults.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

import networkx as nx

from .errors import DlcError, Loc
from .types import TensorType


@dataclass
class Meta:
    name: str = "model"
    stage: str = "forward"
    outputs: dict = field(default_factory=dict)   # output name -> node
    loss: str | None = None                        # node minimised
    optimizer: tuple | None = None                 # (name, {setting: value})
    frozen: list = field(default_factory=list)     # param names kept fixed
    grads: dict = field(default_factory=dict)      # param name -> gradient node
    train: dict = field(default_factory=dict)      # training defaults from the .dln (data, epochs, ...)
    groups: dict = field(default_factory=dict)     # fusion (-O2): root node -> (rule, member nodes in order)


class Graph:
    """The IR of one model. Passes build new graphs (`copy()` first); they never edit their input."""

    def __init__(self, name: str = "model"):
        self.nx = nx.MultiDiGraph()
        self.meta = Meta(name=name)
        self.sources: dict[str, str] = {}   # file name -> text, for error carets and code comments
        self._seq = 0

    # -- building -------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A node name not used yet, as close to `hint` as possible."""
        hint = re.sub(r"[^\w.]", "_", hint) or "t"
        if not (hint[0].isalpha() or hint[0] == "_"):
            hint = "t" + hint
        if hint not in self.nx:
            return hint
        i = 1
        while f"{hint}.{i}" in self.nx:
            i += 1
        return f"{hint}.{i}"

    def add(self, op: str, operands=(), attrs=None, name: str | None = None, loc: Loc | None = None,
            type: TensorType | None = None) -> str:
        """Add one op application; its type comes from the op's shape rule unless given."""
        from .ops import OPS, infer_type
        if op not in OPS:
            raise DlcError(f"unknown op '{op}'", loc)
        attrs = OPS[op].complete_attrs(dict(attrs or {}), loc)
        operands = list(operands)
        for o in operands:
            if o not in self.nx:
                raise DlcError(f"use of undefined value %{o}", loc)
        if type is None:
            try:
                type = infer_type(op, [self.type(o) for o in operands], attrs)
            except DlcError as e:
                raise e.located(loc)
        name = self.fresh(name or op)
        self.nx.add_node(name, op=op, attrs=attrs, type=type, loc=loc, seq=self._seq)
        self._seq += 1
        for i, o in enumerate(operands):
            self.nx.add_edge(o, name, key=i)
        return name

    def copy(self) -> "Graph":
        g = Graph(self.meta.name)
        g.nx = self.nx.copy()
        for n in g.nx:  # attrs dicts must not be shared between graphs
            g.nx.nodes[n]["attrs"] = dict(g.nx.nodes[n]["attrs"])
        g.meta = copy.deepcopy(self.meta)
        g.sources = self.sources
        g._seq = self._seq
        return g

    # -- reading --------------------------------------------------------------------------
    def op(self, n: str) -> str:
        return self.nx.nodes[n]["op"]

    def attrs(self, n: str) -> dict:
        return self.nx.nodes[n]["attrs"]

    def type(self, n: str) -> TensorType:
        return self.nx.nodes[n]["type"]

    def loc(self, n: str) -> Loc | None:
        return self.nx.nodes[n]["loc"]

    def operands(self, n: str) -> list[str]:
        edges = sorted(self.nx.in_edges(n, keys=True), key=lambda e: e[2])
        return [u for u, _, _ in edges]

    def users(self, n: str) -> list[str]:
        return sorted({v for _, v in self.nx.out_edges(n)}, key=lambda v: self.nx.nodes[v]["seq"])

    def order(self) -> list[str]:
        """A deterministic topological order: among ready nodes, the oldest first."""
        seq = self.nx.nodes
        return list(nx.lexicographical_topological_sort(self.nx, key=lambda n: seq[n]["seq"]))

    def nodes_of(self, *ops: str) -> list[str]:
        return [n for n in self.order() if self.op(n) in ops]

    @property
    def inputs(self) -> list[str]:
        return self.nodes_of("input")

    @property
    def params(self) -> list[str]:
        return self.nodes_of("param")

    @property
    def trainable(self) -> list[str]:
        return [p for p in self.params if p not in self.meta.frozen]

    def upstream(self, roots) -> set[str]:
        """`roots` and every node they depend on: one walk, linear in the graph."""
        return _reach(roots, self.nx.predecessors)

    def downstream(self, sources) -> set[str]:
        """`sources` and every node that depends on them: one walk, linear in the graph."""
        return _reach(sources, self.nx.successors)

    def source_line(self, loc: Loc | None) -> str | None:
        """The text of the `.dln` line a location points at, when known."""
        if loc is None or loc.file not in self.sources:
            return None
        lines = self.sources[loc.file].split("\n")  # as the parser counts lines
        return lines[loc.line - 1].strip() if 1 <= loc.line <= len(lines) else None

    def roots(self) -> list[str]:
        """Nodes whose values are wanted: outputs, loss, gradients and assignments."""
        m = self.meta
        want = list(m.outputs.values()) + ([m.loss] if m.loss else []) + list(m.grads.values())
        return want + self.nodes_of("assign")

    # -- editing (on a copy) ----------------------------------------------------------------
    def replace_uses(self, old: str, new: str, meta: bool = True) -> None:
        """Make every user of `old` (and, unless `meta` is False, every model-level reference) use
        `new` instead."""
        for _, v, k in list(self.nx.out_edges(old, keys=True)):
            self.nx.remove_edge(old, v, key=k)
            self.nx.add_edge(new, v, key=k)
        if meta:
            self.remap_meta({old: new})

    def remap_meta(self, mapping: dict) -> None:
        """Point the model-level references (outputs, loss, gradients) through `mapping`."""
        if not mapping:
            return
        m = self.meta
        m.outputs = {k: mapping.get(v, v) for k, v in m.outputs.items()}
        m.grads = {k: mapping.get(v, v) for k, v in m.grads.items()}
        m.loss = mapping.get(m.loss, m.loss)

    def rename(self, old: str, new: str) -> None:
        """Give node `old` the unused name `new`, keeping its data and edges (model-level references
        are the caller's business). Costs the node's degree; `nx.relabel_nodes` scans the graph."""
        g = self.nx
        g.add_node(new, **g.nodes[old])
        for u, _, k in list(g.in_edges(old, keys=True)):
            g.add_edge(u, new, key=k)
        for _, v, k in list(g.out_edges(old, keys=True)):
            g.add_edge(new, v, key=k)
        g.remove_node(old)

    def remove(self, n: str) -> None:
        self.nx.remove_node(n)

    def __contains__(self, n: str) -> bool:
        return n in self.nx

    def __len__(self) -> int:
        return len(self.nx)


def _reach(start, step) -> set[str]:
    """Every node reachable from `start` by `step` (successors or predecessors), start included.
    One walk for all of them: `nx.ancestors` once per root is quadratic when every param has an
    assign or a gradient."""
    seen = set(start)
    todo = list(seen)
    while todo:
        for u in step(todo.pop()):
            if u not in seen:
                seen.add(u)
                todo.append(u)
    return seen
