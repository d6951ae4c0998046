"""Reverse-mode automatic differentiation, as a pass over the graph.

Walk the nodes from the loss back to the params in reverse topological order. Each node's
adjoint is the sum of the contributions its users sent it (a value used twice receives both);
the op's derivative rule (in the registry) turns that adjoint into contributions for its
operands, built from ordinary IR ops; contributions to a broadcast operand are summed over the
broadcast axes. The result is the same graph plus gradient nodes, with `meta.grads` naming the
gradient of every trainable param.

Gradient nodes are named after the value they are the gradient of (docs/ir.md, "Names"):
`d.X` is the adjoint of X (the loss's derivative with respect to X), so a param's gradient is
`d.P`; the other nodes a rule builds for X's contribution are `d.X.OP` (`d.h.relu_grad`); when X
has several users, each contribution is `d.X.from.USER` and their sum is `d.X`. A rule that
passes an adjoint through unchanged (`add`, the first operand of `sub`) makes no node: the
operand's adjoint is then the same node as its user's.
"""
from __future__ import annotations


from ..ir.errors import DlcError
from ..ir.graph import Graph
from ..ir.ops import OPS, PARAM, Builder, view
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


class _GradBuilder(Builder):
    """The builder handed to derivative rules: it names each node `PREFIX.OP` (`d.h.relu_grad`),
    never taking a name reserved for an adjoint, and remembers the nodes it made."""

    def __init__(self, graph: Graph, reserved: set, loc=None):
        super().__init__(graph, "d", loc)
        self.reserved, self.made = reserved, set()

    def fresh(self, hint: str, adjoint: bool = False) -> str:
        """`hint`, or `hint.1`, `hint.2`, ...: a name neither used nor reserved (unless `adjoint`,
        which asks for the reserved name `hint` itself)."""
        if adjoint and hint not in self.graph:
            return hint
        name, i = hint, 0
        while name in self.graph or name in self.reserved:
            i += 1
            name = f"{hint}.{i}"
        return name

    def node(self, op: str, args, attrs=None, name: str | None = None, adjoint: bool = False) -> str:
        """One node of `op` (a derivative rule calls ops as methods instead: `b.add(x, y)`)."""
        n = self.graph.add(op, args, attrs, name=self.fresh(name or f"{self.prefix}.{op}", adjoint), loc=self.loc)
        self.made.add(n)
        return n

    def rename(self, n: str, hint: str, adjoint: bool = False) -> str:
        new = self.fresh(hint, adjoint)
        self.graph.rename(n, new)
        return new

    def const(self, value: float) -> str:
        return self.node("const", [], {"value": float(value)})

    def __getattr__(self, opname: str):
        if opname not in OPS:
            raise AttributeError(opname)
        return lambda *args, **attrs: self.node(opname, args, attrs)


def autodiff(g: Graph) -> Graph:
    if not g.meta.loss:
        return g
    g = g.copy()
    g.meta.stage = "backward"
    loss, wrt = g.meta.loss, g.trainable
    active = g.upstream([loss]) & g.downstream(wrt)  # on a path from a trainable param to the loss

    # `d.X` names the adjoint of X and nothing else: reserved up front for every value X, so that
    # no intermediate gradient node takes the name (or looks like the adjoint of a value)
    reserved = {f"d.{n}" for n in g.nx}
    adjoint_name: dict[str, str] = {}
    for n in g.order():
        if n in active or n == loss:
            name, i = f"d.{n}", 0
            while name in g or name in reserved and i:
                i += 1
                name = f"d.{n}.{i}"
            adjoint_name[n] = name
            reserved.add(name)
    b = _GradBuilder(g, reserved, g.loc(loss))
    adjoints: dict[str, list[str]] = {loss: [b.node("const", [], {"value": 1.0}, name=adjoint_name[loss], adjoint=True)]}
    made_for: set[str] = set()  # contributions made for their operand (not an adjoint passed through)
    for n in reversed(g.order()):
        if n not in active or n not in adjoints:
            continue
        b.loc = g.loc(n)
        grad = _total(b, n, adjoints.pop(n), adjoint_name[n], made_for)
        if OPS[g.op(n)].holds == PARAM:
            g.meta.grads[n] = grad
            continue
        rule = OPS[g.op(n)].vjp
        if rule is None:
            raise DlcError(f"{g.op(n)} has no derivative rule, so %{n} cannot be differentiated", g.loc(n))
        node = view(g, n)
        for arg, thunk in zip(node.args, rule(b, node, grad)):
            if arg in active and thunk is not None:
                b.prefix, b.made = f"d.{arg}", set()
                c = unbroadcast(b, thunk(), g.type(arg))
                if c in b.made:  # a node made for this contribution: say where it comes from
                    c = b.rename(c, f"d.{arg}.from.{n}")
                    made_for.add(c)
                adjoints.setdefault(arg, []).append(c)
    for p in wrt:  # a param the loss does not depend on has a zero gradient
        if p not in g.meta.grads:
            b.prefix, b.loc = f"d.{p}", g.loc(p)
            g.meta.grads[p] = b.rename(b.broadcast_like(b.const(0.0), p), f"d.{p}", adjoint=True)
    g.meta.grads = {p: g.meta.grads[p] for p in wrt}
    return g


def _total(b: _GradBuilder, n: str, parts: list[str], name: str, made_for: set) -> str:
    """The adjoint of `n`, named `name`: its one contribution, or the sum of several (fan-out).
    A contribution passed through from a user (not made for `n`) keeps its own name."""
    parts = _join_slices(b, parts, made_for)
    if len(parts) == 1:
        return b.rename(parts[0], name, adjoint=True) if parts[0] in made_for else parts[0]
    total = parts[0]
    for i, p in enumerate(parts[1:], 2):
        last = i == len(parts)
        total = b.node("add", [total, p], name=name if last else f"{name}.add", adjoint=last)
    return total


def _join_slices(b: _GradBuilder, parts: list[str], made_for: set) -> list[str]:
    """Slices that partition one axis of a value send back pads (each adjoint in its place,
    zeros elsewhere); summed, those are the concatenation of the adjoints along the axis. So
    such pads are replaced by one `concat` of what they pad: no zeros are made and nothing is
    added (the inception pass slices one merged 1x1 convolution into its branches)."""
    g = b.graph
    pads: dict = {}
    for p in parts:
        if g.op(p) == "pad":
            pads.setdefault((g.attrs(p)["axis"], g.attrs(p)["total"], g.type(p)), []).append(p)
    for (axis, total, _), group in pads.items():
        group.sort(key=lambda p: g.attrs(p)["start"])
        ends = [g.attrs(p)["start"] for p in group] + [total]
        inner = [g.operands(p)[0] for p in group]
        ax = axis if axis >= 0 else axis + g.type(group[0]).rank
        if len(group) < 2 or ends[0] != 0 or any(
                ends[i] + g.type(v).shape[ax] != ends[i + 1] for i, v in enumerate(inner)):
            continue
        joined = b.node("concat", inner, {"axis": ax})
        made_for.add(joined)
        for p in group:
            if not g.users(p):
                g.remove(p)
        parts = [p for p in parts if p not in group] + [joined]
    return parts
