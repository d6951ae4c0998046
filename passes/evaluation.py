"""The evaluation form (-O1): the outputs and the loss as an evaluation run computes them,
specialised at compile time.

One graph serves both modes: an op with the TRAINING effect (dropout, batch norm's `if_training`)
reads the run's mode word, so an evaluation run of the plain graph still computes what only
training needs (batch statistics, the operand `if_training` then discards). This pass adds to the
graph a copy of the computation of the outputs and the loss in which every such op is replaced by
the operand its registry entry names as its value in evaluation (`OpDef.eval_operand`: dropout is
the identity, `if_training` its running statistics), so the copy reads no mode and computes
nothing else:

    %bn.mean = if_training(%bn.batch_mean, %bn.running_mean)      the training form (unchanged)
    %eval.bn.x_minus_mean = sub(%eval.conv, %eval.bn.running_mean) the evaluation form

The copy shares the sources (inputs, params, model buffers: one state for both forms) and nothing
else, so the training step's nodes, users and fusion groups are exactly those it had; its nodes
are named `eval.` + the node they copy, and `meta.eval_outputs` / `meta.eval_loss` (the lines
`eval output NAME = %v` and `eval loss %v`) name its roots. `Model` runs those roots for every
evaluation run. No assign is copied (an evaluation run commits nothing). A model whose outputs
and loss read no TRAINING op gets no copy: its graph is returned as it is.
"""
from __future__ import annotations

from ..ir.graph import Graph
from ..ir.ops import OPS, TRAINING


def evaluation_form(g: Graph) -> Graph:
    wanted = list(g.meta.outputs.values()) + ([g.meta.loss] if g.meta.loss else [])
    need = _evaluation_needs(g, wanted)
    if g.eval_roots() or not any(OPS[g.op(n)].has(TRAINING) for n in need):
        return g   # made already, or the outputs are the same in both modes: nothing to specialise
    g = g.copy()
    m = g.meta
    copy_of: dict[str, str] = {}
    for n in g.order():
        if n not in need:
            continue
        d, args = OPS[g.op(n)], g.operands(n)
        if d.family == "source":
            copy_of[n] = n                                  # one state: the sources are shared
        elif d.has(TRAINING):
            copy_of[n] = copy_of[args[d.eval_operand]]      # its value in an evaluation run
        else:
            copy_of[n] = g.add(g.op(n), [copy_of[a] for a in args], g.attrs(n), name=f"eval.{n}",
                               loc=g.loc(n), type=g.type(n))
    m.eval_outputs = {k: copy_of[v] for k, v in m.outputs.items()}
    m.eval_loss = copy_of[m.loss] if m.loss else None
    return g


def _evaluation_needs(g: Graph, wanted: list[str]) -> set[str]:
    """What an evaluation run of `wanted` reads: a TRAINING op and, through it, only its
    evaluation operand (batch statistics are not needed)."""
    seen, todo = set(wanted), list(wanted)
    while todo:
        n = todo.pop()
        d = OPS[g.op(n)]
        args = g.operands(n)
        for a in [args[d.eval_operand]] if d.has(TRAINING) else args:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen
