"""Weights files and checkpoints, every array checked against the model's params, model buffers
and optimizer state (ir/registry.py: what each source holds decides where it travels).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..ir.errors import file_error
from ..ir.graph import Graph
from ..ir.types import fmt_shape
from .files import atomic_write, read_npz


# A weights file holds one array per param, named after it (`w1`, `h1.w`), one per model buffer
# (running statistics, `bn.mean`: model state travels with the weights), and, when written with
# the optimizer state (`dlc run --save`, checkpoints), one array per state node of the optimizer
# named `state/NAME` (`state/w1.velocity`, `state/adam.one_minus_beta1_t`, `state/schedule.t`). A checkpoint
# is such a file plus `checkpoint/meta`, its JSON metadata as bytes (epoch, steps, the training
# loop's generator), all in ONE file replaced atomically: a reader sees an old or a new checkpoint,
# never half of one. With early stopping the checkpoint also holds the best epoch's weights and
# optimizer state, as `best/NAME` and `best/state/NAME`.
STATE_PREFIX = "state/"
BEST_PREFIX = "best/"
CHECKPOINT_FILE = "checkpoint.npz"
CHECKPOINT_META = "checkpoint/meta"
CHECKPOINT_FORMAT = 1


def save_weights(path, params: dict[str, np.ndarray], parents: bool = False,
                 state: dict[str, np.ndarray] | None = None) -> None:
    """Params as an .npz, one array per param name, and the optimizer state (when given) as
    `state/NAME` arrays, written atomically."""
    arrays = dict(params, **{STATE_PREFIX + k: v for k, v in (state or {}).items()})
    atomic_write(path, lambda f: np.savez(f, **arrays), parents)


def _extra_arrays(name: str) -> bool:
    """Arrays of a weights file that are not params: optimizer state and checkpoint metadata."""
    return name.startswith(STATE_PREFIX) or name.startswith("checkpoint/") or name.startswith(BEST_PREFIX)


def weight_names(g: Graph) -> list[str]:
    """What a weights file holds for model `g`: its params, then its model buffers."""
    return g.params + g.buffers


def _what(g: Graph, n: str) -> str:
    return "param" if n in g.params else "model buffer"


def _check_param(path, p: str, a: np.ndarray, t, what: str = "param") -> np.ndarray:
    if tuple(a.shape) != t.shape:
        raise file_error(path, f"{what} '{p}' should be {t}, found shape {fmt_shape(a.shape)}")
    if a.dtype.kind != "f":
        raise file_error(path, f"{what} '{p}' should hold floats, found {a.dtype}")
    if not np.isfinite(a).all():
        raise file_error(path, f"{what} '{p}' holds NaN or infinity")
    return a.astype(np.float32)


def load_weights(path, g: Graph, arrays: dict | None = None) -> dict[str, np.ndarray]:
    """Params and model buffers from an .npz, every name and shape checked against the model
    (`state/` and `checkpoint/` arrays are not weights: see `load_state`)."""
    arrays = read_npz(path) if arrays is None else arrays
    want = {p: g.type(p) for p in weight_names(g)}
    missing = [p for p in want if p not in arrays]
    extra = sorted(k for k in set(arrays) - set(want) if not _extra_arrays(k))
    hint = "; --load-partial (Model.load_partial) loads the params that match by name and shape"
    if missing:
        raise file_error(path, f"no array for {_what(g, missing[0])} '{missing[0]}' : {want[missing[0]]}"
                       + (f" ({len(missing)} params missing)" if len(missing) > 1 else "") + hint)
    if extra:
        raise file_error(path, f"array '{extra[0]}' is not a param of model {g.meta.name} "
                       f"(params: {', '.join(want)}){hint}")
    return {p: _check_param(path, p, arrays[p], t, _what(g, p)) for p, t in want.items()}


def load_state(path, g: Graph, arrays: dict | None = None) -> tuple[dict | None, str]:
    """The model's optimizer state from a weights file: (state, how) when the file holds every
    state array of the model (extra ones, of params this model freezes or of another optimizer,
    are ignored), else (None, why it starts fresh). A state array of the right name but the wrong
    shape, or not finite, is an error."""
    arrays = read_npz(path) if arrays is None else arrays
    have = {k[len(STATE_PREFIX):]: v for k, v in arrays.items() if k.startswith(STATE_PREFIX)}
    want = {n: g.type(n) for n in g.optimizer_state}
    if not want:
        return None, "the model keeps no optimizer state"
    if not have:
        return None, "the file holds no optimizer state"
    missing = [n for n in want if n not in have]
    if missing:
        return None, (f"the file's optimizer state is another optimizer's or schedule's: it has no "
                      f"'{STATE_PREFIX}{missing[0]}'" + (f" ({len(missing)} missing)" if len(missing) > 1 else ""))
    out = {}
    for n, t in want.items():
        a = have[n]
        if tuple(a.shape) != t.shape or a.dtype.kind != "f":
            raise file_error(path, f"optimizer state '{STATE_PREFIX}{n}' should be {t}, found "
                             f"{a.dtype} of shape {fmt_shape(a.shape)}")
        if not np.isfinite(a).all():
            raise file_error(path, f"optimizer state '{STATE_PREFIX}{n}' holds NaN or infinity")
        out[n] = a.astype(np.float32)
    return out, f"{len(out)} arrays"


def load_weights_by_name(path, g: Graph) -> tuple[dict[str, np.ndarray], dict]:
    """Partial loading, for transfer learning: every param (and model buffer: the running
    statistics of the layers that are loaded) whose name and shape match an array of the file (any
    model's weights), and a report: `loaded`, `not_in_file` (initialised as the model says),
    `not_in_model` (the file's arrays this model has no param for) and `misshaped` ((name, file
    shape, model shape), skipped). Loading nothing at all is an error."""
    arrays = read_npz(path)
    want = {p: g.type(p) for p in weight_names(g)}
    out, report = {}, {"loaded": [], "not_in_file": [], "not_in_model": [], "misshaped": []}
    for p, t in want.items():
        if p not in arrays:
            report["not_in_file"].append(p)
        elif tuple(arrays[p].shape) != t.shape:
            report["misshaped"].append((p, list(arrays[p].shape), list(t.shape)))
        else:
            out[p] = _check_param(path, p, arrays[p], t, _what(g, p))
            report["loaded"].append(p)
    report["not_in_model"] = sorted(k for k in arrays if k not in want and not _extra_arrays(k))
    if not out:
        raise file_error(path, f"no param of model {g.meta.name} matches an array of this file by name and shape "
                         f"(params: {', '.join(want)}; arrays: {', '.join(sorted(arrays)) or 'none'})")
    return out, report


def partial_report(report: dict) -> str:
    """`loaded 4 params (w1, b1, ...); not in the file: out.w (initialised); ...`, one line."""
    parts = [f"loaded {len(report['loaded'])} param{'s' * (len(report['loaded']) != 1)} "
             f"({', '.join(report['loaded'])})"]
    if report["not_in_file"]:
        parts.append(f"not in the file: {', '.join(report['not_in_file'])} (initialised)")
    if report["not_in_model"]:
        parts.append(f"in the file but not in the model: {', '.join(report['not_in_model'])}")
    if report["misshaped"]:
        parts.append("misshaped: " + ", ".join(f"{p} (file {fmt_shape(a)}, model {fmt_shape(b)})"
                                               for p, a, b in report["misshaped"]) + " (initialised)")
    return "; ".join(parts)


def save_checkpoint(folder, params: dict, state: dict, meta: dict, best: tuple | None = None) -> Path:
    """FOLDER/checkpoint.npz: params, `state/` arrays and the JSON `meta` (and early stopping's
    best (weights, state) as `best/` arrays, when given), in one file written through a temporary
    in FOLDER (fsync'd, renamed over the old checkpoint, the folder fsync'd), so a run killed at
    any moment leaves the previous checkpoint or the new one, whole."""
    folder = Path(folder)
    path = folder / CHECKPOINT_FILE
    blob = np.frombuffer(json.dumps(dict(meta, format=CHECKPOINT_FORMAT)).encode(), np.uint8)
    arrays = dict(params, **{STATE_PREFIX + k: v for k, v in state.items()}, **{CHECKPOINT_META: blob})
    if best:
        arrays.update({BEST_PREFIX + k: v for k, v in best[0].items()})
        arrays.update({BEST_PREFIX + STATE_PREFIX + k: v for k, v in best[1].items()})
    atomic_write(path, lambda f: np.savez(f, **arrays), parents=True)
    try:  # the rename itself reaches the disk
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # folders cannot be opened or fsync'd on some systems; the file itself is whole
    return path


def load_checkpoint(folder, g: Graph) -> tuple[dict, dict, dict]:
    """(params, state, meta) from FOLDER/checkpoint.npz (or a checkpoint file named directly),
    every param and state array checked against the model: resuming continues the same run, so
    the optimizer state must be this model's exactly."""
    folder = Path(folder)
    path = folder / CHECKPOINT_FILE if folder.is_dir() else folder
    if not path.exists():
        raise file_error(path, "no checkpoint here (dlc run --checkpoint DIR writes DIR/checkpoint.npz "
                         "at the end of every epoch)")
    arrays = read_npz(path)
    if CHECKPOINT_META not in arrays:
        raise file_error(path, "not a checkpoint: it has no 'checkpoint/meta' (a weights file? use --load)")
    try:
        meta = json.loads(arrays[CHECKPOINT_META].tobytes().decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise file_error(path, f"the checkpoint's metadata is not readable JSON ({e})")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise file_error(path, f"checkpoint format {meta.get('format')!r}, this dlc reads {CHECKPOINT_FORMAT}")
    if meta.get("model") != g.meta.name:
        raise file_error(path, f"the checkpoint is of model {meta.get('model')!r}, not {g.meta.name!r}")
    params = load_weights(path, g, arrays)
    want = {n: g.type(n) for n in g.optimizer_state}
    have = sorted(k[len(STATE_PREFIX):] for k in arrays if k.startswith(STATE_PREFIX))
    if sorted(want) != have:
        extra = [k for k in have if k not in want]
        missing = [k for k in want if k not in have]
        what = (f"it has optimizer state '{STATE_PREFIX}{extra[0]}' that this model does not keep" if extra
                else f"it has no optimizer state '{STATE_PREFIX}{missing[0]}'")
        raise file_error(path, f"the checkpoint does not match model {g.meta.name}'s optimizer: {what} "
                         f"(was the optimizer, its schedule or a freeze changed?)")
    state = load_state(path, g, arrays)[0] or {}
    best = {k[len(BEST_PREFIX):]: v for k, v in arrays.items() if k.startswith(BEST_PREFIX)}
    if best:  # early stopping's best epoch, checked as strictly as the rest
        meta["best_arrays"] = (load_weights(path, g, best), load_state(path, g, best)[0] or {})
    return params, state, meta
