"""The classic networks at full size (examples/imagenet/): parameters and multiply-adds per image next
to the published figures, and what compiling them costs.

    python benchmarks/classic_nets.py            # the size table (seconds)
    python benchmarks/classic_nets.py --scale    # also: compile to CUDA at -O2, kernels, NVRTC time,
                                                 # launches per training step, peak bytes at batch 128

Multiply-adds are those of the convolutions and fully connected layers (the registry's FLOP counts of
the `conv` and `matmul` families, halved); "other" is every other forward FLOP (activations, LRN,
pooling, the loss). Parameters are counted with biases, and without them (the papers' tables count
weights only).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT.parent))  # `import dlc` from a checkout whose folder is named dlc

import dlc  # noqa: E402
from dlc.ir.ops import OPS, flops  # noqa: E402

NETS = ["alexnet", "googlenet", "vgg16"]
# name -> (parameters, multiply-adds per image), as the papers and their reference models give them
PUBLISHED = {
    "alexnet": ("61M (60,965,224 in Caffe's bvlc_alexnet)", "0.72G"),
    "googlenet": ("6.8M (the paper's Table 1, weights only)", "1.5G (Table 1)"),
    "vgg16": ("138M (138,357,544)", "15.5G"),
}


def sizes(name: str) -> dict:
    b = dlc.build(ROOT / "examples" / "imagenet" / f"{name}.dln")
    g = b.forward
    macs = other = 0
    for n in g.nx:
        f = flops(g, n)
        if OPS[g.op(n)].family in ("conv", "matmul"):
            macs += f // 2
        else:
            other += f
    params = sum(g.type(p).numel() for p in g.params)
    weights = sum(g.type(p).numel() for p in g.params if g.type(p).rank > 1 and
                  any(d > 1 for d in g.type(p).shape[1:]) or g.type(p).rank == 2)
    return {"params": params, "weights": weights, "macs": macs, "other": other}


def scale(name: str, batch: int = 128) -> dict:
    """Compile the training step to CUDA at -O2 in this process (build and codegen, timed), then
    NVRTC (sm_90) where it can run; the plan's launches and peak bytes at `batch`."""
    t0 = time.perf_counter()
    b = dlc.build(ROOT / "examples" / "imagenet" / f"{name}.dln", opt_level=2)
    mod = b.module()
    t_compile = time.perf_counter() - t0
    s = b.stats(batch)
    out = {"compile_s": t_compile, "kernels": s["kernels"], "launches": s["launches"], "peak_gb": s["peak_bytes"] / 1e9,
           "nvrtc_s": None}
    try:
        from dlc.codegen.nvrtc import compile_ptx, nvrtc_available
        if nvrtc_available()[0]:
            t0 = time.perf_counter()
            compile_ptx(mod.source, "sm_90")
            out["nvrtc_s"] = time.perf_counter() - t0
    except ImportError:
        pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", action="store_true", help="also compile each to CUDA and NVRTC (minutes)")
    ap.add_argument("--nets", default=",".join(NETS))
    a = ap.parse_args()
    nets = [n for n in a.nets.split(",") if n]
    print(f"{'network':<10} {'params':>12} {'weights':>12} {'multiply-adds':>14} {'other FLOPs':>12}  published")
    for name in nets:
        r = sizes(name)
        p, m = PUBLISHED[name]
        print(f"{name:<10} {r['params']:>12,} {r['weights']:>12,} {r['macs'] / 1e9:>13.3f}G {r['other'] / 1e9:>11.3f}G"
              f"  {p}; {m}")
    if a.scale:
        print(f"\n{'network':<10} {'compile -O2 s':>13} {'kernels':>8} {'NVRTC s':>8} {'launches/step':>13} "
              f"{'peak GB @128':>12}")
        for name in nets:
            r = scale(name)
            nv = f"{r['nvrtc_s']:.1f}" if r["nvrtc_s"] is not None else "n/a"
            print(f"{name:<10} {r['compile_s']:>13.1f} {r['kernels']:>8} {nv:>8} {r['launches']:>13} "
                  f"{r['peak_gb']:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
