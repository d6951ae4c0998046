"""What 16-bit storage (precision bf16, codegen/storage.py) saves, from the launch plan alone: for
each model, the peak bytes of every buffer and the bytes a training step's launches move, at fp32
and at bf16, and their ratio (bf16 / fp32). Nothing runs; the plan's byte counts are
`Build.stats(batch)` (codegen/plan.py `Module.stats`: two bytes an element of a 16-bit buffer).

    python benchmarks/bf16_storage.py                         # the examples at batch 128, -O0 and -O2
    python benchmarks/bf16_storage.py --imagenet --batch 32   # the full-size nets (examples/imagenet), -O2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, "") and str(ROOT.parent) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT.parent))

import dlc  # noqa: E402


def measure(path: Path, opt_level: int, batch: int) -> dict:
    out = {}
    for precision in ("fp32", "bf16"):
        b = dlc.build(path, precision=precision, opt_level=opt_level)
        st = b.stats(batch=batch)
        out[precision] = (st["peak_bytes"], st["bytes_moved"])
        out["half"] = len(b.module().half)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="models (default: every training example, or every imagenet net)")
    ap.add_argument("--imagenet", action="store_true", help="the full-size nets of examples/imagenet, at -O2")
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args(argv)
    folder = ROOT / "examples" / ("imagenet" if a.imagenet else "")
    paths = sorted(p for p in folder.glob("*.dln") if "minimize" in p.read_text())
    if a.names:
        paths = [p for p in paths if p.stem in a.names]
    levels = (2,) if a.imagenet else (0, 2)
    print(f"batch {a.batch}; MB = 1e6 bytes; ratio = bf16 / fp32")
    print(f"{'model':18} {'opt':>3} {'16-bit':>6} {'peak fp32':>10} {'peak bf16':>10} {'ratio':>6} "
          f"{'moved fp32':>11} {'moved bf16':>11} {'ratio':>6}")
    for p in paths:
        for level in levels:
            r = measure(p, level, a.batch)
            (pf, mf), (pb, mb) = r["fp32"], r["bf16"]
            print(f"{p.stem:18} -O{level} {r['half']:6} {pf / 1e6:10.2f} {pb / 1e6:10.2f} {pb / pf:6.3f} "
                  f"{mf / 1e6:11.2f} {mb / 1e6:11.2f} {mb / mf:6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
