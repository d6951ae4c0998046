"""What the evaluation form and the batch-norm fold do to an evaluation run (held-out scoring,
`forward`, `predict`): kernels and launches from the plan, and the interpreter's wall time.

    python benchmarks/bench_eval.py                  # writes benchmarks/results/eval-DATE.txt
    python benchmarks/bench_eval.py --no-save --reps 5

Three builds of each model, all in this run:

    before     -O2 without the passes `evaluation` and `fold-bn` (what -O2 did before them): an
               evaluation run computes the outputs of the one graph both modes share, so it also
               computes batch norm's batch statistics, and the normalisation is separate work
    eval form  -O2 without `fold-bn`: the evaluation form (if_training resolved at compile time)
    after      -O2: the evaluation form with batch norm folded into the convolution before it

Part 1 (no GPU, no timing): kernels and launches of one evaluation run from each build's launch
plan (`Build.stats(run="evaluation")`, the figures `dlc compile --stats` prints on its eval
rows), at batch 128, for examples/resnet_small.dln and examples/imagenet/resnet18.dln; "again":
the launches of the next evaluation run while the weights are unchanged (the backends keep the
values computed from params and buffers alone: the folded weights, batch norm's scale and shift);
and the training step's launches, which the passes leave unchanged.

Part 2: wall time of `m.evaluate(...)` and `m.forward(...)` on the interpreter (float32, 1 BLAS
thread) for resnet_small at batch 128, each build, in blocks that take turns
(`_timing.time_blocks`); speedup is after against before. The builds are first checked to give
the same outputs. (The header's "-O1" is the shared header's; the builds are those above.)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _timing import environment, paired, save_report, scattered, set_threads, time_blocks

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"resnet_small": ROOT / "examples" / "resnet_small.dln",
          "resnet18": ROOT / "examples" / "imagenet" / "resnet18.dln"}
CANON = ["inception", "fold-transpose", "constant-fold", "cse", "dce"]
BUILDS = {  # name -> build options
    "before": dict(passes=CANON + ["fuse"]),
    "eval form": dict(passes=CANON + ["evaluation", "fuse"]),
    "after": dict(opt_level=2),
}
BATCH = 128


def part_plans() -> list[str]:
    import dlc
    head = (f"{'model':<13} {'build':<10} {'eval kernels':>12} {'eval launches':>13} {'again':>6} "
            f"{'eval MFLOP':>11} {'step launches':>13}")
    lines = [f"one evaluation run (outputs and loss in evaluation mode) at batch {BATCH}, from the launch plan",
             head, "-" * len(head)]
    for name, path in MODELS.items():
        base = None
        for build, opts in BUILDS.items():
            b = dlc.build(path, **opts)
            ev, st = b.stats(BATCH, run="evaluation"), b.stats(BATCH, run="step")
            base = base or ev
            ratio = f"  ({base['launches'] / ev['launches']:.1f}x fewer launches)" if build != "before" else ""
            lines.append(f"{name:<13} {build:<10} {ev['kernels']:>12} {ev['launches']:>13} {ev['repeat_launches']:>6} "
                         f"{ev['flops'] / 1e6:>11.1f} {st['launches']:>13}" + ratio)
    return lines


def part_time(reps: int, steps: int) -> list[str]:
    import numpy as np

    import dlc
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 64)).astype(np.float32)
    y = rng.integers(0, 10, BATCH).astype(np.int32)
    models = {}
    for build in BUILDS:
        m = dlc.compile(MODELS["resnet_small"], backend="interp", seed=1, **BUILDS[build])
        for _ in range(2):  # running statistics that are not the initial zeros and ones
            m.step(x=x[:32], y=y[:32])
        models[build] = m
    a = models["before"].forward(x=x)["logits"]
    err = max(float(np.abs(models[k].forward(x=x)["logits"] - a).max() / np.abs(a).max()) for k in models)
    if err > 1e-4:
        sys.exit(f"the builds disagree: relative error {err:.2e}")
    feeds = {"x": x, "y": y}
    lines = [f"resnet_small on the interpreter (float32), batch {BATCH}: median ms per call over {reps} blocks "
             f"of {steps} calls; the builds' outputs agree to {err:.1e} (relative)"]
    head = f"{'call':<12} {'before ms':>10} {'eval form ms':>12} {'after ms':>9} {'speedup':>8}"
    lines += [head, "-" * len(head)]
    for call, fn in (("evaluate", lambda m: m.evaluate(feeds)), ("forward", lambda m: m.forward(x=x))):
        res = time_blocks({k: (lambda m=m: fn(m)) for k, m in models.items()}, steps, reps, warmup=2)
        note = "  (blocks spread > 20%: a busy machine)" if any(scattered(r) for r in res.values()) else ""
        lines.append(f"{call:<12} {res['before'][0] * 1e3:>10.2f} {res['eval form'][0] * 1e3:>12.2f} "
                     f"{res['after'][0] * 1e3:>9.2f} {paired(res['before'], res['after']):>7.2f}x{note}")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7, help="timed blocks per build (default 7)")
    ap.add_argument("--steps", type=int, default=5, help="calls per timed block (default 5)")
    ap.add_argument("--out", help="report file (default benchmarks/results/eval-DATE.txt)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    set_threads(1)
    sys.path.insert(0, str(ROOT.parent))
    lines = environment(1, False) + [""] + part_plans() + [""] + part_time(args.reps, args.steps)
    print("\n".join(lines))
    if not args.no_save:
        print(f"wrote {save_report(lines, args.out, 'eval')}")


if __name__ == "__main__":
    main()
