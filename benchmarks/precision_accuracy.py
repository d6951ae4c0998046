"""Held-out accuracy of every training example at --precision fp32, tf32 and bf16 (issue 24: each
must train at tf32 and bf16 to within 0.5 points of its fp32 held-out accuracy).

    python benchmarks/precision_accuracy.py                   # every training example, interp
    python benchmarks/precision_accuracy.py mlp lenet         # some of them
    python benchmarks/precision_accuracy.py --backend emu     # the generated kernels, on the CPU
    python benchmarks/precision_accuracy.py --seeds 5 inception   # the mean over seeds 0..4

Each example trains as `dlc run` trains it (its own `train(...)` settings, seed and data), once per
precision, and the table gives the held-out figure at the last epoch:
  acc     a classifier's held-out accuracy, in percent;
  <0.04   the adding tasks (regressions): the share of held-out sequences whose prediction is within
          0.04 of the target, in percent (Hochreiter and Schmidhuber 1997 count a sequence of the
          adding problem as solved when its absolute error is below 0.04), computed from the
          trained model's predictions on exactly the examples fit held out (`Model.val_part`);
          their held-out loss follows on a line of its own, for information;
  loss    the held-out loss (sine, a regression of a noisy target; charlm, a language model).
The gap is tf32 or bf16 minus fp32, in points (a percentage) or as a ratio (loss); `ok` when every
percentage gap is at least -0.5 points and every judged loss at most 1.05 times fp32's (adding_elman
is printed, not judged: NOT_JUDGED). With
`--seeds K` each figure is the mean over K runs with seeds 0..K-1 (the initial weights, the
held-out split and the shuffling all follow the seed): one run's accuracy moves by more than half
a point from seed to seed at fp32 already; the figures of each seed and each seed's gap follow,
with the mean gap's standard error. The results are copied into docs/precision.md by hand.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, "") and str(ROOT.parent) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT.parent))

import numpy as np  # noqa: E402

import dlc  # noqa: E402

PRECISIONS = ("fp32", "tf32", "bf16")
LIMIT = 0.5  # points of held-out accuracy a lower precision may lose
LOSS_LIMIT = 1.05  # the most a judged held-out loss may be, as a multiple of fp32's
# regressions judged by the share of held-out examples predicted within this absolute error
TOLERANCE = {"adding_elman": 0.04, "adding_lstm": 0.04}
BASE = {"transfer_finetune": "transfer_base"}  # fine-tunes the hidden layers that example trains
# Printed, not judged: the Elman net does not learn the adding task (it is there to show that the
# LSTM does). Each run either stays where predicting the mean leaves it (a held-out loss of 1/6, the
# variance of the target) or partly leaves it, at fp32 as at the other precisions, so its figure moves
# by up to 26 points from seed to seed and by up to 12 between two fp32 runs that differ only in the
# order of their sums (interp and emu at one seed): no affordable number of seeds resolves half a point
# (docs/precision.md, "Accuracy").
NOT_JUDGED = {"adding_elman"}


def examples() -> list[str]:
    """The examples that train (they have a `minimize` and their own data)."""
    return sorted(p.stem for p in (ROOT / "examples").glob("*.dln") if "minimize" in p.read_text())


def held_out(name: str, precision: str, backend: str = "interp", seed: int | None = None) -> dict:
    """Train examples/NAME.dln as `dlc run` does at `precision` (with `seed`: as `--seed`); its
    final metrics. An example that fine-tunes another's weights (BASE) starts from that example
    trained the same way, as its comment's two commands do (`--save`, then `--load-partial`)."""
    def model(example):
        m = dlc.compile(ROOT / "examples" / f"{example}.dln", backend=backend, precision=precision, seed=seed)
        return m, (m.settings() if seed is None else dataclasses.replace(m.settings(), seed=seed))

    m, s = model(name)
    if name in BASE:
        base, bs = model(BASE[name])
        base.fit(base.read_data(), bs, progress=False, out=_Null())
        with tempfile.TemporaryDirectory() as tmp:
            base.save(Path(tmp) / "base.npz")
            m.load_partial(Path(tmp) / "base.npz")
    data = m.read_data()
    metrics = m.fit(data, s, progress=False, out=_Null())
    if name in TOLERANCE:
        metrics["val_solved"] = solved(m, data, s, TOLERANCE[name], metrics["val_loss"])
    return metrics


def solved(m, data, settings, tol: float, val_loss: float) -> float:
    """The share of the examples fit held out whose output `pred` is within `tol` of their target
    `y`, from the trained model's predictions. Their mean squared error must be fit's held-out loss
    (`val_loss`, the model's mse): the same examples, the same weights."""
    part = m.val_part(data, settings)
    pred, target = m.predict(part, settings.batch)["pred"], part.feeds["y"]
    err = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    mse = float(np.mean(err ** 2))
    assert abs(mse - val_loss) <= 1e-5 * val_loss, (mse, val_loss)  # float32 sums in another order
    return float(np.mean(np.abs(err) < tol))


def figure(metrics: dict) -> tuple[str, float]:
    """("acc", percent) for a classifier; ("<0.04", percent solved) for a regression judged by a
    tolerance (TOLERANCE); else ("loss", held-out loss); the training set's figure where the model
    holds nothing out (xor)."""
    acc = metrics.get("val_accuracy", metrics.get("accuracy"))
    if acc is not None:
        return "acc", 100.0 * acc
    if "val_solved" in metrics:
        return "<0.04", 100.0 * metrics["val_solved"]
    return "loss", metrics.get("val_loss", metrics["loss"])


def gap_ok(kind: str, base: float, value: float) -> bool:
    return value <= LOSS_LIMIT * base if kind == "loss" else value - base >= -LIMIT


def row(name: str, kind: str, values: list, tail: str) -> str:
    """One line of the table: the figures at fp32, tf32 and bf16, the two gaps, then `tail`."""
    if kind == "loss":
        figs, gaps = [f"{v:>9.4g}" for v in values], [f"{v / values[0]:>8.3f}x" for v in values[1:]]
    else:
        figs, gaps = [f"{v:>9.2f}" for v in values], [f"{v - values[0]:>+9.2f}" for v in values[1:]]
    return f"{name:<18} {kind:<5} " + " ".join(figs) + " " + " ".join(gaps) + tail


class _Null:
    def write(self, s):
        return len(s)

    def flush(self):
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="examples (default: every one that trains)")
    ap.add_argument("--backend", default="interp", choices=("interp", "emu", "cuda"))
    ap.add_argument("--seeds", type=int, default=0, metavar="K",
                    help="the mean over seeds 0..K-1 (default: one run, with the example's own seed)")
    args = ap.parse_args(argv)
    names = args.names or examples()
    seeds = list(range(args.seeds)) if args.seeds > 0 else [None]
    print(f"backend {args.backend}; held-out figures at the last epoch: accuracy in % (acc), % within 0.04 "
          f"of the target (<0.04), loss"
          + (f"; means over seeds 0..{args.seeds - 1}" if args.seeds > 0 else ""))
    print(f"{'example':<18} {'kind':<5} " + " ".join(f"{p:>9}" for p in PRECISIONS)
          + f" {'tf32 gap':>9} {'bf16 gap':>9} {'seconds':>8}  ok")
    bad = 0
    for name in names:
        t0 = time.perf_counter()
        figs, losses, per_seed = {}, {}, {}
        for p in PRECISIONS:
            metrics = [held_out(name, p, args.backend, seed) for seed in seeds]
            runs = [figure(m) for m in metrics]
            per_seed[p] = [v for _, v in runs]
            figs[p] = (runs[0][0], sum(v for _, v in runs) / len(runs))
            losses[p] = sum(m["val_loss"] for m in metrics) / len(metrics) if runs[0][0] == "<0.04" else None
        kind, base = figs["fp32"]
        ok = all(gap_ok(kind, base, figs[p][1]) for p in ("tf32", "bf16"))
        bad += not ok and name not in NOT_JUDGED
        print(row(name, kind, [figs[p][1] for p in PRECISIONS], f" {time.perf_counter() - t0:>8.1f}  "
                  + ("not judged" if name in NOT_JUDGED else "ok" if ok else "NO")), flush=True)
        if not ok and name not in NOT_JUDGED and len(seeds) == 1:
            print(f"  one run is one draw: the bar is read on the mean over seeds 0..4 where one seed is past it "
                  f"(--seeds 5 {name}; docs/decisions.md)", flush=True)
        if losses["fp32"] is not None:
            print(row("  held-out loss", "loss", [losses[p] for p in PRECISIONS], "   (not judged)"), flush=True)
        if len(seeds) > 1 and kind != "loss":
            for p in PRECISIONS:
                print(f"  seed by seed {p}: " + " ".join(f"{v:.2f}" for v in per_seed[p]), flush=True)
            for p in ("tf32", "bf16"):
                gaps = np.subtract(per_seed[p], per_seed["fp32"])
                print(f"  {p} gap by seed: " + " ".join(f"{v:+.2f}" for v in gaps)
                      + f"; mean {gaps.mean():+.2f}, standard error {gaps.std(ddof=1) / np.sqrt(len(gaps)):.2f}",
                      flush=True)
    print("every judged figure within its bar of fp32's (0.5 points, or a loss 1.05 times fp32's)" if not bad
          else f"{bad} example(s) fall short of fp32's by more than the bar")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
