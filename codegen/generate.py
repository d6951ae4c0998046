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
from ..ir.philox import PHILOX_C
from ..ir.text import fmt_attrs
from ..ir.types import normalize_axes
from .sizes import Size, broadcast_index, ceil_div, gather_index, strides, symbols_of

TEMPLATES = Path(__file__).with_name("templates")
EMU_HEADER = Path(__file__).with_name("cuda_emu.h")

_env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined,
                   trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)

CTYPE = {"f32": "float", "i32": "int", "u32": "unsigned int"}
RNG_BUFFER = "@rng"          # [seed, step, training]: written by the runtime before each run
ELEMENTWISE_BLOCK = 256      # threads per block of one-thread-per-element kernels
MATMUL_TILE = 16             # matmul: TILE x TILE threads, TILE x TILE shared tiles of A and B
REDUCE_BLOCK = (32, 256)     # reductions: a power of two in this range, from the extent
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


@dataclass
class Kernel:
    """One kernel: what the template needs, and its place in the plan."""
    name: str
    template: str
    ctx: dict
    launch: Launch
    comment: list = field(default_factory=list)
    params: list = field(default_factory=list)   # (C declaration) per argument


class Module:
    """A generated CUDA module: source text, launch plan and buffer table."""

    def __init__(self, graph: Graph, kernels: list[Kernel], buffers: dict[str, Buffer],
                 node_buffer: dict[str, str], source: str):
        self.graph = graph
        self.kernels = kernels
        self.buffers = buffers
        self.node_buffer = node_buffer    # node -> buffer holding its value
        self.source = source
        self.launches = [k.launch for k in kernels]
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
                    lines.append(f"{l.kernel}<<<({grid}), ({', '.join(map(str, l.block))})>>>"
                                 f"({', '.join(l.args + [f'dim_{d}' for d in l.dims])})")
        return "\n".join(lines) + "\n"

    def emu_source(self) -> str:
        """The module plus host launch functions, for the host C++ compiler (see cuda_emu.h)."""
        return _env.get_template("emu_glue.cpp.j2").render(module=self.source, kernels=self.kernels)


# -- generation -----------------------------------------------------------------------------------

def generate(graph: Graph) -> Module:
    """One CUDA module and launch plan for every node of an optimized graph."""
    return _Generator(graph).run()


class _Generator:
    def __init__(self, graph: Graph):
        self.g = graph
        self.buffers: dict[str, Buffer] = {}
        self.node_buffer: dict[str, str] = {}
        self.kernels: list[Kernel] = []
        self.names: set[str] = set()

    def run(self) -> Module:
        g = self.g
        for n in g.order():
            op = g.op(n)
            if op not in OPS:
                raise DlcError(f"codegen: unknown op '{op}'", g.loc(n))
            family = OPS[op].family
            if op in ("input", "param", "state"):
                t = g.type(n)
                self.buffers[n] = Buffer(n, t.dtype, list(t.shape), op)
                self.node_buffer[n] = n
                continue
            # an emitter named after the op, else after its family
            emit = getattr(self, f"emit_{op}", None) or getattr(self, f"emit_{family}", None)
            if emit is None:
                raise DlcError(f"codegen: no kernel for op '{op}' (family {family})", g.loc(n))
            emit(n)
        for n in g.nodes_of("assign"):
            self._commit(n)
        source = _env.get_template("module.cu.j2").render(
            model=g.meta.name, kernels=self.kernels, render=self._render,
            philox=PHILOX_C.strip() if RNG_BUFFER in self.buffers else None,
            symbols=symbols_of(*(b.shape for b in self.buffers.values())))
        return Module(g, self.kernels, self.buffers, self.node_buffer, source)

    # -- helpers ---------------------------------------------------------------------------------
    def _temp(self, n: str) -> str:
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
             barriers=False, phase="step", stem=None, what=None, extra_dims=()) -> Kernel:
        """Add a kernel for node `n` writing buffer `out` and reading buffers `ins`; it takes the
        symbols of their shapes (and `extra_dims`) as `int dim_<symbol>` arguments."""
        dims = sorted(set(symbols_of(*[self.buffers[b].shape for b in [out] + ins])) | set(extra_dims))
        name = self._kernel_name(stem or f"{self.g.op(n)}_{n}")
        params = [f"{CTYPE[self.buffers[out].dtype]}* __restrict__ out"]
        params += [f"const {CTYPE[self.buffers[b].dtype]}* __restrict__ in{i}" for i, b in enumerate(ins)]
        params += [f"int dim_{d}" for d in dims]
        launch = Launch(name, n, self.g.op(n), phase, [out] + ins, dims, list(grid), list(block), barriers)
        k = Kernel(name, template, ctx, launch, self._comment(n, what), params)
        self.kernels.append(k)
        return k

    def _render(self, k: Kernel) -> str:
        return _env.get_template(k.template).render(k=k, **k.ctx)

    def _ins(self, n: str) -> list[str]:
        return [self.node_buffer[a] for a in self.g.operands(n)]

    def _pointwise(self, n, out, ins, expr, loads, stem=None, phase="step", what=None):
        """One thread per output element: `loads` are (name, buffer index, C index expr)."""
        size = Size.of(self.buffers[out].shape)
        ctx = dict(size=size.c(), loads=loads, expr=expr, ctype=CTYPE[self.buffers[out].dtype])
        return self._add(n, "pointwise.cu.j2", ctx, out, ins, [ceil_div(size, ELEMENTWISE_BLOCK), 1, 1],
                         [ELEMENTWISE_BLOCK, 1, 1], phase=phase, stem=stem, what=what)

    # -- families --------------------------------------------------------------------------------
    def emit_elementwise(self, n):
        g = self.g
        d = OPS[g.op(n)]
        out_shape = g.type(n).shape
        loads = [(var, i, broadcast_index("i", out_shape, g.type(a).shape))
                 for i, (var, a) in enumerate(zip("ab", g.operands(n)))]
        self._pointwise(n, self._temp(n), self._ins(n), d.c, loads)

    def emit_const(self, n):
        value = float(self.g.attrs(n)["value"])
        self._add(n, "const.cu.j2", dict(value=_c_float(value)), self._temp(n), [], [1, 1, 1], [1, 1, 1])

    def emit_size(self, n):
        t = self.g.type(self.g.operands(n)[0])
        axes = normalize_axes(self.g.attrs(n)["axis"], t.rank)
        count = Size.of(t.shape[a] for a in axes)
        # the operand is not read, only its (possibly symbolic) shape: pass no buffer for it
        self._add(n, "const.cu.j2", dict(value=f"(float){count.c()}"), self._temp(n), [], [1, 1, 1], [1, 1, 1],
                  extra_dims=count.syms)

    def emit_reshape(self, n):
        self.node_buffer[n] = self.node_buffer[self.g.operands(n)[0]]

    def _copy(self, n, index: str):
        """A layout op: out[i] = in0[index(i)]."""
        self._pointwise(n, self._temp(n), self._ins(n)[:1], "a", [("a", 0, index)])

    def emit_transpose(self, n):
        g = self.g
        out_shape, in_shape = g.type(n).shape, g.type(g.operands(n)[0]).shape
        perm = g.attrs(n)["perm"]
        perm = list(reversed(range(len(in_shape)))) if perm is None else list(perm)
        st = strides(in_shape)
        self._copy(n, gather_index("i", out_shape, [st[p] for p in perm]))

    def emit_broadcast_like(self, n):
        g = self.g
        self._copy(n, broadcast_index("i", g.type(n).shape, g.type(g.operands(n)[0]).shape))

    def emit_slice(self, n):
        g = self.g
        in_shape = g.type(g.operands(n)[0]).shape
        a = g.attrs(n)
        axis = normalize_axes(a["axis"], len(in_shape))[0]
        st = strides(in_shape)
        index = gather_index("i", g.type(n).shape, st)
        start = Size(a["start"]) * st[axis]
        self._copy(n, index if a["start"] == 0 else f"{index} + {start.c()}")

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

    def emit_conv2d(self, n):
        x, w = self.g.operands(n)
        if self._conv_1x1(n, self.g.type(x).shape, self.g.type(n).shape, self.g.type(w).shape, "conv2d"):
            return
        consts = self._geometry(self.g.type(x).shape, self.g.type(n).shape, self.g.attrs(n), self.g.type(w).shape[2:])
        self._per_element(n, "conv2d.cu.j2", consts)

    def emit_conv2d_grad_x(self, n):  # (g, w, x) -> dx, one thread per element of x
        gy, w, x = self.g.operands(n)
        if self._conv_1x1(n, self.g.type(x).shape, self.g.type(gy).shape, self.g.type(w).shape, "grad_x"):
            return
        consts = self._geometry(self.g.type(x).shape, self.g.type(gy).shape, self.g.attrs(n), self.g.type(w).shape[2:])
        self._per_element(n, "conv2d_grad_x.cu.j2", consts)

    def emit_conv2d_grad_w(self, n):  # (x, g, w) -> dw, one thread per element of w
        x, gy, w = self.g.operands(n)
        t = self.g.type
        if self._conv_1x1(n, t(x).shape, t(gy).shape, t(w).shape, "grad_w"):
            return
        consts = self._geometry(t(x).shape, t(gy).shape, self.g.attrs(n), t(w).shape[2:])
        self._per_element(n, "conv2d_grad_w.cu.j2", consts)

    def _pool(self, n, template, x, y_shape):
        a = self.g.attrs(n)
        kernel = _pair(a["kernel"])
        consts = self._geometry(self.g.type(x).shape, y_shape, a, kernel)
        self._per_element(n, template, consts)

    def emit_maxpool2d(self, n):
        self._pool(n, "maxpool2d.cu.j2", self.g.operands(n)[0], self.g.type(n).shape)

    def emit_avgpool2d(self, n):
        self._pool(n, "avgpool2d.cu.j2", self.g.operands(n)[0], self.g.type(n).shape)

    def emit_maxpool2d_grad(self, n):  # (g, x, y) -> dx
        gy, x, _ = self.g.operands(n)
        self._pool(n, "maxpool2d_grad.cu.j2", x, self.g.type(gy).shape)

    def emit_avgpool2d_grad(self, n):  # (g, x) -> dx
        gy, x = self.g.operands(n)
        self._pool(n, "avgpool2d_grad.cu.j2", x, self.g.type(gy).shape)

    def _per_element(self, n, template, consts):
        size = Size.of(self.g.type(n).shape)
        self._add(n, template, dict(consts=consts, size=size.c()), self._temp(n), self._ins(n),
                  [ceil_div(size, ELEMENTWISE_BLOCK), 1, 1], [ELEMENTWISE_BLOCK, 1, 1])

    def emit_assign(self, n):
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
        mapped, mean = REDUCTIONS[op]
        loads = [(var, i, index) for i, var in enumerate("ab"[:len(args)])]
        ctx = dict(extent=extent.c(), loads=loads, expr=mapped, mean=mean, size=outputs.c())
        if index == f"r * {outputs.c()} + o" and outputs.estimate() >= COLUMN_OUTPUTS:
            # many columns: one thread each walks down its column (neighbours read neighbours)
            self._add(n, "reduce_columns.cu.j2", ctx, self._temp(n), self._ins(n),
                      [ceil_div(outputs, ELEMENTWISE_BLOCK), 1, 1], [ELEMENTWISE_BLOCK, 1, 1])
        else:  # one block per output, a tree reduction across its threads
            self._add(n, "reduce.cu.j2", ctx, self._temp(n), self._ins(n), [outputs.static or outputs.py(), 1, 1],
                      [_pow2_block(extent), 1, 1], barriers=True)

    def emit_softmax(self, n):  # softmax, log_softmax over one axis
        g = self.g
        src = g.operands(n)[0]
        shape = g.type(src).shape
        (axis,) = normalize_axes(g.attrs(n)["axis"], len(shape))
        extent = Size.of([shape[axis]])
        inner = Size.of(shape[axis + 1:])
        rows = Size.of(shape[:axis]) * inner
        ctx = dict(extent=extent.c(), inner=inner.c(), expr=SOFTMAX_OUT[g.op(n)])
        self._add(n, "softmax.cu.j2", ctx, self._temp(n), self._ins(n), [rows.static or rows.py(), 1, 1],
                  [_pow2_block(extent), 1, 1], barriers=True)

    def emit_xent(self, n):  # softmax_xent (mean loss over rows), softmax_xent_grad (one block per row)
        g = self.g
        n_rows, classes = (Size.of([d]) for d in g.type(g.operands(n)[0]).shape)
        ctx = dict(rows=n_rows.c(), classes=classes.c())
        if g.op(n) == "softmax_xent":
            self._add(n, "xent.cu.j2", ctx, self._temp(n), self._ins(n), [1, 1, 1],
                      [_pow2_block(n_rows), 1, 1], barriers=True)
        else:
            self._add(n, "xent_grad.cu.j2", ctx, self._temp(n), self._ins(n), [n_rows.static or n_rows.py(), 1, 1],
                      [_pow2_block(classes), 1, 1], barriers=True)

    def emit_matmul(self, n):
        g = self.g
        a, b = g.operands(n)
        ta, tb = g.attrs(n)["ta"], g.attrs(n)["tb"]
        m, k = g.type(a).shape[::-1] if ta else g.type(a).shape
        _, cols = g.type(n).shape
        M, K, N = (Size.of([d]) for d in (m, k, cols))
        # A is [M, K] (or [K, M] when ta); B is [K, N] (or [N, K] when tb)
        a_index = f"ka * {M.c()} + row" if ta else f"row * {K.c()} + ka"
        b_index = f"col * {K.c()} + kb" if tb else f"kb * {N.c()} + col"
        variant = ("t" if ta else "n") + ("t" if tb else "n")
        self._gemm(n, M, K, N, a_index, b_index, "row * N + col", f"matmul_{variant}_{n}",
                   f"{'A^T' if ta else 'A'} @ {'B^T' if tb else 'B'}")

    def _gemm(self, n, M: Size, K: Size, N: Size, a_index, b_index, out_index, stem, what, a_in="in0", b_in="in1"):
        """The tiled shared-memory product out[row, col] = sum_k A[row, k] B[k, col], with the
        element addresses of A, B and out given as C expressions of row, col and ka / kb; A and B
        are the operands named `a_in` and `b_in`."""
        T = MATMUL_TILE
        ctx = dict(M=M.c(), N=N.c(), K=K.c(), tile=T, a_index=a_index, b_index=b_index,
                   out_index=out_index, what=what, a_in=a_in, b_in=b_in)
        self._add(n, "matmul.cu.j2", ctx, self._temp(n), self._ins(n),
                  [ceil_div(N, T), ceil_div(M, T), 1], [T, T, 1], barriers=True, stem=stem)

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
        if which == "conv2d":        # y[b, o, p] = sum_c w[o, c] x[b, c, p]
            self._gemm(n, Size.of([o]), Size.of([c]), B, f"row * {c} + ka", pixel("col", c) + f" + kb * {P}",
                       pixel("col", o) + f" + row * {P}", f"conv1x1_{n}", "w @ x, per pixel", "in1", "in0")
        elif which == "grad_x":      # dx[b, c, p] = sum_o w[o, c] g[b, o, p]; operands (g, w, x)
            self._gemm(n, Size.of([c]), Size.of([o]), B, f"ka * {c} + row", pixel("col", o) + f" + kb * {P}",
                       pixel("col", c) + f" + row * {P}", f"conv1x1_grad_x_{n}", "w^T @ g, per pixel", "in1", "in0")
        else:                        # dw[o, c] = sum over (b, p) of g[b, o, p] x[b, c, p]; operands (x, g, w)
            self._gemm(n, Size.of([o]), B, Size.of([c]), pixel("ka", o) + f" + row * {P}",
                       pixel("kb", c) + f" + col * {P}", f"row * {c} + col",
                       f"conv1x1_grad_w_{n}", "g @ x^T, summed over images and pixels", "in1", "in0")
        return True

def _ewise(op: str, a: str, b: str | None = None) -> str:
    """The registry's C expression of an elementwise op, applied to the C expressions a and b."""
    c = OPS[op].c
    return "(" + re.sub(r"\b([ab])\b", lambda m: f"({a})" if m.group(1) == "a" else f"({b})", c) + ")"


# reduction-family ops: what each element contributes (written with registry ops) and whether
# the sum is divided by the number of elements reduced
REDUCTIONS = {
    "sum": ("a", False),
    "mean": ("a", True),
    "l1": (_ewise("abs", "a"), False),
    "l2": (_ewise("mul", "a", "a"), False),
    "mse": (_ewise("mul", _ewise("sub", "a", "b"), _ewise("sub", "a", "b")), True),
}

# softmax-family ops: the output from x, the row maximum m and s = sum(exp(x - m))
SOFTMAX_OUT = {
    "softmax": "expf(x - m) / s",
    "log_softmax": "(x - m) - logf(s)",
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
