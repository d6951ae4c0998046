"""Time the LeNet of examples/lenet.dln on the dlc NumPy interpreter against PyTorch eager (CPU).

    python benchmarks/bench_lenet.py                  # 1 and 2 threads; writes benchmarks/results/
    python benchmarks/bench_lenet.py --threads 1 --no-save
    python benchmarks/bench_lenet.py --profile        # plus the time of each op on the real shapes

The network (examples/lenet.dln): reshape to [N, 1, 8, 8], conv 1->16 3x3 pad 1, relu, maxpool 2,
conv 16->32 3x3 pad 1, relu, maxpool 2, flatten, dense 128->64 relu, linear 64->10, softmax
cross-entropy (mean over the batch), SGD with momentum 0.9 and lr 0.05; batch 64, float32, the
first 64 of the 8x8 digits.

Two computations are timed, each as dlc and as PyTorch:
    train  dlc: m.run(step roots, feeds checked once, training=True, commit=True, checked=True)
           torch: forward, F.cross_entropy, loss.backward(), torch.optim.SGD(momentum=0.9).step()
    infer  dlc: m.run(output roots, feeds checked once, checked=True)  (the forward of the outputs)
           torch: the forward under torch.inference_mode()

PyTorch starts from dlc's initial params (the same math: x @ w + b for the dense layers,
F.conv2d with dlc's kernels and biases) and, before anything is timed, both run a few training
steps from the same weights; the script prints the losses and the largest param difference.

Timing (benchmarks/_timing.py): warm-up, then blocks of consecutive steps taking turns (dlc
train, torch train, dlc infer, torch infer, then again); the median ms/step over blocks, and each
ratio as the median over rounds of the ratio of two blocks of the same round.

Threads: BLAS threads must be set before NumPy is imported, so every thread count runs in a
child process of this script (`--child N`) with OMP/OPENBLAS/MKL_NUM_THREADS=N and
torch.set_num_threads(N); the parent gathers their results into one table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _timing import environment, import_torch, paired, save_report, scattered, set_threads, time_blocks

HERE = os.path.dirname(os.path.abspath(__file__))
LENET = os.path.join(HERE, os.pardir, "examples", "lenet.dln")
DIGITS = os.path.join(HERE, os.pardir, "examples", "data", "digits.npz")
LR, MOMENTUM = 0.05, 0.9
TARGETS = {"train": 2.5, "infer": 1.5}  # dlc / torch, from the issue


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2", help="thread counts to run, comma-separated (default 1,2)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100, help="consecutive steps per timed block (default 100)")
    ap.add_argument("--blocks", type=int, default=15, help="timed blocks per implementation (default 15)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps before the blocks (default 20)")
    ap.add_argument("--check-steps", type=int, default=5, help="training steps compared before timing")
    ap.add_argument("--profile", action="store_true",
                    help="also time each op of the dlc training step on the real shapes")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/lenet-DATE.txt")
    ap.add_argument("--out", help="write the report here instead of benchmarks/results/lenet-DATE.txt")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one thread count, JSON on stdout
    return ap.parse_args(argv)


ARGS = _args() if __name__ == "__main__" else None
set_threads(ARGS.child if ARGS and ARGS.child else 1)

import numpy as np  # noqa: E402

import dlc  # noqa: E402


# -- the two models -------------------------------------------------------------------------

def data(batch):
    d = np.load(DIGITS)
    return d["x"][:batch], d["y"][:batch]


def torch_lenet(params: dict):
    """LeNet in PyTorch eager from dlc's params (dlc names): (train step, inference, params out)."""
    import torch
    F = torch.nn.functional
    names = list(params)
    ps = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in params.items()}
    opt = torch.optim.SGD(list(ps.values()), lr=LR, momentum=MOMENTUM)

    def forward(x):
        img = x.reshape(-1, 1, 8, 8)
        c1 = F.relu(F.conv2d(img, ps["c1.w"], ps["c1.b"].reshape(-1), padding=1))
        p1 = F.max_pool2d(c1, 2)
        c2 = F.relu(F.conv2d(p1, ps["c2.w"], ps["c2.b"].reshape(-1), padding=1))
        p2 = F.max_pool2d(c2, 2)
        h = F.relu(p2.flatten(1) @ ps["h.w"] + ps["h.b"])
        return h @ ps["logits.w"] + ps["logits.b"]

    def step(x, y):
        loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def infer(x):
        with torch.inference_mode():
            return forward(x)

    def params_out():
        return {k: ps[k].detach().numpy() for k in names}
    return step, infer, params_out


def check_agree(m, x, y, steps):
    """Train dlc and torch a few steps from the same weights: (dlc losses, torch losses, max |param diff|).
    dlc's state (params and velocities) is put back afterwards."""
    import torch
    start = m.state
    step, _, out = torch_lenet({k: v for k, v in start.items() if k in m.params})
    tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    dl = [m.step(x=x, y=y) for _ in range(steps)]
    tl = [float(step(tx, ty)) for _ in range(steps)]
    diff = max(float(np.abs(np.asarray(m.params[k]) - v).max()) for k, v in out().items())
    m.set_state(start)
    return dl, tl, diff


# -- one thread count (a child process) -------------------------------------------------------

def op_profile(m, roots, feeds, reps=200):
    """Time each node of the dlc program alone, its operands at hand: ms per step by op function."""
    import time
    be = m.engine
    steps = [st[:4] for st in be._program(tuple(roots))[0]]
    dims = be._dims(feeds)
    env = dict(be.values, **feeds)
    rows = {}
    for n, fn, args, attrs in steps:
        attrs = dict(attrs, dims=dims) if "dims" in attrs else attrs
        ops = [env[k] for k in args]
        env[n] = fn(*ops, **attrs)
        name = getattr(fn, "__name__", "?")
        name = f"{name}{'' if name != '<lambda>' else ' (' + m.graph.op(n) + ')'}"
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(*ops, **attrs)
        dt = (time.perf_counter() - t0) / reps
        shapes = " ".join("x".join(map(str, np.shape(o))) for o in ops)
        rows.setdefault(name, []).append((dt, n, shapes))
    lines = [f"{'op function':<26} {'calls':>5} {'ms/step':>8}   nodes (operand shapes) and ms each"]
    total = sum(dt for v in rows.values() for dt, *_ in v)
    for name, v in sorted(rows.items(), key=lambda kv: -sum(dt for dt, *_ in kv[1])):
        t = sum(dt for dt, *_ in v)
        detail = "; ".join(f"{n} ({s}) {dt * 1e3:.3f}" for dt, n, s in sorted(v, reverse=True)[:3])
        lines.append(f"{name:<26} {len(v):>5} {t * 1e3:8.3f}   {detail}")
    lines.append(f"{'sum of nodes':<26} {len(steps):>5} {total * 1e3:8.3f}")
    return lines


def child(a) -> int:
    n = a.child
    if not import_torch(n):
        print("bench_lenet needs PyTorch (pip install torch, CPU build)", file=sys.stderr)
        return 2
    import torch
    x, y = data(a.batch)
    m = dlc.compile(LENET, backend="interp")
    train_roots = m.roots("step")
    infer_roots = m.roots("outputs")
    train_feeds = m.check_inputs({"x": x, "y": y}, train_roots)  # checked once
    infer_feeds = m.check_inputs({"x": x}, infer_roots)
    dl, tl, diff = check_agree(m, x, y, a.check_steps)

    step, infer, _ = torch_lenet({k: v for k, v in m.state.items() if k in m.params})
    tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    fns = {"dlc train": lambda: m.run(train_roots, train_feeds, training=True, commit=True, checked=True),
           "torch train": lambda: step(tx, ty),
           "dlc infer": lambda: m.run(infer_roots, infer_feeds, checked=True),
           "torch infer": lambda: infer(tx)}
    t = time_blocks(fns, a.steps, a.blocks, a.warmup)
    res = {"threads": n, "torch_threads": torch.get_num_threads(),
           "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
           "nodes_train": len(m.engine._program(tuple(train_roots))[0]),
           "nodes_infer": len(m.engine._program(tuple(infer_roots))[0]),
           "dlc_losses": dl, "torch_losses": tl, "param_diff": diff,
           "times": {k: list(v[1]) for k, v in t.items()},
           "train_ratio": paired(t["dlc train"], t["torch train"]),
           "infer_ratio": paired(t["dlc infer"], t["torch infer"])}
    if a.profile:
        res["profile_train"] = op_profile(m, train_roots, train_feeds)
        res["profile_infer"] = op_profile(m, infer_roots, infer_feeds)
    print("RESULT " + json.dumps(res))
    return 0


# -- the parent: every thread count, one table -------------------------------------------------

def main(a) -> int:
    counts = [int(c) for c in a.threads.split(",") if c.strip()]
    results = []
    for n in counts:
        passed = ("batch", "steps", "blocks", "warmup", "check-steps")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", str(n)] + \
            [f"--{k}={getattr(a, k.replace('-', '_'))}" for k in passed] + (["--profile"] if a.profile else [])
        print(f"running {n} thread(s) ...", file=sys.stderr, flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            sys.stderr.write(p.stdout + p.stderr)
            return p.returncode
        results.append(json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))[7:]))

    out = environment(",".join(map(str, counts)), import_torch(counts[0]))
    out = [ln for ln in out if not ln.startswith("torch")] + \
        [f"torch      {__import__('torch').__version__} (intra-op threads = BLAS threads of each run, see table)"]
    out.append(f"model      examples/lenet.dln, batch {a.batch}, float32, sgd lr {LR} momentum {MOMENTUM}; "
               f"dlc interp -O1 ({results[0]['nodes_train']} nodes per training step, "
               f"{results[0]['nodes_infer']} per inference)")
    out.append(f"timing     {a.warmup} warm-up steps, then {a.blocks} blocks of {a.steps} consecutive steps "
               f"per implementation, taking turns; median ms/step")
    out.append("")

    def med(r, k):
        return float(np.median(r["times"][k])) * 1e3

    head = (f"{'threads':>7} {'dlc train':>10} {'torch train':>11} {'train ratio':>11} "
            f"{'dlc infer':>10} {'torch infer':>11} {'infer ratio':>11}")
    table = ["ms per step; ratios dlc/torch are medians over rounds of block-to-block ratios", head, "-" * len(head)]
    for r in results:
        table.append(f"{r['threads']:>7} {med(r, 'dlc train'):10.3f} {med(r, 'torch train'):11.3f} "
                     f"{r['train_ratio']:11.2f} {med(r, 'dlc infer'):10.3f} {med(r, 'torch infer'):11.3f} "
                     f"{r['infer_ratio']:11.2f}")
    table += ["", f"agreement (checked before timing, {a.check_steps} training steps from the same weights):"]
    for r in results:
        table.append(f"  {r['threads']} thread(s): loss dlc " + " ".join(f"{v:.6f}" for v in r["dlc_losses"]))
        table.append(f"  {'':11}loss torch " + " ".join(f"{v:.6f}" for v in r["torch_losses"]))
        dloss = max(abs(p - q) for p, q in zip(r["dlc_losses"], r["torch_losses"]))
        table.append(f"  {'':11}max |loss diff| {dloss:.1e}, max |param diff| {r['param_diff']:.1e}; "
                     f"threads BLAS {r['blas_threads']}, torch {r['torch_threads']}")
    table += ["", f"targets: train dlc/torch <= {TARGETS['train']}, inference dlc/torch <= {TARGETS['infer']}"]
    for r in results:
        spread = max(max(v) / min(v) for v in r["times"].values())
        table.append(f"  {r['threads']} thread(s): " + ", ".join(
            f"{k} {r[k + '_ratio']:.2f} {'met' if r[k + '_ratio'] <= lim else 'MISSED'}" for k, lim in TARGETS.items())
            + (f"  -- UNRELIABLE: block times spread {spread:.0f}-fold (more threads than free cores?)"
               if spread > 3 else ""))
    noisy = [f"{r['threads']}t {k}" for r in results for k, v in r["times"].items() if scattered((0, v))]
    if noisy:
        table.append(f"  warning: block times scatter by more than 20% ({', '.join(noisy)}): the machine was busy")
    table += ["", "block times (ms/step, each block of consecutive steps):"]
    for r in results:
        for k, v in r["times"].items():
            table.append(f"  {r['threads']}t {k:<12} " + " ".join(f"{t * 1e3:.3f}" for t in v))
    for r in results if a.profile else []:
        for what in ("train", "infer"):
            table += ["", f"dlc {what} step, {r['threads']} thread(s): each node timed alone on the real shapes "
                      f"(operands at hand), summed per op function:"] + r[f"profile_{what}"]
    print("\n".join(out + table), flush=True)
    if not a.no_save:
        print(f"wrote {save_report(out + table, a.out, 'lenet')}")
    return 0


if __name__ == "__main__":
    sys.exit(child(ARGS) if ARGS.child else main(ARGS))
