"""The generator core: the state of one generation and the one way a kernel enters the module.

`Generator` holds the buffers, the value table (node -> buffer), the distinct kernels and every
launch so far. An emitter (one per kernel family, see generate.EMITTERS) asks it for the buffer a
node stores into (`temp`: its own, its slice of a concat's buffer, a fused group root's), for a
scratch buffer (`workspace`), and adds each kernel with `add`: a name, the C parameters, the
launch, the rendered body, and one kernel per distinct body (`register`). What an emitter is
asked for besides its node is an `Emission`: plain, or the kernel of a fusion group (an
`Epilogue` on a product's accumulator, a prologue computed where a reduction reads).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..ir.graph import Graph
from ..ir.ops import OPS, RANDOM, TRAINING
from ..ir.text import fmt_attrs
from .concat import Concats
from .philox import PHILOX_C
from .plan import RNG_BUFFER, Buffer, Kernel, Launch, Module, env
from .shared import shared_bytes
from .sizes import symbols_of
from .storage import HALF

CTYPE = {"f32": "float", "bf16": "dlc_bf16", "i32": "int", "u32": "unsigned int"}   # a buffer's elements
VALUE_CTYPE = dict(CTYPE, bf16="float")   # the C type an element of such a buffer is computed in
MAX_USES_LISTED = 8          # a shared kernel's comment names this many of the nodes it runs for


@dataclass(frozen=True)
class Epilogue:
    """A fusion group (rule `epilogue`) finishing a product's kernel: its other members are
    computed from the accumulator `acc` just before the one store (store.cu.j2's hook), and the
    kernel stores the group's root instead of the product. `bufs` are the buffers the members
    load, passed after the product's own operands; `loads`, `lets` and `expr` are C (see
    `pointwise.pointwise_body`); `dims` the symbols they need."""
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


class Generator:
    """The state of one generation: buffers, the value table, kernels and launches so far, and
    the one way a kernel enters the module (`add`, or `register` for a kernel built by hand).
    Emitters (one per family, see generate.EMITTERS) call it; it decides nothing about a node."""

    def __init__(self, graph: Graph, concats: Concats, half: set[str] = frozenset()):
        self.g = graph
        self.buffers: dict[str, Buffer] = {}
        self.node_buffer: dict[str, str] = {}
        self.kernels: list[Kernel] = []      # distinct kernels, in order of first use
        self.launches: list[Launch] = []     # every launch of the plan, in order
        self.bodies: dict[tuple, Kernel] = {}
        self.names: set[str] = set()
        self.commits: list[str] = []     # assigns, committed after every kernel of the step
        self.inplace: dict[str, str] = {}    # assign -> target that an update group writes in place
        self.concats = concats               # concat elimination, decided before emission (concat.py)
        self.into = concats.parts            # part -> its Place in a concat's buffer
        self.unkept: set[str] = set()        # values stored only inside a concat's buffer
        self.half = half                     # values stored in 16-bit BF16 buffers (storage.py)
        for c in concats.eliminated:         # every part is stored into it by its producer
            t = graph.type(c)
            self.buffers[c] = Buffer(c, t.dtype, list(t.shape), "temp")

    def temp(self, n: str, em: Emission = PLAIN) -> str:
        """The buffer node `n`'s kernel stores into, made on first use: its own temp, its slice of
        a concat's buffer, or (for a product with an epilogue) the group root's."""
        if em.epilogue and n == em.epilogue.producer:
            n = em.epilogue.root  # the product's value lives only in registers
        if n in self.into:  # stored into its slice of a concat's buffer (see concat.py)
            self.unkept.add(n)
            return self.into[n].concat
        t = self.g.type(n)
        self.buffers[n] = Buffer(n, HALF if n in self.half else t.dtype, list(t.shape), "temp")
        self.node_buffer[n] = n
        return n

    def kernel_name(self, stem: str) -> str:
        """A C name from `stem`, numbered when it is taken (`register` frees it for a duplicate)."""
        base = re.sub(r"\W", "_", stem)
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def comment(self, n: str, what: str | None = None) -> list[str]:
        """The comment above a kernel for node `n`: `what` it computes, its IR line, its source line."""
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

    def workspace(self, n: str, tag: str, shape: list) -> str:
        """A scratch buffer for a node computed in two launches (split-K's partial products, a
        reduction's per-block partial results): a float temp `n@tag` that holds no IR value.
        The first launch writes it (`add(..., partial=True)`), the second reads it and stores
        the node's value; memory planning reuses it once the second launch has read it."""
        name = f"{n}@{tag}"
        self.buffers[name] = Buffer(name, "f32", list(shape), "temp")
        return name

    def add(self, n: str, template: str, ctx: dict, out: str, ins: list[str], grid, block,
             barriers=False, phase="step", stem=None, what=None, extra_dims=(), comment=None, consts=(),
             partial=False, em: Emission = PLAIN) -> Kernel:
        """Add a kernel for node `n` writing buffer `out` and reading buffers `ins`; it takes the
        symbols of their shapes (and `extra_dims`) as `int dim_<symbol>` arguments, then `consts`
        as `int off0, off1, ...` (values the body names instead of writing them as literals).
        `partial`: the first of a node's two launches, writing a workspace (`workspace`): no
        fused epilogue and no concat redirection, which belong to the launch that stores the value.
        `em`: a product's kernel with an epilogue (`Emission`) stores the group's root."""
        epi = em.epilogue if em.epilogue and n == em.epilogue.producer and not partial else None
        ctx = dict(ctx, epilogue=epi)
        if epi:  # the product's kernel, finishing with its fusion group (see generate.emit_group)
            n, ins, stem = epi.root, ins + epi.bufs, em.stem or stem
            extra_dims, comment = tuple(extra_dims) + tuple(epi.dims), em.comment
        # where element j of the value goes: its place, or its slice of a concat's buffer
        ctx["dest"] = self.into[n].index if n in self.into and not partial else (lambda j: j)
        if n in self.into and not partial:
            comment = (comment or self.comment(n, what)) + [
                f"stores into its slice of %{self.into[n].concat} (concat elimination)"]
        dims = sorted(set(symbols_of(*[self.buffers[b].shape for b in [out] + ins])) | set(extra_dims))
        name = self.kernel_name(stem or f"{self.g.op(n)}_{n}")
        params = [f"{CTYPE[self.buffers[out].dtype]}* __restrict__ out"]
        params += [f"const {CTYPE[self.buffers[b].dtype]}* __restrict__ in{i}" for i, b in enumerate(ins)]
        params += [f"int dim_{d}" for d in dims]
        params += [f"int off{i}" for i in range(len(consts))]
        launch = Launch(name, n, self.g.op(n), phase, [out] + ins, dims, list(grid), list(block), barriers,
                        consts=list(consts), half_args=self.half_args([out] + ins))
        k = Kernel(name, template, ctx, launch, comment or self.comment(n, what), params)
        return self.register(k)

    def half_args(self, args: list[str]) -> list[int]:
        """The positions of the 16-bit buffers among a kernel's buffer arguments (declared dlc_bf16)."""
        return [i for i, b in enumerate(args) if self.buffers[b].dtype == HALF]

    def register(self, k: Kernel) -> Kernel:
        """Add a kernel's launch to the plan, and the kernel to the module unless an identical
        one is there already."""
        launch, params, n, name = k.launch, k.params, k.launch.node, k.name
        self.launches.append(launch)
        # one kernel per distinct body: a node whose kernel would read exactly like an earlier one
        # (a deep net's layers of one width) launches that one on its own buffers
        k.body = self.render(k)
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

    def render(self, k: Kernel) -> str:
        """A kernel's text: its template, given the kernel and its context."""
        return env.get_template(k.template).render(k=k, **k.ctx)

    def ins(self, n: str) -> list[str]:
        """The buffers holding node `n`'s operands, in order."""
        return [self.node_buffer[a] for a in self.g.operands(n)]

    def mode(self, n: str) -> list[str]:
        """[the run's mode buffer] for a node whose op declares the TRAINING or RANDOM effect, else
        []: `@rng` holds [seed, step, training], written by the runtime before each run that
        reads it (its kernel takes it after the operands)."""
        if not OPS[self.g.op(n)].effects & {TRAINING, RANDOM}:
            return []
        if RNG_BUFFER not in self.buffers:
            self.buffers[RNG_BUFFER] = Buffer(RNG_BUFFER, "u32", [3], "rng")
        return [RNG_BUFFER]

    def finish(self) -> Module:
        """The module: every kernel so far rendered into module.cu.j2, with the plan."""
        g = self.g
        for k in self.kernels:
            if k.uses > MAX_USES_LISTED + 1:
                k.comment.append(f"... launched {k.uses} times in all")
        source = env.get_template("module.cu.j2").render(
            model=g.meta.name, kernels=self.kernels, render=lambda k: k.body,
            philox=PHILOX_C.strip() if RNG_BUFFER in self.buffers else None,
            tensor_cores=any(k.template == "matmul_mma.cu.j2" for k in self.kernels),
            half=any(b.dtype == HALF for b in self.buffers.values()),
            symbols=symbols_of(*(b.shape for b in self.buffers.values())))
        mod = Module(g, self.kernels, self.launches, self.buffers, self.node_buffer, source)
        mod.reused |= self.unkept
        mod.half = {n for n, b in self.node_buffer.items() if self.buffers[b].dtype == HALF}
        return mod
