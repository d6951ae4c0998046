"""The training loop: shuffled mini-batches, epochs, a held-out split, a progress bar, and
per-epoch loss and accuracy.

Accuracy is reported where the model has labels to compare with: an integer input `y : i32[N]`
against the arg-max of the first output `[N, C]`; or, for a single-unit output, an f32 target
input of the same shape holding 0/1 values, against the output thresholded at 0.5.

The loss of each step is read in batches of SYNC_EVERY steps (and at the end of an epoch): on the
cuda backend the steps in between run without the host waiting for the device.

NumPy's floating-point warnings (overflow, invalid value) are silenced while training and
evaluating: a loss that stops being finite ends training with one clear error instead.
"""
from __future__ import annotations

import hashlib
import math
import sys
import time

import numpy as np
from tqdm import tqdm

from ..ir.errors import DlcError
from .numerics import NumericsError


SYNC_EVERY = 25  # training steps per read of their losses: on a GPU, one wait for the device each

# the settings of a run (flags, the model's `train(...)`, `dlc.compile(seed=...)`): the default when
# neither gives one, and what each must be
RUN_DEFAULTS = {"epochs": 10, "batch": 32, "val_split": 0.0, "seed": 0}
SETTINGS = {
    "epochs": (lambda v: v >= 0, ">= 0"),
    "batch": (lambda v: v >= 1, ">= 1"),
    "val_split": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "seed": (lambda v: v >= 0, "an integer >= 0"),
}



EPOCH_LINES = 25   # a run of more than twice this many epochs prints about this many epoch lines

def setting_problem(key: str, value) -> str | None:
    """What is wrong with a setting (`must be >= 1`), or None when it is fine."""
    test, want = SETTINGS[key]
    number = isinstance(value, (int, np.integer)) or (key == "val_split" and isinstance(value, (float, np.floating)))
    if isinstance(value, (bool, np.bool_)) or not number or not test(value):
        return f"must be {want}"
    return None


def accuracy_rule(g, feeds: dict | None = None):
    """(output name, label input, kind) or None when the model has nothing to compare with.
    "argmax": i32 class labels against the output's largest entry; "threshold": targets of the
    output's own type, compared at 0.5, which counts only when the targets are 0 or 1 (with
    `feeds` given, other targets, such as a regression's, get no accuracy)."""
    if not g.meta.outputs:
        return None
    out_name, out = next(iter(g.meta.outputs.items()))
    t = g.type(out)
    # a label is an input the output does not depend on (x : f32[N, 1] is no target of out)
    labels = [n for n in g.inputs if n not in g.upstream([out])]
    for n in labels:
        it = g.type(n)
        if it.dtype == "i32" and it.rank == 1 and t.rank == 2 and it.shape[0] == t.shape[0]:
            return out_name, n, "argmax"
    for n in labels:
        if g.type(n) == t and t.rank >= 1 and (t.rank == 1 or t.shape[-1] == 1):
            if feeds is not None and n in feeds and not np.isin(feeds[n], (0.0, 1.0)).all():
                return None
            return out_name, n, "threshold"
    return None


def correct(rule, outputs, feeds) -> int:
    out_name, label, kind = rule
    o, y = outputs[out_name], feeds[label]
    if kind == "argmax":
        return int((np.argmax(o, axis=1) == y).sum())
    return int(((o > 0.5) == (y > 0.5)).sum())


def split(feeds: dict, n: int, val_split: float, seed: int):
    """A shuffled split into (train, val) by example."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_split))
    if val_split > 0 and n_val == 0:
        n_val = 1
    if n_val >= n:
        n_val = n - 1
    tr, va = order[n_val:], order[:n_val]
    return {k: v[tr] for k, v in feeds.items()}, {k: v[va] for k, v in feeds.items()}


@np.errstate(all="ignore")
def evaluate(model, feeds: dict, batch: int, rule):
    """Mean loss and accuracy over a data set, in batches, without changing the model."""
    n = len(next(iter(feeds.values())))
    total, right = 0.0, 0
    for i in range(0, n, batch):
        part = {k: v[i:i + batch] for k, v in feeds.items()}
        loss, outs = model.evaluate(part, checked=True)
        total += (loss or 0.0) * len(next(iter(part.values())))
        if rule:
            right += correct(rule, outs, part)
    return total / n, (right / n if rule else None)


def per_example_problem(g) -> str | None:
    """Why the outputs cannot be predicted one row per example, or None when they can."""
    for name, node in g.meta.outputs.items():
        shape = g.type(node).shape
        if not shape or not isinstance(shape[0], str):
            return f"output '{name}' : {g.type(node)} does not have one row per example"
    return None


@np.errstate(all="ignore")
def predict(model, feeds: dict, batch: int) -> dict[str, np.ndarray]:
    """Every output over the whole data set (checked arrays), computed `batch` examples at a time
    and joined along the first axis; outputs must have one row per example."""
    g = model.graph
    if per_example_problem(g):
        raise DlcError(per_example_problem(g))
    n = len(next(iter(feeds.values())))
    parts = []
    for i in range(0, n, batch):
        outs = model.evaluate({k: v[i:i + batch] for k, v in feeds.items()}, checked=True)[1]
        parts.append({k: np.asarray(v) for k, v in outs.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in g.meta.outputs}


def data_digest(feeds: dict) -> str:
    """A hash of the (checked) data, so that a checkpoint is resumed on the data it was made on."""
    h = hashlib.sha256()
    for k in sorted(feeds):
        a = np.ascontiguousarray(feeds[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def with_context(e: DlcError, where: str) -> DlcError:
    """A --check-numerics error (runtime/interp.py's NumericsError) told when it happened."""
    if isinstance(e, NumericsError):
        e.message += f" {where}"
        e.args = (e.message,)
    return e


@np.errstate(all="ignore")  # a diverging loss is reported once, as an error, not as NumPy warnings
def train(model, feeds: dict, n: int, epochs: int, batch: int, val_split: float, seed: int,
          progress: bool = True, out=None, checkpoint=None, resume: dict | None = None) -> dict:
    """Train `model` on `feeds` (checked arrays, `n` examples); returns the metrics.

    `checkpoint`: a folder; at the end of every epoch FOLDER/checkpoint.npz gets the params, the
    optimizer state, the epoch, `model.steps` and the state of the shuffling generator
    (runtime/data.py `save_checkpoint`). `resume`: the metadata of such a checkpoint whose params
    and state the model already holds: training goes on from its epoch, bit for bit as if it had
    never stopped."""
    from .weights import save_checkpoint
    out = out or sys.stdout  # looked up now: a caller (or a test) may have replaced it
    g = model.graph
    rule = accuracy_rule(g, feeds)
    tr, va = split(feeds, n, val_split, seed) if val_split > 0 else (feeds, {})
    n_tr = len(next(iter(tr.values())))
    rng = np.random.default_rng(seed + 1)  # the shuffling: the loop's only randomness (dropout is keyed by steps)
    history = []
    first = 1
    digest = data_digest(feeds) if checkpoint or resume else None
    if resume:
        rng.bit_generator.state = resume["rng"]
        history = list(resume["history"])
        first = resume["epoch"] + 1
        model.steps = resume["steps"]
    steps = math.ceil(n_tr / batch)
    # at most about EPOCH_LINES epoch lines (xor's 500 epochs printed 500): every k-th, the first and
    # the last; --metrics-json keeps every epoch
    every = 1 if epochs <= 2 * EPOCH_LINES else math.ceil(epochs / EPOCH_LINES)
    if every > 1 and epochs >= first:
        print(f"(every {every}th epoch of {epochs} is printed; --metrics-json keeps them all)", file=out, flush=True)
    t0 = time.perf_counter()
    for epoch in range(first, epochs + 1):
        order = rng.permutation(n_tr)
        total, right = 0.0, 0
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{epochs}", leave=False, disable=not progress,
                   file=sys.stderr, unit="batch", dynamic_ncols=True)
        pending = []  # steps whose loss (and outputs) the device may still be computing

        def drain():
            """Read the queued steps' losses, with one wait for the device (see SYNC_EVERY)."""
            nonlocal total, right
            for s, step, labels, count in pending:
                try:
                    loss, outs = step.result()
                except DlcError as e:
                    bar.close()
                    raise with_context(e, f"in epoch {epoch}, step {s + 1}")
                if not math.isfinite(loss):
                    bar.close()
                    raise DlcError(f"the loss became {loss} in epoch {epoch}, step {s + 1}: training diverged "
                                   f"(a learning rate too large, or an op outside its domain such as the log of 0: "
                                   f"--check-numerics names the first op and .dln line that made NaN or infinity)")
                total += loss * count
                if rule:
                    right += correct(rule, outs, labels)
            if pending:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            pending.clear()
        for s in bar:
            idx = order[s * batch:(s + 1) * batch]
            part = {k: v[idx] for k, v in tr.items()}
            try:
                step = model.train_step(part, fetch_outputs=rule is not None, checked=True, wait=False)
            except DlcError as e:
                bar.close()
                raise with_context(e, f"in epoch {epoch}, step {s + 1}")
            pending.append((s, step, {rule[1]: part[rule[1]]} if rule else None, len(idx)))
            if len(pending) >= SYNC_EVERY:
                drain()
        drain()
        bar.close()
        rec = {"epoch": epoch, "loss": total / n_tr}
        if rule:
            rec["accuracy"] = right / n_tr
        if va:
            try:
                rec["val_loss"], rec["val_accuracy"] = evaluate(model, va, batch, rule)
            except DlcError as e:
                raise with_context(e, f"evaluating the held-out data after epoch {epoch}")
            if rec["val_accuracy"] is None:
                del rec["val_accuracy"]
        history.append(rec)
        if every == 1 or epoch in (first, epochs) or epoch % every == 0:
            print("  ".join([f"epoch {epoch:>3}/{epochs}"] + [f"{k} {v:.4f}" for k, v in rec.items() if k != "epoch"]),
                  file=out, flush=True)
        if checkpoint:
            meta = {"model": g.meta.name, "epoch": epoch, "steps": model.steps, "seed": seed, "batch": batch,
                    "val_split": val_split, "examples": n, "data": digest, "rng": rng.bit_generator.state,
                    "history": history, "backend": model.backend}
            params, state = model.split_state()
            save_checkpoint(checkpoint, params, state, meta)
    metrics = {k: v for k, v in (history[-1] if history else {}).items() if k != "epoch"}
    metrics.update(epochs=epochs, backend=model.backend, seconds=round(time.perf_counter() - t0, 3),
                   train_examples=n_tr, val_examples=n - n_tr if va else 0, history=history)
    return metrics
