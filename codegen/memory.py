"""Memory planning: a plan step over a generated `Module`, sharing temp buffers by liveness.

It sees only the launch plan (which launch reads or writes which buffer, in order) and the
values the model hands out; it runs after generation, so every kernel is the same with or
without it (`generate(..., reuse=False)` gives the plan before this step: `dlc diff` compares
each value in its own buffer). On by default for fused (-O2) graphs.
"""
from __future__ import annotations

from ..ir.ops import OPS
from .plan import Buffer, Module
from .sizes import Size


def plan_memory(mod: Module) -> dict[str, str]:
    """Reuse temp buffers by liveness. A temp lives from the launch that writes it first to the
    last launch that reads it (step and commit phases in their order); values the model hands
    out (outputs, loss, gradients, assigned values, the evaluation form's outputs and loss), the
    evaluation form's values computed from stored values alone (`Graph.eval_constants`, kept
    between runs) and the dropout key live throughout. Walking the launches in order, a temp takes a free slot of
    the same dtype and size (symbols included, so one plan serves every batch size) whose last
    occupant's life ended at an earlier launch, so no kernel reads and writes one buffer;
    otherwise it opens a new slot. Slots are named @s0, @s1, ... and take the shape of their
    first occupant. Rewrites the module's buffers, launch
    arguments and value table in place; returns the temps it moved, each with its slot."""
    g = mod.graph
    m = g.meta
    wanted = list(m.outputs.values()) + [m.loss] * bool(m.loss) + list(m.grads.values()) + g.eval_roots()
    wanted += [n for n in g.nx if OPS[g.op(n)].family == "assign"]
    wanted += g.eval_constants()  # kept from one evaluation run to the next (runtime/runner.py)
    keep = {mod.node_buffer[n] for n in wanted if n in mod.node_buffer}
    first, last = {}, {}
    for i, l in enumerate(mod.launches):
        for b in l.args:
            if mod.buffers[b].kind == "temp":
                first.setdefault(b, i)
                last[b] = i
    slot_of: dict[str, str] = {}
    free: dict[tuple, list] = {}      # (dtype, size) -> the slots of that dtype and size, in order opened
    ends: dict[str, int] = {}         # slot -> last launch of its current occupant
    order = sorted(first, key=first.get)
    for b in order:
        if b in keep:
            continue
        buf = mod.buffers[b]
        key = (buf.dtype, Size.of(buf.shape))
        pool = free.setdefault(key, [])
        slot = next((s for s in pool if ends[s] < first[b]), None)
        if slot is None:
            slot = f"@s{len(ends)}"
            pool.append(slot)
            mod.buffers[slot] = Buffer(slot, buf.dtype, list(buf.shape), "temp")
        ends[slot] = last[b]
        slot_of[b] = slot
    for b in slot_of:
        del mod.buffers[b]
    for l in mod.launches:
        l.args = [slot_of.get(a, a) for a in l.args]
    mod.node_buffer = {n: slot_of.get(b, b) for n, b in mod.node_buffer.items()}
    mod.reused |= {n for n, b in mod.node_buffer.items() if b.startswith("@s")}
    return slot_of
