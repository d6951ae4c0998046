"""The pass manager: a list of named passes, optimisation levels, IR dumps and timing.

    -O0  autodiff, optimizer            (the graph as derived, nothing simplified)
    -O1  + transpose folding, constant folding, CSE, DCE      (the default)
    -O2  + merged sibling 1x1 convolutions (before autodiff), fusion: groups of nodes computed
         by one kernel each, memory planning in codegen
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..ir.errors import DlcError
from ..ir.graph import Graph
from ..ir.text import print_ir
from ..ir.verify import verify
from .autodiff import autodiff
from .canonicalize import constant_fold, cse, dce, fold_transpose
from .fusion import fuse
from .inception import merge_1x1
from .optimizer import optimizer_update

# (name, pass, lowest -O level that runs it)
PIPELINE = [
    ("inception", merge_1x1, 2),        # sibling 1x1 convolutions: one wider one (forward, so training too)
    ("autodiff", autodiff, 0),          # gradients of the loss w.r.t. every trainable param
    ("optimizer", optimizer_update, 0),  # the update step, with its state, as IR ops
    ("fold-transpose", fold_transpose, 1),  # transposes become matmul operand flags
    ("constant-fold", constant_fold, 1),   # scalar arithmetic on constants, static sizes
    ("cse", cse, 1),                    # one node per distinct computation
    ("dce", dce, 1),                    # drop what nothing needs
    ("fuse", fuse, 2),                  # pointwise chains become one kernel each (last: it only annotates)
]
PASS_NAMES = [name for name, _, _ in PIPELINE]


@dataclass
class PassRecord:
    name: str
    seconds: float
    nodes: int


@dataclass
class Result:
    stages: dict = field(default_factory=dict)   # stage name -> graph: forward, backward, train, optimized
    records: list = field(default_factory=list)  # one PassRecord per pass run


def select(opt_level: int = 1, passes: list[str] | None = None) -> list[tuple]:
    """The (name, pass) list to run: the passes of `opt_level`, or, given `passes`, autodiff and
    the optimizer (they define the training step) followed by the named passes in that order
    (a named rewrite of the forward graph, such as `inception`, runs before autodiff)."""
    if passes is None:
        return [(name, fn) for name, fn, level in PIPELINE if level <= opt_level]
    table = {name: fn for name, fn, _ in PIPELINE}
    for name in passes:
        if name not in table:
            raise DlcError(f"--passes: unknown pass '{name}' (passes: {', '.join(PASS_NAMES)})")
    required = [name for name, _, level in PIPELINE if level == 0]
    before = PASS_NAMES[:PASS_NAMES.index(required[0])]  # rewrites of the forward graph go first
    chosen = [n for n in passes if n in before] + required + [n for n in passes if n not in required + before]
    return [(name, table[name]) for name in chosen]


def run_pipeline(g: Graph, opt_level: int = 1, dump_dir: str | Path | None = None,
                 dump_after: str | None = None, check: bool = False, passes: list[str] | None = None) -> Result:
    """Run the passes for `opt_level` (or the chosen `passes`, see `select`) on the forward graph.

    `dump_after` is a pass name or "all"; dumps go to `dump_dir` as numbered files
    (`00-input.ir`, `01-autodiff.ir`, ...). `check` runs the verifier after every pass."""
    res = Result()
    res.stages["forward"] = g
    dumps = []
    if dump_after:
        dumps.append(("00-input.ir", print_ir(g)))
    i = 0
    for name, fn in select(opt_level, passes):
        i += 1
        t0 = time.perf_counter()
        g = fn(g)
        res.records.append(PassRecord(name, time.perf_counter() - t0, len(g)))
        if check:
            verify(g)
        if name == "autodiff":
            res.stages["backward"] = g
        if name == "optimizer":
            res.stages["train"] = g
        if dump_after in ("all", name):
            dumps.append((f"{i:02d}-{name}.ir", print_ir(g)))
    out = g.copy()
    out.meta.stage = "optimized"
    res.stages["optimized"] = out
    res.dumps = dumps
    return res
