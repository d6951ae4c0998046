"""Updates of stored values: assignments, their commits, and optimizer updates written in place.

An `assign` computes nothing in the step: it aliases its value's buffer (or snapshots a param,
state or input it names, which the commit phase may overwrite), and a `commit_` copy writes the
value into the target after every kernel of the step has read the old one. An optimizer update
group (-O2, rule `update`) instead writes its outputs straight into their targets, several groups
to one multi-tensor kernel (`emit_updates`), also in the commit phase.
"""
from __future__ import annotations

from ..ir.errors import DlcError
from .core import CTYPE, Emission, Generator
from .plan import Kernel, Launch
from .pointwise import ELEMENTWISE_BLOCK, pointwise, pointwise_body
from .sizes import Size, ceil_div, symbols_of

UPDATE_SEGMENTS = 8          # optimizer updates (one per param) handled by one multi-tensor kernel


def emit_assign(gen: Generator, n: str, em: Emission) -> None:
    """No kernel in the step, unless the value must be snapshotted; the commit comes later."""
    if n in gen.inplace:  # an update group writes the target itself: nothing to commit
        return
    gen.commits.append(n)
    value = gen.g.operands(n)[1]
    buf = gen.node_buffer[value]
    if gen.buffers[buf].kind == "temp":
        gen.node_buffer[n] = buf
    else:  # snapshot the old value: the commit phase may overwrite `buf`
        pointwise(gen, n, gen.temp(n), [buf], "a", [("a", 0, "i")], stem=f"snapshot_{n}")


def commit(gen: Generator, n: str) -> None:
    """Assign `n`'s commit: a copy of its value into the target, in the commit phase."""
    target = gen.node_buffer[gen.g.operands(n)[0]]
    pointwise(gen, n, target, [gen.node_buffer[n]], "a", [("a", 0, "i")], stem=f"commit_{n}",
              phase="commit", what=f"commit: the new value of %{target}, after every read of the old")


def emit_updates(gen: Generator, roots: list[str]) -> None:
    """Optimizer updates, multi-tensor: one kernel for several update groups (up to
    UPDATE_SEGMENTS), over the concatenated index space of their params, one segment each.
    A segment loads its param's old values, gradient and state, computes the group, and
    stores every output straight into its target (param or state), in place. It runs in the
    commit phase, after every kernel of the step has read the old values."""
    g = gen.g
    params: dict[str, str] = {}   # buffer -> kernel parameter name
    # (in the groups' order, so that the kernel's parameters come out the same in every process)
    written = dict.fromkeys(gen.node_buffer[m] for r in roots for m in g.meta.groups[r][1] if m in gen.node_buffer)
    segments, comment, start, dims = [], [f"optimizer update of {len(roots)} tensors, in place"], 0, set()
    for r in roots:
        rule, members = g.meta.groups[r]
        body = pointwise_body(gen, members, r, "j", 0, {})
        for b in body["bufs"]:
            params.setdefault(b, None)
        outs = [m for m in members if m in gen.node_buffer]
        size = Size.of(g.type(r).shape)
        if size.static is None:
            raise DlcError(f"codegen: update of %{r} has a symbolic size {g.type(r)}", g.loc(r))
        segments.append(dict(start=start, stop=start + size.static, body=body, outs=outs))
        dims.update(body["dims"])
        targets = ", ".join(f"%{gen.node_buffer[m]}" for m in outs)
        loc = g.loc(r)
        comment.append(f"[{start}, {start + size.static}): {targets}" +
                       (f" from {loc}: {g.source_line(loc) or ''}" if loc else ""))
        start += size.static
    for b in written:
        params.setdefault(b, None)
    ordered = sorted(params, key=lambda b: (b not in written, list(params).index(b)))
    names = {b: (f"io{i}" if b in written else f"in{i}") for i, b in enumerate(ordered)}
    for s in segments:
        body = s["body"]
        s["loads"] = [(var, names[body["bufs"][slot]], index) for var, slot, index in body["loads"]]
        s["lets"] = body["lets"]
        s["stores"] = [(names[gen.node_buffer[m]], body["vars"][m]) for m in s["outs"]]
    decl = [f"{CTYPE[gen.buffers[b].dtype]}* __restrict__ {names[b]}" if b in written else
            f"const {CTYPE[gen.buffers[b].dtype]}* __restrict__ {names[b]}" for b in ordered]
    dims = sorted(set(symbols_of(*[gen.buffers[b].shape for b in ordered])) | dims)
    decl += [f"int dim_{d}" for d in dims]
    name = gen.kernel_name(f"update_{roots[0]}" + (f"_and_{len(roots) - 1}_more" if len(roots) > 1 else ""))
    launch = Launch(name, roots[0], g.op(roots[0]), "commit", ordered, dims,
                    [ceil_div(Size(start), ELEMENTWISE_BLOCK), 1, 1], [ELEMENTWISE_BLOCK, 1, 1], False,
                    writes=len(written))
    k = Kernel(name, "update.cu.j2", dict(segments=segments, size=start), launch, comment, decl)
    gen.register(k)
