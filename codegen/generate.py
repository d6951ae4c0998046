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

import json
import re
from dataclasses import dataclass, field, asdict
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from ..ir.errors import DlcError
from ..ir.graph import Graph
from ..ir.ops import OPS
from .philox import PHILOX_C
from ..ir.text import fmt_attrs
from ..ir.types import normalize_axes
from .sizes import Size, broadcast_index, ceil_div, evaluate, gather_index, strides, symbols_of

TEMPLATES = Path(__file__).with_name("templates")
EMU_HEADER = Path(__file__).with_name("cuda_emu.h")

_env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined,
                   trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)

CTYPE = {"f32": "float", "i32": "int", "u32": "unsigned int"}
RNG_BUFFER = "@rng"          # [seed, step, training]: written by the runtime before each run
ELEMENTWISE_BLOCK = 256      # threads per block of one-thread-per-element kernels
GEMM_TILE = (64, 64, 16, 8, 8)  # matmul: BM x BN outputs per block, BK-deep slices, TM x TN per thread
REDUCE_BLOCK = (32, 256)     # reductions: a power of two in this range, from the extent
POINTWISE = ("elementwise", "broadcast", "slice")  # families a fusion group computes inline
INLINED = ("const", "shape")
STORE_HOOK = ("matmul", "conv", "conv_grad_x", "conv_grad_w")  # families whose template ends in store.cu.j2  # families whose value a fused kernel writes as a literal
UPDATE_SEGMENTS = 8          # optimizer updates (one per param) handled by one multi-tensor kernel
MAX_USES_LISTED = 8          # a shared kernel's comment names this many of the nodes it runs for
COLUMN_OUTPUTS = 64          # reducing leading axes into at least this many outputs: a thread per output


# -- the launch plan ------------------------------------------------------------------------------

@dataclass
class Buffer:
    name: str
    dtype: str            # f32 or i32
    shape: list           # ints and symbols
    kind: str             # input, param, state, temp, or rng (the dropout generator's key)


@dataclass
class Launch:
    kernel: str
    node: str             # the IR node it computes (for a commit: the assign)
    op: str
    phase: str            # step or commit
    args: list            # buffer names, in the kernel's parameter order (output first)
    dims: list            # symbols passed after the buffers, as `int dim_<name>`
    grid: list            # ints or size expressions over the symbols (see sizes.evaluate)
    block: list
    barriers: bool        # uses __syncthreads (the emulator then runs the block as fibers)
    writes: int = 0       # how many leading args a kernel also reads (in-place updates)
    consts: list = field(default_factory=list)  # ints passed after the symbols, as `int off<i>`:
                          # what would otherwise make kernels differ (a slice's offset per step)


@dataclass
class Kernel:
    """One kernel: what the template needs, and its place in the plan."""
    name: str
    template: str
    ctx: dict
    launch: Launch
    comment: list = field(default_factory=list)
    params: list = field(default_factory=list)   # (C declaration) per argument
    uses: int = 1                                # launches of this kernel in the plan
    body: str = ""                               # the rendered body


class Module:
    """A generated CUDA module: source text, launch plan and buffer table."""

    def __init__(self, graph: Graph, kernels: list[Kernel], launches: list[Launch], buffers: dict[str, Buffer],
                 node_buffer: dict[str, str], source: str):
        self.graph = graph
        self.kernels = kernels            # distinct kernels: one per body
        self.buffers = buffers
        self.node_buffer = node_buffer    # node -> buffer holding its value
        self.source = source
        self.launches = launches          # the plan: every launch, in order
        self.reused: set[str] = set()     # nodes whose buffer later values overwrite (memory planning)
        self.after_commit: set[str] = set()  # values an in-place update writes in the commit phase
        self.symbols = symbols_of(*(b.shape for b in buffers.values()))

    @property
    def kernel_names(self) -> list[str]:
        return [k.name for k in self.kernels]

    @property
    def plan(self) -> dict:
        return {
            "model": self.graph.meta.name,
            "symbols": self.symbols,
            "buffers": [asdict(b) for b in self.buffers.values()],
            "values": dict(self.node_buffer),
            "launches": [asdict(l) for l in self.launches if l.phase == "step"],
            "commits": [asdict(l) for l in self.launches if l.phase == "commit"],
        }

    def plan_json(self) -> str:
        return json.dumps(self.plan, indent=1)

    def plan_text(self) -> str:
        lines = [f"# launch plan of model {self.graph.meta.name}; symbols: {', '.join(self.symbols) or '-'}",
                 "# buffers"]
        for b in self.buffers.values():
            lines.append(f"{b.kind:6} {b.name} : {b.dtype}[{', '.join(map(str, b.shape))}]")
        for phase in ("step", "commit"):
            lines.append(f"# {phase} launches")
            for l in self.launches:
                if l.phase == phase:
                    grid = ", ".join(map(str, l.grid))
                    consts = [f"off{i}={v}" for i, v in enumerate(l.consts)]
                    lines.append(f"{l.kernel}<<<({grid}), ({', '.join(map(str, l.block))})>>>"
                                 f"({', '.join(l.args + [f'dim_{d}' for d in l.dims] + consts)})")
        return "\n".join(lines) + "\n"

    def stats(self, dims: dict) -> dict:
        """Per run of the whole plan (a training step, commits included), symbols bound by `dims`:
        kernels in the module, launches, FLOPs (the registry's counts over every node), bytes
        moved (an estimate: each buffer a launch touches once, twice when it reads and writes it
        in place) and peak bytes (every buffer allocated: params, state, inputs and temps)."""
        from ..ir.ops import flops

        def nbytes(b):
            buf = self.buffers[b]
            return 4 * max(1, evaluate(Size.of(buf.shape).py(), dims))
        moved = sum(nbytes(a) * (2 if i < l.writes else 1) for l in self.launches for i, a in enumerate(l.args))
        return {"kernels": len(self.kernels), "launches": len(self.launches),
                "flops": sum(flops(self.graph, n, dims) for n in self.graph.nx),
                "bytes_moved": moved, "peak_bytes": sum(nbytes(b) for b in self.buffers)}

    def emu_source(self) -> str:
        """The module plus host launch functions, for the host C++ compiler (see cuda_emu.h)."""
        return _env.get_template("emu_glue.cpp.j2").render(module=self.source, kernels=self.kernels)


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


def plan_memory(mod: "Module") -> None:
    """Reuse temp buffers by liveness. A temp lives from the launch that writes it first to the
    last launch that reads it (step and commit phases in their order); values the model hands
    out (outputs, loss, gradients, assigned values) and the dropout key live throughout. Walking
    the launches in order, a temp takes a free slot of the same dtype and size (symbols included,
    so one plan serves every batch size) whose last occupant's life ended at an earlier launch, so
    no kernel reads and writes one buffer; otherwise it opens a new slot. Slots are named @s0,
    @s1, ... and take the shape of their first occupant."""
    g = mod.graph
    m = g.meta
    wanted = list(m.outputs.values()) + [m.loss] * bool(m.loss) + list(m.grads.values())
    wanted += [n for n in g.nx if OPS[g.op(n)].family == "assign"]
    keep = {mod.node_buffer[n] for n in wanted if n in mod.node_buffer}
    first, last = {}, {}
    for i, l in enumerate(mod.launches):
        for b in l.args:
            if mod.buffers[b].kind == "temp":
                first.setdefault(b, i)
                last[b] = i
    slot_of: dict[str, str] = {}
    free: dict[tuple, list] = {}      # (dtype, size) -> [(slot, launch index its occupant dies at)]
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
        self._epilogue: dict | None = None  # set while a product's kernel is emitted with a group
        self._folding: dict | None = None   # operand -> its producers, while a reduction is emitted with them
        self._folded_comment, self._folded_stem = None, None
        self.inplace: dict[str, str] = {}    # assign -> target that an update group writes in place
        self.concats: set[str] = set()       # concats whose parts are stored into their buffer
        self.into: dict[str, tuple] = {}     # part -> (concat, C index of element j in the concat)
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
        if g.meta.groups:
            self._plan_concats(member_of)
        for n in g.order():
            op = g.op(n)
            if op not in OPS:
                raise DlcError(f"codegen: unknown op '{op}'", g.loc(n))
            if n in self.concats:  # every part was stored into it by its producer
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
            emit(self, n)
        for i in range(0, len(updates), UPDATE_SEGMENTS):  # after the step, before the copies
            self.emit_updates(updates[i:i + UPDATE_SEGMENTS])
        for n in self.commits:
            self._commit(n)
        for k in self.kernels:
            if k.uses > MAX_USES_LISTED + 1:
                k.comment.append(f"... launched {k.uses} times in all")
        source = _env.get_template("module.cu.j2").render(
            model=g.meta.name, kernels=self.kernels, render=lambda k: k.body,
            philox=PHILOX_C.strip() if RNG_BUFFER in self.buffers else None,
            symbols=symbols_of(*(b.shape for b in self.buffers.values())))
        mod = Module(g, self.kernels, self.launches, self.buffers, self.node_buffer, source)
        mod.after_commit = {n for r in updates for n in g.meta.groups[r][1] if n in self.node_buffer}
        mod.after_commit |= set(self.inplace)
        mod.reused |= self.unkept
        return mod

    # -- helpers ---------------------------------------------------------------------------------
    def _plan_concats(self, member_of: dict) -> None:
        """Concat elimination (-O2): when every part of a concat is computed by a kernel whose
        store can be redirected (a fusion group's root, or a matmul or convolution) and is used
        by the concat alone, each of those kernels writes its part straight into its slice of the
        concat's buffer, and no concat kernel runs. (Its adjoint's slices are read in place by
        the fused kernels that consume them.)"""
        g = self.g
        m = g.meta
        wanted = set(m.outputs.values()) | {m.loss} | set(m.grads.values())
        for c in g.order():
            if OPS[g.op(c)].family != "concat" or c in member_of:
                continue
            parts = g.operands(c)
            shape = g.type(c).shape
            axis = normalize_axes(g.attrs(c)["axis"], len(shape))[0]
            inner = Size.of(shape[axis + 1:])
            if len(set(parts)) != len(parts) or not all(self._redirectable(v, c, member_of, wanted) for v in parts):
                continue
            t = g.type(c)
            self.buffers[c] = Buffer(c, t.dtype, list(t.shape), "temp")
            self.concats.add(c)
            start = 0
            for v in parts:
                length = g.type(v).shape[axis]
                span, total, off = (Size(length) * inner).c(), (Size(shape[axis]) * inner).c(), (Size(start) * inner).c()
                self.into[v] = (c, lambda j, s=span, t=total, o=off: f"(({j}) / {s}) * {t} + {o} + ({j}) % {s}")
                start += length

    def _redirectable(self, v: str, c: str, member_of: dict, wanted: set) -> bool:
        """A part can be stored into the concat when its kernel's store can be redirected and
        every other reader is a fusion group, which loads it from its slice (`_pointwise_body`)."""
        g = self.g
        others = [u for u in g.users(v) if u != c]
        if v in wanted or g.meta.groups.get(member_of.get(v), ("",))[0] == "update" or list(
                g.operands(c)).count(v) != 1 or any(u not in member_of or u == v for u in others):
            return False
        if member_of.get(v) == v:  # a group's root: its kernel is pointwise.cu.j2 or a product's
            return True
        return v not in member_of and OPS[g.op(v)].family in STORE_HOOK

    def _temp(self, n: str) -> str:
        if self._epilogue and n == self._epilogue["producer"]:
            n = self._epilogue["root"]  # the product's value lives only in registers
        if n in self.into:  # stored into its slice of a concat's buffer (see _plan_concats)
            self.unkept.add(n)
            return self.into[n][0]
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

    def _add(self, n: str, template: str, ctx: dict, out: str, ins: list[str], grid, block,
             barriers=False, phase="step", stem=None, what=None, extra_dims=(), comment=None, consts=()) -> Kernel:
        """Add a kernel for node `n` writing buffer `out` and reading buffers `ins`; it takes the
        symbols of their shapes (and `extra_dims`) as `int dim_<symbol>` arguments, then `consts`
        as `int off0, off1, ...` (values the body names instead of writing them as literals)."""
        epi = self._epilogue if self._epilogue and n == self._epilogue["producer"] else None
        ctx = dict(ctx, epilogue=epi)
        if epi:  # the product's kernel, finishing with its fusion group (see emit_group)
            n, ins, stem = epi["root"], ins + epi["bufs"], epi["stem"] or stem
            extra_dims, comment = tuple(extra_dims) + tuple(epi["dims"]), epi["comment"]
        # where element j of the value goes: its place, or its slice of a concat's buffer
        ctx["dest"] = self.into[n][1] if n in self.into else (lambda j: j)
        if n in self.into:
            comment = (comment or self._comment(n, what)) + [f"stores into its slice of %{self.into[n][0]} (concat elimination)"]
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
        return _env.get_template(k.template).render(k=k, **k.ctx)

    def _ins(self, n: str) -> list[str]:
        return [self.node_buffer[a] for a in self.g.operands(n)]

    def _pointwise(self, n, out, ins, expr, loads, stem=None, phase="step", what=None, consts=()):
        """One thread per output element: `loads` are (name, buffer index, C index expr)."""
        size = Size.of(self.buffers[out].shape)
        ctx = dict(size=size.c(), loads=loads, expr=expr, ctype=CTYPE[self.buffers[out].dtype])
        return self._add(n, "pointwise.cu.j2", ctx, out, ins, [ceil_div(size, ELEMENTWISE_BLOCK), 1, 1],
                         [ELEMENTWISE_BLOCK, 1, 1], phase=phase, stem=stem, what=what, consts=consts)

    # -- families --------------------------------------------------------------------------------
    def emit_source(self, n):  # input, param, state: a buffer of their own, no kernel
        t = self.g.type(n)
        self.buffers[n] = Buffer(n, t.dtype, list(t.shape), self.g.op(n))
        self.node_buffer[n] = n

    def emit_elementwise(self, n):
        g = self.g
        d = OPS[g.op(n)]
        out_shape = g.type(n).shape
        loads = [(var, i, broadcast_index("i", out_shape, g.type(a).shape))
                 for i, (var, a) in enumerate(zip("ab", g.operands(n)))]
        self._pointwise(n, self._temp(n), self._ins(n), d.c, loads)

    def emit_group(self, root):
        """A fusion group as one kernel. Rule `elementwise`: one thread per element of the root,
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
            self._folding = {a: _within(g, a, set(members)) for a in inputs}
            self._folded_comment, self._folded_stem = comment, stem
            try:
                EMITTERS[OPS[g.op(red)].family](self, red)
            finally:
                self._folding, self._folded_comment, self._folded_stem = None, None, None
            return
        if rule == "epilogue":
            producer = next(m for m in members if OPS[g.op(m)].family not in POINTWISE)
            slots = len(g.operands(producer))  # the product's own inputs come first
            rest = [m for m in members if m != producer]
            body = self._pointwise_body(rest, root, "ei", slots, {producer: "acc"})
            self._epilogue = dict(producer=producer, root=root, comment=comment, stem=stem, **body)
            try:
                EMITTERS[OPS[g.op(producer)].family](self, producer)
            finally:
                self._epilogue = None
            return
        consts: list[int] = []
        body = self._pointwise_body(members, root, "i", 0, {}, consts=consts)
        size = Size.of(g.type(root).shape)
        ctx = dict(size=size.c(), loads=body["loads"], lets=body["lets"], expr=body["expr"],
                   ctype=CTYPE[g.type(root).dtype])
        self._add(root, "pointwise.cu.j2", ctx, self._temp(root), body["bufs"],
                  [ceil_div(size, ELEMENTWISE_BLOCK), 1, 1], [ELEMENTWISE_BLOCK, 1, 1], stem=stem,
                  extra_dims=body["dims"], comment=comment, consts=consts)

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
                        buf, at = self.into[a][0], self.into[a][1](at)
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
            lets.append((f"{prefix}t{k}", _ewise(g.op(m), *vals) if d.family == "elementwise" else vals[0]))
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

    def emit_const(self, n):
        value = float(self.g.attrs(n)["value"])
        self._add(n, "const.cu.j2", dict(value=_c_float(value)), self._temp(n), [], [1, 1, 1], [1, 1, 1])

    def emit_size(self, n):
        count = self._count(n)
        # the operand is not read, only its (possibly symbolic) shape: pass no buffer for it
        self._add(n, "const.cu.j2", dict(value=f"(float){count.c()}"), self._temp(n), [], [1, 1, 1], [1, 1, 1],
                  extra_dims=count.syms)

    def emit_alias(self, n):  # reshape: the operand's buffer under another shape
        self.node_buffer[n] = self.node_buffer[self.g.operands(n)[0]]

    def _copy(self, n, index: str):
        """A layout op: out[i] = in0[index(i)]."""
        self._pointwise(n, self._temp(n), [self.node_buffer[self.g.operands(n)[0]]], "a", [("a", 0, index)])

    def emit_transpose(self, n):
        g = self.g
        out_shape, in_shape = g.type(n).shape, g.type(g.operands(n)[0]).shape
        perm = g.attrs(n)["perm"]
        perm = list(reversed(range(len(in_shape)))) if perm is None else list(perm)
        st = strides(in_shape)
        self._copy(n, gather_index("i", out_shape, [st[p] for p in perm]))

    def emit_broadcast(self, n):
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

    def emit_slice(self, n):
        # the offset is an argument, so the slices of one tensor at different places (the steps
        # of a scan, the adjoint of a concat) are one kernel however many there are
        off = self.slice_offset(n)
        if off is None:
            self._copy(n, self._slice_index(n, "i"))
            return
        self._pointwise(n, self._temp(n), [self.node_buffer[self.g.operands(n)[0]]], "a",
                        [("a", 0, self._slice_index(n, "i", "off0"))], consts=[off])

    def emit_pad(self, n):
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

    def emit_concat(self, n):
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

    def emit_dropout(self, n):
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
        """C constants shared by the conv and pool templates."""
        n, c, h, w = (Size.of([d]).c() for d in x_shape)
        _, o, ho, wo = (Size.of([d]).c() for d in out_shape)
        stride = attrs.get("stride")
        (sh, sw), (ph, pw) = _pair(kernel if stride is None else stride), _pair(attrs.get("padding", 0))
        dh, dw = _pair(attrs.get("dilation", 1))
        kh, kw = kernel
        return [("N", n), ("C", c), ("H", h), ("W", w), ("O", o), ("Ho", ho), ("Wo", wo), ("KH", kh), ("KW", kw),
                ("SH", sh), ("SW", sw), ("PH", ph), ("PW", pw), ("DH", dh), ("DW", dw)]

    def _convolution(self, n, x, y, w, which, template):
        """A convolution or one of its adjoints, given its input x, output-side tensor y (the
        output, or the adjoint g) and kernel w: the tiled product when it is a 1x1, else the
        direct template, one thread per element of what it computes."""
        t = self.g.type
        if self._conv_1x1(n, t(x).shape, t(y).shape, t(w).shape, which):
            return
        self._per_element(n, template, self._geometry(t(x).shape, t(y).shape, self.g.attrs(n), t(w).shape[2:]))

    def emit_conv(self, n):  # (x, w) -> y
        x, w = self.g.operands(n)
        self._convolution(n, x, n, w, "forward", "conv2d.cu.j2")

    def emit_conv_grad_x(self, n):  # (g, w, x) -> dx, one thread per element of x
        gy, w, x = self.g.operands(n)
        self._convolution(n, x, gy, w, "grad_x", "conv2d_grad_x.cu.j2")

    def emit_conv_grad_w(self, n):  # (x, g, w) -> dw, one thread per element of w
        x, gy, w = self.g.operands(n)
        self._convolution(n, x, gy, w, "grad_w", "conv2d_grad_w.cu.j2")

    def _pool(self, n, x, y_shape):
        a = self.g.attrs(n)
        consts = self._geometry(self.g.type(x).shape, y_shape, a, _pair(a["kernel"]))
        self._per_element(n, OPS[self.g.op(n)].kernel["template"], consts)

    def emit_pool(self, n):  # (x) -> y, one thread per output
        self._pool(n, self.g.operands(n)[0], self.g.type(n).shape)

    def emit_pool_grad(self, n):  # (g, x, ...) -> dx, one thread per element of x
        gy, x = self.g.operands(n)[:2]
        self._pool(n, x, self.g.type(gy).shape)

    def _per_element(self, n, template, consts):
        size = Size.of(self.g.type(n).shape)
        self._add(n, template, dict(consts=consts, size=size.c()), self._temp(n), self._ins(n),
                  [ceil_div(size, ELEMENTWISE_BLOCK), 1, 1], [ELEMENTWISE_BLOCK, 1, 1])

    def emit_assign(self, n):
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

    def emit_reduce(self, n):  # sum, mean, l1, l2, mse
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
        folded = self._folding or {}
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
            # many columns: one thread each walks down its column (neighbours read neighbours)
            self._add(n, "reduce_columns.cu.j2", ctx, self._temp(n), ins,
                      [ceil_div(outputs, ELEMENTWISE_BLOCK), 1, 1], [ELEMENTWISE_BLOCK, 1, 1], extra_dims=dims,
                      comment=self._folded_comment, stem=self._folded_stem)
        else:  # one block per output, a tree reduction across its threads
            self._add(n, "reduce.cu.j2", ctx, self._temp(n), ins, [outputs.static or outputs.py(), 1, 1],
                      [_pow2_block(extent), 1, 1], barriers=True, extra_dims=dims, comment=self._folded_comment,
                      stem=self._folded_stem)

    def emit_softmax(self, n):  # softmax, log_softmax over one axis
        g = self.g
        src = g.operands(n)[0]
        shape = g.type(src).shape
        (axis,) = normalize_axes(g.attrs(n)["axis"], len(shape))
        extent = Size.of([shape[axis]])
        inner = Size.of(shape[axis + 1:])
        rows = Size.of(shape[:axis]) * inner
        ctx = dict(extent=extent.c(), inner=inner.c(), expr=OPS[g.op(n)].kernel["out"])
        self._add(n, "softmax.cu.j2", ctx, self._temp(n), self._ins(n), [rows.static or rows.py(), 1, 1],
                  [_pow2_block(extent), 1, 1], barriers=True)

    def emit_xent(self, n):  # softmax_xent: the mean loss over rows, in one block
        g = self.g
        n_rows, classes = (Size.of([d]) for d in g.type(g.operands(n)[0]).shape)
        self._add(n, "xent.cu.j2", dict(rows=n_rows.c(), classes=classes.c()), self._temp(n), self._ins(n),
                  [1, 1, 1], [_pow2_block(n_rows), 1, 1], barriers=True)

    def emit_xent_grad(self, n):  # softmax_xent_grad: one block per row
        g = self.g
        n_rows, classes = (Size.of([d]) for d in g.type(g.operands(n)[0]).shape)
        self._add(n, "xent_grad.cu.j2", dict(rows=n_rows.c(), classes=classes.c()), self._temp(n), self._ins(n),
                  [n_rows.static or n_rows.py(), 1, 1], [_pow2_block(classes), 1, 1], barriers=True)

    def emit_matmul(self, n):
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
                       b_fast=b_fast, batch=so[0])
            return
        # A is [M, K] (or [K, M] when ta); B is [K, N] (or [N, K] when tb)
        a_index = f"ka * {M.c()} + row" if ta else f"row * {K.c()} + ka"
        self._gemm(n, M, K, N, a_index, b_index, "row * N + col", f"matmul_{variant}_{n}", what,
                   a_fast=a_fast, b_fast=b_fast)

    def _gemm(self, n, M: Size, K: Size, N: Size, a_index, b_index, out_index, stem, what, a_in="in0", b_in="in1",
              a_fast="k", b_fast="n", batch=1):
        """The register-blocked product out[row, col] = sum_k A[row, k] B[k, col], with the
        element addresses of A, B and out given as C expressions of row, col and ka / kb; A and B
        are the operands named `a_in` and `b_in`. `a_fast` ("m" or "k") and `b_fast` ("n" or "k")
        say which index runs along memory in each operand, so that staging reads coalesce. With a
        `batch` dimension, one product per blockIdx.z (the index expressions offset by it)."""
        BM, BN, BK, TM, TN = GEMM_TILE
        threads = (BM // TM) * (BN // TN)
        ctx = dict(M=M.c(), N=N.c(), K=K.c(), BM=BM, BN=BN, BK=BK, TM=TM, TN=TN, threads=threads,
                   a_index=a_index, b_index=b_index, out_index=out_index, what=what, a_in=a_in, b_in=b_in,
                   a_fast=a_fast, b_fast=b_fast)
        self._add(n, "matmul.cu.j2", ctx, self._temp(n), self._ins(n),
                  [ceil_div(N, BN), ceil_div(M, BM), ceil_div(Size.of([batch]), 1)], [threads, 1, 1],
                  barriers=True, stem=stem, extra_dims=symbols_of((batch,)))

    def _conv_1x1(self, n, x_shape, g_shape, w_shape, which) -> bool:
        """A 1x1 convolution with stride 1 and no padding is a matrix product over the channels at
        every pixel: emit it (and its two adjoints) as the tiled product, columns running over
        (image, pixel). The kernel (or the adjoint g, for grad_w) is operand 1 and plays A; operand
        0 plays B. Returns False for any other convolution."""
        a = self.g.attrs(n)
        if tuple(w_shape[2:]) != (1, 1) or _pair(a["stride"]) != (1, 1) or _pair(a["padding"]) != (0, 0):
            return False
        batch, c, h, w = x_shape
        o = w_shape[0]
        P = h * w                                   # pixels per image
        B = Size.of([batch]) * Size.of([P])         # columns: (image, pixel)

        def pixel(j, ch):  # address of channel 0 of (image, pixel) number j in a [batch, ch, h, w] tensor
            return f"({j} / {P}) * {ch} * {P} + {j} % {P}"
        if which == "forward":       # y[b, o, p] = sum_c w[o, c] x[b, c, p]
            self._gemm(n, Size.of([o]), Size.of([c]), B, f"row * {c} + ka", pixel("col", c) + f" + kb * {P}",
                       pixel("col", o) + f" + row * {P}", f"conv1x1_{n}", "w @ x, per pixel", "in1", "in0")
        elif which == "grad_x":      # dx[b, c, p] = sum_o w[o, c] g[b, o, p]; operands (g, w, x)
            self._gemm(n, Size.of([c]), Size.of([o]), B, f"ka * {c} + row", pixel("col", o) + f" + kb * {P}",
                       pixel("col", c) + f" + row * {P}", f"conv1x1_grad_x_{n}", "w^T @ g, per pixel", "in1", "in0",
                       a_fast="m")
        else:                        # dw[o, c] = sum over (b, p) of g[b, o, p] x[b, c, p]; operands (x, g, w)
            self._gemm(n, Size.of([o]), B, Size.of([c]), pixel("ka", o) + f" + row * {P}",
                       pixel("kb", c) + f" + col * {P}", f"row * {c} + col",
                       f"conv1x1_grad_w_{n}", "g @ x^T, summed over images and pixels", "in1", "in0",
                       b_fast="k")
        return True

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


def _ewise(op: str, a: str | None = None, b: str | None = None) -> str:
    """The registry's C expression of an elementwise op, applied to the C expressions a and b."""
    c = OPS[op].c
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
