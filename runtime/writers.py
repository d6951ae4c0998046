"""Output files of a run besides weights: metrics as JSON, predictions (.npz or .csv), and the
training curves as a PNG. Each is written atomically (runtime/files.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..ir.errors import DlcError
from .files import atomic_write

PREDICT_FORMATS = (".npz", ".csv")


def write_json(path, data: dict) -> None:
    """`data` as indented JSON (a metrics file), atomically, creating missing folders."""
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()), parents=True)


PLOT_SIZE = (10, 4)  # inches, at PLOT_DPI: a --plot PNG is 1000 x 400 pixels
PLOT_DPI = 100


def require_matplotlib():
    """matplotlib's Agg figure and canvas (no pyplot, no display), or a DlcError naming the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise DlcError(f"--plot needs matplotlib, which is not installed ({e}): pip install 'dlc[plot]'")
    return Figure, FigureCanvasAgg


def write_plot(path, history: list[dict], title: str) -> None:
    """Loss and accuracy per epoch, training and held-out, as a PNG (1000 x 400 pixels), written
    atomically. The accuracy panel is left out when the model reports no accuracy."""
    Figure, Canvas = require_matplotlib()
    from matplotlib.ticker import MaxNLocator
    epochs = [h["epoch"] for h in history]
    panels = [("loss", "loss")] + ([("accuracy", "accuracy")] if any("accuracy" in h for h in history) else [])
    fig = Figure(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    Canvas(fig)
    for i, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for k, style, name in ((key, "-o", "training"), (f"val_{key}", "--s", "held-out")):
            pts = [(e, h[k]) for e, h in zip(epochs, history) if k in h]
            if pts:
                ax.plot(*zip(*pts), style, markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(f"{title}: {label}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=PLOT_DPI), parents=True)


def write_predictions(path, outputs: dict, rule) -> None:
    """`.npz`: one array per output, named as in the model. `.csv`: a header and one row per
    example: for a classifier (integer labels against an [N, C] output) first `class`, the arg-max
    of that output, then every output's values flattened per example (`logits_0`, `logits_1`, ...)."""
    if Path(path).suffix.lower() == ".npz":
        atomic_write(path, lambda f: np.savez(f, **outputs), parents=True)
        return
    cols, names, fmt = [], [], []
    if rule and rule[2] == "argmax":
        cols.append(np.argmax(outputs[rule[0]], axis=1)[:, None])
        names.append("class")
        fmt.append("%d")
    for k, v in outputs.items():
        v = v.reshape(len(v), -1)
        cols.append(v)
        names += [k] if v.shape[1] == 1 else [f"{k}_{i}" for i in range(v.shape[1])]
        fmt += ["%.9g"] * v.shape[1]  # 9 digits: a float32 reads back exactly
    rows = np.concatenate([c.astype(np.float64) for c in cols], axis=1)
    atomic_write(path, lambda f: np.savetxt(f, rows, fmt=fmt, delimiter=",", header=",".join(names),
                                            comments=""), parents=True)
