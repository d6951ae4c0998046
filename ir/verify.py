"""The verifier: a graph that passes it is one every pass and backend may rely on."""
from __future__ import annotations

import networkx as nx

from .errors import DlcError
from .graph import Graph
from .ops import OPS, PARAM, STORED, TRAINING, UPDATES_STATE, infer_type


def verify(g: Graph) -> Graph:
    """Check acyclicity, arity, types against the op rules, one assign per target, and
    model-level references (an evaluation form gives every output and reads no op that depends
    on the mode)."""
    if not nx.is_directed_acyclic_graph(g.nx):
        cycle = " -> ".join(f"%{u}" for u, *_ in nx.find_cycle(g.nx))
        raise DlcError(f"IR is not acyclic: {cycle}")
    assigned: dict[str, str] = {}   # assign target -> the assign node that updates it
    for n in g.order():
        op, loc = g.op(n), g.loc(n)
        if op not in OPS:
            raise DlcError(f"%{n}: unknown op '{op}'", loc)
        d = OPS[op]
        args = g.operands(n)
        keys = sorted(k for _, _, k in g.nx.in_edges(n, keys=True))
        if keys != list(range(len(args))):
            raise DlcError(f"%{n}: operand slots {keys} are not 0..{len(args) - 1}", loc)
        if d.arity != -1 and len(args) != d.arity or not args and d.arity == -1:
            want = "one or more" if d.arity == -1 else d.arity
            raise DlcError(f"%{n}: {op} takes {want} operands, has {len(args)}", loc)
        if d.family != "source":
            want = infer_type(op, [g.type(a) for a in args], g.attrs(n))
            if want != g.type(n):
                raise DlcError(f"%{n}: type {g.type(n)} disagrees with {op}'s rule, which gives {want}", loc)
        if d.family == "assign" and OPS[g.op(args[0])].holds not in STORED:
            raise DlcError(f"%{n}: assign target %{args[0]} is a {g.op(args[0])}, not a param or state", loc)
        if d.family == "assign":
            if args[0] in assigned:
                raise DlcError(f"%{args[0]} is assigned twice, by %{assigned[args[0]]} and by %{n}; "
                               f"a param or state takes one value per step", loc)
            assigned[args[0]] = n
    m = g.meta
    refs = list(m.outputs.values()) + [m.loss] * bool(m.loss) + list(m.grads) + list(m.grads.values())
    for r in refs + list(m.frozen) + g.eval_roots():
        if r not in g:
            raise DlcError(f"model refers to %{r}, which is not in the graph")
    if m.eval_outputs or m.eval_loss:  # the evaluation form: one output per output, nothing that reads the mode
        if set(m.eval_outputs) != set(m.outputs) or bool(m.eval_loss) != bool(m.loss):
            raise DlcError("the evaluation form must give every output (and the loss, when there is one), "
                           f"found eval outputs {sorted(m.eval_outputs)} for outputs {sorted(m.outputs)}")
        for n in g.upstream(g.eval_roots()):
            if OPS[g.op(n)].effects & {TRAINING, UPDATES_STATE}:
                raise DlcError(f"the evaluation form reads %{n}, a {g.op(n)}, whose value depends on the "
                               f"mode or which updates state", g.loc(n))
    seen: dict[str, str] = {}
    for root, (rule, members) in m.groups.items():  # fusion groups (-O2)
        if not members or members[-1] != root:
            raise DlcError(f"group %{root} must list its members in order, ending with %{root}")
        for n in members:
            if n not in g:
                raise DlcError(f"group %{root} has a member %{n}, which is not in the graph")
            if n in seen:
                raise DlcError(f"%{n} is in two groups, %{seen[n]} and %{root}")
            seen[n] = root
    for p, gr in m.grads.items():
        if OPS[g.op(p)].holds != PARAM:
            raise DlcError(f"gradient recorded for %{p}, which is not a param")
        if g.type(p) != g.type(gr):
            raise DlcError(f"gradient %{gr} of %{p} has type {g.type(gr)}, expected {g.type(p)}")
    if m.loss and g.type(m.loss).shape != ():
        raise DlcError(f"the loss must be a scalar, found {g.type(m.loss)}", g.loc(m.loss))
    return g
