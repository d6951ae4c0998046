"""The launch plan: what `generate` hands the runtimes, and the Jinja2 environment of the templates.

A `Module` is one CUDA C module (`source`) and its plan: the buffers (`Buffer`: params, state,
inputs, temps and the dropout key), every launch in order (`Launch`: kernel, buffer arguments,
symbols, grid and block as plan sizes, see `sizes.evaluate`), split into the `step` phase and
the `commit` phase, and which buffer holds each IR value. This module decides nothing about a
model: it holds the plan's types, writes them out (`plan`, `plan_json`, `plan_text`), sums them
up (`stats`) and renders the emulator's host glue (`emu_source`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from ..ir.graph import Graph
from ..ir.types import NUMPY_DTYPE
from .sizes import Size, evaluate, symbols_of

TEMPLATES = Path(__file__).with_name("templates")
EMU_HEADER = Path(__file__).with_name("cuda_emu.h")

# the templates only format text: every decision is made in Python before they are rendered
env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined,
                  trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)

RNG_BUFFER = "@rng"          # [seed, step, training]: written by the runtime before each run
# the NumPy dtype of a buffer's elements as the backends allocate them; a bf16 buffer holds the
# high 16 bits of each fp32 value (ir/precision.py `widen_bf16` reads them back)
BUFFER_DTYPE = dict(NUMPY_DTYPE, bf16="uint16", u32="uint32")


# -- the launch plan ------------------------------------------------------------------------------

@dataclass
class Buffer:
    name: str
    dtype: str            # f32, i32, u32, or bf16 (a 16-bit buffer of fp32 values, codegen/storage.py)
    shape: list           # ints and symbols
    kind: str             # input, param, state, temp, or rng (the dropout generator's key)

    def nbytes(self, dims: dict, half: bool = False) -> int:
        """Its bytes with the symbols bound by `dims` (at least one element); with `half`, those of
        a 16-bit value of its size that it holds (memory planning may put one in an fp32 slot)."""
        itemsize = 2 if half else np.dtype(BUFFER_DTYPE[self.dtype]).itemsize
        return itemsize * max(1, evaluate(Size.of(self.shape).py(), dims))


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
    shared: int = 0       # static __shared__ bytes a block of the kernel uses (`shared_bytes`)
    host: bool = False    # no kernel: the runner computes the node on the host (family `host`,
                          # codegen/host.py); `kernel` is then host_<op>, compiled nowhere
    half_args: list = field(default_factory=list)  # positions of the args the kernel declares
                          # dlc_bf16: 16-bit values (storage.py), which memory planning may put in
                          # fp32 slots of their size (they fill the first half)

    @property
    def out_half(self) -> bool:
        """Whether the kernel stores a 16-bit value (its args[0])."""
        return 0 in self.half_args


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
        self.half: set[str] = set()       # values stored in 16 bits (codegen/storage.py)
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
                if l.phase == phase and l.host:
                    lines.append(f"host {l.op}({', '.join(l.args)})  # on the host, between kernels")
                elif l.phase == phase:
                    grid = ", ".join(map(str, l.grid))
                    consts = [f"off{i}={v}" for i, v in enumerate(l.consts)]
                    lines.append(f"{l.kernel}<<<({grid}), ({', '.join(map(str, l.block))})>>>"
                                 f"({', '.join(l.args + [f'dim_{d}' for d in l.dims] + consts)})"
                                 + (f"  # {l.shared} B static shared" if l.shared else ""))
        return "\n".join(lines) + "\n"

    def stats(self, dims: dict, roots=None) -> dict:
        """Per run of the plan that computes `roots` (default: the whole plan but the evaluation
        form, i.e. a training step, commits included, or an inference), symbols bound by `dims`:
        kernels (distinct ones that run), launches, FLOPs (the registry's counts over the nodes
        computed), bytes moved (an estimate: each buffer a launch touches once, twice when it reads
        and writes it in place) and peak bytes (every buffer allocated: params, state, inputs and
        temps, less those that only launches of other runs touch); launches with an empty grid at
        these sizes are left out, as the runtimes leave them out; `repeat_launches`: the launches
        of the same run again while the state is unchanged (the backends keep the evaluation
        form's values computed from stored values alone, `Graph.eval_constants`)."""
        from ..ir.ops import flops
        g = self.graph
        need = g.upstream(g.roots(evaluation=False) if roots is None else roots)
        # (a launch whose grid is empty at these sizes does not run: the runtimes leave it out, so
        # of a reduction's one-launch and two-launch forms only the one the batch picks counts)
        runs = [l for l in self.launches if l.node in need and min(evaluate(x, dims) for x in l.grid) > 0]
        others = {a for l in self.launches if l.node not in need for a in l.args}
        others -= {a for l in runs for a in l.args}

        def nbytes(b, half=False):
            return self.buffers[b].nbytes(dims, half)
        moved = sum(nbytes(a, i in l.half_args) * (2 if i < l.writes else 1) for l in runs for i, a in enumerate(l.args))
        kept = g.eval_constants()
        return {"kernels": len({l.kernel for l in runs if not l.host}), "launches": sum(not l.host for l in runs),
                "repeat_launches": sum(not l.host and l.node not in kept for l in runs),
                "flops": sum(flops(g, n, dims) for n in need),
                "bytes_moved": moved, "peak_bytes": sum(nbytes(b) for b in self.buffers if b not in others)}

    def emu_source(self) -> str:
        """The module plus host launch functions, for the host C++ compiler (see cuda_emu.h)."""
        return env.get_template("emu_glue.cpp.j2").render(module=self.source, kernels=self.kernels)
