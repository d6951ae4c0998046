"""One training step of every example on the cuda backend: the program compute-sanitizer watches.

    compute-sanitizer --tool memcheck python benchmarks/gpu_step.py [--batch 7] [--graph] [--precision P] [EXAMPLE ...]

For each example (default: every examples/*.dln) it compiles with backend cuda, runs one step
(a training step with commit where the model minimises something, else a forward pass) on a
random batch, synchronises, and prints `@@ EXAMPLE ok` or `@@ EXAMPLE FAILED: why`. The loss is
compared with the interpreter's, so a kernel that silently wrote nothing is noticed too; with
`--precision tf32` or `bf16` both compile at that precision (the tensor-core kernels against the
interpreter's exact rounding, docs/precision.md), and the loss may differ by one more ulp of the format.

CuPy's memory pool is switched off (`cupy.cuda.set_allocator(None)`): every buffer is its own
cudaMalloc, so an access past the end of a buffer lands outside any allocation, where memcheck
sees it, instead of inside a neighbouring buffer of the pool, where it would not.
The batch is odd (7) by default so that no size divides a block size.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("examples", nargs="*", help="example names (default: all in examples/)")
    ap.add_argument("--batch", type=int, default=7)
    ap.add_argument("--graph", action="store_true", help="replay the step as a CUDA graph")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--keep-pool", action="store_true", help="leave CuPy's memory pool on")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"),
                    help="of the matrix products, on both sides (docs/precision.md)")
    args = ap.parse_args(argv)

    import dlc
    from dlc.runtime.cuda import cuda_available
    from dlc.runtime.diff import FLIP, synth_feeds
    rtol = 1e-3 + FLIP[args.precision]   # tf32, bf16: and a rounding flip (runtime/diff.py)
    ok, why = cuda_available()
    if not ok:
        print(f"@@ ALL FAILED: cuda backend unavailable: {why}", flush=True)
        return 1
    import cupy
    if not args.keep_pool:
        cupy.cuda.set_allocator(None)
        cupy.cuda.set_pinned_memory_allocator(None)

    names = args.examples or sorted(p.stem for p in (ROOT / "examples").glob("*.dln"))
    failed = 0
    for name in names:
        print(f"@@ {name} start", flush=True)
        t0 = time.perf_counter()
        try:
            path = ROOT / "examples" / f"{name}.dln"
            gpu = dlc.compile(path, backend="cuda", cuda_graph=args.graph, precision=args.precision)
            ref = dlc.compile(path, backend="interp", precision=args.precision)
            g = gpu.graph
            feeds = synth_feeds(g, args.batch, seed=1)
            for _ in range(args.steps):
                if gpu.trainable:
                    got, want = gpu.step(**feeds), ref.step(**feeds)
                else:
                    got = next(iter(gpu.forward(x=feeds["x"]).values()))
                    want = next(iter(ref.forward(x=feeds["x"]).values()))
            cupy.cuda.runtime.deviceSynchronize()
            err = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))
            scale = max(1.0, float(np.max(np.abs(want))))
            status = "ok" if err <= rtol * scale else f"FAILED: differs from interp by {err:.3e}"
            print(f"@@ {name} {status} ({time.perf_counter() - t0:.1f} s, |err| {err:.2e})", flush=True)
            failed += status != "ok"
        except Exception as e:
            failed += 1
            print(f"@@ {name} FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  flush=True)
            traceback.print_exc(limit=3)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
