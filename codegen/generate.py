"""From an optimized IR graph to one CUDA C module and its launch plan.

Every decision is made here, in Python: which buffer holds each value, one kernel per IR node,
its launch shape, its index arithmetic (as C expressions); the Jinja2 templates in `templates/`
only format the text. The scalar math of elementwise ops is the registry's `c` expression.

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

import re
from dataclasses import dataclass, field, replace

from ..ir.errors import DlcError
from ..ir.graph import Graph
from ..ir.ops import INLINED_FAMILIES, OPS, POINTWISE_FAMILIES
from ..ir.text import fmt_attrs
from ..ir.types import normalize_axes
from .philox import PHILOX_C
from .concat import plan_concats
from .memory import plan_memory
from .plan import RNG_BUFFER, Buffer, Kernel, Launch, Module, env
from .shared import shared_bytes
from .sizes import Size, broadcast_index, capped_div, ceil_div, gather_index, strides, symbols_of
from .tiles import gemm_tile, split_k

CTYPE = {"f32": "float", "i32": "int", "u32": "unsigned int"}
ELEMENTWISE_BLOCK = 256      # threads per block of one-thread-per-element kernels
REDUCE_BLOCK = (32, 256)     # reductions: a power of two in this range, from the extent
POINTWISE = POINTWISE_FAMILIES   # families a fusion group computes inline (the registry's FAMILIES)
INLINED = INLINED_FAMILIES       # families whose value a fused kernel writes as a literal
UPDATE_SEGMENTS = 8          # optimizer updates (one per param) handled by one multi-tensor kernel
MAX_USES_LISTED = 8          # a shared kernel's comment names this many of the nodes it runs for
COLUMN_OUTPUTS = 8           # reducing leading axes into at least this many outputs: the column kernel (below)
# Reductions in two launches (`emit_reduce`, `emit_xent`): stage 1 spreads one output's elements
# over many blocks, each writing its partial sum to a workspace; stage 2 adds the partials in a
# fixed order (no atomics: the same step gives the same bits, as `--resume` promises). How many
# partials is a plan expression, min(ceil(extent / chunk), cap), so it grows with the batch.
REDUCE_BLOCKS = 512          # stage-1 blocks a reduction aims at: about 4 resident 256-thread blocks
                             # on each of an H100's 132 SMs, half its threads, enough loads in flight
                             # to stream at bandwidth; more would only lengthen stage 2
REDUCE_CHUNK = 2048          # elements per stage-1 block at least (8 per thread of 256), so that its
                             # sum outweighs the round trip of its partial through the workspace
REDUCE_ONE_BLOCK = 16384     # a static extent up to this stays one block per output (64 elements a
                             # thread): it takes about as long as the second launch would cost.
                             # A symbolic extent (the batch) always splits: the plan serves any N
COLUMN_TILE, COLUMN_LANES = 32, 8  # column reductions: a block is 32 neighbouring columns (a warp
                             # reads them from one row, coalesced) x 8 row lanes (256 threads)
COLUMN_CHUNK_ROWS = 64       # rows of a stage-1 chunk at least (8 per row lane); a static extent of
                             # at most this many rows is one chunk, one launch
XENT_WARP_CLASSES = 1024     # softmax_xent(_grad): a warp per row up to this many classes (32 per lane:
                             # three passes over a 4 KB row that stays in L1), several rows a block;
                             # more classes: a block per row, whose 256 threads share its passes
XENT_ROWS_PER_BLOCK = 8      # warps (rows) per block of the warp-per-row form: 256 threads
# Elementwise kernels are grid-stride loops, the grid capped at ELEMENTWISE_MAX_BLOCKS: about four
# waves of 8 resident 256-thread blocks on 132 SMs. Beyond that more blocks add no parallelism,
# only block scheduling, while a thread that loops amortises its index setup; the cap also keeps
# the grid far from any launch limit. (An elementwise kernel whose every load reads the store's own
# element moves float4s: 4 elements a thread and step.)
ELEMENTWISE_MAX_BLOCKS = 4096


# -- generation -----------------------------------------------------------------------------------

def generate(graph: Graph, reuse: bool | None = None) -> Module:
    """One CUDA module and launch plan for every node of an optimized graph. `reuse` shares temp
    buffers between values whose lifetimes do not overlap (memory planning); by default it is on
    for fused (-O2) graphs and off otherwise, so that at -O0/-O1 every value keeps its own buffer
    and `dlc diff` can compare each one."""
    mod = _Generator(graph).run()
    if graph.meta.groups if reuse is None else reuse:
        plan_memory(mod)
    return mod


@dataclass(frozen=True)
class Epilogue:
    """A fusion group (rule `epilogue`) finishing a product's kernel: its other members are
    computed from the accumulator `acc` just before the one store (store.cu.j2's hook), and the
    kernel stores the group's root instead of the product. `bufs` are the buffers the members
    load, passed after the product's own operands; `loads`, `lets` and `expr` are C (see
    `_pointwise_body`); `dims` the symbols they need."""
    producer: str
    root: str
    bufs: list
    loads: list
    lets: list
    expr: str
    dims: list


@dataclass(frozen=True)
class Emission:
    """What an emitter is asked to emit besides its node: a plain kernel (`PLAIN`), or the kernel
    of a fusion group whose root or producer the node is. `epilogue`: the group runs on a
    product's accumulator (rule `epilogue`); `prologue`: operand -> the group members that compute
    it, in graph order, computed where a reduction reads it (rule `reduce`); `comment` and `stem`:
    the group's comment lines and kernel-name stem (None: the node's own) for the kernel that
    stores its value (a reduction's first stage too)."""
    epilogue: Epilogue | None = None
    prologue: dict = field(default_factory=dict)
    comment: list | None = None
    stem: str | None = None


PLAIN = Emission()


class _Generator:
    def __init__(self, graph: Graph):
        self.g = graph
        self.buffers: dict[str, Buffer] = {}
        self.node_buffer: dict[str, str] = {}
        self.kernels: list[Kernel] = []      # distinct kernels, in order of first use
        self.launches: list[Launch] = []     # every launch of the plan, in order
        self.bodies: dict[tuple, Kernel] = {}
        self.names: set[str] = set()
        self.commits: list[str] = []     # assigns, committed after every kernel of the step
        self.inplace: dict[str, str] = {}    # assign -> target that an update group writes in place
        self.concats = plan_concats(graph)   # concats whose parts are stored into their buffer
        self.into = self.concats.parts       # part -> its Place in a concat's buffer
        self.unkept: set[str] = set()        # values stored only inside a concat's buffer

    def run(self) -> Module:
        g = self.g
        # fusion groups (-O2): a member is computed inside its root's kernel; constants that only
        # groups read are inlined there as literals and get no kernel
        member_of = {m: root for root, (_, members) in g.meta.groups.items() for m in members}
        updates = [r for r, (rule, _) in g.meta.groups.items() if rule == "update"]
        for r in updates:  # each output of an update is written in place into its assign's target
            for m in g.meta.groups[r][1]:
                for a in g.users(m):
                    if OPS[g.op(a)].family == "assign":
                        self.inplace[a] = self.node_buffer[a] = self.node_buffer[m] = g.operands(a)[0]
        for c in self.concats.eliminated:
            t = g.type(c)
            self.buffers[c] = Buffer(c, t.dtype, list(t.shape), "temp")
        for n in g.order():
            op = g.op(n)
            if op not in OPS:
                raise DlcError(f"codegen: unknown op '{op}'", g.loc(n))
            if n in self.concats.eliminated:  # every part was stored into it by its producer
                self.node_buffer[n] = n
                continue
            if n in member_of:
                if member_of[n] == n and g.meta.groups[n][0] != "update":
                    self.emit_group(n)
                continue
            family = OPS[op].family
            if family in INLINED and g.users(n) and all(u in member_of for u in g.users(n)):
                continue
            emit = EMITTERS.get(family)
            if emit is None:
                raise DlcError(f"codegen: no emitter for kernel family '{family}' (op {op})", g.loc(n))
            emit(self, n, PLAIN)
        for i in range(0, len(updates), UPDATE_SEGMENTS):  # after the step, before the copies
            self.emit_updates(updates[i:i + UPDATE_SEGMENTS])
        for n in self.commits:
            self._commit(n)
        for k in self.kernels:
            if k.uses > MAX_USES_LISTED + 1:
                k.comment.append(f"... launched {k.uses} times in all")
        source = env.get_template("module.cu.j2").render(
            model=g.meta.name, kernels=self.kernels, render=lambda k: k.body,
            philox=PHILOX_C.strip() if RNG_BUFFER in self.buffers else None,
            symbols=symbols_of(*(b.shape for b in self.buffers.values())))
        mod = Module(g, self.kernels, self.launches, self.buffers, self.node_buffer, source)
        mod.after_commit = {n for r in updates for n in g.meta.groups[r][1] if n in self.node_buffer}
        mod.after_commit |= set(self.inplace)
        mod.reused |= self.unkept
        return mod

    # -- helpers ---------------------------------------------------------------------------------
    def _temp(self, n: str, em: Emission = PLAIN) -> str:
        """The buffer node `n`'s kernel stores into, made on first use: its own temp, its slice of
        a concat's buffer, or (for a product with an epilogue) the group root's."""
        if em.epilogue and n == em.epilogue.producer:
            n = em.epilogue.root  # the product's value lives only in registers
        if n in self.into:  # stored into its slice of a concat's buffer (see concat.py)
            self.unkept.add(n)
            return self.into[n].concat
        t = self.g.type(n)
        self.buffers[n] = Buffer(n, t.dtype, list(t.shape), "temp")
        self.node_buffer[n] = n
        return n

    def _kernel_name(self, stem: str) -> str:
        base = re.sub(r"\W", "_", stem)
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def _comment(self, n: str, what: str | None = None) -> list[str]:
        g = self.g
        args = ", ".join(f"%{a}" for a in g.operands(n))
        lines = [f"%{n} : {g.type(n)} = {g.op(n)}{fmt_attrs(g.attrs(n))}({args})"]
        if what:
            lines.insert(0, what)
        loc = g.loc(n)
        if loc is not None:
            text = g.source_line(loc)
            lines.append(f"{loc}: {text}" if text else str(loc))
        # a comment line must not continue onto the next line of code
        return [line.replace("\\", "/") for line in lines]

    def _workspace(self, n: str, tag: str, shape: list) -> str:
        """A scratch buffer for a node computed in two launches (split-K's partial products, a
        reduction's per-block partial results): a float temp `n@tag` that holds no IR value.
        The first launch writes it (`_add(..., partial=True)`), the second reads it and stores
        the node's value; memory planning reuses it once the second launch has read it."""
        name = f"{n}@{tag}"
        self.buffers[name] = Buffer(name, "f32", list(shape), "temp")
        return name

    def _add(self, n: str, template: str, ctx: dict, out: str, ins: list[str], grid, block,
             barriers=False, phase="step", stem=None, what=None, extra_dims=(), comment=None, consts=(),
             partial=False, em: Emission = PLAIN) -> Kernel:
        """Add a kernel for node `n` writing buffer `out` and reading buffers `ins`; it takes the
        symbols of their shapes (and `extra_dims`) as `int dim_<symbol>` arguments, then `consts`
        as `int off0, off1, ...` (values the body names instead of writing them as literals).
        `partial`: the first of a node's two launches, writing a workspace (`_workspace`): no
        fused epilogue and no concat redirection, which belong to the launch that stores the value.
        `em`: a product's kernel with an epilogue (`Emission`) stores the group's root."""
        epi = em.epilogue if em.epilogue and n == em.epilogue.producer and not partial else None
        ctx = dict(ctx, epilogue=epi)
        if epi:  # the product's kernel, finishing with its fusion group (see emit_group)
            n, ins, stem = epi.root, ins + epi.bufs, em.stem or stem
            extra_dims, comment = tuple(extra_dims) + tuple(epi.dims), em.comment
        # where element j of the value goes: its place, or its slice of a concat's buffer
        ctx["dest"] = self.into[n].index if n in self.into and not partial else (lambda j: j)
        if n in self.into and not partial:
            comment = (comment or self._comment(n, what)) + [f"stores into its slice of %{self.into[n].concat} (concat elimination)"]
        dims = sorted(set(symbols_of(*[self.buffers[b].shape for b in [out] + ins])) | set(extra_dims))
        name = self._kernel_name(stem or f"{self.g.op(n)}_{n}")
        params = [f"{CTYPE[self.buffers[out].dtype]}* __restrict__ out"]
        params += [f"const {CTYPE[self.buffers[b].dtype]}* __restrict__ in{i}" for i, b in enumerate(ins)]
        params += [f"int dim_{d}" for d in dims]
        params += [f"int off{i}" for i in range(len(consts))]
        launch = Launch(name, n, self.g.op(n), phase, [out] + ins, dims, list(grid), list(block), barriers,
                        consts=list(consts))
        k = Kernel(name, template, ctx, launch, comment or self._comment(n, what), params)
        return self._register(k)

    def _register(self, k: Kernel) -> Kernel:
        """Add a kernel's launch to the plan, and the kernel to the module unless an identical
        one is there already."""
        launch, params, n, name = k.launch, k.params, k.launch.node, k.name
        self.launches.append(launch)
        # one kernel per distinct body: a node whose kernel would read exactly like an earlier one
        # (a deep net's layers of one width) launches that one on its own buffers
        k.body = self._render(k)
        key = (tuple(params), k.body)
        same = self.bodies.get(key)
        launch.shared = shared_bytes(k.body) if same is None else same.launch.shared
        if same is None:
            self.bodies[key] = k
            self.kernels.append(k)
            return k
        self.names.discard(name)
        launch.kernel = same.name
        same.uses += 1
        if same.uses <= MAX_USES_LISTED:
            loc = self.g.loc(n)
            same.comment.append(f"also launched for %{n}" + (f" ({loc}: {self.g.source_line(loc) or ''})".replace(
                "\\", "/") if loc else ""))
        return same

    def _render(self, k: Kernel) -> str:
        return env.get_template(k.template).render(k=k, **k.ctx)

    def _ins(self, n: str) -> list[str]:
        return [self.node_buffer[a] for a in self.g.operands(n)]

    def _pointwise(self, n, out, ins, expr, loads, stem=None, phase="step", what=None, consts=(), lets=(),
                   extra_dims=(), comment=None):
        """A pointwise kernel writing every element i of buffer `out`: `loads` are (name, buffer
        index, C index expr), `lets` (name, C) computed in order, `expr` the value stored.
        A grid-stride loop; float4s when every load reads element i of a float buffer and the
        store is not redirected into a concat (`_vectorised`), else one element a step."""
        # (a value stored into its slice of a concat's buffer has its own size, not the buffer's)
        size = Size.of((self.g.type(n) if n in self.into else self.buffers[out]).shape)
        vector = self._vectorised(n, out, ins, loads, size)
        ctx = dict(size=size.c(), loads=loads, lets=list(lets), expr=expr, ctype=CTYPE[self.buffers[out].dtype],
                   vector=vector)
        blocks, _ = capped_div(size, ELEMENTWISE_BLOCK * (4 if vector else 1), ELEMENTWISE_MAX_BLOCKS)
        return self._add(n, "pointwise.cu.j2", ctx, out, ins, [blocks, 1, 1], [ELEMENTWISE_BLOCK, 1, 1],
                         phase=phase, stem=stem, what=what, consts=consts, extra_dims=extra_dims, comment=comment)

    def _vectorised(self, n, out, ins, loads, size: Size) -> bool:
        """Whether a pointwise kernel can move float4s: it stores floats at their own place (not
        into a slice of a concat's buffer) and every load reads a float buffer at the element the
        store writes (no broadcast, gather, slice or concat slice), so that four neighbours are
        four neighbours in every buffer. Buffers are whole allocations, 16-byte aligned (CuPy:
        256 bytes; the emu backend's NumPy arrays: malloc's 16, checked in tests), so
        `reinterpret_cast<float4*>(buf)[q]` is an aligned 16-byte access. A static size under 4
        has no float4 to move."""
        return (self.buffers[out].dtype == "f32" and n not in self.into
                and (size.static is None or size.static >= 4)
                and all(index == "i" and self.buffers[ins[slot]].dtype == "f32" for _, slot, index in loads))

    # -- families --------------------------------------------------------------------------------
    def emit_source(self, n, em: Emission = PLAIN):  # input, param, state: a buffer of their own, no kernel
        t = self.g.type(n)
        self.buffers[n] = Buffer(n, t.dtype, list(t.shape), self.g.op(n))
        self.node_buffer[n] = n

    def emit_elementwise(self, n, em: Emission = PLAIN):
        g = self.g
        out_shape = g.type(n).shape
        loads = [(var, i, broadcast_index("i", out_shape, g.type(a).shape))
                 for i, (var, a) in enumerate(zip("ab", g.operands(n)))]
        self._pointwise(n, self._temp(n), self._ins(n), c_expr(g, n), loads)

    def emit_group(self, root):
        """A fusion group as one kernel. Rule `elementwise`: a grid-stride loop over the root's
        elements (`_pointwise`: float4s when every load reads the stored element),
        each member a local variable, only the root's value stored. Rule `epilogue`: the first
        member that is not pointwise is a matmul or convolution; its kernel runs with the other members applied to its
        accumulator `acc` before the one store (the `store.cu.j2` hook of its template)."""
        g = self.g
        rule, members = g.meta.groups[root]
        comment = [f"fused group %{root} ({rule}): {len(members)} nodes"] * (len(members) > 1)
        for m in members:
            comment += self._comment(m)
        stem = f"fused_{root}" if len(members) > 1 else None
        if rule == "reduce":  # pointwise producers computed inside the reduction's loop
            red = root
            inputs = [a for a in g.operands(red) if a in members]
            prologue = {a: _within(g, a, set(members)) for a in inputs}
            EMITTERS[OPS[g.op(red)].family](self, red, Emission(prologue=prologue, comment=comment, stem=stem))
            return
        if rule == "epilogue":
            producer = next(m for m in members if OPS[g.op(m)].family not in POINTWISE)
            slots = len(g.operands(producer))  # the product's own inputs come first
            rest = [m for m in members if m != producer]
            body = self._pointwise_body(rest, root, "ei", slots, {producer: "acc"})
            epilogue = Epilogue(producer, root, body["bufs"], body["loads"], body["lets"], body["expr"], body["dims"])
            EMITTERS[OPS[g.op(producer)].family](self, producer, Emission(epilogue, comment=comment, stem=stem))
            return
        consts: list[int] = []
        body = self._pointwise_body(members, root, "i", 0, {}, consts=consts)
        self._pointwise(root, self._temp(root), body["bufs"], body["expr"], body["loads"], stem=stem, consts=consts,
                        lets=body["lets"], extra_dims=body["dims"], comment=comment)

    def _pointwise_body(self, members, root, index: str, slot0: int, known: dict, prefix: str = "",
                        consts: list | None = None) -> dict:
        """C statements for pointwise members at flat element `index` of the root: the buffers
        they load (as in{slot0}, in{slot0 + 1}, ... with the root's broadcast index), their lets,
        the root's expression and the symbols they need. `known` gives C for values already at
        hand (an epilogue's accumulator); constants and static sizes become literals. With a
        `consts` list, slice offsets become kernel arguments `off<i>` appended to it instead, so
        that slices at different places (a scan's steps) share one kernel."""
        g = self.g
        inside, shape = set(members), g.type(root).shape
        bufs, loads, lets, dims, expr = [], [], [], set(), dict(known)

        def outside(a):
            if a not in expr:
                fam = OPS[g.op(a)].family
                if fam == "const":
                    expr[a] = _c_float(float(g.attrs(a)["value"]))
                elif fam == "shape":
                    count = self._count(a)
                    dims.update(count.syms)
                    expr[a] = f"(float)({count.c()})"
                else:
                    var = f"{prefix}x{len(bufs)}"
                    at = broadcast_index(index, shape, g.type(a).shape)
                    if a in self.into:  # stored in its slice of a concat's buffer
                        buf, at = self.into[a].concat, self.into[a].index(at)
                    else:
                        buf = self.node_buffer[a]
                    loads.append((var, slot0 + len(bufs), at))
                    bufs.append(buf)
                    expr[a] = var
            return expr[a]
        for k, m in enumerate(members):
            d = OPS[g.op(m)]
            if d.family == "slice":  # its operand, gathered: the slice's element `index`
                a = g.operands(m)[0]
                off = self.slice_offset(m) if consts is not None else None
                if off is not None:
                    consts.append(off)
                at = self._slice_index(m, index, f"off{len(consts) - 1}" if off is not None else None)
                var = f"{prefix}x{len(bufs)}"
                loads.append((var, slot0 + len(bufs), at))
                bufs.append(self.node_buffer[a])
                lets.append((f"{prefix}t{k}", var))
                expr[m] = f"{prefix}t{k}"
                continue
            args = g.operands(m)[:1] if d.family == "broadcast" else g.operands(m)
            vals = [expr[a] if a in inside else outside(a) for a in args]
            lets.append((f"{prefix}t{k}", _ewise(c_expr(g, m), *vals) if d.family == "elementwise" else vals[0]))
            expr[m] = f"{prefix}t{k}"
        return dict(bufs=bufs, loads=loads, lets=lets, expr=expr[root], dims=sorted(dims), vars=expr)

    def emit_updates(self, roots):
        """Optimizer updates, multi-tensor: one kernel for several update groups (up to
        UPDATE_SEGMENTS), over the concatenated index space of their params, one segment each.
        A segment loads its param's old values, gradient and state, computes the group, and
        stores every output straight into its target (param or state), in place. It runs in the
        commit phase, after every kernel of the step has read the old values."""
        g = self.g
        params: dict[str, str] = {}   # buffer -> kernel parameter name
        written = {self.node_buffer[m] for r in roots for m in g.meta.groups[r][1] if m in self.node_buffer}
        segments, comment, start, dims = [], [f"optimizer update of {len(roots)} tensors, in place"], 0, set()
        for r in roots:
            rule, members = g.meta.groups[r]
            body = self._pointwise_body(members, r, "j", 0, {})
            for b in body["bufs"]:
                params.setdefault(b, None)
            outs = [m for m in members if m in self.node_buffer]
            size = Size.of(g.type(r).shape)
            if size.static is None:
                raise DlcError(f"codegen: update of %{r} has a symbolic size {g.type(r)}", g.loc(r))
            segments.append(dict(start=start, stop=start + size.static, body=body, outs=outs))
            dims.update(body["dims"])
            targets = ", ".join(f"%{self.node_buffer[m]}" for m in outs)
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
            s["stores"] = [(names[self.node_buffer[m]], body["vars"][m]) for m in s["outs"]]
        decl = [f"{CTYPE[self.buffers[b].dtype]}* __restrict__ {names[b]}" if b in written else
                f"const {CTYPE[self.buffers[b].dtype]}* __restrict__ {names[b]}" for b in ordered]
        dims = sorted(set(symbols_of(*[self.buffers[b].shape for b in ordered])) | dims)
        decl += [f"int dim_{d}" for d in dims]
        name = self._kernel_name(f"update_{roots[0]}" + (f"_and_{len(roots) - 1}_more" if len(roots) > 1 else ""))
        launch = Launch(name, roots[0], g.op(roots[0]), "commit", ordered, dims,
                        [ceil_div(Size(start), ELEMENTWISE_BLOCK), 1, 1], [ELEMENTWISE_BLOCK, 1, 1], False,
                        writes=len(written))
        k = Kernel(name, "update.cu.j2", dict(segments=segments, size=start), launch, comment, decl)
        self._register(k)

    def _count(self, n) -> Size:
        """The element count a `size` node stands for."""
        t = self.g.type(self.g.operands(n)[0])
        return Size.of(t.shape[a] for a in normalize_axes(self.g.attrs(n)["axis"], t.rank))

    def emit_const(self, n, em: Emission = PLAIN):
        value = float(self.g.attrs(n)["value"])
        self._add(n, "const.cu.j2", dict(value=_c_float(value)), self._temp(n), [], [1, 1, 1], [1, 1, 1])

    def emit_size(self, n, em: Emission = PLAIN):
        count = self._count(n)
        # the operand is not read, only its (possibly symbolic) shape: pass no buffer for it
        self._add(n, "const.cu.j2", dict(value=f"(float){count.c()}"), self._temp(n), [], [1, 1, 1], [1, 1, 1],
                  extra_dims=count.syms)

    def emit_alias(self, n, em: Emission = PLAIN):  # reshape: the operand's buffer under another shape
        self.node_buffer[n] = self.node_buffer[self.g.operands(n)[0]]

    def _copy(self, n, index: str):
        """A layout op: out[i] = in0[index(i)]."""
        self._pointwise(n, self._temp(n), [self.node_buffer[self.g.operands(n)[0]]], "a", [("a", 0, index)])

    def emit_transpose(self, n, em: Emission = PLAIN):
        g = self.g
        out_shape, in_shape = g.type(n).shape, g.type(g.operands(n)[0]).shape
        perm = g.attrs(n)["perm"]
        perm = list(reversed(range(len(in_shape)))) if perm is None else list(perm)
        st = strides(in_shape)
        self._copy(n, gather_index("i", out_shape, [st[p] for p in perm]))

    def emit_broadcast(self, n, em: Emission = PLAIN):
        g = self.g
        self._copy(n, broadcast_index("i", g.type(n).shape, g.type(g.operands(n)[0]).shape))

    def _slice_index(self, n, index: str, offset: str | None = None) -> str:
        """The operand element that element `index` of slice `n` reads; `offset` names the
        slice's start offset in the body instead of writing it as a literal."""
        g = self.g
        at = gather_index(index, g.type(n).shape, strides(g.type(g.operands(n)[0]).shape))
        if offset:
            return f"{at} + {offset}"
        return at if g.attrs(n)["start"] == 0 else f"{at} + {self._slice_start(n).c()}"

    def _slice_start(self, n) -> Size:
        """Where slice `n` starts in its operand, as an element offset."""
        in_shape = self.g.type(self.g.operands(n)[0]).shape
        a = self.g.attrs(n)
        return Size(a["start"]) * strides(in_shape)[normalize_axes(a["axis"], len(in_shape))[0]]

    def slice_offset(self, n) -> int | None:
        """A slice's start offset when it is a number (it is unless a later axis is symbolic)."""
        return self._slice_start(n).static

    def emit_slice(self, n, em: Emission = PLAIN):
        # the offset is an argument, so the slices of one tensor at different places (the steps
        # of a scan, the adjoint of a concat) are one kernel however many there are
        off = self.slice_offset(n)
        if off is None:
            self._copy(n, self._slice_index(n, "i"))
            return
        self._pointwise(n, self._temp(n), [self.node_buffer[self.g.operands(n)[0]]], "a",
                        [("a", 0, self._slice_index(n, "i", "off0"))], consts=[off])

    def emit_pad(self, n, em: Emission = PLAIN):
        """out[..., c, ...] = in0[..., c - start, ...] where start <= c < start + length, else 0."""
        g = self.g
        out_shape = g.type(n).shape
        a = g.attrs(n)
        axis = normalize_axes(a["axis"], len(out_shape))[0]
        length = g.type(g.operands(n)[0]).shape[axis]
        size = Size.of(out_shape)
        ctx = dict(size=size.c(), inner=Size.of(out_shape[axis + 1:]).c(), total=a["total"], start=a["start"],
                   stop=a["start"] + length, length=length)
        self._add(n, "pad.cu.j2", ctx, self._temp(n), self._ins(n), [ceil_div(size, ELEMENTWISE_BLOCK), 1, 1],
                  [ELEMENTWISE_BLOCK, 1, 1])

    def emit_concat(self, n, em: Emission = PLAIN):
        """out[..., c, ...] along the axis comes from the operand whose range holds c."""
        g = self.g
        out_shape = g.type(n).shape
        axis = normalize_axes(g.attrs(n)["axis"], len(out_shape))[0]
        inner = Size.of(out_shape[axis + 1:])
        parts, start = [], 0
        for slot, a in enumerate(g.operands(n)):
            length = g.type(a).shape[axis]
            parts.append(dict(slot=slot, start=start, stop=start + length, length=length))
            start += length
        size = Size.of(out_shape)
        ctx = dict(size=size.c(), inner=inner.c(), total=start, parts=parts)
        self._add(n, "concat.cu.j2", ctx, self._temp(n), self._ins(n), [ceil_div(size, ELEMENTWISE_BLOCK), 1, 1],
                  [ELEMENTWISE_BLOCK, 1, 1])

    def emit_dropout(self, n, em: Emission = PLAIN):
        """Training (rng[2] != 0): keep x * 1/(1-p) where Philox's uniform >= p; inference: x."""
        if RNG_BUFFER not in self.buffers:
            self.buffers[RNG_BUFFER] = Buffer(RNG_BUFFER, "u32", [3], "rng")
        a = self.g.attrs(n)
        p = float(a["p"])
        size = Size.of(self.g.type(n).shape)
        ctx = dict(size=size.c(), p=_c_float(p), scale=_c_float(1.0 / (1.0 - p)), salt=f"{int(a['salt']) & 0xFFFFFFFF}u")
        self._add(n, "dropout.cu.j2", ctx, self._temp(n), self._ins(n) + [RNG_BUFFER],
                  [ceil_div(size, ELEMENTWISE_BLOCK), 1, 1], [ELEMENTWISE_BLOCK, 1, 1])

    # -- convolution and pooling (NCHW; spatial sizes are static, the batch may be a symbol) --------
    def _geometry(self, x_shape, out_shape, attrs, kernel):
        """C constants of the pooling templates (geometry.cu.j2)."""
        n, c, h, w = (Size.of([d]).c() for d in x_shape)
        _, o, ho, wo = (Size.of([d]).c() for d in out_shape)
        stride = attrs.get("stride")
        (sh, sw), (ph, pw) = _pair(kernel if stride is None else stride), _pair(attrs.get("padding", 0))
        dh, dw = _pair(attrs.get("dilation", 1))
        kh, kw = kernel
        return [("N", n), ("C", c), ("H", h), ("W", w), ("O", o), ("Ho", ho), ("Wo", wo), ("KH", kh), ("KW", kw),
                ("SH", sh), ("SW", sw), ("PH", ph), ("PW", pw), ("DH", dh), ("DW", dw)]

    def _convolution(self, n, x, y, w, which, em: Emission):
        """A convolution or one of its adjoints as an implicit GEMM: the tiled product (`_gemm`),
        its operands read in place through index arithmetic (no im2col matrix is built), given the
        input x, the output-side tensor y (the output, or the adjoint g) and the kernel w [O, C,
        KH, KW]. The kernel (or g, for grad_w) is operand 1 and plays A; operand 0 plays B.

            forward  y[b, o, oy, ox]  M = O, N = (b, oy, ox), K = (c, fy, fx): w @ the taps of x
            grad_x   dx[b, c, iy, ix] M = C, N = (b, iy, ix), K = (o, fy, fx): w^T @ g, where the
                     tap lands on an output (iy + PH - fy*DH a multiple of the stride, in range)
            grad_w   dw[o, c, fy, fx] M = O, N = (c, fy, fx), K = (b, oy, ox): g @ the taps of x^T;
                     K runs over the batch and every output pixel, so it is split-K

        where a tap reads x at iy = oy*SH - PH + fy*DH (ix likewise) and padding reads zero.
        Conditions that always hold for the geometry (no padding, stride 1) are left out."""
        g = self.g
        images, C, H, W = g.type(x).shape
        O, _, KH, KW = g.type(w).shape
        Ho, Wo = g.type(y).shape[2:]
        attrs = g.attrs(n)
        (SH, SW), (PH, PW), (DH, DW) = (_pair(attrs[k]) for k in ("stride", "padding", "dilation"))
        T, P, Q = KH * KW, Ho * Wo, H * W
        lets: list = []

        def let(name, value):  # a named coordinate, unless it is a name or a number already
            if re.fullmatch(r"-?\w+", value):
                return value
            lets.append((name, value))
            return name

        def taps(out_flat, tap_flat):
            """(image, channel, offset of the x element within the channel, its validity) read by
            output pixel number `out_flat` through channel-and-tap number `tap_flat`."""
            im, oy, ox = (let(v, e) for v, e in zip(("im", "oy", "ox"), _coords(out_flat, [Ho, Wo])))
            ch, fy, fx = (let(v, e) for v, e in zip(("ch", "fy", "fx"), _coords(tap_flat, [KH, KW])))
            if (KH, KW, SH, SW, PH, PW) == (1, 1, 1, 1, 0, 0):  # the same pixel of x
                return im, ch, let("px", _coords(out_flat, [P])[1]), None
            iy = let("iy", _affine([(oy, SH), (fy, DH)], -PH))
            ix = let("ix", _affine([(ox, SW), (fx, DW)], -PW))
            # iy runs over [-PH, (Ho - 1) * SH + (KH - 1) * DH - PH], ix likewise
            valid = [f"{iy} >= 0"] * (PH > 0) + [f"{iy} < {H}"] * ((Ho - 1) * SH + (KH - 1) * DH - PH >= H)
            valid += [f"{ix} >= 0"] * (PW > 0) + [f"{ix} < {W}"] * ((Wo - 1) * SW + (KW - 1) * DW - PW >= W)
            return im, ch, _affine([(iy, W), (ix, 1)]), " && ".join(valid) or None

        def flat(index, extent, stride):  # (index / extent) * stride + row * extent + index % extent
            outer, inner = _coords(index, [extent])
            return _affine([(outer, stride), ("row", extent), (inner, 1)])

        pixels = Size.of([images]) * Size(P)
        if which == "forward":    # y[b, o, p] = sum over (c, fy, fx) of w[o, c, fy, fx] x[b, c, iy, ix]
            im, ch, at, valid = taps("col", "kb")
            at = _affine([(im, C * Q), (ch, Q), (at, 1)])
            self._gemm(n, Size(O), Size(C * T), pixels, _affine([("row", C * T), ("ka", 1)]), at,
                       flat("col", P, O * P), f"conv_{n}", "w @ the taps of x, K over (channel, tap)", "in1", "in0",
                       b_lets=_used(lets, at, valid), b_valid=valid, em=em)
        elif which == "grad_x":   # dx[b, c, q] = sum over (o, fy, fx) of w[o, c, fy, fx] g[b, o, ty / SH, tx / SW]
            im, iy, ix = (let(v, e) for v, e in zip(("im", "iy", "ix"), _coords("col", [H, W])))
            oc, fy, fx = (let(v, e) for v, e in zip(("oc", "fy", "fx"), _coords("kb", [KH, KW])))
            ty = let("ty", _affine([(iy, 1), (fy, -DH)], PH))  # over [PH - (KH - 1) * DH, H - 1 + PH]
            tx = let("tx", _affine([(ix, 1), (fx, -DW)], PW))
            valid = [f"{ty} >= 0"] * (PH - (KH - 1) * DH < 0) + [f"{ty} % {SH} == 0"] * (SH > 1)
            valid += [f"{ty} < {SH * Ho}"] * (H - 1 + PH >= SH * Ho)
            valid += [f"{tx} >= 0"] * (PW - (KW - 1) * DW < 0) + [f"{tx} % {SW} == 0"] * (SW > 1)
            valid += [f"{tx} < {SW * Wo}"] * (W - 1 + PW >= SW * Wo)
            valid = " && ".join(valid) or None
            oy, ox = (ty if SH == 1 else f"{ty} / {SH}"), (tx if SW == 1 else f"{tx} / {SW}")
            at = _affine([(im, O * P), (oc, P), (oy, Wo), (ox, 1)])
            o_of, tap_of = _coords("ka", [T])
            self._gemm(n, Size(C), Size(O * T), Size.of([images]) * Size(Q),
                       _affine([(o_of, C * T), ("row", T), (tap_of, 1)]), at, flat("col", Q, C * Q),
                       f"conv_grad_x_{n}", "w^T @ g, K over (output channel, tap)", "in1", "in0",
                       a_fast="m" if T == 1 else "k", b_lets=_used(lets, at, valid), b_valid=valid, em=em)
        else:                     # dw[o, c, fy, fx] = sum over (b, oy, ox) of g[b, o, oy, ox] x[b, c, iy, ix]
            im, ch, at, valid = taps("kb", "col")
            at = _affine([(im, C * Q), (ch, Q), (at, 1)])
            self._gemm(n, Size(O), pixels, Size(C * T), flat("ka", P, O * P), at, "row * N + col",
                       f"conv_grad_w_{n}", "g @ the taps of x^T, K over (image, output pixel)", "in1", "in0",
                       b_fast="k", b_lets=_used(lets, at, valid), b_valid=valid, em=em)

    def emit_conv(self, n, em: Emission = PLAIN):  # (x, w) -> y
        x, w = self.g.operands(n)
        self._convolution(n, x, n, w, "forward", em)

    def emit_conv_grad_x(self, n, em: Emission = PLAIN):  # (g, w, x) -> dx
        gy, w, x = self.g.operands(n)
        self._convolution(n, x, gy, w, "grad_x", em)

    def emit_conv_grad_w(self, n, em: Emission = PLAIN):  # (x, g, w) -> dw
        x, gy, w = self.g.operands(n)
        self._convolution(n, x, gy, w, "grad_w", em)

    def _pool(self, n, x, y_shape):
        a = self.g.attrs(n)
        consts = self._geometry(self.g.type(x).shape, y_shape, a, _pair(a["kernel"]))
        self._per_element(n, OPS[self.g.op(n)].kernel["template"], consts)

    def emit_pool(self, n, em: Emission = PLAIN):  # (x) -> y, one thread per output
        self._pool(n, self.g.operands(n)[0], self.g.type(n).shape)

    def emit_pool_grad(self, n, em: Emission = PLAIN):  # (g, x, ...) -> dx, one thread per element of x
        gy, x = self.g.operands(n)[:2]
        self._pool(n, x, self.g.type(gy).shape)

    def _per_element(self, n, template, consts):
        size = Size.of(self.g.type(n).shape)
        self._add(n, template, dict(consts=consts, size=size.c()), self._temp(n), self._ins(n),
                  [ceil_div(size, ELEMENTWISE_BLOCK), 1, 1], [ELEMENTWISE_BLOCK, 1, 1])

    def emit_assign(self, n, em: Emission = PLAIN):
        if n in self.inplace:  # an update group writes the target itself: nothing to commit
            return
        self.commits.append(n)
        value = self.g.operands(n)[1]
        buf = self.node_buffer[value]
        if self.buffers[buf].kind == "temp":
            self.node_buffer[n] = buf
        else:  # snapshot the old value: the commit phase may overwrite `buf`
            self._pointwise(n, self._temp(n), [buf], "a", [("a", 0, "i")], stem=f"snapshot_{n}")

    def _commit(self, n):
        target = self.node_buffer[self.g.operands(n)[0]]
        self._pointwise(n, target, [self.node_buffer[n]], "a", [("a", 0, "i")], stem=f"commit_{n}",
                        phase="commit", what=f"commit: the new value of %{target}, after every read of the old")

    def emit_reduce(self, n, em: Emission = PLAIN):  # sum, mean, l1, l2, mse
        g = self.g
        op, args = g.op(n), g.operands(n)
        shape = g.type(args[0]).shape
        axes = normalize_axes(g.attrs(n).get("axis"), len(shape))
        kept = [i for i in range(len(shape)) if i not in axes]
        st = strides(shape)
        extent = Size.of(shape[i] for i in axes)
        outputs = Size.of(shape[i] for i in kept)
        if list(axes) == list(range(len(kept), len(shape))):    # trailing axes: rows of `extent`
            index = "r" if not kept else f"o * {extent.c()} + r"
        elif list(axes) == list(range(len(axes))):               # leading axes: columns
            index = f"r * {outputs.c()} + o"
        else:
            base = gather_index("o", [shape[i] for i in kept], [st[i] for i in kept])
            offset = gather_index("r", [shape[i] for i in axes], [st[i] for i in axes])
            index = offset if base == "0" else (base if offset == "0" else f"{base} + {offset}")
        kernel = OPS[op].kernel
        # an operand that a fusion group computes (rule `reduce`) is computed where it is read:
        # its members' lets at element `index` of it, in the reduction's loop (a prologue)
        folded = em.prologue
        # the operand's symbols size the loop even when no buffer of that shape is passed (a folded
        # operand computed from smaller, broadcast ones)
        loads, prologues, ins, dims = [], [], [], list(Size.of(shape).syms)
        for i, (var, a) in enumerate(zip("ab", args)):
            if a in folded:
                body = self._pointwise_body(folded[a], a, f"i{var}", 0, {}, prefix=f"{var}_")
                slot = len(ins)
                prologues.append(dict(index_var=f"i{var}", index=index, var=var, expr=body["expr"], lets=body["lets"],
                                      loads=[(v, slot + s, at) for v, s, at in body["loads"]]))
                ins += body["bufs"]
                dims += body["dims"]
            else:
                loads.append((var, len(ins), index))
                ins.append(self.node_buffer[a])
        ctx = dict(extent=extent.c(), loads=loads, prologues=prologues, expr=kernel["map"], finish=kernel["finish"],
                   size=outputs.c())
        if index == f"r * {outputs.c()} + o" and outputs.estimate() >= COLUMN_OUTPUTS:
            self._reduce_columns(n, ctx, ins, dims, extent, outputs, [shape[i] for i in kept], em)
        else:
            self._reduce_blocks(n, ctx, ins, dims, extent, outputs, em)

    def _reduce_columns(self, n, ctx, ins, dims, extent: Size, outputs: Size, kept_shape, em: Emission):
        """Leading axes reduced into columns (a bias gradient, [N, C] -> [C]). Stage 1: a block per
        tile of COLUMN_TILE columns and chunk of the rows (grid y), its COLUMN_LANES row lanes
        walking the chunk, their sums added in order into a workspace [chunks, columns]; chunks =
        min(ceil(extent / COLUMN_CHUNK_ROWS), REDUCE_BLOCKS / tiles), so a batch of any size
        fills the GPU. Stage 2: a thread per column adds its chunks in order and applies the op's
        `finish`. One launch (the stage-1 kernel, storing the result) when there can be only one
        chunk: a static extent of at most COLUMN_CHUNK_ROWS rows, or tiles enough to fill
        REDUCE_BLOCKS alone. The operand's fused producers (`prologues`) run in stage 1."""
        comment, stem = em.comment, em.stem
        tiles = ceil_div(outputs, COLUMN_TILE)
        most = max(1, REDUCE_BLOCKS // -(-outputs.estimate() // COLUMN_TILE))
        chunks, chunks_c = capped_div(extent, COLUMN_CHUNK_ROWS, most)
        ctx = dict(ctx, tile=COLUMN_TILE, lanes=COLUMN_LANES)
        block = [COLUMN_TILE, COLUMN_LANES, 1]
        if most == 1 or (extent.static is not None and chunks <= 1):
            self._add(n, "reduce_columns.cu.j2", dict(ctx, chunks="1", final=True), self._temp(n), ins,
                      [tiles, 1, 1], block, barriers=True, extra_dims=dims, comment=comment, stem=stem)
            return
        ws = self._workspace(n, "chunks", [most if extent.static is None else chunks] + list(kept_shape))
        self._add(n, "reduce_columns.cu.j2", dict(ctx, chunks=chunks_c, final=False), ws, ins, [tiles, chunks, 1],
                  block, barriers=True, extra_dims=dims, comment=comment,
                  stem=(stem or f"{self.g.op(n)}_{n}") + "_chunks", partial=True)
        self._add(n, "reduce_columns_finish.cu.j2", dict(ctx, chunks=chunks_c), self._temp(n), [ws],
                  [ceil_div(outputs, ELEMENTWISE_BLOCK), 1, 1], [ELEMENTWISE_BLOCK, 1, 1], extra_dims=extent.syms,
                  comment=comment, stem=stem)

    def _reduce_blocks(self, n, ctx, ins, dims, extent: Size, outputs: Size, em: Emission):
        """One block per output, its threads striding over the extent, then a tree (block_sum).
        Few outputs over a long extent (a full reduction; a convolution's bias gradient, a few
        channels over batch x pixels) split in two launches. Stage 1: grid (outputs, parts), the
        parts of an output taking turns over stretches of its elements (a grid stride), each
        writing its block's sum to a workspace [outputs, parts]; parts = min(ceil(extent /
        REDUCE_CHUNK), REDUCE_BLOCKS / outputs). Stage 2: a block per output adds its parts (a
        tree of fixed shape) and applies the op's `finish`. A static extent of at most
        REDUCE_ONE_BLOCK, or outputs enough to fill the GPU alone, stays one launch. The
        operand's fused producers (`prologues`) run in stage 1."""
        comment, stem = em.comment, em.stem
        most = REDUCE_BLOCKS // outputs.static if outputs.static else 0   # parts per output at most
        if most < 2 or (extent.static is not None and extent.static <= REDUCE_ONE_BLOCK):
            self._add(n, "reduce.cu.j2", dict(ctx, parts=None), self._temp(n), ins,
                      [outputs.plan(), 1, 1],
                      [_pow2_block(extent), 1, 1], barriers=True, extra_dims=dims, comment=comment, stem=stem)
            return
        parts, parts_c = capped_div(extent, REDUCE_CHUNK, most)
        most = most if extent.static is None else parts
        ws = self._workspace(n, "parts", [outputs.static, most])
        self._add(n, "reduce.cu.j2", dict(ctx, parts=parts_c), ws, ins, [outputs.static, parts, 1],
                  [REDUCE_BLOCK[1], 1, 1], barriers=True, extra_dims=dims, comment=comment,
                  stem=(stem or f"{self.g.op(n)}_{n}") + "_parts", partial=True)
        self._add(n, "reduce_finish.cu.j2", dict(ctx, parts=parts_c), self._temp(n), [ws], [outputs.static, 1, 1],
                  [_pow2_block(Size(most)), 1, 1], barriers=True, extra_dims=extent.syms, comment=comment, stem=stem)

    def emit_softmax(self, n, em: Emission = PLAIN):  # softmax, log_softmax over one axis
        g = self.g
        src = g.operands(n)[0]
        shape = g.type(src).shape
        (axis,) = normalize_axes(g.attrs(n)["axis"], len(shape))
        extent = Size.of([shape[axis]])
        inner = Size.of(shape[axis + 1:])
        rows = Size.of(shape[:axis]) * inner
        ctx = dict(extent=extent.c(), inner=inner.c(), expr=OPS[g.op(n)].kernel["out"])
        self._add(n, "softmax.cu.j2", ctx, self._temp(n), self._ins(n), [rows.plan(), 1, 1],
                  [_pow2_block(extent), 1, 1], barriers=True)

    def _xent_rows(self, n):
        """What softmax_xent and its gradient share: the rows, and how a row's classes are split.
        Up to XENT_WARP_CLASSES classes a warp per row, XENT_ROWS_PER_BLOCK rows a block; more, a
        block per row. Returns (rows dimension, template context, grid, block)."""
        g = self.g
        rows, classes = g.type(g.operands(n)[0]).shape
        R, C = Size.of([rows]), Size.of([classes])
        warp = C.estimate() <= XENT_WARP_CLASSES
        ctx = dict(rows=R.c(), classes=C.c(), warp=warp, rows_per_block=XENT_ROWS_PER_BLOCK)
        if warp:
            return rows, ctx, [ceil_div(R, XENT_ROWS_PER_BLOCK), 1, 1], [32 * XENT_ROWS_PER_BLOCK, 1, 1]
        return rows, ctx, [R.plan(), 1, 1], [_pow2_block(C), 1, 1]

    def emit_xent(self, n, em: Emission = PLAIN):
        """softmax_xent, the mean over rows of max + log(sum(exp(x - max))) - x[label], in two
        launches: stage 1 writes each row's loss to a workspace [rows] (`_xent_rows`), stage 2
        (one block) adds them as a tree of fixed shape and divides by the rows."""
        rows, ctx, grid, block = self._xent_rows(n)
        ws = self._workspace(n, "rows", [rows])
        self._add(n, "xent.cu.j2", ctx, ws, self._ins(n), grid, block, barriers=True,
                  stem=f"{self.g.op(n)}_{n}_rows", partial=True)
        R = Size.of([rows])  # (the batch: as many threads as a block of REDUCE_BLOCK has, whatever its guess)
        threads = _pow2_block(R) if R.static is not None else REDUCE_BLOCK[1]
        self._add(n, "xent_mean.cu.j2", dict(rows=R.c()), self._temp(n), [ws], [1, 1, 1], [threads, 1, 1],
                  barriers=True)

    def emit_xent_grad(self, n, em: Emission = PLAIN):  # softmax_xent_grad: (softmax(x) - onehot) * g / rows, rows as `_xent_rows`
        _, ctx, grid, block = self._xent_rows(n)
        self._add(n, "xent_grad.cu.j2", ctx, self._temp(n), self._ins(n), grid, block, barriers=True)

    def emit_matmul(self, n, em: Emission = PLAIN):
        g = self.g
        a, b = g.operands(n)
        ta, tb = g.attrs(n)["ta"], g.attrs(n)["tb"]
        sa, sb, so = g.type(a).shape, g.type(b).shape, g.type(n).shape
        m, k = sa[-1:-3:-1] if ta else sa[-2:]
        cols = so[-1]
        M, K, N = (Size.of([d]) for d in (m, k, cols))
        variant = ("t" if ta else "n") + ("t" if tb else "n")
        a_fast, b_fast = ("m" if ta else "k"), ("k" if tb else "n")
        what = f"{'A^T' if ta else 'A'} @ {'B^T' if tb else 'B'}"
        b_index = f"col * {K.c()} + kb" if tb else f"kb * {N.c()} + col"
        if len(so) == 3 and len(sa) == 3 and len(sb) == 2 and not ta:
            # a batch of row blocks times one matrix: the batch folds into the rows (one GEMM)
            M = Size.of([sa[0]]) * M
            what += ", the batch folded into the rows"
        elif len(so) == 3:
            # a batch of products, one per blockIdx.z; a matrix operand is shared by every item
            def at(shape, index, size):
                return f"blockIdx.z * {size.c()} + {index}" if len(shape) == 3 else index
            a_index = at(sa, f"ka * {M.c()} + row" if ta else f"row * {K.c()} + ka", M * K)
            self._gemm(n, M, K, N, a_index, at(sb, b_index, K * N), at(so, "row * N + col", M * N),
                       f"bmatmul_{variant}_{n}", what + ", one product per item of the batch", a_fast=a_fast,
                       b_fast=b_fast, batch=so[0], em=em)
            return
        # A is [M, K] (or [K, M] when ta); B is [K, N] (or [N, K] when tb). An operand whose rows
        # (the stride of its slow index) are a static multiple of 4 floats long is staged with
        # float4 loads: every 4 neighbours along its fast index start at an aligned address
        a_index = f"ka * {M.c()} + row" if ta else f"row * {K.c()} + ka"
        a_stride, b_stride = Size.of([m if ta else k]), Size.of([k if tb else cols])
        self._gemm(n, M, K, N, a_index, b_index, "row * N + col", f"matmul_{variant}_{n}", what,
                   a_fast=a_fast, b_fast=b_fast, a_vec=_fours(a_stride), b_vec=_fours(b_stride), em=em)

    def _gemm(self, n, M: Size, K: Size, N: Size, a_index, b_index, out_index, stem, what, a_in="in0", b_in="in1",
              a_fast="k", b_fast="n", batch=1, b_lets=(), b_valid=None, a_vec=False, b_vec=False,
              em: Emission = PLAIN):
        """The register-blocked product out[row, col] = sum_k A[row, k] B[k, col], with the
        element addresses of A, B and out given as C expressions of row, col and ka / kb; A and B
        are the operands named `a_in` and `b_in`. `a_fast` ("m" or "k") and `b_fast` ("n" or "k")
        say which index runs along memory in each operand, so that staging reads coalesce. An
        implicit product (a convolution) names coordinates of B's element in `b_lets` ((name, C
        int expression of col and kb), computed before the load) and loads it only where
        `b_valid` holds (zero elsewhere: padding). With a `batch` dimension, one product per
        blockIdx.z (the index expressions offset by it). `a_vec`/`b_vec`: stage that operand with
        float4 loads, 4 neighbours along its fast index (the caller vouches that its rows are a
        static multiple of 4 floats long, so they are aligned). A static output of few tiles with a
        long K is split-K (see SPLIT_TARGET_BLOCKS): partial products of parts of K into a
        workspace, then a second kernel adds them in order and does the store (epilogue, concat).
        `em`: the fusion group whose epilogue the storing kernel runs, if any."""
        BM, BN, BK, TM, TN = tile = gemm_tile(M, N)
        threads = (BM // TM) * (BN // TN)
        splits = split_k(M, K, N, tile) if batch == 1 else 1
        ctx = dict(M=M.c(), N=N.c(), K=K.c(), BM=BM, BN=BN, BK=BK, TM=TM, TN=TN, threads=threads,
                   a_index=a_index, b_index=b_index, out_index=out_index, what=what, a_in=a_in, b_in=b_in,
                   a_fast=a_fast, b_fast=b_fast, b_lets=list(b_lets), b_valid=b_valid, splits=splits,
                   a_vec=a_vec, b_vec=b_vec and not b_lets and not b_valid,
                   k_end="kend" if splits > 1 else "K")
        tiles = [ceil_div(N, BN), ceil_div(M, BM)]
        if splits == 1:
            self._add(n, "matmul.cu.j2", ctx, self._temp(n, em), self._ins(n), tiles + [Size.of([batch]).plan()],
                      [threads, 1, 1], barriers=True, stem=stem, extra_dims=symbols_of((batch,)), em=em)
            return
        work = self._workspace(n, "split", [splits, M.static, N.static])
        self._add(n, "matmul.cu.j2", ctx, work, self._ins(n), tiles + [splits], [threads, 1, 1], barriers=True,
                  stem=stem, partial=True, what=f"split-K, part blockIdx.z of {splits}: {what}")
        # the sum reads the workspace as in0: a fused epilogue's loads, numbered after the
        # product's operands, move down to follow it
        epi = em.epilogue
        if epi and epi.producer == n:
            shift = 1 - len(self.g.operands(n))
            em = replace(em, epilogue=replace(epi, loads=[(var, slot + shift, at) for var, slot, at in epi.loads]))
        self._add(n, "split_sum.cu.j2", dict(M=M.c(), N=N.c(), splits=splits, out_index=out_index),
                  self._temp(n, em), [work], [ceil_div(M * N, ELEMENTWISE_BLOCK), 1, 1], [ELEMENTWISE_BLOCK, 1, 1],
                  stem=f"{stem}_sum", what=f"split-K: the {splits} parts of {what}, added in order", em=em)

def _within(g: Graph, a: str, members: set) -> list[str]:
    """`a` and the members of a group it depends on through members only, in graph order: the
    producers a folded reduction computes for its operand `a` (a walk bounded by the group)."""
    seen, todo = {a}, [a]
    while todo:
        for u in g.operands(todo.pop()):
            if u in members and u not in seen:
                seen.add(u)
                todo.append(u)
    return sorted(seen, key=lambda n: g.nx.nodes[n]["seq"])


def c_expr(g: Graph, n: str) -> str:
    """The registry's C expression of elementwise node `n`, over its operands `a` and `b`, with
    each attribute the expression names (`slope`) written in as a C literal of its value."""
    attrs = g.attrs(n)
    return re.sub(r"\b[A-Za-z_]\w*\b", lambda m: _c_literal(attrs[m.group(0)]) if m.group(0) in attrs else m.group(0),
                  OPS[g.op(n)].c)


def _c_literal(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    return _c_float(float(v))


def _ewise(c: str, a: str | None = None, b: str | None = None) -> str:
    """A C expression over `a` and `b` (see `c_expr`), applied to the C expressions a and b."""
    return "(" + re.sub(r"\b([ab])\b", lambda m: f"({a})" if m.group(1) == "a" else f"({b})", c) + ")"


# One emitter per kernel family (the registry's `family`; what each needs from an op is declared
# in the op's entry, see ir/ops.py FAMILIES). A new op of an existing family needs no change here.
EMITTERS = {
    "source": _Generator.emit_source,
    "const": _Generator.emit_const,
    "shape": _Generator.emit_size,
    "elementwise": _Generator.emit_elementwise,
    "reduce": _Generator.emit_reduce,
    "softmax": _Generator.emit_softmax,
    "xent": _Generator.emit_xent,
    "xent_grad": _Generator.emit_xent_grad,
    "matmul": _Generator.emit_matmul,
    "transpose": _Generator.emit_transpose,
    "broadcast": _Generator.emit_broadcast,
    "slice": _Generator.emit_slice,
    "concat": _Generator.emit_concat,
    "pad": _Generator.emit_pad,
    "alias": _Generator.emit_alias,
    "conv": _Generator.emit_conv,
    "conv_grad_x": _Generator.emit_conv_grad_x,
    "conv_grad_w": _Generator.emit_conv_grad_w,
    "pool": _Generator.emit_pool,
    "pool_grad": _Generator.emit_pool_grad,
    "dropout": _Generator.emit_dropout,
    "assign": _Generator.emit_assign,
}


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def _fours(stride: Size) -> bool:
    """A static row length that is a multiple of 4 floats (16 bytes): float4 loads stay aligned."""
    return stride.static is not None and stride.static % 4 == 0


def _coords(flat: str, inner: list[int]) -> list[str]:
    """C for the row-major coordinates of index `flat` over (unbounded, *inner): the first is
    `flat` divided by the product of `inner`, never reduced; coordinates of extent 1 are 0."""
    out, step = [], 1
    for e in reversed(inner):
        at = flat if step == 1 else f"({flat} / {step})"
        out.append("0" if e == 1 else f"{at} % {e}")
        step *= e
    out.append(flat if step == 1 else f"{flat} / {step}")
    return out[::-1]


def _affine(terms, const: int = 0) -> str:
    """C for sum(expr * k for expr, k in terms) + const, without zero terms or unit factors."""
    out = ""
    for e, k in list(terms) + [("1", const)]:
        if k == 0 or e == "0":
            continue
        e = e if re.fullmatch(r"\w+", e) else f"({e})"
        mag = e if abs(k) == 1 else (str(abs(k)) if e == "1" else f"{e} * {abs(k)}")
        out += (" - " if k < 0 else " + ") + mag if out else ("-" if k < 0 else "") + mag
    return out or "0"


def _used(lets: list, *exprs) -> list:
    """The lets (name, value) that `exprs` (C, or None) need, directly or through later lets."""
    text, kept = " ".join(e for e in exprs if e), []
    for name, value in reversed(lets):
        if re.search(rf"\b{name}\b", text):
            kept.append((name, value))
            text += " " + value
    return kept[::-1]


def _pow2_block(extent: Size) -> int:
    lo, hi = REDUCE_BLOCK
    want = extent.estimate()
    b = lo
    while b < want and b < hi:
        b *= 2
    return b


def _c_float(v: float) -> str:
    if v != v:
        return "__int_as_float(0x7fc00000)"
    if v in (float("inf"), float("-inf")):
        return ("" if v > 0 else "-") + "__int_as_float(0x7f800000)"
    return f"{v!r}f" if ("e" in repr(v) or "." in repr(v)) else f"{v!r}.0f"
