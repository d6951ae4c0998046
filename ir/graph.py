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
import heapq
import re
from dataclasses import dataclass, field

import networkx as nx

from .errors import DlcError, Loc
from .ops import COMMUNICATES, INPUT, MODEL, OPS, OPTIMIZER, PARAM, UPDATES_STATE, infer_type
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
    train_loc: object = None                       # where `train(...)` is written (a Loc), for its errors
    groups: dict = field(default_factory=dict)     # fusion (-O2): root node -> (rule, member nodes in order)
    eval_outputs: dict = field(default_factory=dict)  # the evaluation form (passes/evaluation.py): output
                                                   # name -> node computing it in an evaluation run
    eval_loss: str | None = None                   # the loss in an evaluation run (with eval_outputs)
    precision: str = "fp32"                        # of matrix products: fp32, tf32 or bf16 (ir/precision.py)
    calls: dict = field(default_factory=dict)      # prefix of a function call written in the model's file
                                                   # -> where (a Loc): errors about a node a prelude
                                                   # function made point at the user's call


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
        # A MultiDiGraph's adjacency is plain dicts (node -> neighbour -> edge key -> edge data),
        # exposed by networkx as `_node`, `_succ` and `_pred`. Rebuilding them directly is several
        # times faster than `nx.MultiDiGraph.copy()`, and a copy per pass is the main cost of
        # compiling a deep net. Node data is copied (attrs dicts are never shared); edge data is
        # empty. `tests/test_golden_ir.py` checks that no pass edits its input.
        src, dst = self.nx, g.nx
        for n, d in src._node.items():
            dst._node[n] = {**d, "attrs": dict(d["attrs"])}
            dst._succ[n] = {}
            dst._pred[n] = {}
        for u, nbrs in src._succ.items():
            for v, keys in nbrs.items():
                kd = {k: {} for k in keys}
                dst._succ[u][v] = kd
                dst._pred[v][u] = kd
        g.meta = copy.deepcopy(self.meta)
        g.sources = self.sources
        g._seq = self._seq
        return g

    # -- reading --------------------------------------------------------------------------
    def op(self, n: str) -> str:
        return self.nx._node[n]["op"]

    def attrs(self, n: str) -> dict:
        return self.nx._node[n]["attrs"]

    def type(self, n: str) -> TensorType:
        return self.nx._node[n]["type"]

    def loc(self, n: str) -> Loc | None:
        return self.nx._node[n]["loc"]

    def operands(self, n: str) -> list[str]:
        """Operands in slot order (edge key i is operand i)."""
        slots = [(k, u) for u, keys in self.nx._pred[n].items() for k in keys]
        slots.sort()
        return [u for _, u in slots]

    def users(self, n: str) -> list[str]:
        """Distinct users, oldest first."""
        node = self.nx._node
        return sorted(self.nx._succ[n], key=lambda v: node[v]["seq"])

    def readers(self, n: str) -> list[str]:
        """The users that read `n`'s value, not only its shape (a `size`, a `broadcast_like`'s
        operand 1), oldest first."""
        return [u for u in self.users(n) if OPS[self.op(u)].family != "shape"
                and not (OPS[self.op(u)].family == "broadcast" and self.operands(u)[0] != n)]

    def order(self) -> list[str]:
        """A deterministic topological order: among ready nodes, the oldest first (Kahn's
        algorithm with a heap keyed by creation order)."""
        node, succ, pred = self.nx._node, self.nx._succ, self.nx._pred
        missing = {n: len(p) for n, p in pred.items()}
        ready = [(d["seq"], n) for n, d in node.items() if not missing[n]]
        heapq.heapify(ready)
        out = []
        while ready:
            _, n = heapq.heappop(ready)
            out.append(n)
            for v in succ[n]:
                missing[v] -= 1
                if not missing[v]:
                    heapq.heappush(ready, (node[v]["seq"], v))
        if len(out) != len(node):
            raise DlcError("the graph has a cycle")
        return out

    def nodes_of(self, *ops: str) -> list[str]:
        """The nodes applying these ops, in creation order (for sources, the topological order)."""
        node = self.nx._node
        return sorted((n for n, d in node.items() if d["op"] in ops), key=lambda n: node[n]["seq"])

    def holding(self, *kinds: str) -> list[str]:
        """The source nodes that hold one of `kinds` (INPUT, PARAM, OPTIMIZER, MODEL: what each op's
        registry entry declares it holds), in creation order."""
        return self.nodes_of(*(k for k, d in OPS.items() if d.holds in kinds))

    def with_effect(self, *effects: str) -> list[str]:
        """The nodes whose op declares one of `effects` (ir/registry.py), in creation order."""
        return self.nodes_of(*(k for k, d in OPS.items() if d.effects & set(effects)))

    @property
    def inputs(self) -> list[str]:
        return self.holding(INPUT)

    @property
    def params(self) -> list[str]:
        return self.holding(PARAM)

    @property
    def optimizer_state(self) -> list[str]:
        """Optimizer state (momenta, moments, schedule counters): travels with checkpoints."""
        return self.holding(OPTIMIZER)

    @property
    def buffers(self) -> list[str]:
        """Model buffers (running statistics): model state that travels with the weights."""
        return self.holding(MODEL)

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

    def roots(self, evaluation: bool = True) -> list[str]:
        """Nodes whose values are wanted: outputs, loss, gradients, and every node with an effect
        beyond its value (the assignments that update state, communication); and the evaluation
        form's outputs and loss, unless `evaluation` is False (what the rest of the plan computes)."""
        m = self.meta
        want = list(m.outputs.values()) + ([m.loss] if m.loss else []) + list(m.grads.values())
        return want + self.with_effect(UPDATES_STATE, COMMUNICATES) + (self.eval_roots() if evaluation else [])

    def eval_roots(self) -> list[str]:
        """The evaluation form's outputs and loss (passes/evaluation.py); none when it has none."""
        m = self.meta
        return list(m.eval_outputs.values()) + ([m.eval_loss] if m.eval_loss else [])

    def eval_constants(self) -> set[str]:
        """Nodes that only the evaluation form needs and whose value depends on stored values and
        constants alone (no input, no op with an effect): batch norm's folded weights, its scale
        and shift per channel. Their values change only when stored values do, so a backend keeps
        them from one evaluation run to the next until a step commits or `set_state` is called."""
        if not self.eval_roots():
            return set()
        only = self.upstream(self.eval_roots()) - self.upstream(self.roots(evaluation=False))
        varies = self.downstream(self.inputs + [n for n in self.nx if OPS[self.op(n)].effects])
        return {n for n in only if n not in varies and OPS[self.op(n)].family != "source"}

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
        m.eval_outputs = {k: mapping.get(v, v) for k, v in m.eval_outputs.items()}
        m.eval_loss = mapping.get(m.eval_loss, m.eval_loss)

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
