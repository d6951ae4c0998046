"""The pass manager: a list of named passes, optimisation levels, opt-in rewrites, IR dumps and timing.

    -O0  autodiff, optimizer            (the graph as derived, nothing simplified)
    -O1  + transpose folding, constant folding, CSE, DCE, the evaluation form  (the default)
    -O2  + merged sibling 1x1 convolutions (before autodiff), batch norm folded into the product
         before it (evaluation form), fusion: groups of nodes computed by one kernel each, memory
         planning in codegen

An opt-in pass runs at every level, only when its option is given (`options={name: value}`), and
is called with that value, at its place in the list: `insert_bottlenecks` (a ratio) CHANGES THE
MODEL, before everything; `data_parallel` (True) sums the gradients over the ranks of an MPI run,
between autodiff and the optimizer. Such a pass returns (graph, report lines); the report is
`Result.reports[name]`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from ..ir.errors import DlcError
from ..ir.graph import Graph
from ..ir.progress import stage
from ..ir.text import print_ir
from ..ir.verify import verify
from .autodiff import autodiff
from .bottleneck import bottleneck_pass
from .data_parallel import data_parallel
from .canonicalize import constant_fold, cse, dce, fold_transpose
from .evaluation import evaluation_form
from .fold_bn import fold_batch_norm
from .fusion import fuse
from .inception import merge_1x1
from .lower import lower_composites
from .optimizer import optimizer_update

OPT_IN = -1  # the level of a pass that runs only when its option is given


@dataclass(frozen=True)
class Pass:
    name: str
    fn: Callable
    level: int                # the lowest -O level that runs it, or OPT_IN
    option: str | None = None  # OPT_IN: the option that turns it on (and is passed to it)


PIPELINE = [
    # rewrites of the model itself, asked for by name; the stage "forward" is the graph after them
    Pass("bottleneck", bottleneck_pass, OPT_IN, "insert_bottlenecks"),  # 1x1 reductions before wide convs
    Pass("inception", merge_1x1, 2),         # sibling 1x1 convolutions: one wider one (forward, so training too)
    Pass("lower", lower_composites, 0),      # composite ops (batch_norm) written in other ops
    Pass("autodiff", autodiff, 0),           # gradients of the loss w.r.t. every trainable param
    Pass("data-parallel", data_parallel, OPT_IN, "data_parallel"),  # gradients summed over the ranks (MPI)
    Pass("optimizer", optimizer_update, 0),  # the update step, with its state, as IR ops
    Pass("fold-transpose", fold_transpose, 1),  # transposes become matmul operand flags
    Pass("constant-fold", constant_fold, 1),    # scalar arithmetic on constants, static sizes
    Pass("cse", cse, 1),                     # one node per distinct computation
    Pass("dce", dce, 1),                     # drop what nothing needs
    Pass("evaluation", evaluation_form, 1),  # outputs and loss as evaluation computes them (dropout off, ...)
    Pass("fold-bn", fold_batch_norm, 2),     # evaluation form: batch norm folded into the conv's weights
    Pass("fuse", fuse, 2),                   # pointwise chains become one kernel each (last: it only annotates)
]
PASS_NAMES = [p.name for p in PIPELINE if p.level != OPT_IN]   # what --passes and --dump-ir-after name
OPTIONS = [p.option for p in PIPELINE if p.level == OPT_IN]
LEVELS = sorted({p.level for p in PIPELINE if p.level != OPT_IN} | {0})
# stages recorded besides forward and optimized (backward: the gradients the optimizer reads)
STAGE_AFTER = {"autodiff": "backward", "data-parallel": "backward", "optimizer": "train"}


@dataclass
class PassRecord:
    name: str
    seconds: float
    nodes: int


@dataclass
class Result:
    stages: dict = field(default_factory=dict)   # stage name -> graph: forward, backward, train, optimized
    records: list = field(default_factory=list)  # one PassRecord per pass run
    dumps: list = field(default_factory=list)    # (file name, IR text) per dump asked for
    reports: dict = field(default_factory=dict)  # opt-in pass name -> its report lines


def select(opt_level: int = 1, passes: list[str] | None = None, options: dict | None = None) -> list[Pass]:
    """The passes to run: the passes of `opt_level`, or, given `passes`, autodiff and the optimizer
    (they define the training step) with the named passes in that order (a named rewrite of the
    forward graph, such as `inception`, runs before autodiff); and among them, at their place
    (after the level-0 pass that precedes them in PIPELINE, or first), the opt-in passes whose
    option is given."""
    options = options or {}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise DlcError(f"unknown pipeline option '{unknown[0]}' (options: {', '.join(OPTIONS)})")
    opted = [p for p in PIPELINE if p.level == OPT_IN and options.get(p.option) is not None]
    if passes is None:
        return [p for p in PIPELINE if p in opted or (p.level != OPT_IN and p.level <= opt_level)]
    table = {p.name: p for p in PIPELINE if p.level != OPT_IN}
    for name in passes:
        if name not in table:
            raise DlcError(f"--passes: unknown pass '{name}' (passes: {', '.join(PASS_NAMES)})")
    required = [p.name for p in PIPELINE if p.level == 0]
    before = PASS_NAMES[:PASS_NAMES.index(required[0])]  # rewrites of the forward graph go first
    chosen = [n for n in passes if n in before] + required + [n for n in passes if n not in required + before]
    out = [table[name] for name in chosen]
    for p in opted:  # after the required pass before it in PIPELINE (autodiff), or at the front
        before = [q.name for q in PIPELINE[:PIPELINE.index(p)] if q.level == 0]
        i = [q.name for q in out].index(before[-1]) + 1 if before else 0
        while i < len(out) and out[i].level == OPT_IN:  # after those placed there already
            i += 1
        out.insert(i, p)
    return out


def run_pipeline(g: Graph, opt_level: int = 1, dump_after: str | None = None, check: bool = False,
                 passes: list[str] | None = None, options: dict | None = None, trace=None) -> Result:
    """Run the passes (see `select`) on the forward graph.

    `dump_after` is a pass name or "all": the IR after it, as numbered texts (`00-input.ir`,
    `01-lower.ir`, `02-autodiff.ir`, ...) in `Result.dumps`. `check` runs the verifier after every pass.
    `trace(level, text)`, when given, is called with each pass's name, time and size (level 1)
    and the IR after it (level 2), each text as a function that makes it: DLC_DEBUG's output."""
    res = Result()
    chosen = select(opt_level, passes, options)
    res.stages["forward"] = g
    derived = False  # autodiff has run: an opt-in pass after it no longer rewrites the model as written
    if dump_after:
        res.dumps.append(("00-input.ir", print_ir(g)))
    for i, p in enumerate(chosen, 1):
        stage(f"pass {p.name} ({i} of {len(chosen)}, on {len(g):,} nodes)")
        t0 = time.perf_counter()
        if p.level == OPT_IN:
            g, res.reports[p.name] = p.fn(g, options[p.option])
            if not derived:
                res.stages["forward"] = g  # the model as rewritten: what inference, export and check see
        else:
            g = p.fn(g)
        res.records.append(PassRecord(p.name, time.perf_counter() - t0, len(g)))
        derived = derived or p.name == "autodiff"
        if check:
            verify(g)
        if p.name in STAGE_AFTER:
            res.stages[STAGE_AFTER[p.name]] = g
        if dump_after in ("all", p.name):
            res.dumps.append((f"{i:02d}-{p.name}.ir", print_ir(g)))
        if trace:
            rec, now = res.records[-1], g
            trace(1, lambda: f"pass {rec.name:<16} {rec.seconds * 1e3:8.2f} ms {rec.nodes:6} nodes")
            trace(2, lambda: print_ir(now))
    out = g.copy()
    out.meta.stage = "optimized"
    res.stages["optimized"] = out
    return res
