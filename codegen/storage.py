"""16-bit storage (precision bf16): a plan step deciding, before any kernel is emitted, which
values live in BF16 buffers (2 bytes an element) instead of fp32 ones.

At `--precision bf16` a value is stored in 16 bits where that changes no number the step
computes, which holds in two cases:

- **exact**: every element is a BF16 number already. A matrix product or convolution at bf16 (not
  one whose `min_precision` floor is finer, ir/precision.py) stores its fp32 sum rounded to BF16
  (unless a fused epilogue then computes on it in fp32), and a value that only moves elements of
  such values (reshape, transpose, broadcast, slice, pad, concat: the families marked `moves` in
  the registry) is exact too;
- **read rounded**: every reader rounds it to BF16 on the way in anyway: products at bf16 read
  their operands 0 and 1 so (their operand 2, a convolution adjoint's shape carrier, is not read),
  and a value that only moves elements on to such readers counts as one (rounding commutes with
  moving elements).

A 16-bit store rounds as `dlc_round_bf16` (nearest, ties to even; a NaN stays a NaN), and a load
widens exactly, so in both cases every kernel computes the bits it computed from fp32 buffers.
What is not stored so: a value the model hands out (outputs, the loss, gradients of params, what
the optimizer assigns, the evaluation form's values: the runtime fetches them as fp32 and the
update reads fp32), params, state and inputs, the parts of an eliminated concat and the concat
itself, and a value that a kernel reads or writes through a template that takes only fp32
buffers (`HALF_WRITERS`, `FLOAT_READERS`).

Reshape shares its operand's buffer, so a value and its reshapes are decided together. The
generator then declares those buffers `dlc_bf16*` (module.cu.j2): reading one element gives its
fp32 value, storing an fp32 value rounds it, so templates index them as they index floats.
"""
from __future__ import annotations

from ..ir.graph import Graph
from ..ir.ops import FAMILIES, OPS
from ..ir.precision import product_precision
from ..ir.registry import PRODUCT_FAMILIES
from .concat import Concats

HALF = "bf16"   # the plan's dtype of a 16-bit buffer (C type dlc_bf16, NumPy uint16: the high half of fp32)

# kernel families whose kernels may store into a dlc_bf16 buffer (their templates store with
# `out[...] = value`): the products (store.cu.j2, split_sum.cu.j2), the pointwise kernel (elementwise
# ops and the gathers transpose, broadcast and slice), pad and the pooling templates
HALF_WRITERS = set(PRODUCT_FAMILIES) | {"elementwise", "transpose", "broadcast", "slice", "pad", "pool"}
# kernel families that read their operands through fp32 pointers or on the host: a value they read
# stays fp32 (the losses take row pointers into their logits; the update, the all-reduce and the
# embedding's table and adjoint are fp32 by design)
FLOAT_READERS = {"xent", "xent_grad", "assign", "host", "gather", "scatter_add", "mode_select"}


def handed_out(g: Graph) -> set[str]:
    """The values a model hands out or keeps between runs (outputs, loss, gradients of params, the
    values assigned, the evaluation form's outputs, loss and kept values): what the runtime
    fetches or what lives through the whole plan (memory.py keeps them in their own buffers)."""
    m = g.meta
    wanted = list(m.outputs.values()) + [m.loss] * bool(m.loss) + list(m.grads.values()) + g.eval_roots()
    wanted += [n for n in g.nx if OPS[g.op(n)].family == "assign"]
    wanted += g.eval_constants()
    return set(wanted)


def plan_storage(g: Graph, concats: Concats) -> set[str]:
    """The nodes whose buffers hold BF16 (a value with its reshapes: the one that is not a
    reshape names the buffer, see the module doc); empty unless the graph's precision is bf16."""
    if g.meta.precision != "bf16":
        return set()
    member_of = {m: root for root, (_, members) in g.meta.groups.items() for m in members}
    family = {n: OPS[g.op(n)].family for n in g.nx}
    moves = {n for n in g.nx if FAMILIES[family[n]].moves}

    exact: dict[str, bool] = {}
    for n in g.order():  # operands first
        floats = [a for a in g.operands(n) if g.type(a).is_float]
        if family[n] in PRODUCT_FAMILIES:  # rounded before the store, unless an epilogue computes on it
            exact[n] = n not in member_of and product_precision(g, n) == "bf16"
        elif n in moves:
            exact[n] = bool(floats) and all(exact[a] for a in floats)
        else:
            exact[n] = False

    rounded: dict[str, bool] = {}
    for n in reversed(g.order()):  # users first
        rounded[n] = bool(g.users(n)) and all(_reads_rounded(g, u, family, moves, rounded) for u in g.users(n))

    out_of_plan = handed_out(g) | set(concats.eliminated) | set(concats.parts)
    half: set[str] = set()
    for n in g.order():
        if family[n] == "alias" or not g.type(n).is_float or n in out_of_plan:
            continue
        if n in member_of and (member_of[n] != n or g.meta.groups[n][0] not in ("elementwise", "epilogue")):
            continue  # inside a group's kernel (no buffer of its own), or stored by a reduction's kernel
        if family[n] not in HALF_WRITERS:  # (an epilogue's root is pointwise: the product's kernel stores it)
            continue
        shares = _aliases(g, n, family)
        if any(s in out_of_plan for s in shares):
            continue
        readers = [u for s in shares for u in g.users(s) if u not in shares]
        if any(family[u] in FLOAT_READERS for u in readers):
            continue
        if exact[n] or rounded[n]:  # (a reshape moves elements: n is read rounded only if its reshapes are)
            half |= set(shares)
    return half


def _reads_rounded(g: Graph, u: str, family: dict, moves: set, rounded: dict) -> bool:
    """Whether node `u` reads its operands only rounded to BF16: a product at bf16 (its operands 0
    and 1 rounded, its operand 2 only a shape; not one whose `min_precision` is finer), or an op
    that moves elements whose value is itself read only rounded."""
    if family[u] in PRODUCT_FAMILIES:
        return product_precision(g, u) == "bf16"
    return u in moves and rounded.get(u, False)


def _aliases(g: Graph, n: str, family: dict) -> list[str]:
    """`n` and the reshapes that share its buffer (reshapes of reshapes too)."""
    out, todo = [n], [n]
    while todo:
        for u in g.users(todo.pop()):
            if family[u] == "alias" and u not in out:
                out.append(u)
                todo.append(u)
    return out
