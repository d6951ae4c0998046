"""`--insert-bottlenecks[=R]`: an opt-in rewrite that CHANGES THE MODEL (not an optimisation).

Before every convolution with a kernel of 3x3 or more that reads its input unreduced (not already
through a 1x1 convolution and pointwise ops), insert a 1x1 convolution that reduces the channels
to a fraction R of them (default 1/3, at least 1), with
a bias and a ReLU, as GoogLeNet's inception modules do (192 maps reduced to 64 before the 3x3
and 5x5 branches). The wide convolution then reads the reduced maps, so its kernel shrinks from
[O, C, k, k] to [O, C·R, k, k]: it is a new parameter of the same name, and weights trained
without the rewrite do not load. A convolution is rewritten only where the reduction saves
FLOPs (the 1x1 layer costs C·C·R per pixel; the k×k layer saves O·k²·C·(1 − R) per output
pixel). The report (`Rewrite.lines`) gives FLOPs and params per example before and after.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ir.errors import DlcError
from ..ir.graph import Graph
from ..ir.ops import OPS, PARAM, flops
from ..ir.types import TensorType

DEFAULT_RATIO = 1 / 3  # GoogLeNet: 192 maps reduced to 64


@dataclass
class Rewrite:
    graph: Graph
    lines: list = field(default_factory=list)


def _cost(g: Graph) -> tuple[int, int]:
    """FLOPs per example and parameter count of a forward graph."""
    return (sum(flops(g, n) for n in g.nx),
            sum(g.type(p).numel() for p in g.params))


def _reduced(g: Graph, x: str) -> bool:
    """Whether `x` already comes out of a 1x1 convolution, through pointwise ops only."""
    while OPS[g.op(x)].family == "elementwise":
        x = g.operands(x)[0]
    return g.op(x) == "conv2d" and tuple(g.type(g.operands(x)[1]).shape[2:]) == (1, 1)


def insert_bottlenecks(g: Graph, ratio: float = DEFAULT_RATIO) -> Rewrite:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise DlcError(f"--insert-bottlenecks: the ratio must be between 0 and 1 (exclusive), found {ratio!r}")
    before = _cost(g)
    g = g.copy()
    done = []
    for n in g.order():
        if g.op(n) != "conv2d":
            continue
        x, w = g.operands(n)
        o, c, kh, kw = g.type(w).shape
        if kh * kw < 9 or g.attrs(n)["groups"] != 1 or OPS[g.op(w)].holds != PARAM or len(g.users(w)) != 1 \
                or _reduced(g, x):
            continue
        r = max(1, int(round(c * ratio)))
        _, _, ho, wo = g.type(n).shape
        _, _, h, wi = g.type(x).shape
        if c * r * h * wi + o * kh * kw * r * ho * wo >= o * kh * kw * c * ho * wo:
            continue  # no saving
        loc, attrs = g.loc(n), dict(g.attrs(n))
        rw = g.add("param", [], {"init": "he"}, name=f"{n}.reduce.w", loc=loc, type=TensorType("f32", (r, c, 1, 1)))
        rb = g.add("param", [], {"init": "zeros"}, name=f"{n}.reduce.b", loc=loc, type=TensorType("f32", (r, 1, 1)))
        t = g.add("conv2d", [x, rw], {"stride": 1, "padding": 0, "dilation": 1,   # the precision floor carries
                                      "min_precision": attrs["min_precision"]}, name=f"{n}.reduce", loc=loc)
        t = g.add("relu", [g.add("add", [t, rb], name=f"{n}.reduce.add", loc=loc)], name=f"{n}.reduce.relu", loc=loc)
        new_w = g.add("param", [], dict(g.attrs(w)), name=f"{w}.reduced", loc=g.loc(w),
                      type=TensorType("f32", (o, r, kh, kw)))
        conv = g.add("conv2d", [t, new_w], attrs, name=f"{n}.narrow", loc=loc)
        g.replace_uses(n, conv)
        g.remove(n)
        g.remove(w)
        g.rename(new_w, w)
        g.rename(conv, n)
        g.remap_meta({conv: n})
        done.append(f"  {n}: {c} -> {r} channels (1x1, relu) before its {kh}x{kw} kernel, now {w} : f32[{o}, {r}, {kh}, {kw}]")
    after = _cost(g)
    lines = ["--insert-bottlenecks: THIS CHANGES THE MODEL (new layers, new parameter shapes; weights trained "
             "without it do not load)"] + (done or ["  no convolution qualified (3x3 or larger, input not already reduced by a 1x1, a saving in FLOPs)"])
    lines.append(f"  FLOPs per example {before[0]:,} -> {after[0]:,} ({after[0] / max(1, before[0]):.1%}); "
                 f"params {before[1]:,} -> {after[1]:,}")
    return Rewrite(g, lines)


def bottleneck_pass(g: Graph, ratio: float) -> tuple[Graph, list[str]]:
    """The rewrite as an opt-in pipeline entry (passes/manager.py): (graph, report lines)."""
    r = insert_bottlenecks(g, ratio)
    return r.graph, r.lines
