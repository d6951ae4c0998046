"""Memory planning: a plan step over a generated `Module`, sharing temp buffers by liveness.

It sees only the launch plan (which launch reads or writes which buffer, in order) and the
values the model hands out; it runs after generation, so every kernel is the same with or
without it (`generate(..., reuse=False)` gives the plan before this step: `dlc diff` compares
each value in its own buffer). On by default for fused (-O2) graphs.
"""
from __future__ import annotations

from .plan import Buffer, Module
from .sizes import Size
from .storage import HALF, handed_out


def plan_memory(mod: Module) -> dict[str, str]:
    """Reuse temp buffers by liveness. A temp lives from the launch that writes it first to the
    last launch that reads it (step and commit phases in their order); values the model hands
    out (outputs, loss, gradients, assigned values, the evaluation form's outputs and loss), the
    evaluation form's values computed from stored values alone (`Graph.eval_constants`, kept
    between runs) and the dropout key live throughout. Walking the launches in order, a temp takes a free slot of
    the same dtype and size (symbols included, so one plan serves every batch size) whose last
    occupant's life ended at an earlier launch, so no kernel reads and writes one buffer (a
    16-bit value, failing that, an fp32 slot of its size, whose first half it fills: its kernels
    declare it dlc_bf16 whatever the slot's dtype, `Launch.half_args`); otherwise it opens a new
    slot. Slots are named @s0, @s1, ... and take the shape of their first occupant. Rewrites the
    module's buffers, launch arguments and value table in place; returns the temps it moved,
    each with its slot."""
    # (the evaluation form's values from stored values alone are kept from one evaluation run to the next)
    keep = {mod.node_buffer[n] for n in handed_out(mod.graph) if n in mod.node_buffer}
    first, last = {}, {}
    for i, l in enumerate(mod.launches):
        for b in l.args:
            if mod.buffers[b].kind == "temp":
                first.setdefault(b, i)
                last[b] = i
    order = [b for b in sorted(first, key=first.get) if b not in keep]
    # 16-bit values take 16-bit slots, or fp32 ones of their size when free; or else always fp32
    # slots (the fp32 plan's slots, half filled): of the two, the plan with fewer bytes at batch
    # PLAN_BATCH (16-bit slots can leave fp32 values without a slot they could share)
    plans = [_slots(mod, order, first, last, half_slots) for half_slots in (True, False)]
    at = {d: PLAN_BATCH for d in mod.symbols}
    slot_of, slots = min(plans, key=lambda p: sum(buf.nbytes(at) for buf in p[1].values()))
    mod.buffers.update(slots)
    for b in slot_of:
        del mod.buffers[b]
    for l in mod.launches:
        l.args = [slot_of.get(a, a) for a in l.args]
    mod.node_buffer = {n: slot_of.get(b, b) for n, b in mod.node_buffer.items()}
    mod.reused |= {n for n, b in mod.node_buffer.items() if b.startswith("@s")}
    return slot_of


PLAN_BATCH = 128   # the symbols' value at which memory planning compares its two plans' bytes


def _slots(mod: Module, order: list, first: dict, last: dict, half_slots: bool) -> tuple[dict, dict]:
    """Temps (in order of first use) assigned to slots: ({temp: slot}, {slot: Buffer}). With
    `half_slots`, a 16-bit value opens a 16-bit slot when no slot of its size is free; without, an
    fp32 one."""
    slot_of: dict[str, str] = {}
    slots: dict[str, Buffer] = {}
    free: dict[tuple, list] = {}      # (dtype, size) -> the slots of that dtype and size, in order opened
    ends: dict[str, int] = {}         # slot -> last launch of its current occupant
    for b in order:
        buf = mod.buffers[b]
        size = Size.of(buf.shape)
        slot = next((s for s in free.get((buf.dtype, size), []) if ends[s] < first[b]), None)
        if slot is None and buf.dtype == HALF:  # a 16-bit value fits in the first half of an fp32 slot of its size
            slot = next((s for s in free.get(("f32", size), []) if ends[s] < first[b]), None)
        if slot is None:
            slot = f"@s{len(ends)}"
            dtype = buf.dtype if buf.dtype != HALF or half_slots else "f32"
            free.setdefault((dtype, size), []).append(slot)
            slots[slot] = Buffer(slot, dtype, list(buf.shape), "temp")
        ends[slot] = last[b]
        slot_of[b] = slot
    return slot_of, slots
