"""Time one training step on the dlc NumPy interpreter against hand-written NumPy and PyTorch eager.

    python benchmarks/bench_interp.py                 # 1 BLAS/torch thread, writes benchmarks/results/
    python benchmarks/bench_interp.py --threads 2 --no-save

Networks: MLPs with ReLU hidden layers, softmax cross-entropy (mean over the batch) and plain SGD,
at batch 128, float32. All three implementations start from the same weights and are checked to
agree (after a few steps) before anything is timed.

Timing is done in blocks: after a warm-up, each implementation runs `--steps` consecutive
training steps per block, `--blocks` times; the per-step time of a block is its total divided by
`--steps`, and the median over blocks is reported. Implementations are never interleaved
call-by-call, but their blocks take turns (dlc, numpy, torch, dlc, ...) so that a busy spell of
the machine lands on all of them rather than on one.

Columns:
    dlc      m.run(step roots, checked feeds, commit=True): the interpreter, no checks of the arrays
    dlc api  m.step(x=..., y=...): plus the API's feed checking
    numpy    a hand-written forward, backward and SGD update in NumPy (same math, float32)
    torch    PyTorch eager on the CPU: forward, loss.backward(), torch.optim.SGD.step()

The per-node overhead is measured on the same kind of graph at tiny sizes (batch 1, layers of 4
units), where the arithmetic costs almost nothing: time per step divided by the number of
interpreter steps (graph nodes executed), and the excess over a hand-written NumPy step of the
same tiny net, divided by the same count.
"""
from __future__ import annotations

import argparse
import sys

from _timing import environment, import_torch, paired, save_report, scattered, set_threads, time_blocks


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="BLAS / OpenMP / torch intra-op threads (default 1)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=200, help="consecutive steps per timed block (default 200)")
    ap.add_argument("--blocks", type=int, default=15, help="timed blocks per implementation (default 15)")
    ap.add_argument("--warmup", type=int, default=50, help="untimed steps before the blocks (default 50)")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if it imports")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/interp-DATE.txt")
    ap.add_argument("--out", help="write the report here instead of benchmarks/results/interp-DATE.txt")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of the dlc step of each network")
    return ap.parse_args(argv)


ARGS = _args() if __name__ == "__main__" else None
set_threads(ARGS.threads if ARGS else 1)

import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import dlc  # noqa: E402

NETWORKS = [("mlp 64-128-10", (64, 128, 10)), ("mlp 784-256-128-10", (784, 256, 128, 10))]
TINY = (4, 4, 4, 2)  # for the per-node overhead; same depth as the larger net


# -- the model, three ways -------------------------------------------------------------------

def dln_source(sizes, lr) -> str:
    """A .dln MLP: relu hidden layers, softmax_xent, plain sgd."""
    lines = ["model bench_mlp {", f"    input x : f32[N, {sizes[0]}]", "    input y : i32[N]"]
    for i, (a, b) in enumerate(zip(sizes, sizes[1:]), 1):
        lines += [f"    param w{i} : f32[{a}, {b}] = he", f"    param b{i} : f32[{b}] = zeros"]
    h = "x"
    last = len(sizes) - 1
    for i in range(1, last):
        lines.append(f"    h{i} = relu({h} @ w{i} + b{i})")
        h = f"h{i}"
    lines += [f"    logits = {h} @ w{last} + b{last}", "    loss = softmax_xent(logits, y)",
              "    output logits", f"    minimize loss with sgd(lr = {lr!r})", "}"]
    return "\n".join(lines) + "\n"


class NumpyMLP:
    """The same training step written by hand: forward, backward by the transpose rule, SGD."""

    def __init__(self, params: dict, nlayers: int, lr: float):
        self.w = [params[f"w{i}"].copy() for i in range(1, nlayers + 1)]
        self.b = [params[f"b{i}"].copy() for i in range(1, nlayers + 1)]
        self.lr = np.float32(lr)

    def step(self, x, y):
        w, b, lr = self.w, self.b, self.lr
        acts = [x]                                   # inputs of each layer
        for i in range(len(w) - 1):
            acts.append(np.maximum(acts[-1] @ w[i] + b[i], 0))
        logits = acts[-1] @ w[-1] + b[-1]
        n = len(y)
        rows = np.arange(n)
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(s[:, 0]) - z[rows, y])
        d = e / s                                    # softmax
        d[rows, y] -= 1
        d *= np.float32(1.0 / n)                     # d loss / d logits
        for i in reversed(range(len(w))):
            dw = acts[i].T @ d
            db = d.sum(axis=0)
            if i:                                    # no gradient for the input x
                d = (d @ w[i].T) * (acts[i] > 0)
            w[i] -= lr * dw
            b[i] -= lr * db
        return loss

    def params(self) -> dict:
        out = {}
        for i, (w, b) in enumerate(zip(self.w, self.b), 1):
            out[f"w{i}"], out[f"b{i}"] = w, b
        return out


def torch_model(params: dict, nlayers: int, lr: float, threads: int):
    import torch
    torch.set_num_threads(threads)
    ps = []
    for i in range(1, nlayers + 1):
        ps += [torch.tensor(params[f"w{i}"], requires_grad=True), torch.tensor(params[f"b{i}"], requires_grad=True)]
    opt = torch.optim.SGD(ps, lr=lr)
    F = torch.nn.functional

    def step(x, y):
        h = x
        for i in range(nlayers - 1):
            h = F.relu(h @ ps[2 * i] + ps[2 * i + 1])
        loss = F.cross_entropy(h @ ps[-2] + ps[-1], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def params_out():
        return {f"{'wb'[j % 2]}{j // 2 + 1}": p.detach().numpy() for j, p in enumerate(ps)}
    return step, params_out


def data(sizes, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch).astype(np.int32)
    return x, y


def check_agree(m, sizes, x, y, lr, torch_ok, threads, steps=3):
    """Run a few steps of each implementation from the same weights; return the max abs param difference."""
    start = {k: np.array(v) for k, v in m.params.items()}
    ref = NumpyMLP(start, len(sizes) - 1, lr)
    for _ in range(steps):
        m.step(x=x, y=y)
        ref.step(x, y)
    diffs = {"numpy": max(float(np.abs(np.asarray(m.params[k]) - v).max()) for k, v in ref.params().items())}
    if torch_ok:
        import torch
        step, out = torch_model(start, len(sizes) - 1, lr, threads)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        for _ in range(steps):
            step(tx, ty)
        diffs["torch"] = max(float(np.abs(np.asarray(m.params[k]) - v).max()) for k, v in out().items())
    m.params.update(start)  # back to the start for timing (state of plain sgd is the params alone)
    return diffs


def bench_network(sizes, a, torch_ok):
    x, y = data(sizes, a.batch)
    m = dlc.compile(dln_source(sizes, a.lr), backend="interp")
    roots = m.roots("step")
    be = m.engine
    nodes = len(be._program(tuple(roots))[0])  # interpreter steps per training step
    diffs = check_agree(m, sizes, x, y, a.lr, torch_ok, a.threads)
    res = {"nodes": nodes, "agree": diffs}
    feeds = {"x": x, "y": y}
    start = {k: np.array(v) for k, v in m.params.items()}
    ref = NumpyMLP(start, len(sizes) - 1, a.lr)
    fns = {"dlc": lambda: m.run(roots, feeds, training=True, commit=True, checked=True), "dlc_api": lambda: m.step(x=x, y=y),
           "numpy": lambda: ref.step(x, y)}
    if torch_ok:
        import torch
        step, _ = torch_model(start, len(sizes) - 1, a.lr, a.threads)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        fns["torch"] = lambda: step(tx, ty)
    res.update(time_blocks(fns, a.steps, a.blocks, a.warmup))
    return m, roots, feeds, res


def per_node(a):
    """Interpreter cost per executed node, on the tiny net at batch 1.

    Three numbers: the whole step; a replay of the same program's NumPy calls with operands
    already looked up (what the nodes cost by themselves); a hand-written NumPy step of the net.
    """
    x, y = data(TINY, 1)
    m = dlc.compile(dln_source(TINY, a.lr), backend="interp")
    roots = m.roots("step")
    be = m.engine
    # the interpreter's program (a private structure): one (node, fn, operand names, attrs, ...)
    # per step, in order
    steps = [st[:4] for st in be._program(tuple(roots))[0]]
    feeds = {"x": x, "y": y}
    env = dict(be.values, **feeds)
    for n, fn, args, attrs in steps:  # one evaluation, to have every operand at hand
        env[n] = fn(*[env[k] for k in args], **attrs)
    calls = [(fn, [env[k] for k in args], attrs) for _, fn, args, attrs in steps]

    def replay():
        for fn, args, attrs in calls:
            fn(*args, **attrs)
    ref = NumpyMLP({k: np.array(v) for k, v in m.params.items()}, len(TINY) - 1, a.lr)
    t = time_blocks({"dlc": lambda: m.run(roots, feeds, training=True, commit=True, checked=True), "replay": replay,
                     "numpy": lambda: ref.step(x, y)}, max(a.steps, 1000), a.blocks, a.warmup)
    return {"nodes": len(steps), **{k: v[0] for k, v in t.items()}}


def main(a) -> int:
    torch_ok = import_torch(a.threads, a.no_torch)
    out = environment(a.threads, torch_ok)
    out.append(f"timing     batch {a.batch}, float32, {a.warmup} warm-up steps, then {a.blocks} blocks of "
               f"{a.steps} consecutive steps per implementation; median ms/step")
    out.append("")
    print("\n".join(out), flush=True)

    rows, agree = [], []
    prof_targets = []
    for name, sizes in NETWORKS:
        m, roots, feeds, r = bench_network(sizes, a, torch_ok)
        prof_targets.append((name, m, roots, feeds))
        rows.append((name, r))
        agree.append(f"  {name}: after 3 steps from the same weights, max |param diff| dlc vs "
                     + ", ".join(f"{k} {v:.1e}" for k, v in r["agree"].items()))
    pn = per_node(a)

    def ms(v):
        return f"{v[0] * 1e3:9.3f}" if v else f"{'-':>9}"

    def ratio(p, q):
        return f"{paired(p, q):7.2f}" if p and q else f"{'-':>7}"

    head = (f"{'network':<20} {'nodes':>5} {'dlc ms':>9} {'dlc api':>9} {'numpy ms':>9} {'torch ms':>9} "
            f"{'dlc/np':>7} {'dlc/torch':>9} {'api/dlc':>7}")
    table = ["ratios are medians over rounds of block-to-block ratios (blocks of a round run back to back)",
             head, "-" * len(head)]
    for name, r in rows:
        table.append(f"{name:<20} {r['nodes']:>5} {ms(r['dlc'])} {ms(r['dlc_api'])} {ms(r['numpy'])} "
                     f"{ms(r.get('torch'))} {ratio(r['dlc'], r['numpy'])} {ratio(r['dlc'], r.get('torch')):>9} "
                     f"{ratio(r['dlc_api'], r['dlc'])}")
    n = pn["nodes"]
    table += ["", f"per-node cost (mlp {'-'.join(map(str, TINY))} at batch 1, {n} interpreter nodes per step):",
              f"  dlc step              {pn['dlc'] * 1e6:7.1f} us  = {pn['dlc'] * 1e6 / n:5.2f} us/node, "
              f"NumPy calls included",
              f"  replay of its calls   {pn['replay'] * 1e6:7.1f} us  = {pn['replay'] * 1e6 / n:5.2f} us/node, "
              f"the NumPy calls alone",
              f"  interpreter overhead  {(pn['dlc'] - pn['replay']) * 1e6:7.1f} us  = "
              f"{(pn['dlc'] - pn['replay']) * 1e6 / n:5.2f} us/node (step minus replay)",
              f"  hand-written NumPy    {pn['numpy'] * 1e6:7.1f} us  (excess of dlc over it: "
              f"{(pn['dlc'] - pn['numpy']) * 1e6 / n:.2f} us/node)",
              "", "agreement (checked before timing):"] + agree
    table += ["", "targets: dlc/numpy <= 1.30, dlc/torch <= 1.25, a few us per node"]
    for name, r in rows:
        q = paired(r["dlc"], r["numpy"])
        s = f"  {name}: dlc/numpy {q:.3f} {'met' if q <= 1.30 else 'MISSED'}"
        if r.get("torch"):
            q = paired(r["dlc"], r["torch"])
            s += f", dlc/torch {q:.3f} {'met' if q <= 1.25 else 'MISSED'}"
        table.append(s)
    q = (pn["dlc"] - pn["replay"]) * 1e6 / n
    table.append(f"  interpreter overhead {q:.2f} us/node {'met' if q <= 5 else 'MISSED'} (taking 'a few' as <= 5)")
    noisy = [f"{name} {k}" for name, r in rows for k in ("dlc", "dlc_api", "numpy", "torch")
             if r.get(k) and scattered(r[k])]
    if noisy:
        table.append(f"  warning: block times scatter by more than 20% ({', '.join(noisy)}): the machine was "
                     f"busy; the medians are less sure than usual")
    table.append("")
    table.append("block times (ms/step, each block of consecutive steps):")
    for name, r in rows:
        for k in ("dlc", "dlc_api", "numpy", "torch"):
            if r.get(k):
                table.append(f"  {name:<20} {k:<8} " + " ".join(f"{t * 1e3:.3f}" for t in r[k][1]))
    print("\n".join(table), flush=True)
    out += table

    for name, m, roots, feeds in prof_targets if a.profile else []:
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(a.steps):
            m.run(roots, feeds, training=True, commit=True, checked=True)
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(12)
        body = s.getvalue().replace(str(Path(dlc.__file__).parent.parent) + "/", "").rstrip() + "\n"
        text = (f"\ncProfile of {a.steps} dlc steps ({name}), by own time (NumPy ufuncs called directly, "
                f"such as add or multiply, are not listed: their time is Interpreter.run's own):\n" + body)
        print(text)
        out.append(text)

    if not a.no_save:
        print(f"wrote {save_report(out, a.out, 'interp')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
