"""Kernel fusion (-O2): which nodes one kernel computes, recorded in `meta.groups`.

A group is a connected set of pointwise nodes (the `elementwise`, `broadcast` and `slice`
kernel families) that codegen turns into a single kernel, one thread per element of the group's root:
the members' values live in registers and never touch memory. The rules, as TVM's FuseOps and
XLA's loop fusion apply them to injective ops (rule `elementwise`):

- the root is a pointwise node; a member's operand joins the group when it is pointwise too, has
  the root's shape (a smaller, broadcast value would be recomputed per element: it stays a
  buffer), is not wanted outside (an output, the loss, a gradient), and every user it has is
  already in the group (its value is needed nowhere else);
- a `broadcast_like` reads only its operand 0; operand 1 gives the shape and is never loaded;
- scalar constants are not members: every group inlines them as literals, so at -O2 a constant
  that only groups read gets no kernel and no buffer.

Epilogues (rule `epilogue`, as TensorRT fuses bias and activation into a convolution): a group
also takes one matmul or convolution (forward or either adjoint) that it reads, when that product
has the group's shape, is not wanted outside and has no other user. The group then runs inside
the product's kernel, on its accumulator, before the one store: `relu(x @ w + b)` is one kernel,
and so is `relu_grad(dY @ w^T, h)`.

Reductions (rule `reduce`): a `sum`, `mean`, `l1`, `l2` or `mse` whose operand is a pointwise
group's root, used by it alone, computes that group inside its loop: `sum(x * y)` is one kernel.

Sibling reductions (rule `siblings`, a multi-output reduction): reductions over the same axes of
operands of one shape (the batch statistics `mean(d)` and `mean(d * d)`; batch norm's backward
`sum(g)`, `sum(g * xhat)`), none reading another, merge into one group whose kernel keeps an
accumulator per reduction in one loop over the elements: one pass over memory, one launch (or
one pair) instead of one per reduction. Each reduction brings its `reduce` group; a pointwise
group that only the merged reductions read (the `d` of both statistics) joins too, computed in
the loop. The group's root is the last reduction in the graph's order, where its kernel runs:
legal when every user of the others comes after it (so none of them is needed earlier, and
none reads another). Every reduction's value is stored; the partial sums are added in a fixed
order, as a single reduction's are. Reductions of the step and of the evaluation form are never
siblings (they never run together); a run that needs one of a group's reductions computes them
all (runtime/runner.py), so its kernel always finds what it reads. Then the arithmetic on the
results joins (`_absorb_finish`): a pointwise group of the results' shape that reads them (batch
norm's mean and variance from its sums, `sqrt(var + eps)`, `gamma / std`; the backward's
per-channel gradients), computed by the thread that stores the results; and `plan` checks at the
end that every kernel's operands are computed before it runs, planning again without that
arithmetic should a later group have moved one.

Every pointwise node belongs to exactly one group (a group of one still inlines its constants).
The pass changes no node; it only records the groups. `plan(g)` also returns each refusal with
its reason, for `dlc compile --explain-fusion`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.graph import Graph
from ..ir.ops import EPILOGUE_FAMILIES as PRODUCERS  # kernels with an epilogue hook (matmul, convolutions)
from ..ir.ops import OPS
from ..ir.ops import POINTWISE_FAMILIES as POINTWISE  # elementwise, broadcast, slice (a gather: a load)
from ..ir.types import normalize_axes


@dataclass
class Refusal:
    producer: str     # the operand that stayed a buffer
    consumer: str     # the group member that reads it
    root: str         # the group's root
    reason: str


def _reads(g: Graph, n: str) -> list[str]:
    """The operands a pointwise node loads (a broadcast's shape operand is not loaded)."""
    args = g.operands(n)
    return args[:1] if OPS[g.op(n)].family == "broadcast" else args


def plan(g: Graph, siblings: bool = True) -> tuple[dict, list[Refusal]]:
    """Groups (root -> (rule, members in order)) and the refused operand edges, with reasons.
    `siblings=False` leaves every reduction a kernel of its own (tests of the single reduction's
    kernels). Should the arithmetic that sibling groups took in have moved a kernel after one
    that reads its value (each check sees the groups as they stand, and a later group may still
    take in what an earlier one read), the plan is made again without that arithmetic."""
    groups, refusals = _plan(g, siblings, True)
    if siblings and not _in_order(g, groups):
        groups, refusals = _plan(g, siblings, False)
    return groups, refusals


def _emitted_at(g: Graph, groups: dict, pos: dict):
    """Where each node's value is computed in the walk: its group's root (an update: after the
    step), else itself."""
    at = {n: pos[n] for n in pos}
    for root, (rule, members) in groups.items():
        for m in members:
            at[m] = len(pos) if rule == "update" else pos[root]
    return at


def _in_order(g: Graph, groups: dict) -> bool:
    """Every value read by a kernel is computed before it runs (a reshape: its operand's value)."""
    pos = {n: i for i, n in enumerate(g.order())}
    at = _emitted_at(g, groups, pos)
    group_of = {m: r for r, (_, ms) in groups.items() for m in ms}

    def source(a):
        while OPS[g.op(a)].family == "alias":
            a = g.operands(a)[0]
        return a
    for n in g.nx:
        for a in g.operands(n):
            a = source(a)
            if OPS[g.op(a)].family in ("const", "shape", "source") or group_of.get(a, a) == group_of.get(n, n):
                continue
            if at[a] >= at[n] and OPS[g.op(n)].family not in ("alias", "assign"):  # (an assign commits
                return False                                                          # after the step)
    return True


def _plan(g: Graph, siblings: bool, absorb: bool) -> tuple[dict, list[Refusal]]:
    family = {n: OPS[g.op(n)].family for n in g.nx}
    wanted = set(g.roots())
    order = g.order()
    pos = {n: i for i, n in enumerate(order)}
    group_of: dict[str, str] = {}
    groups: dict[str, tuple] = {}
    refusals: list[Refusal] = []
    for root in reversed(order):  # users before their operands: a root is a node no group took
        if root in group_of or family[root] not in POINTWISE:
            continue
        shape = g.type(root).shape
        members = {root}
        grew = True
        while grew:  # to a fixed point: an operand joins once all its users have
            grew = False
            for m in sorted(members, key=pos.get):
                for a in _reads(g, m):
                    if a in members or a in group_of or family[a] not in POINTWISE:
                        continue
                    if g.type(a).shape == shape and a not in wanted and all(u in members for u in g.readers(a)):
                        members.add(a)
                        grew = True
        rule = "elementwise"
        # an epilogue: the group runs at the end of the GEMM or convolution that produces one of
        # its operands (bias + activation after a matmul; an activation's derivative after the
        # matmul that makes the adjoint), when that product has the group's shape and no other use
        producers = sorted({a for m in members for a in _reads(g, m) if family[a] in PRODUCERS}, key=pos.get)
        fits = [a for a in producers if g.type(a).shape == shape and a not in wanted
                and all(u in members for u in g.readers(a))]
        if fits:
            members.add(fits[-1])
            rule = "epilogue"
        for m in members:
            group_of[m] = root
        groups[root] = (rule, sorted(members, key=pos.get))
    _fold_into_reductions(g, groups, group_of, wanted, pos)
    _merge_updates(g, groups, group_of, pos)
    if siblings:  # (after the updates: the arithmetic a sibling group takes in is never an update's)
        _merge_siblings(g, groups, group_of, wanted, pos, absorb)
    # why each edge between a pointwise (or epilogue-capable) producer and a group was not fused
    for root, (_, members) in groups.items():
        for m in members:
            if family[m] in PRODUCERS:
                continue
            for a in _reads(g, m):
                if (family[a] in POINTWISE or family[a] in PRODUCERS) and group_of.get(a) != root:
                    refusals.append(Refusal(a, m, root, _why(g, a, root, wanted, group_of)))
    return dict(sorted(groups.items(), key=lambda kv: pos[kv[0]])), refusals


def _fold_into_reductions(g: Graph, groups: dict, group_of: dict, wanted: set, pos: dict) -> None:
    """Reductions with their producers (rule `reduce`): a reduction (`sum`, `mean`, `l1`, `l2`,
    `mse`) whose operand is a pointwise group's root, used by the reduction alone and not wanted
    outside, computes that group inside its loop, element by element: the operand never touches
    memory. (`l2`'s square is already its registry `map`.)"""
    for r in g.order():
        if OPS[g.op(r)].family != "reduce" or r in group_of:
            continue
        folded = [a for a in dict.fromkeys(g.operands(r)) if group_of.get(a) == a and groups[a][0] == "elementwise"
                  and a not in wanted and set(g.readers(a)) == {r}]
        if not folded:
            continue
        members = [m for a in folded for m in groups.pop(a)[1]] + [r]
        members.sort(key=pos.get)  # the graph's order: a node's seq is not (lowering re-creates a node
                                   # under its old name after its users)
        groups[r] = ("reduce", members)
        for m in members:
            group_of[m] = r


def _sibling_key(g: Graph, r: str):
    """What sibling reductions share: the operands' shape (every operand of it), the reduced axes
    and the result's shape; None for a reduction whose operands differ in shape."""
    args = g.operands(r)
    shape = g.type(args[0]).shape
    if any(g.type(a).shape != shape for a in args):
        return None
    return tuple(shape), tuple(normalize_axes(g.attrs(r).get("axis"), len(shape))), tuple(g.type(r).shape)


def _value_readers(g: Graph, a: str) -> list[str]:
    """The users that read `a`'s value, looking through reshapes (an `alias` names a's buffer
    under another shape and reads nothing when it runs)."""
    out = []
    for u in g.readers(a):
        out += _value_readers(g, u) if OPS[g.op(u)].family == "alias" else [u]
    return out


def _merge_siblings(g: Graph, groups: dict, group_of: dict, wanted: set, pos: dict, absorb: bool = True) -> None:
    """Sibling reductions (rule `siblings`, see the module doc): in the graph's order, a reduction
    joins the last open set of its key when the merged set stays legal, else opens a new one."""
    def own(r):  # a reduction's members: its `reduce` group, or itself
        return list(groups[r][1]) if r in groups else [r]

    def _at(u):  # where a reader runs: its group's root (an update: after the step), else itself
        r = group_of.get(u, u)
        return len(pos) if r in groups and groups[r][0] == "update" else pos[r]

    def merged(reductions):
        """The members of one kernel computing `reductions`, with the pointwise groups that only
        they read; None when it is not legal."""
        members = {m for r in reductions for m in own(r)}
        shape = g.type(g.operands(reductions[0])[0]).shape
        grew = True
        while grew:  # a shared producer (read by several of the reductions or their producers)
            grew = False
            for m in sorted(members, key=pos.get):
                for a in g.operands(m):
                    p = group_of.get(a)
                    if (p == a and p not in members and groups[p][0] == "elementwise" and p not in wanted
                            and g.type(p).shape == shape and set(g.readers(p)) <= members):
                        members |= set(groups[p][1])
                        grew = True
        root = max(reductions, key=pos.get)
        for r in reductions:  # the kernel runs at the root: every reader of a result comes after it
            if any(u in members or _at(u) <= pos[root] for u in _value_readers(g, r)):
                return None
        return sorted(members, key=pos.get)

    # a reduction of the step and one of the evaluation form never run together: not siblings
    step, evaluation = g.upstream(g.roots(evaluation=False)), g.upstream(g.eval_roots())
    sets: list[list] = []
    last: dict[tuple, list] = {}    # key -> the set a reduction of that key may still join
    for r in g.order():
        if OPS[g.op(r)].family != "reduce" or group_of.get(r, r) != r:
            continue
        key = _sibling_key(g, r)
        if key is None:
            continue
        key += (r in step, r in evaluation)
        if key in last and merged(last[key] + [r]) is not None:
            last[key].append(r)
        else:
            last[key] = [r]
            sets.append(last[key])
    for reductions in sets:
        members = merged(reductions) if len(reductions) > 1 else None
        if members is None:
            continue
        for m in members:
            groups.pop(m, None)
        root = members[-1]
        groups[root] = ("siblings", members)
        for m in members:
            group_of[m] = root
        if absorb:
            _absorb_finish(g, groups, group_of, wanted, pos, root)


def _absorb_finish(g: Graph, groups: dict, group_of: dict, wanted: set, pos: dict, root: str) -> None:
    """The per-channel arithmetic on sibling reductions' results (batch norm's mean and variance
    from its sums, `sqrt(var + eps)`, `gamma / std`; the backward's per-channel gradients): a
    pointwise group of the results' shape that reads a result (or what such a group computes)
    joins the siblings' group, computed by the thread that stores the results, after them. Legal
    when everything else it reads is computed before the group's kernel runs (at its last member
    in the graph's order), and every reader of a value the kernel stores comes after that."""
    reductions = [m for m in groups[root][1] if OPS[g.op(m)].family == "reduce"]
    shape = g.type(reductions[0]).shape
    inside, after = set(groups[root][1]), set(reductions)

    def ready(a, last):  # computed before the kernel runs at `last`
        if OPS[g.op(a)].family in ("const", "shape", "source"):
            return True
        r = group_of.get(a, a)
        return pos[a] < last and pos[r] < last and (r not in groups or groups[r][0] != "update")

    def legal(members, later):
        last = max(pos[m] for m in members)
        if any(not ready(a, last) for m in later for a in _reads(g, m) if a not in members):
            return False
        stored = [m for m in after | later if m in wanted or set(g.readers(m)) - members]
        return all(at(u) > last for m in stored for u in _value_readers(g, m) if u not in members)

    def at(u):  # where a reader runs: its group's root (an update: after the step), else itself
        r = group_of.get(u, u)
        return len(pos) if r in groups and groups[r][0] == "update" else pos[r]
    grew = True
    while grew:
        grew = False
        readers = {group_of.get(u) for m in after for u in g.readers(m)} - {None, root}
        for c in sorted(readers, key=pos.get):
            rule, ms = groups[c]
            if rule != "elementwise" or g.type(c).shape != shape:
                continue
            if legal(inside | set(ms), set(ms)):
                del groups[c]
                inside |= set(ms)
                after |= set(ms)
                members = sorted(inside, key=pos.get)
                del groups[root]
                root = members[-1]
                groups[root] = ("siblings", members)
                for m in members:
                    group_of[m] = root
                grew = True
                break


def _merge_updates(g: Graph, groups: dict, group_of: dict, pos: dict) -> None:
    """Optimizer updates (rule `update`): the pointwise groups that compute the new values of one
    param and its state (velocity, moments) merge into one group with an output per assign. Its
    kernel runs after the step and writes each output straight into its target, in place: no
    temp buffer, no commit copy. Legal when every output is read only inside the group and by its
    assign, and no other update group reads a target's old value (the step's kernels, which all
    run before, may)."""
    assign_of = {g.operands(a)[1]: a for a in g.nx if OPS[g.op(a)].family == "assign"}

    def outputs(members):
        inside = set(members)
        return [m for m in members if any(u not in inside for u in g.readers(m))]

    def is_update(members):
        return all(m in assign_of and set(g.readers(m)) - set(members) == {assign_of[m]} for m in outputs(members))
    merged = True
    while merged:  # v_new = mu v + g feeds w_new = w - lr (g + mu v_new): one group writes both
        merged = False
        for root, (rule, members) in list(groups.items()):
            if rule != "elementwise" or root not in assign_of:
                continue
            readers = {group_of.get(u) for u in g.readers(root) if u != assign_of[root]} - {root}
            if len(readers) != 1 or None in readers:
                continue
            (other,) = readers
            both = sorted(set(members) | set(groups[other][1]), key=pos.get)
            if groups[other][0] != "elementwise" or g.type(other).shape != g.type(root).shape or not is_update(both):
                continue
            del groups[root]
            groups[other] = ("elementwise", both)
            for m in both:
                group_of[m] = other
            merged = True
    updates = {r for r, (rule, ms) in groups.items() if rule == "elementwise" and r in assign_of and is_update(ms)}
    for r in sorted(updates):
        targets = [g.operands(assign_of[o])[0] for o in outputs(groups[r][1])]
        others = {group_of.get(u) for t in targets for u in g.readers(t)} & (updates - {r})
        if not others:
            groups[r] = ("update", groups[r][1])


def _why(g: Graph, a: str, root: str, wanted: set, group_of: dict) -> str:
    if g.type(a).shape != g.type(root).shape:
        return f"shape {g.type(a)} differs from the group's {g.type(root)} (it would be recomputed per element)"
    if a in wanted:
        return "its value is wanted outside the step (an output, the loss or a gradient)"
    others = [u for u in g.readers(a) if group_of.get(u) != root]
    if not others:
        return "a GEMM or convolution epilogue absorbs one producer, and this group has taken another"
    return f"it is also read by %{others[0]}" + (f" and {len(others) - 1} more" if len(others) > 1 else "")


def fuse(g: Graph) -> Graph:
    """Record the fusion groups in `meta.groups`; the nodes are unchanged."""
    g = g.copy()
    g.meta.groups, _ = plan(g)
    return g


def report(g: Graph, dims: dict) -> list[str]:
    """`dlc compile --explain-fusion`: every group (fused or a group of one), the rule applied,
    the bytes its kernel does not move (each inner member's value would be written and read back
    once; an update's outputs would also go through a temp and a commit copy), its `.dln` lines,
    and every refused edge with the check that failed. Sizes bind the symbols by `dims`."""
    groups, refusals = plan(g)
    wanted = set(g.roots())

    def nbytes(n):
        t = g.type(n)
        return 4 * int(__import__("math").prod(dims.get(d, 1) if isinstance(d, str) else d for d in t.shape))
    at = ", ".join(f"{k}={v}" for k, v in dims.items()) or "static sizes"
    lines = [f"fusion report for model {g.meta.name} ({len(groups)} groups; bytes at {at})"]
    total = 0
    for root, (rule, members) in groups.items():
        inside = set(members)
        stored = {m for m in members if rule == "siblings" and (OPS[g.op(m)].family == "reduce" or m in wanted
                                                                  or set(g.readers(m)) - inside)}
        saved = sum(2 * nbytes(m) for m in members if (m != root or rule == "update") and m not in stored)
        total += saved
        locs = sorted({(g.loc(m).file, g.loc(m).line) for m in members if g.loc(m)})
        lines.append(f"  group %{root}  {rule}  {len(members)} node{'s' * (len(members) > 1)}: "
                     + ", ".join(f"%{m}" for m in members))
        lines.append(f"      saves {saved:,} bytes" + ("; from " + ", ".join(f"{f}:{n}" for f, n in locs)
                                                      if locs else ""))
        for line in sorted({g.source_line(g.loc(m)) for m in members if g.loc(m)} - {None}):
            lines.append(f"        | {line}")
    lines.append(f"  total saved: {total:,} bytes per step")
    lines.append(f"not fused ({len(refusals)} edges):")
    for r in refusals:
        loc = g.loc(r.consumer)
        lines.append(f"  %{r.producer} -> %{r.consumer} (group %{r.root}): {r.reason}"
                     + (f"  [{loc.file}:{loc.line}]" if loc else ""))
    return lines
