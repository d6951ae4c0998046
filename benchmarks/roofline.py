"""A roofline estimate of one training step on an H100, from the launch plan alone (no GPU):

    python benchmarks/roofline.py [--batch 128 1024]

For dlc at -O2: t = max(bytes moved / 3.35 TB/s, FLOPs / 60 TFLOP/s) + launches x L, with
L = 4 us per launch issued from Python and 1 us replayed in a CUDA graph (typical figures for
an H100 host; measured numbers replace these once `benchmarks/gpu_check.sh` has run on one).
For PyTorch eager the same bound with the bytes of dlc's unfused plan (-O0, one kernel per op, as
eager runs them) and its ATen op count for the step (CPU dispatch count) x 6 us per op (launch
plus eager's dispatch). Every number here is an estimate from counts, stated so it can be
checked against a GPU run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import dlc  # noqa: E402
from dlc.codegen import generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("mlp", "logreg", "xor", "deep_mlp", "lenet", "inception")
BANDWIDTH, FLOPS = 3.35e12, 60e12
LAUNCH_US, GRAPH_US, EAGER_US = 4.0, 1.0, 6.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="*", default=[128, 1024])
    args = ap.parse_args(argv)
    from bench_fusion import torch_ops
    print(f"H100 roofline estimate per training step ({BANDWIDTH / 1e12:.2f} TB/s, {FLOPS / 1e12:.0f} TFLOP/s fp32; "
          f"launch {LAUNCH_US:g} us, in a CUDA graph {GRAPH_US:g} us, eager op {EAGER_US:g} us)")
    head = (f"{'example':<10} {'batch':>5} {'launches':>8} {'MFLOP':>9} {'MB':>7} {'bound us':>8} "
            f"{'dlc us':>7} {'graph us':>8} {'eager ops':>9} {'eager us':>8} {'eager/graph':>11}")
    print(head)
    print("-" * len(head))
    for name in EXAMPLES:
        ops = torch_ops(name)
        o2 = generate(dlc.compile(ROOT / "examples" / f"{name}.dln", backend="interp", opt_level=2).graph)
        o0 = generate(dlc.compile(ROOT / "examples" / f"{name}.dln", backend="interp", opt_level=0).graph)
        for b in args.batch:
            s, s0 = o2.stats({"N": b}), o0.stats({"N": b})
            bound = max(s["bytes_moved"] / BANDWIDTH, s["flops"] / FLOPS) * 1e6
            bound0 = max(s0["bytes_moved"] / BANDWIDTH, s0["flops"] / FLOPS) * 1e6
            dlc_us = bound + s["launches"] * LAUNCH_US
            graph_us = bound + s["launches"] * GRAPH_US
            eager = f"{bound0 + ops * EAGER_US:8.1f}" if ops else "     n/a"
            ratio = f"{(bound0 + ops * EAGER_US) / graph_us:11.1f}" if ops else "        n/a"
            print(f"{name:<10} {b:>5} {s['launches']:>8} {s['flops'] / 1e6:>9.1f} {s['bytes_moved'] / 1e6:>7.2f} "
                  f"{bound:>8.2f} {dlc_us:>7.1f} {graph_us:>8.1f} {ops or 'n/a':>9} {eager} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
