"""Evaluating a model on a data set (`dlc eval`): the loss, the accuracy, each class's precision,
recall, F1 and support, and the confusion matrix (rows: the true class, columns: the predicted one).

Classes are what `train.accuracy_rule` compares: for integer labels against an [N, C] output,
the C classes and the output's arg-max; for 0/1 targets of a single-unit output, the classes 0
and 1 and the output thresholded at 0.5 (every element counts, as for accuracy).
"""
from __future__ import annotations

import numpy as np

from ..ir.errors import DlcError
from ..ir.ops import out_of_range
from .train import accuracy_rule


def _ratio(a: int, b: int):
    return a / b if b else None  # undefined (no prediction of the class, or no example of it): None


@np.errstate(all="ignore")
def evaluate_classes(model, feeds: dict, batch: int, targets=None) -> dict:
    """Metrics over every example of `feeds` (checked arrays), `batch` examples per forward pass,
    in inference mode, changing nothing: `examples`, `loss` (when the model has one), and for a
    model with labels `accuracy`, `classes`, `per_class` (class, precision, recall, f1, support;
    precision or recall is None where its denominator is 0), `macro` (the means over the classes
    where each is defined) and `confusion` (a list of rows, one per true class). `targets`: class
    labels from the data file for a model that declares no labels input (an imported classifier,
    datafiles.data_targets), compared with its first output when that is [N, C]."""
    g = model.graph
    rule = accuracy_rule(g, feeds)
    if rule is None and targets is not None and g.meta.outputs:
        out_name, out = next(iter(g.meta.outputs.items()))
        if g.type(out).rank == 2:
            rule = (out_name, "y (the data file's)", "argmax")
            feeds = {**feeds, rule[1]: targets}  # sliced below with the inputs; never fed to the model
    if rule is None and not g.meta.loss:
        raise DlcError(f"model {g.meta.name} has neither a loss nor labels to evaluate against (integer labels "
                       "i32[N] for an [N, C] output, or 0/1 targets for a single-unit output; for a model "
                       "without a labels input, such as an imported one, an integer array y in the .npz)")
    n = len(next(iter(feeds.values())))
    total = 0.0
    counts = None
    classes = None
    for i in range(0, n, batch):
        part = {k: v[i:i + batch] for k, v in feeds.items()}
        size = len(next(iter(part.values())))
        loss, outs = model.evaluate({k: v for k, v in part.items() if k in g.inputs}, checked=True)
        total += (loss or 0.0) * size
        if rule is None:
            continue
        out_name, label, kind = rule
        o, y = np.asarray(outs[out_name]), part[label]
        if kind == "argmax":
            if classes is None:
                classes = o.shape[1]
            pred, true = np.argmax(o, axis=1), y.astype(np.int64)
            bad = out_of_range(true, classes)
            if bad is not None:
                raise DlcError(f"labels '{label}': {bad} is out of range for the {classes} classes of "
                               f"output '{out_name}'")
        else:
            classes = 2
            pred, true = (o > 0.5).reshape(-1).astype(np.int64), (y > 0.5).reshape(-1).astype(np.int64)
        c = np.bincount(true * classes + pred, minlength=classes * classes).reshape(classes, classes)
        counts = c if counts is None else counts + c
    metrics: dict = {"examples": n}
    if g.meta.loss:
        metrics["loss"] = total / n
    if rule is None:
        return metrics
    cm = counts
    right = int(np.trace(cm))
    metrics["accuracy"] = right / int(cm.sum())
    per = []
    for k in range(classes):
        tp, predicted, support = int(cm[k, k]), int(cm[:, k].sum()), int(cm[k, :].sum())
        p, r = _ratio(tp, predicted), _ratio(tp, support)
        f1 = None if p is None or r is None else (2 * p * r / (p + r) if p + r else 0.0)
        per.append({"class": k, "precision": p, "recall": r, "f1": f1, "support": support})
    macro = {}
    for key in ("precision", "recall", "f1"):
        vals = [row[key] for row in per if row[key] is not None]
        macro[key] = sum(vals) / len(vals) if vals else None
    metrics.update(classes=classes, output=rule[0], labels=rule[1], per_class=per, macro=macro,
                   confusion=cm.astype(int).tolist())
    return metrics


def report_lines(metrics: dict, scored_on: str | None = None) -> list[str]:
    """The metrics as `dlc eval` prints them; `scored_on` says what the examples are
    (api.py `scored_on`), else just their number."""
    shown = [f"{k} {metrics[k]:.4f}" for k in ("loss", "accuracy") if k in metrics]
    lines = ["  ".join(shown) + f" on {scored_on or str(metrics['examples']) + ' examples'}"]
    if "confusion" not in metrics:
        return lines

    def fmt(v):
        return f"{v:>9.4f}" if v is not None else f"{'-':>9}"
    lines.append("")
    lines.append(f"{'class':>7} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
    for row in metrics["per_class"]:
        lines.append(f"{row['class']:>7} {fmt(row['precision'])} {fmt(row['recall'])} {fmt(row['f1'])} "
                     f"{row['support']:>8}")
    m = metrics["macro"]
    lines.append(f"{'macro':>7} {fmt(m['precision'])} {fmt(m['recall'])} {fmt(m['f1'])} "
                 f"{sum(r['support'] for r in metrics['per_class']):>8}")
    cm = metrics["confusion"]
    width = max(4, len(str(max(max(r) for r in cm))) + 1)
    lines.append("")
    lines.append("confusion matrix (rows: true class, columns: predicted class):")
    lines.append(f"{'':>7}" + "".join(f"{k:>{width}}" for k in range(len(cm))))
    for k, row in enumerate(cm):
        lines.append(f"{k:>7}" + "".join(f"{v:>{width}}" for v in row))
    return lines
