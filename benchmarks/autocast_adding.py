"""An oracle for the adding task at BF16: PyTorch's LSTM (benchmarks/torch_models.py's twin of
examples/adding_lstm.dln) trained in fp32 and under CPU autocast to bfloat16, with the example's
settings (read from its `minimize` and `train` lines: Adam lr 0.003, a tenth of it from step 2,500
on, gradients clipped to norm 1, batch 32, 30 epochs) on the example's data
and exactly the examples dlc's `fit` holds out (`Model.val_part`), scored as
benchmarks/precision_accuracy.py scores dlc: the share of held-out sequences whose prediction is
within 0.04 of the target. Not a timing.

    python benchmarks/autocast_adding.py [--seeds 3] [--epochs 30]

Each seed starts both runs from dlc's initial weights at that seed (`torch_models.load_dlc_params`)
and shuffles the same way (not dlc's order); the model under autocast is also evaluated under
autocast (as dlc evaluates a bf16 model at bf16).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, "") and str(ROOT.parent) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dlc  # noqa: E402
from dlc.runtime.train import split_indices  # noqa: E402

SOLVED = 0.04   # Hochreiter and Schmidhuber's criterion for the adding problem


def train(torch, net, x, y, order, epochs: int, batch: int, bf16: bool, opt_settings: dict):
    """Adam with the example's rate, betas, eps, step schedule and clipping (its `minimize` line)."""
    o = opt_settings
    assert o.get("schedule") == "step" and not o.get("warmup"), "the example's schedule is not the one this script knows"
    opt = torch.optim.Adam(net.parameters(), lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=o["step_size"], gamma=o["gamma"])   # per optimizer step
    for e in range(epochs):
        for i in range(0, len(order[e]), batch):
            idx = order[e][i:i + batch]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.mse_loss(net(x[idx]).float(), y[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), o["clip"])
            opt.step()
            sched.step()
    return net


def solved(torch, net, x, y, bf16: bool) -> float:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        pred = net(x).float()
    return 100.0 * float((torch.abs(pred - y) < SOLVED).float().mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    a = ap.parse_args(argv)
    import torch
    import torch_models as tm
    torch.set_num_threads(1)
    m = dlc.compile(ROOT / "examples" / "adding_lstm.dln", backend="interp")
    data = m.read_data()
    print(f"PyTorch {torch.__version__}, CPU autocast bfloat16; % of held-out sequences within {SOLVED} of the target")
    print(f"{'seed':>4} {'fp32':>8} {'bf16':>8} {'gap':>8}")
    gaps = []
    for seed in range(a.seeds):
        s = dataclasses.replace(m.settings(), seed=seed)
        fit_idx, val_idx = split_indices(data.n, s.val_split, s.seed, s.test_split)[:2]   # as fit splits
        xt, yt, xv, yv = (torch.from_numpy(data.feeds[k][i]) for i in (fit_idx, val_idx) for k in ("x", "y"))
        rng = np.random.default_rng(seed)
        order = [rng.permutation(len(xt)) for _ in range(a.epochs)]
        net = tm.build("adding_lstm")   # from dlc's initial weights at this seed
        init = dlc.compile(ROOT / "examples" / "adding_lstm.dln", backend="interp", seed=seed).params
        tm.load_dlc_params(net, {k: init[k] for k in net.dlc})
        scores = []
        for bf16 in (False, True):
            trained = train(torch, copy.deepcopy(net), xt, yt, order, a.epochs, s.batch, bf16, m.graph.meta.optimizer[1])
            scores.append(solved(torch, trained, xv, yv, bf16))
        gaps.append(scores[1] - scores[0])
        print(f"{seed:>4} {scores[0]:8.2f} {scores[1]:8.2f} {gaps[-1]:+8.2f}", flush=True)
    print(f"mean gap {np.mean(gaps):+.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
