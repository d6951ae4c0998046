"""`dlc bench`: time the phases of a compiled model (forward, forward+backward, the whole step,
and steps read back in groups as `dlc run` reads them) on random data, like `caffe time`.

The figures are min, median, p10, p90 and the spread p90/p10 of each phase's iteration times; a
phase whose spread exceeds SPREAD_LIMIT scattered too much (another process took the cores, or the
BLAS threads fought over them) and is flagged.
"""
from __future__ import annotations

import time

import numpy as np

from .diff import synth_feeds
from .train import SYNC_EVERY

SPREAD_LIMIT = 1.5
# The variables benchmarks/_timing.py sets: BLAS and OpenMP read them once, when they load.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
WARMUP = 3  # untimed iterations of each phase


def time_stats(times) -> dict[str, float]:
    """Of one phase's iteration times (seconds): min, median, p10, p90 and spread = p90 / p10."""
    t = np.asarray(times, dtype=np.float64)
    p10, median, p90 = (float(v) for v in np.percentile(t, [10, 50, 90]))
    return {"min": float(t.min()), "median": median, "p10": p10, "p90": p90,
            "spread": p90 / p10 if p10 > 0 else float("inf")}


def unreliable(stats: dict, limit: float = SPREAD_LIMIT) -> bool:
    """Whether the times behind `stats` (from `time_stats`) spread too much to be a figure."""
    return not stats["spread"] <= limit


def phases(model) -> list[tuple[str, str, dict]]:
    """(name, root kind, run options) of each phase the model has: forward; forward+backward with
    a loss; the whole step (the loss alone handed back) and deferred steps when it trains."""
    out = [("forward", "outputs", {})]
    if model.graph.meta.loss:
        out.append(("forward+backward", "grads", {"training": True}))
    if model.trainable:  # as Model.step runs it: the whole step, the loss alone handed back
        step = {"training": True, "commit": True, "fetch": [model.graph.meta.loss]}
        out.append(("step", "step", step))
        # as `dlc run` trains: SYNC_EVERY steps queued, then their losses read with one wait
        out.append(("step-deferred", "step", dict(step, wait=False)))
    return out


def bench(model, batch: int, iters: int):
    """Time every phase of `model` on a random batch: yields (phase, stats, host work per group of
    steps or None), where host work is the backend's counts of waits, bytes down and key uploads
    (the generated-code backends count them; the interpreter does not)."""
    feeds = synth_feeds(model.graph, batch)
    for name, kind, opts in phases(model):
        roots = model.roots(kind)
        group = SYNC_EVERY if opts.get("wait") is False else 1  # a deferred step's time: its group's over its size

        def steps():
            for _ in range(group):
                res = model.run(roots, feeds, checked=True, **opts)
            if group > 1:
                res.result()
        for _ in range(WARMUP):
            steps()
        times = []
        for _ in range(max(3, iters // group) if group > 1 else iters):
            t0 = time.perf_counter()
            steps()
            times.append((time.perf_counter() - t0) / group)
        host = None
        counters = model.counters
        if counters is not None and opts.get("commit"):
            before = dict(counters)
            steps()
            host = dict(group=group, **{k: counters[k] - before[k] for k in counters})
        yield name, time_stats(times), host
