"""How compile time and training-step time grow with the sequence length of a recurrent layer
unrolled at compile time (`scan`, docs/sequences.md).

    python benchmarks/bench_rnn.py                  # T = 10, 100, 1000
    python benchmarks/bench_rnn.py --lengths 10,100 # fewer

For an LSTM of 32 units over [N, T, 2] (the adding problem's shapes) and an Elman network of 32
units, per sequence length T:

- compile: .dln text to the optimised IR (lower + passes, -O1 and -O2) and on to CUDA source
  (codegen), in seconds; nodes in the training graph; kernels in the CUDA module (identical
  bodies are emitted once, so this stays flat) and launches per training step;
- step: one training step (forward, BPTT, clipped Adam) at batch 32 on the interpreter, median
  of repeated runs, next to PyTorch's nn.LSTM / nn.RNN on the CPU for the same step (one
  thread each), where torch is installed: the ratio is dlc / torch, measured in the same run.

A GPU comparison against cuDNN's LSTM belongs to benchmarks/gpu_check.sh (issue 13).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

import dlc  # noqa: E402

UNITS, FEATURES, BATCH = 32, 2, 32


def model(layer: str, steps: int) -> str:
    return (f"model {layer}{steps} {{\n    input x : f32[N, {steps}, {FEATURES}]\n    input y : f32[N, 1]\n"
            f"    h = {layer}(x, {UNITS})\n    pred = linear(last(h), 1)\n    loss = mse(pred, y)\n"
            f"    output pred\n    minimize loss with adam(lr = 0.003, clip = 1.0)\n}}\n")


def median_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def torch_step(layer: str, steps: int, feeds: dict, reps: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    rnn = (torch.nn.LSTM if layer == "lstm" else torch.nn.RNN)(FEATURES, UNITS, batch_first=True)
    out = torch.nn.Linear(UNITS, 1)
    params = list(rnn.parameters()) + list(out.parameters())
    opt = torch.optim.Adam(params, lr=0.003)
    x, y = torch.as_tensor(feeds["x"]), torch.as_tensor(feeds["y"])

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(out(rnn(x)[0][:, -1]), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()
    return median_time(step, reps)


def row(layer: str, steps: int, reps: int) -> list[str]:
    src = model(layer, steps)
    cells = [layer, str(steps)]
    for level in (1, 2):
        t = time.perf_counter()
        b = dlc.build(src, opt_level=level)
        t_ir = time.perf_counter() - t
        t = time.perf_counter()
        mod = b.module()
        t_gen = time.perf_counter() - t
        cells += [f"{t_ir:.2f}", f"{t_gen:.2f}"]
        if level == 2:
            cells += [str(len(b.graph.nx)), str(len({k.name for k in mod.kernels})),
                      str(sum(1 for l in mod.launches if l.phase == "step"))]
    m = dlc.compile(src, backend="interp")
    r = np.random.default_rng(0)
    feeds = {"x": r.uniform(size=(BATCH, steps, FEATURES)).astype(np.float32),
             "y": r.uniform(size=(BATCH, 1)).astype(np.float32)}
    step_reps = max(3, reps // max(1, steps // 10))
    ours = median_time(lambda: m.step(**feeds), step_reps)
    theirs = torch_step(layer, steps, feeds, step_reps)
    cells += [f"{ours * 1e3:.1f}", f"{theirs * 1e3:.1f}" if theirs else "-", f"{ours / theirs:.1f}" if theirs else "-"]
    return cells


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="10,100,1000", help="sequence lengths, comma-separated")
    ap.add_argument("--reps", type=int, default=20, help="timed steps at T = 10 (fewer for longer sequences)")
    args = ap.parse_args(argv)
    lengths = [int(v) for v in args.lengths.split(",")]
    head = ["layer", "T", "IR -O1 s", "codegen -O1 s", "IR -O2 s", "codegen -O2 s", "nodes -O2", "kernels",
            "launches/step", "interp step ms", "torch CPU ms", "ratio"]
    print(f"recurrent layer of {UNITS} units over [N, T, {FEATURES}], batch {BATCH}, clipped Adam "
          f"(dlc {dlc.__version__}, numpy {np.__version__})")
    rows = [head]
    for layer in ("elman", "lstm"):
        for steps in lengths:
            rows.append(row(layer, steps, args.reps))
            print("  " + "  ".join(rows[-1]), flush=True)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    print()
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
