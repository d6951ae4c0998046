"""adding_lstm at --precision bf16 with `min_precision` floors on some of its products: does a
recurrence need more than BF16's 8 significant bits? (docs/precision.md, "Recurrences")

    python benchmarks/recurrence_floor.py                  # the example as it trains, seeds 0..4
    python benchmarks/recurrence_floor.py --constant       # at the constant rate it trained at before
    python benchmarks/recurrence_floor.py --seeds 2 bf16 state

Each row trains examples/adding_lstm.dln on the interpreter, at one precision, with the prelude's
LSTM copied into the model text and a floor of tf32 set on some of its products:
  fp32, tf32, bf16      the example at that precision (no floor)
  state                 bf16, the state product h @ wh at tf32 (forward and its derivative)
  state+input           bf16, the state product and the input projection x @ wx at tf32
  state+readout         bf16, the state product and the read-out's product at tf32
Figures: the share of held-out sequences within 0.04 of the target, in percent, as
benchmarks/precision_accuracy.py scores them, per seed and their mean. Not a timing.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, "") and str(ROOT.parent) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import dlc  # noqa: E402
from precision_accuracy import TOLERANCE, _Null, solved  # noqa: E402

EXAMPLE = ROOT / "examples" / "adding_lstm.dln"
FLOOR = ', min_precision = "tf32"'
ROWS = {"fp32": ("fp32", ()), "tf32": ("tf32", ()), "bf16": ("bf16", ()), "state": ("bf16", ("state",)),
        "state+input": ("bf16", ("state", "input")), "state+readout": ("bf16", ("state", "readout"))}


def _prelude_def(name: str) -> str:
    """The text of `def NAME(...) { ... }` in the prelude (its body holds no braces)."""
    text = (ROOT / "dsl" / "prelude.dln").read_text()
    m = re.search(rf"^def {name}\(.*?^}}\n", text, re.S | re.M)
    assert m, f"no def {name} in the prelude"
    return m.group(0)


def model_text(floors: tuple, constant: bool) -> str:
    """The example with the prelude's lstm, lstm_cell and linear copied in (as lstm_f, cell_f,
    linear_f) and FLOOR on the products named in `floors`."""
    cell = _prelude_def("lstm_cell").replace("def lstm_cell(", "def cell_f(")
    lstm = _prelude_def("lstm").replace("def lstm(", "def lstm_f(").replace("scan(lstm_cell,", "scan(cell_f,")
    linear = _prelude_def("linear").replace("def linear(", "def linear_f(")
    swaps = {"state": (cell, "h @ wh", "matmul(h, wh{})"), "input": (lstm, "x @ wx", "matmul(x, wx{})"),
             "readout": (linear, "x @ w ", "matmul(x, w{}) ")}
    parts = {"state": cell, "input": lstm, "readout": linear}
    for key, (_, old, new) in swaps.items():
        assert old in parts[key], (key, old)
        parts[key] = parts[key].replace(old, new.format(FLOOR if key in floors else ""))
    body = EXAMPLE.read_text().replace('data = "data/', f'data = "{ROOT / "examples" / "data"}/')
    body = body.replace("lstm(x, 32)", "lstm_f(x, 32)").replace("linear(last(h), 1)", "linear_f(last(h), 1)")
    if constant:
        body = re.sub(r", schedule = step, step_size = \d+, gamma = [\d.]+", "", body)
    assert "lstm_f(" in body and "linear_f(" in body and (not constant or "schedule =" not in body)
    return parts["state"] + parts["input"] + parts["readout"] + body


def score(text: str, precision: str, seed: int) -> float:
    m = dlc.compile(text, backend="interp", precision=precision, seed=seed)
    data = m.read_data()
    s = dataclasses.replace(m.settings(), seed=seed)
    metrics = m.fit(data, s, progress=False, out=_Null())
    return 100.0 * solved(m, data, s, TOLERANCE["adding_lstm"], metrics["val_loss"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", nargs="*", default=list(ROWS), help=f"of {', '.join(ROWS)}")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--constant", action="store_true", help="train at the constant rate 0.003 (no schedule)")
    a = ap.parse_args(argv)
    unknown = [r for r in a.rows if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown} (known: {', '.join(ROWS)})")
    print(f"adding_lstm on interp, {'constant rate' if a.constant else 'the example training'}; "
          "% of held-out sequences within 0.04 of the target")
    print(f"{'row':<15}" + "".join(f"{'seed ' + str(s):>9}" for s in range(a.seeds)) + f"{'mean':>9}")
    for r in a.rows:
        precision, floors = ROWS[r]
        text = model_text(floors, a.constant)
        figs = [score(text, precision, s) for s in range(a.seeds)]
        print(f"{r:<15}" + "".join(f"{f:>9.2f}" for f in figs) + f"{np.mean(figs):>9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
