"""The classic networks at full size (examples/imagenet/): parameters and multiply-adds per image next
to the published figures, and what compiling them costs.

    python benchmarks/classic_nets.py            # the size table (seconds)
    python benchmarks/classic_nets.py --scale    # also: compile to CUDA at -O2, kernels, NVRTC time,
                                                 # launches per training step, peak bytes at batch 128
    python benchmarks/classic_nets.py --gemms    # matrix products (GEMMs) in a training step, -O1 and -O2
    python benchmarks/classic_nets.py --step     # one training step at batch 8: dlc's interpreter against
                                                 # PyTorch eager on the CPU (needs torch; minutes)
    python benchmarks/classic_nets.py --emu      # one training step at batch 1 on emu (the generated CUDA
                                                 # compiled for the CPU) against the interpreter (minutes)
    python benchmarks/classic_nets.py --memory   # peak memory of a training step at batch 8: the plan's
                                                 # buffers against what the interpreter and PyTorch CPU
                                                 # take (each in a fresh process; minutes)

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

NETS = ["alexnet", "googlenet", "vgg16", "resnet18", "resnet50"]
# name -> (parameters, multiply-adds per image), as the papers and their reference models give them
PUBLISHED = {
    "alexnet": ("61M (60,965,224 in Caffe's bvlc_alexnet)", "0.72G"),
    "googlenet": ("6.8M (the paper's Table 1, weights only)", "1.5G (Table 1)"),
    "vgg16": ("138M (138,357,544)", "15.5G"),
    "resnet18": ("11.7M (11,689,512 in torchvision)", "1.8G"),
    "resnet50": ("25.6M (25,557,032 in torchvision)", "4.1G (torchvision's v1.5; the paper's 3.8G strides the 1x1)"),
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


PRODUCTS = ("matmul", "conv", "conv_grad_x", "conv_grad_w")   # the families that are GEMMs


def gemms(name: str) -> dict:
    """GEMMs (matrix products and convolutions, forward and both adjoints) in one training step's
    graph at -O1 and at -O2, where GoogLeNet's sibling 1x1 convolutions merge (passes/inception.py)."""
    out = {}
    for level in (1, 2):
        g = dlc.build(ROOT / "examples" / "imagenet" / f"{name}.dln", opt_level=level).graph
        out[level] = sum(1 for n in g.nx if OPS[g.op(n)].family in PRODUCTS)
    return out


def step_times(name: str, batch: int = 8, repeat: int = 2) -> dict:
    """Seconds per training step at `batch` (the best of `repeat` after one warm-up step): dlc's
    interpreter (NumPy) and PyTorch eager, on the same network, data and optimizer (SGD with
    momentum 0.9), float32, with the threads each library takes by default."""
    import numpy as np
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    import torch_models
    m = dlc.compile(ROOT / "examples" / "imagenet" / f"{name}.dln", backend="interp", seed=0)
    net, size = torch_models.imagenet_net(name)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 3, size, size)).astype(np.float32)
    y = rng.integers(0, 1000, batch).astype(np.int32)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    xt, yt = torch.tensor(x), torch.tensor(y, dtype=torch.int64)

    def torch_step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()

    def best(fn):
        fn()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)
    return {"dlc": best(lambda: m.step(x=x, y=y)), "torch": best(torch_step)}


def _rss() -> int:
    """This process's resident bytes now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * __import__("os").sysconf("SC_PAGE_SIZE")


def peak_child(engine: str, name: str, batch: int) -> None:
    """In a fresh process: the high-water mark of resident memory over one SGD-with-momentum training
    step (params, gradients, momenta, activations, temporaries, the allocator's slack), less what
    the process held before the network was built; printed in bytes."""
    import resource
    import numpy as np
    sys.path.insert(0, str(ROOT / "benchmarks"))
    rng = np.random.default_rng(0)
    if engine == "torch":
        import torch
        import torch_models
        torch.set_num_threads(2)
        base = _rss()
        net, size = torch_models.imagenet_net(name)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        x = torch.tensor(rng.normal(size=(batch, 3, size, size)).astype(np.float32))
        y = torch.tensor(rng.integers(0, 1000, batch), dtype=torch.int64)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    else:
        base = _rss()
        m = dlc.compile(ROOT / "examples" / "imagenet" / f"{name}.dln", backend="interp", seed=0)
        size = m.graph.type("x").shape[-1]
        m.step(x=rng.normal(size=(batch, 3, size, size)).astype(np.float32),
               y=rng.integers(0, 1000, batch).astype(np.int32))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)


def peak_memory(name: str, batch: int = 8) -> dict:
    """Peak bytes of a training step at `batch`: the -O2 plan's buffers (what the generated CUDA
    allocates: params, optimizer state, inputs, temporaries), and the resident high-water mark of the
    interpreter and of PyTorch eager on the CPU, each measured in a fresh process (peak_child)."""
    import subprocess
    out = {"plan": dlc.build(ROOT / "examples" / "imagenet" / f"{name}.dln", opt_level=2).stats(batch)["peak_bytes"]}
    for engine in ("interp", "torch"):
        r = subprocess.run([sys.executable, __file__, "--peak-child", engine, name, str(batch)],
                           capture_output=True, text=True, check=True)
        out[engine] = int(r.stdout.split()[-1])
    return out


def emu_agreement(name: str, level: int = 2) -> dict:
    """One training step at batch 1 from the same weights on the interpreter in float64 (the
    reference), the interpreter in float32 and emu (float32 kernels, -O`level`). For each float32
    run: the loss's relative error, and the largest relative error of a param's update (the step's
    change, |got - ref| / max|ref| per param) and of a running statistic, against the reference;
    and the seconds each run took (emu's includes compiling the module with the host compiler).
    A float32 run's errors are float32's own where emu's and the float32 interpreter's agree."""
    import numpy as np
    path = ROOT / "examples" / "imagenet" / f"{name}.dln"
    rng = np.random.default_rng(0)
    size = 227 if name == "alexnet" else 224
    x = rng.normal(size=(1, 3, size, size)).astype(np.float32)
    y = rng.integers(0, 1000, 1).astype(np.int32)
    runs = {}
    for run, kw in (("f64", dict(backend="interp", float_dtype="float64")), ("interp", dict(backend="interp")),
                    ("emu", dict(backend="emu", opt_level=level))):
        t0 = time.perf_counter()
        m = dlc.compile(path, seed=0, **kw)
        before = {k: np.asarray(v, np.float64) for k, v in m.params.items()}
        loss = m.step(x=x, y=y)
        runs[run] = dict(seconds=time.perf_counter() - t0, loss=loss,
                         update={k: np.asarray(v, np.float64) - before[k] for k, v in m.params.items()},
                         buffers={k: np.asarray(v, np.float64) for k, v in m.buffers.items()})

    def worst(got: dict, want: dict) -> float:
        return max((float(np.abs(got[k] - want[k]).max() / max(np.abs(want[k]).max(), 1e-30)) for k in want),
                   default=0.0)
    ref = runs["f64"]
    out = {}
    for run in ("interp", "emu"):
        r = runs[run]
        out[run] = dict(seconds=r["seconds"], loss=abs(r["loss"] - ref["loss"]) / abs(ref["loss"]),
                        update=worst(r["update"], ref["update"]), buffers=worst(r["buffers"], ref["buffers"]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", action="store_true", help="also compile each to CUDA and NVRTC (minutes)")
    ap.add_argument("--gemms", action="store_true", help="also count the GEMMs of a training step at -O1 and -O2")
    ap.add_argument("--step", action="store_true", help="also time a training step at batch 8 against PyTorch")
    ap.add_argument("--emu", action="store_true", help="also run a batch-1 training step on emu against the interpreter")
    ap.add_argument("--memory", action="store_true", help="also: peak memory of a training step at batch 8 (plan, "
                    "interpreter, PyTorch)")
    ap.add_argument("--peak-child", nargs=3, metavar=("ENGINE", "NET", "BATCH"), help=argparse.SUPPRESS)
    ap.add_argument("--nets", default=",".join(NETS))
    a = ap.parse_args()
    if a.peak_child:
        peak_child(a.peak_child[0], a.peak_child[1], int(a.peak_child[2]))
        return 0
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
    if a.gemms:
        print(f"\n{'network':<10} {'GEMMs -O1':>10} {'GEMMs -O2':>10} {'saved':>6}   (a training step)")
        for name in nets:
            r = gemms(name)
            print(f"{name:<10} {r[1]:>10} {r[2]:>10} {r[1] - r[2]:>6}")
    if a.step:
        print(f"\n{'network':<10} {'dlc interp s':>12} {'PyTorch eager s':>15} {'ratio':>6}   (a training step, batch 8)")
        for name in nets:
            r = step_times(name)
            print(f"{name:<10} {r['dlc']:>12.2f} {r['torch']:>15.2f} {r['dlc'] / r['torch']:>6.2f}", flush=True)
    if a.memory:
        print(f"\n{'network':<10} {'dlc plan GB':>11} {'interp GB':>10} {'PyTorch GB':>11} {'plan/PyTorch':>12}"
              "   (a training step at batch 8, SGD with momentum; interp and PyTorch: resident peak)")
        for name in nets:
            r = peak_memory(name)
            print(f"{name:<10} {r['plan'] / 1e9:>11.2f} {r['interp'] / 1e9:>10.2f} {r['torch'] / 1e9:>11.2f} "
                  f"{r['plan'] / r['torch']:>12.2f}", flush=True)
    if a.emu:
        print(f"\n{'network':<10} {'run':<7} {'loss':>8} {'updates':>8} {'buffers':>8} {'seconds':>8}"
              "   (a training step at batch 1: relative errors against the interpreter in float64)")
        for name in nets:
            r = emu_agreement(name)
            for run in ("interp", "emu"):
                q = r[run]
                print(f"{name:<10} {run:<7} {q['loss']:>8.1e} {q['update']:>8.1e} {q['buffers']:>8.1e} "
                      f"{q['seconds']:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
