"""The training loop: shuffled mini-batches, epochs, a held-out split, a progress bar, and
per-epoch loss and accuracy.

Accuracy is reported where the model has labels to compare with: an integer input `y : i32[N]`
against the arg-max of the first output `[N, C]`; or, for a single-unit output, an f32 target
input of the same shape holding 0/1 values, against the output thresholded at 0.5.

The loss of each step is read in batches of SYNC_EVERY steps (and at the end of an epoch): on the
cuda backend the steps in between run without the host waiting for the device.

NumPy's floating-point warnings (overflow, invalid value) are silenced while training and
evaluating: a loss that stops being finite ends training with one clear error instead.

Data parallel (a model with a communicator, `model.comm`: docs/runtime.md): every rank draws the
same shuffled order and takes its contiguous share of each global batch (`Communicator.bounds`),
with its fraction of the batch as the step's `share`; a rank whose share is empty (a batch of
fewer examples than ranks) runs the step on the batch's first example with share 0, so it adds
nothing and waits for no one. The loss and accuracy are summed over the ranks once per epoch; the
model buffers (running statistics) are rank 0's from the end of each epoch on, before anything
evaluates; only rank 0 prints, shows progress and writes checkpoints. An error on one rank ends
every rank (MPI_Abort), naming the rank.
"""
from __future__ import annotations

import hashlib
import math
import sys
import time

import numpy as np
from tqdm import tqdm

from ..ir.errors import DlcError
from ..ir.optim import MONITORS
from .numerics import NumericsError


SYNC_EVERY = 25  # training steps per read of their losses: on a GPU, one wait for the device each

# the settings of a run (flags, the model's `train(...)`, `dlc.compile(seed=...)`): the default when
# neither gives one, and what each must be
RUN_DEFAULTS = {"epochs": 10, "batch": 32, "val_split": 0.0, "seed": 0, "patience": 0, "monitor": MONITORS[0],
                "test_split": 0.0}
SETTINGS = {
    "epochs": (lambda v: v >= 0, ">= 0"),
    "batch": (lambda v: v >= 1, ">= 1"),
    "val_split": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "patience": (lambda v: v >= 0, "an integer >= 0 (0: no early stopping)"),
    "monitor": (lambda v: v in MONITORS, f"one of {', '.join(MONITORS)}"),
    "test_split": (lambda v: 0 <= v < 1, "in [0, 1)"),
}
FRACTIONS = ("val_split", "test_split")
TEST_SPLIT_SEED = 20231  # the test split's own generator: the same examples whatever --seed says

EPOCH_LINES = 25   # a run of more than twice this many epochs prints about this many epoch lines


def setting_problem(key: str, value) -> str | None:
    """What is wrong with a setting (`must be >= 1`), or None when it is fine."""
    test, want = SETTINGS[key]
    if key == "monitor":
        return None if isinstance(value, str) and test(value) else f"must be {want}"
    number = isinstance(value, (int, np.integer)) or (key in FRACTIONS and isinstance(value, (float, np.floating)))
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


def _count(n: int, fraction: float) -> int:
    """round(n * fraction) examples, at least 1 for a fraction above 0."""
    k = int(round(n * fraction))
    return max(k, 1) if fraction > 0 else 0


def holdout_indices(n: int, test_split: float) -> np.ndarray:
    """The examples (sorted indices) of the test split: round(n * test_split), at least 1, drawn
    by a generator of its own (TEST_SPLIT_SEED), so they depend only on n and test_split: every
    seed, `dlc eval` and `dlc run --epochs 0` hold out the same ones."""
    if test_split <= 0:
        return np.zeros(0, np.int64)
    order = np.random.default_rng(TEST_SPLIT_SEED).permutation(n)
    return np.sort(order[:_count(n, test_split)])


def split_indices(n: int, val_split: float, seed: int, test_split: float = 0.0):
    """(train, val, test) example indices: the test split first (`holdout_indices`), then from the
    other examples a shuffled validation split of round(n * val_split) (at least 1) drawn from
    `seed`; the rest trains. Both fractions are of the whole file."""
    te = holdout_indices(n, test_split)
    rest = np.setdiff1d(np.arange(n), te) if len(te) else np.arange(n)
    order = rest[np.random.default_rng(seed).permutation(len(rest))]
    n_val = _count(n, val_split)
    if n_val >= len(rest):
        if len(te):
            raise DlcError(f"test_split = {test_split:g} and val_split = {val_split:g} leave no example of {n} "
                           f"to train on")
        n_val = n - 1
    return order[n_val:], order[:n_val], te


def split(feeds: dict, n: int, val_split: float, seed: int, test_split: float = 0.0):
    """A split of the examples into (train, val, test) feeds (`split_indices`)."""
    return tuple({k: v[i] for k, v in feeds.items()} for i in split_indices(n, val_split, seed, test_split))


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


class EarlyStopping:
    """Early stopping on a held-out metric (`monitor`, val_loss or val_accuracy): an epoch improves
    when its value is strictly better than the best so far (lower loss, higher accuracy); after
    `patience` epochs in a row without improvement training stops. The best epoch's params, model
    buffers and optimizer state are kept (copies) so that the run ends with them: the final
    metrics, --save, --predict and export are the best epoch's. Checkpoints carry all of it."""

    def __init__(self, monitor: str, patience: int):
        self.monitor, self.patience = monitor, patience
        self.best, self.best_epoch, self.wait, self.stopped = None, 0, 0, 0
        self.arrays = None  # (weights, optimizer state) after the best epoch

    def update(self, model, rec: dict) -> None:
        v = rec[self.monitor]
        better = self.best is None or (v > self.best if self.monitor == "val_accuracy" else v < self.best)
        if better:
            self.best, self.best_epoch, self.wait = v, rec["epoch"], 0
            weights, state = model.split_state()
            self.arrays = ({k: np.array(a) for k, a in weights.items()}, {k: np.array(a) for k, a in state.items()})
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped = rec["epoch"]

    def meta(self) -> dict:
        return {"monitor": self.monitor, "best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped": self.stopped}

    def load(self, meta: dict, arrays) -> None:
        self.best, self.best_epoch = meta["best"], meta["best_epoch"]
        self.wait, self.stopped = meta["wait"], meta["stopped"]
        self.arrays = arrays

    def restore(self, model) -> None:
        weights, state = self.arrays
        model.set_state(weights)
        model.set_state(state)


@np.errstate(all="ignore")  # a diverging loss is reported once, as an error, not as NumPy warnings
def train(model, feeds: dict, n: int, epochs: int, batch: int, val_split: float, seed: int,
          progress: bool = True, out=None, checkpoint=None, resume: dict | None = None, test_split: float = 0.0,
          patience: int = 0, monitor: str = MONITORS[0]) -> dict:
    """Train `model` on `feeds` (checked arrays, `n` examples); returns the metrics. A model with a
    communicator trains data-parallel (this module's doc).

    `test_split`: a fraction held out from training and validation (`split_indices`), scored once
    at the end (`test_loss`, `test_accuracy`, `test_examples`). `patience` > 0: early stopping
    (`EarlyStopping`) on `monitor`; the run ends with the best epoch's weights and metrics.
    `checkpoint`: a folder; at the end of every epoch FOLDER/checkpoint.npz gets the params, the
    optimizer state, the epoch, `model.steps`, the state of the shuffling generator and early
    stopping's (runtime/weights.py `save_checkpoint`). `resume`: the metadata of such a checkpoint
    whose params and state the model already holds: training goes on from its epoch, bit for bit
    as if it had never stopped."""
    out = out or sys.stdout  # looked up now: a caller (or a test) may have replaced it
    comm = getattr(model, "comm", None)
    if comm is not None:
        try:
            return _train(model, feeds, n, epochs, batch, val_split, seed, progress and comm.rank == 0,
                          out if comm.rank == 0 else _Quiet(), checkpoint if comm.rank == 0 else None,
                          resume, test_split, patience, monitor, comm)
        except DlcError as e:
            if comm.size > 1 and not getattr(e, "everywhere", False):
                fatal(comm, e)  # the other ranks would wait for this one in the next all-reduce
            raise
    return _train(model, feeds, n, epochs, batch, val_split, seed, progress, out, checkpoint, resume, test_split,
                  patience, monitor, None)


def agree(model, comm, digest: str, settings: dict) -> None:
    """Refuse, on every rank alike, a data-parallel run whose ranks differ in what must be the same:
    one allgather of hashes, the first difference named (DlcError with `everywhere` set)."""
    from ..ir.text import print_ir
    ir = "\n".join(line.split("  @ ")[0] for line in print_ir(model.graph).splitlines())  # without paths
    state = hashlib.sha256()
    for k, v in sorted(model.state.items()):
        state.update(k.encode() + np.ascontiguousarray(v).tobytes())
    facts = {  # what -> (what it is, the value compared)
        "version": ("the dlc version", getattr(model, "version", None)),
        "model": ("the compiled model (a hash of its IR: every rank must run the same .dln with the same flags)",
                  hashlib.sha256(ir.encode()).hexdigest()[:16]),
        "backend": ("the backend", f"{model.backend} {model.float_dtype}"),
        "weights": ("the weights it starts from (--seed, --load, --resume)", state.hexdigest()[:16]),
        "data": ("the data (--data and its options)", digest),
        "settings": ("the run settings", ", ".join(f"{k} {v}" for k, v in settings.items())),
    }
    ranks = comm.allgather({k: v for k, (_, v) in facts.items()})
    for r, theirs in enumerate(ranks):
        for k, (what, mine) in facts.items():
            if theirs.get(k) != ranks[0].get(k):
                e = DlcError(f"data parallel: rank {r} differs from rank 0 in {what}: {theirs.get(k)} on rank {r}, "
                             f"{ranks[0].get(k)} on rank 0")
                e.everywhere = True  # every rank found it: none waits for another
                raise e


class _Quiet:
    """Where the lines of a rank other than 0 go: nowhere."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def fatal(comm, e: DlcError) -> None:
    """An error on one rank of a data-parallel run: said on stderr with the rank, then every rank ends."""
    comm.abort(2, f"rank {comm.rank} of {comm.size}: {e}")


def _train(model, feeds, n, epochs, batch, val_split, seed, progress, out, checkpoint, resume, test_split,
           patience, monitor, comm) -> dict:
    from .weights import save_checkpoint
    g = model.graph
    rule = accuracy_rule(g, feeds)
    if val_split > 0 or test_split > 0:
        tr, va, te = split(feeds, n, val_split, seed, test_split)
    else:
        tr, va, te = feeds, {}, {}
    va = va if val_split > 0 else {}
    te = te if test_split > 0 else {}
    if patience and not va:
        raise DlcError("early stopping (patience) needs a held-out split to watch: give val_split")
    if patience and monitor == "val_accuracy" and not rule:
        raise DlcError(f"monitor = val_accuracy: model {g.meta.name} has no accuracy (no labels to compare its "
                       f"output with); monitor val_loss")
    early = EarlyStopping(monitor, patience) if patience else None
    n_tr = len(next(iter(tr.values())))
    rng = np.random.default_rng(seed + 1)  # the shuffling: the loop's only randomness (dropout is keyed by steps)
    history = []
    first = 1
    digest = data_digest(feeds) if checkpoint or resume or comm else None
    if comm is not None:
        agree(model, comm, digest, dict(epochs=epochs, batch=batch, val_split=val_split, seed=seed,
                                         test_split=test_split, patience=patience, monitor=monitor))
    if resume:
        rng.bit_generator.state = resume["rng"]
        history = list(resume["history"])
        first = resume["epoch"] + 1
        model.steps = resume["steps"]
        if early and resume.get("early"):
            if resume["early"]["monitor"] != monitor:
                raise DlcError(f"the checkpoint's early stopping watched {resume['early']['monitor']}, not {monitor}: "
                               f"resuming continues that run")
            early.load(resume["early"], resume.get("best_arrays"))
    steps = math.ceil(n_tr / batch)
    # at most about EPOCH_LINES epoch lines (xor's 500 epochs printed 500): every k-th, the first and
    # the last; --metrics-json keeps every epoch
    every = 1 if epochs <= 2 * EPOCH_LINES else math.ceil(epochs / EPOCH_LINES)
    if every > 1 and epochs >= first:
        print(f"(every {every}th epoch of {epochs} is printed; --metrics-json keeps them all)", file=out, flush=True)
    t0 = time.perf_counter()
    for epoch in range(first, epochs + 1):
        if early and early.stopped:
            break
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
                if labels is not None:
                    right += correct(rule, outs, labels)
            if pending:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            pending.clear()
        for s in bar:
            idx = order[s * batch:(s + 1) * batch]
            share, count = None, len(idx)
            if comm is not None:  # this rank's share of the global batch
                lo, hi = comm.bounds(len(idx))
                share, count = (hi - lo) / len(idx), hi - lo
                idx = idx[lo:hi] if hi > lo else idx[:1]  # none of its own: one example, weighted 0
            part = {k: v[idx] for k, v in tr.items()}
            try:
                step = model.train_step(part, fetch_outputs=rule is not None, checked=True, wait=False, share=share)
            except DlcError as e:
                bar.close()
                raise with_context(e, f"in epoch {epoch}, step {s + 1}")
            pending.append((s, step, {rule[1]: part[rule[1]]} if rule and count else None, count))
            if len(pending) >= SYNC_EVERY:
                drain()
        drain()
        bar.close()
        if comm is not None:
            total, right = comm.sum([total, right])  # every rank's share of the epoch
            if g.buffers:  # running statistics: rank 0's on every rank, before anything evaluates
                model.set_state(comm.broadcast(model.buffers))
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
        if early:
            early.update(model, rec)
        if every == 1 or epoch in (first, epochs) or epoch % every == 0 or (early and early.stopped):
            print("  ".join([f"epoch {epoch:>3}/{epochs}"] + [f"{k} {v:.4f}" for k, v in rec.items() if k != "epoch"]),
                  file=out, flush=True)
        if checkpoint:
            meta = {"model": g.meta.name, "epoch": epoch, "steps": model.steps, "seed": seed, "batch": batch,
                    "val_split": val_split, "test_split": test_split, "examples": n, "data": digest,
                    "rng": rng.bit_generator.state, "history": history, "backend": model.backend,
                    "ranks": comm.size if comm else 1, "precision": g.meta.precision}
            if early:
                meta["early"] = early.meta()
            params, state = model.split_state()
            save_checkpoint(checkpoint, params, state, meta, best=early.arrays if early else None)
    final = history[-1] if history else {}
    if early and early.arrays is not None:
        final = next(r for r in history if r["epoch"] == early.best_epoch)
        if early.stopped:
            print(f"stopped early at epoch {early.stopped}: {monitor} has not improved for {early.patience} "
                  f"epoch{'s' * (early.patience != 1)}; restoring epoch {early.best_epoch}", file=out, flush=True)
        elif early.best_epoch != history[-1]["epoch"]:
            print(f"epoch {early.best_epoch} had the best {monitor} ({early.best:.4f}); restoring its weights",
                  file=out, flush=True)
        if early.best_epoch != history[-1]["epoch"]:
            early.restore(model)
    metrics = {k: v for k, v in final.items() if k != "epoch"}
    metrics.update(epochs=epochs, backend=model.backend, seconds=round(time.perf_counter() - t0, 3),
                   train_examples=n_tr, val_examples=len(next(iter(va.values()))) if va else 0, history=history)
    if early:
        metrics.update(monitor=monitor, patience=early.patience, best_epoch=early.best_epoch,
                       stopped_epoch=early.stopped or None, epochs_run=history[-1]["epoch"] if history else 0)
    if te:
        try:
            metrics["test_loss"], acc = evaluate(model, te, batch, rule)
        except DlcError as e:
            raise with_context(e, "evaluating the test split")
        if acc is not None:
            metrics["test_accuracy"] = acc
        metrics["test_examples"] = len(next(iter(te.values())))
    return metrics
