"""From an optimized IR graph to one CUDA C module and its launch plan.

Every decision is made in Python: which buffer holds each value, one kernel per IR node (or
fusion group), its launch shape, its index arithmetic (as C expressions); the Jinja2 templates
in `templates/` only format the text. The scalar math of elementwise ops is the registry's `c`
expression. This module is the walk; the rooms it draws on:

    concat.py     plan step before emission: which concats are eliminated, where parts go
    core.py       the generator's state: buffers, kernel names, `add`/`register`, rendering
    pointwise.py  the pointwise kernel and fused statements; source, const, shape, elementwise, dropout
    layout.py     alias, transpose, broadcast, slice, pad, concat
    reductions.py reduce, softmax, xent, xent_grad
    products.py   matmul and the convolutions (implicit GEMMs); tiles.py: tile and split-K
    pooling.py    pool, pool_grad
    gather.py     gather (embedding), scatter_add (its adjoint, deterministic)
    updates.py    assign, commits, multi-tensor optimizer updates
    host.py       ops computed on the host between kernels (the all-reduce): a plan step, no kernel
    memory.py     plan step after emission: temps share buffers by liveness
    shared.py     static shared memory of each kernel; plan.py: the plan's types

    mod = generate(graph)
    mod.source        # the CUDA C module: forward, backward and update kernels
    mod.plan          # JSON-ready dict: buffers, launches (kernel, args, grid, block), commits
    mod.plan_text()   # the same, one line per launch

Buffers: each node's value lives in a buffer named after the node, except that `reshape`
aliases its operand's buffer and `assign` aliases its value's buffer (a copy when the value is
itself a param, state or input, so that the commit below never reads a buffer it overwrites).

Phases: the `step` launches compute every node in topological order and never write a param,
state or input buffer; the `commit` launches then copy each assign's value into its target.
So, as in the interpreter, every read in a step sees the old parameters.
"""
from __future__ import annotations

from ..ir.errors import DlcError
from ..ir.graph import Graph
from ..ir.ops import INLINED_FAMILIES, OPS, POINTWISE_FAMILIES
from .concat import plan_concats
from .core import PLAIN, Emission, Epilogue, Generator
from .gather import emit_gather, emit_scatter_add
from .host import emit_host
from .layout import emit_alias, emit_broadcast, emit_concat, emit_pad, emit_slice, emit_transpose
from .memory import plan_memory
from .plan import Module
from .pointwise import (emit_const, emit_dropout, emit_elementwise, emit_mode_select, emit_size, emit_source,
                        pointwise, pointwise_body)
from .pooling import emit_pool, emit_pool_grad
from .products import emit_conv, emit_conv_grad_w, emit_conv_grad_x, emit_matmul
from .storage import plan_storage
from .reductions import emit_first, emit_reduce, emit_siblings, emit_softmax, emit_xent, emit_xent_grad
from .updates import UPDATE_SEGMENTS, commit, emit_assign, emit_updates


def generate(graph: Graph, reuse: bool | None = None) -> Module:
    """One CUDA module and launch plan for every node of an optimized graph. `reuse` shares temp
    buffers between values whose lifetimes do not overlap (memory planning); by default it is on
    for fused (-O2) graphs and off otherwise, so that at -O0/-O1 every value keeps its own buffer
    and `dlc diff` can compare each one."""
    mod = _walk(graph)
    if graph.meta.groups if reuse is None else reuse:
        plan_memory(mod)
    return mod


def _walk(g: Graph) -> Module:
    """Emit every node in the graph's topological order: a fusion group once, at its root (or
    after the step, for optimizer updates); a node of its own through its family's emitter."""
    concats = plan_concats(g)
    gen = Generator(g, concats, plan_storage(g, concats))
    # fusion groups (-O2): a member is computed inside its root's kernel; constants that only
    # groups read are inlined there as literals and get no kernel
    member_of = {m: root for root, (_, members) in g.meta.groups.items() for m in members}
    updates = [r for r, (rule, _) in g.meta.groups.items() if rule == "update"]
    for r in updates:  # each output of an update is written in place into its assign's target
        for m in g.meta.groups[r][1]:
            for a in g.users(m):
                if OPS[g.op(a)].family == "assign":
                    gen.inplace[a] = gen.node_buffer[a] = gen.node_buffer[m] = g.operands(a)[0]
    for r, (rule, members) in g.meta.groups.items():  # sibling reductions store where their last member runs;
        if rule == "siblings":                            # a reshape of an earlier one may name its buffer before
            # (a member that users outside read only for its shape has no buffer: the kernel stores no such value)
            inside = set(members)
            for m in members:
                if m != r and (OPS[g.op(m)].family == "reduce" or any(u not in inside for u in g.readers(m))):
                    gen.temp(m)
    for n in g.order():
        op = g.op(n)
        if op not in OPS:
            raise DlcError(f"codegen: unknown op '{op}'", g.loc(n))
        if n in gen.concats.eliminated:  # every part was stored into it by its producer
            gen.node_buffer[n] = n
            continue
        if n in member_of:
            if member_of[n] == n and g.meta.groups[n][0] != "update":
                emit_group(gen, n)
            continue
        family = OPS[op].family
        if family in INLINED_FAMILIES and g.users(n) and all(u in member_of for u in g.users(n)):
            continue
        emit = EMITTERS.get(family)
        if emit is None:
            raise DlcError(f"codegen: no emitter for kernel family '{family}' (op {op})", g.loc(n))
        emit(gen, n, PLAIN)
    for i in range(0, len(updates), UPDATE_SEGMENTS):  # after the step, before the copies
        emit_updates(gen, updates[i:i + UPDATE_SEGMENTS])
    for n in gen.commits:
        commit(gen, n)
    mod = gen.finish()
    mod.after_commit = {n for r in updates for n in g.meta.groups[r][1] if n in gen.node_buffer}
    mod.after_commit |= set(gen.inplace)
    return mod


def emit_group(gen: Generator, root: str) -> None:
    """A fusion group as one kernel. Rule `elementwise`: a grid-stride loop over the root's
    elements (`pointwise`: float4s when every load reads the stored element), each member a
    local variable, only the root's value stored. Rule `epilogue`: the first member that is not
    pointwise is a matmul or convolution; its emitter runs with an `Epilogue`, the other members
    applied to its accumulator `acc` before the one store (the `store.cu.j2` hook of its
    template). Rule `reduce`: the reduction's emitter runs with a prologue, its operands'
    producers computed where it reads them. Rule `siblings`: several reductions in one kernel, an
    accumulator each (`reductions.emit_siblings`), each with its operands' producers."""
    g = gen.g
    rule, members = g.meta.groups[root]
    comment = [f"fused group %{root} ({rule}): {len(members)} nodes"] * (len(members) > 1)
    for m in members:
        comment += gen.comment(m)
    stem = f"fused_{root}" if len(members) > 1 else None
    if rule == "reduce":  # pointwise producers computed inside the reduction's loop
        red = root
        inputs = [a for a in g.operands(red) if a in members]
        prologue = {a: _within(g, a, members) for a in inputs}
        EMITTERS[OPS[g.op(red)].family](gen, red, Emission(prologue=prologue, comment=comment, stem=stem))
        return
    if rule == "siblings":  # several reductions in one pass, each with its producers in its loop,
        reductions = [m for m in members if OPS[g.op(m)].family == "reduce"]   # then the arithmetic
        prologue = {a: _within(g, a, members) for r in reductions for a in g.operands(r) if a in members}
        before = set(reductions).union(*prologue.values())                  # on their results
        after = [m for m in members if m not in before]
        wanted, inside = set(g.roots()), set(members)
        stored = [m for m in after if m in wanted or any(u not in inside for u in g.users(m))]
        emit_siblings(gen, reductions, prologue, Emission(comment=comment, stem=stem), after, stored)
        return
    if rule == "epilogue":
        producer = next(m for m in members if OPS[g.op(m)].family not in POINTWISE_FAMILIES)
        slots = len(g.operands(producer))  # the product's own inputs come first
        rest = [m for m in members if m != producer]
        body = pointwise_body(gen, rest, root, "ei", slots, {producer: "acc"})
        epilogue = Epilogue(producer, root, body["bufs"], body["loads"], body["lets"], body["expr"], body["dims"])
        EMITTERS[OPS[g.op(producer)].family](gen, producer, Emission(epilogue, comment=comment, stem=stem))
        return
    consts: list[int] = []
    body = pointwise_body(gen, members, root, "i", 0, {}, consts=consts)
    pointwise(gen, root, gen.temp(root), body["bufs"], body["expr"], body["loads"], stem=stem, consts=consts,
              lets=body["lets"], extra_dims=body["dims"], comment=comment)


def _within(g: Graph, a: str, members: list) -> list[str]:
    """`a` and the members of a group it depends on through members only, in the group's order (the
    graph's: passes/fusion.py sorts members so; a node's seq is not, as lowering re-creates a node
    under its old name after its users): the producers a folded reduction computes for its operand
    `a` (a walk bounded by the group)."""
    inside = set(members)
    seen, todo = {a}, [a]
    while todo:
        for u in g.operands(todo.pop()):
            if u in inside and u not in seen:
                seen.add(u)
                todo.append(u)
    return [m for m in members if m in seen]


# One emitter per kernel family (the registry's `family`; what each needs from an op is declared
# in the op's entry, see ir/ops.py FAMILIES). A new op of an existing family needs no change here.
# An emitter is called as emit(generator, node, emission).
EMITTERS = {
    "source": emit_source,
    "const": emit_const,
    "shape": emit_size,
    "elementwise": emit_elementwise,
    "reduce": emit_reduce,
    "first": emit_first,
    "softmax": emit_softmax,
    "xent": emit_xent,
    "xent_grad": emit_xent_grad,
    "matmul": emit_matmul,
    "transpose": emit_transpose,
    "broadcast": emit_broadcast,
    "slice": emit_slice,
    "concat": emit_concat,
    "pad": emit_pad,
    "alias": emit_alias,
    "conv": emit_conv,
    "conv_grad_x": emit_conv_grad_x,
    "conv_grad_w": emit_conv_grad_w,
    "pool": emit_pool,
    "pool_grad": emit_pool_grad,
    "dropout": emit_dropout,
    "gather": emit_gather,
    "scatter_add": emit_scatter_add,
    "mode_select": emit_mode_select,
    "assign": emit_assign,
    "host": emit_host,
}
