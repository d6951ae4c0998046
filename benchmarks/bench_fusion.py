"""What -O2 (fusion, in-place updates, memory planning) does to a training step, and how compile
time grows with depth. Counts and sizes are exact; times are medians of repeated runs.

    python benchmarks/bench_fusion.py                 # everything, a table per part
    python benchmarks/bench_fusion.py --skip-emu      # without the emulator step times

1. Per example, one training step at batch 128: kernels in the module, launches, FLOPs, bytes
   moved and peak memory at -O0 and -O2 (`Module.stats`), next to the number of ATen ops PyTorch
   eager dispatches for the same step (counted with a TorchDispatchMode on the CPU, where torch
   is installed: each is at least one kernel launch on a GPU).
2. Compile time of an MLP of 10, 100 and 1000 hidden layers (width 32) through to CUDA source,
   the kernels in its module, the module's size and its NVRTC compile time (where cuda-bindings
   is installed). Goal: 100 layers under 0.5 s, 1000 under 10x that; at most 60 kernels.
3. Emulator step time of mlp and lenet at -O0 and -O2 (batch 32), the ratio in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

import dlc  # noqa: E402
from dlc.codegen import generate  # noqa: E402
from dlc.runtime.diff import synth_feeds  # noqa: E402

EXAMPLES = ("mlp", "logreg", "xor", "deep_mlp", "lenet", "inception")
BATCH = 128


def deep_mlp(layers: int, width: int = 32) -> str:
    body = "".join(f"    h{i} = relu(dense(h{i - 1}, {width}))\n" for i in range(1, layers + 1))
    return (f"model deep{layers} {{\n    input x : f32[N, 64]\n    input y : i32[N]\n    h0 = x\n{body}"
            f"    logits = dense(h{layers}, 10)\n    loss = softmax_xent(logits, y)\n    output logits\n"
            f"    minimize loss with sgd(lr = 0.01, momentum = 0.9)\n}}\n")


def torch_ops(name: str) -> int | None:
    """ATen ops PyTorch eager dispatches for one training step of the example (CPU)."""
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
        import torch_models as tm
    except ImportError:
        return None

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))
    m = dlc.compile(ROOT / "examples" / f"{name}.dln", backend="interp")
    net = tm.build(name)
    tm.load_dlc_params(net, m.params)
    opt = tm.optimizer(net, m.graph.meta.optimizer)
    x, y = tm.torch_batch(name, synth_feeds(m.graph, BATCH))
    loss_fn = tm.loss_fn(name, net)
    for _ in range(2):  # optimizer state exists from the second step on: count that one
        Count.n = 0
        with Count():
            opt.zero_grad(set_to_none=True)
            loss_fn(x, y).backward()
            opt.step()
    return Count.n


def part_steps() -> list[str]:
    head = (f"{'example':<10} {'-O':>2} {'kernels':>7} {'launches':>8} {'MFLOP':>8} {'MB moved':>9} "
            f"{'peak MB':>8}   {'torch ops':>9}")
    lines = [f"one training step at batch {BATCH} (-O0 against -O2; torch: eager ATen ops, CPU)", head,
             "-" * len(head)]
    for name in EXAMPLES:
        ops = torch_ops(name)
        for level in (0, 2):
            s = generate(dlc.compile(ROOT / "examples" / f"{name}.dln", backend="interp", opt_level=level).graph
                         ).stats({"N": BATCH})
            lines.append(f"{name:<10} {level:>2} {s['kernels']:>7} {s['launches']:>8} {s['flops'] / 1e6:>8.2f} "
                         f"{s['bytes_moved'] / 1e6:>9.2f} {s['peak_bytes'] / 1e6:>8.2f}   "
                         f"{(ops if ops is not None else 'n/a') if level == 2 else '':>9}")
    return lines


def part_compile(reps: int) -> list[str]:
    try:
        from dlc.codegen.nvrtc import compile_ptx, nvrtc_available
        nvrtc = nvrtc_available()[0]
    except ImportError:
        nvrtc = False
    head = f"{'layers':>6} {'-O':>2} {'compile s':>9} {'kernels':>7} {'launches':>8} {'source KB':>9} {'NVRTC s':>8}"
    lines = ["compile time through to CUDA source (median of "
             f"{reps}; NVRTC once, sm_90)", head, "-" * len(head)]
    for layers in (10, 100, 1000):
        src = deep_mlp(layers)
        for level in (1, 2):
            times = []
            for _ in range(reps if layers < 1000 else 1):
                t0 = time.perf_counter()
                mod = dlc.build(src, opt_level=level).module()
                times.append(time.perf_counter() - t0)
            nv = "n/a"
            if nvrtc:
                t0 = time.perf_counter()
                compile_ptx(mod.source, "sm_90")
                nv = f"{time.perf_counter() - t0:.2f}"
            lines.append(f"{layers:>6} {level:>2} {statistics.median(times):>9.3f} {len(mod.kernels):>7} "
                         f"{len(mod.launches):>8} {len(mod.source) / 1024:>9.0f} {nv:>8}")
    return lines


def part_emu(reps: int) -> list[str]:
    from dlc.runtime.emu import emu_available
    ok, why = emu_available()
    if not ok:
        return [f"emu step time: skipped ({why})"]
    lines = ["emulator step time at batch 32 (median ms; the generated CUDA on the CPU)",
             f"{'example':<10} {'-O0 ms':>8} {'-O2 ms':>8} {'-O0/-O2':>8}"]
    for name in ("mlp", "lenet"):
        med = {}
        for level in (0, 2):
            m = dlc.compile(ROOT / "examples" / f"{name}.dln", backend="emu", opt_level=level)
            feeds = synth_feeds(m.graph, 32)
            for _ in range(3):
                m.step(**feeds)
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                m.step(**feeds)
                ts.append(time.perf_counter() - t0)
            med[level] = statistics.median(ts) * 1e3
        lines.append(f"{name:<10} {med[0]:>8.2f} {med[2]:>8.2f} {med[0] / med[2]:>8.2f}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-emu", action="store_true")
    args = ap.parse_args(argv)
    out = part_steps() + [""] + part_compile(args.reps)
    if not args.skip_emu:
        out += [""] + part_emu(max(args.reps, 10))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
