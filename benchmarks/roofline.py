"""A roofline estimate of one training step on an H100, from the launch plan alone (no GPU):

    python benchmarks/roofline.py [--batch 128 1024]

For dlc at -O2: t = max(bytes moved / 3.35 TB/s, FLOPs / 60 TFLOP/s) + launches x L, with
L = 4 us per launch issued from Python and 1 us replayed in a CUDA graph (typical figures for
an H100 host; measured numbers replace these once `benchmarks/gpu_check.sh` has run on one).
For PyTorch eager the same bound with the bytes of dlc's unfused plan (-O0, one kernel per op, as
eager runs them) and its ATen op count for the step (CPU dispatch count) x 6 us per op (launch
plus eager's dispatch). Every number here is an estimate from counts, stated so it can be
checked against a GPU run.

With --precision tf32 or bf16 the products (matmuls and convolutions, on the tensor cores) count
at the H100's dense tensor-core ceiling, TENSOR_FLOPS (TF32 ~495, BF16 ~990 TFLOP/s), and the
other FLOPs at the fp32 rate as before: FLOPs term = product FLOPs / tensor rate + the rest / 60
TFLOP/s (the 60 is the attainable share of the CUDA cores' ~67 TFLOP/s fp32 peak).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import dlc  # noqa: E402
from dlc.codegen import generate  # noqa: E402
from dlc.ir.ops import OPS, flops  # noqa: E402
from dlc.ir.registry import PRODUCT_FAMILIES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("mlp", "logreg", "xor", "deep_mlp", "lenet", "inception")
BANDWIDTH, FLOPS = 3.35e12, 60e12
TENSOR_FLOPS = {"tf32": 495e12, "bf16": 990e12}   # H100 SXM, dense (no structured sparsity)
LAUNCH_US, GRAPH_US, EAGER_US = 4.0, 1.0, 6.0


def compute_seconds(graph, stats: dict, dims: dict, precision: str) -> float:
    """The FLOPs term of the bound: every FLOP at the fp32 rate, or at tf32/bf16 the products'
    FLOPs at the tensor-core ceiling and the rest at the fp32 rate."""
    if precision == "fp32":
        return stats["flops"] / FLOPS
    products = sum(flops(graph, n, dims) for n in graph.order() if OPS[graph.op(n)].family in PRODUCT_FAMILIES)
    return products / TENSOR_FLOPS[precision] + (stats["flops"] - products) / FLOPS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="*", default=[128, 1024])
    ap.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"))
    args = ap.parse_args(argv)
    from bench_fusion import torch_ops
    rate = f"{FLOPS / 1e12:.0f} TFLOP/s fp32" + (
        f", products {TENSOR_FLOPS[args.precision] / 1e12:.0f} TFLOP/s {args.precision}" if args.precision != "fp32" else "")
    print(f"H100 roofline estimate per training step ({BANDWIDTH / 1e12:.2f} TB/s, {rate}; "
          f"launch {LAUNCH_US:g} us, in a CUDA graph {GRAPH_US:g} us, eager op {EAGER_US:g} us)")
    head = (f"{'example':<10} {'batch':>5} {'launches':>8} {'MFLOP':>9} {'MB':>7} {'FLOP us':>7} {'bound us':>8} "
            f"{'dlc us':>7} {'graph us':>8} {'eager ops':>9} {'eager us':>8} {'eager/graph':>11}")
    print(head)
    print("-" * len(head))
    for name in EXAMPLES:
        ops = torch_ops(name)
        path = ROOT / "examples" / f"{name}.dln"
        b2 = dlc.build(path, opt_level=2, precision=args.precision)
        o2 = generate(b2.graph)
        o0 = generate(dlc.build(path, opt_level=0, precision=args.precision).graph)
        for b in args.batch:
            s, s0 = o2.stats({"N": b}), o0.stats({"N": b})
            compute = compute_seconds(b2.graph, s, {"N": b}, args.precision) * 1e6
            bound = max(s["bytes_moved"] / BANDWIDTH * 1e6, compute)
            bound0 = max(s0["bytes_moved"] / BANDWIDTH, s0["flops"] / FLOPS) * 1e6   # eager: fp32, as compared before
            dlc_us = bound + s["launches"] * LAUNCH_US
            graph_us = bound + s["launches"] * GRAPH_US
            eager = f"{bound0 + ops * EAGER_US:8.1f}" if ops else "     n/a"
            ratio = f"{(bound0 + ops * EAGER_US) / graph_us:11.1f}" if ops else "        n/a"
            print(f"{name:<10} {b:>5} {s['launches']:>8} {s['flops'] / 1e6:>9.1f} {s['bytes_moved'] / 1e6:>7.2f} {compute:>7.2f} "
                  f"{bound:>8.2f} {dlc_us:>7.1f} {graph_us:>8.1f} {ops or 'n/a':>9} {eager} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
