"""Reading data and weights files, checked against the model's declared inputs and params.

Every problem is a `DlcError` that names the file and the array: a missing file, a file that is
not an `.npz`, a missing input, a wrong shape or dtype, NaN or infinity in the data, a batch
size that differs between inputs, weights with missing, extra or misshaped arrays.
"""
from __future__ import annotations

import os
import secrets
import zipfile
from pathlib import Path

import numpy as np

from ..ir.errors import DlcError, Loc, file_error
from ..ir.graph import Graph
from ..ir.types import fmt_shape


def read_npz(path) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.exists():
        raise file_error(p, f"no such file")
    if p.is_dir():
        raise file_error(p, f"is a directory, expected an .npz file")
    if not zipfile.is_zipfile(p):
        raise file_error(p, "not an .npz file (expected a zip archive of .npy arrays, as numpy.savez writes)")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except PermissionError:
        raise file_error(p, f"permission denied")
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise file_error(p, f"not a readable .npz file ({type(e).__name__}: {e})")


def check_feeds(g: Graph, feeds: dict, where: str = "", check_finite: bool = False,
                float_dtype="float32", allow_extra: bool = False) -> tuple[dict, dict]:
    """Check arrays against the model's inputs; returns (feeds cast to the input dtypes, bound dims).
    `where` prefixes each message (e.g. "inputs: "); `allow_extra` ignores arrays that are not inputs."""
    unknown = sorted(set(feeds) - set(g.inputs))
    if unknown and not allow_extra:
        raise DlcError(f"{where}'{unknown[0]}' is not an input of model {g.meta.name} "
                       f"(inputs: {', '.join(g.inputs)})")
    dims: dict[str, tuple[int, str]] = {}
    out = {}
    for n in g.inputs:
        t = g.type(n)
        if n not in feeds:
            have = ", ".join(sorted(feeds)) or "nothing"
            raise DlcError(f"{where}no array for input '{n}' : {t} (it has: {have})")
        a = np.asarray(feeds[n])
        if a.ndim != t.rank:
            raise DlcError(f"{where}input '{n}' should be {t}, found an array of shape {fmt_shape(a.shape)}")
        for d, v in zip(t.shape, a.shape):
            if isinstance(d, str):
                if d in dims and dims[d][0] != v:
                    raise DlcError(f"{where}input '{n}' has {d}={v}, but input '{dims[d][1]}' has "
                                   f"{d}={dims[d][0]}")
                dims.setdefault(d, (v, n))
            elif d != v:
                raise DlcError(f"{where}input '{n}' should be {t}, found an array of shape {fmt_shape(a.shape)}")
        if t.dtype == "i32":
            if a.dtype.kind not in "iu":
                raise DlcError(f"{where}input '{n}' holds integer labels ({t}), found {a.dtype} values")
            fits = a.dtype == np.int32 or a.dtype.itemsize < 4  # nothing to check
            if a.size and not fits and (a.max() > 2**31 - 1 or a.min() < -2**31):
                raise DlcError(f"{where}input '{n}' has values beyond the i32 range")
            a = a.astype(np.int32, copy=False)
        else:
            if a.dtype.kind not in "fiub":
                raise DlcError(f"{where}input '{n}' should hold numbers, found {a.dtype}")
            a = a.astype(float_dtype, copy=False)
            if check_finite and not np.isfinite(a).all():
                bad = np.argwhere(~np.isfinite(a))[0]
                raise DlcError(f"{where}input '{n}' has a NaN or infinity at index {tuple(int(i) for i in bad)}")
        out[n] = a
    return out, {k: v for k, (v, _) in dims.items()}


def load_data(path, g: Graph) -> tuple[dict, int]:
    """Arrays for every input from an .npz (extra arrays are ignored); returns (feeds, N)."""
    try:
        feeds, dims = check_feeds(g, read_npz(path), check_finite=True, allow_extra=True)
    except DlcError as e:
        raise e.located(Loc(str(path), 0, 0))
    sizes = {len(v) for v in feeds.values() if v.ndim}
    if len(sizes) != 1:
        raise file_error(path, f"inputs have different numbers of examples {sorted(sizes)}")
    n = sizes.pop()
    if n == 0:
        raise file_error(path, f"holds no examples")
    return feeds, n


def check_output(path) -> None:
    """A `DlcError` unless `path` can become a file: it must not be a folder, and the nearest
    existing folder above it must be a folder, not a file."""
    p = Path(path)
    if p.is_dir():
        raise file_error(p, "is a folder, expected a file name")
    for d in p.parents:
        if d.exists():
            if not d.is_dir():
                raise file_error(p, f"cannot create folder {p.parent}: {d} is not a folder")
            return


def atomic_write(path, write, parents: bool = False) -> None:
    """Write a file through a temporary in the same folder (fsync'd, then renamed over `path`), so a
    failure leaves nothing half written. The file gets the mode `open()` would give it under the
    user's umask (0644 under umask 022). `parents` creates missing folders above it."""
    p = Path(path)
    check_output(p)
    if not p.parent.exists():
        if not parents:
            raise file_error(p, f"folder {p.parent} does not exist")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise file_error(p, f"cannot create folder {p.parent} ({e.strerror})")
    while True:
        tmp = p.parent / f".{p.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 minus the umask
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise file_error(p, f"cannot write ({e.strerror})")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        if tmp.exists():
            tmp.unlink()
        if isinstance(e, OSError):
            raise file_error(p, f"cannot write ({e.strerror or e})")
        raise


def save_weights(path, params: dict[str, np.ndarray], parents: bool = False) -> None:
    """Params as an .npz, one array per param name, written atomically."""
    atomic_write(path, lambda f: np.savez(f, **params), parents)


def load_weights(path, g: Graph) -> dict[str, np.ndarray]:
    """Params from an .npz, every name and shape checked against the model."""
    arrays = read_npz(path)
    want = {p: g.type(p) for p in g.params}
    missing = [p for p in want if p not in arrays]
    extra = sorted(set(arrays) - set(want))
    if missing:
        raise file_error(path, f"no array for param '{missing[0]}' : {want[missing[0]]}"
                       + (f" ({len(missing)} params missing)" if len(missing) > 1 else ""))
    if extra:
        raise file_error(path, f"array '{extra[0]}' is not a param of model {g.meta.name} "
                       f"(params: {', '.join(want)})")
    out = {}
    for p, t in want.items():
        a = arrays[p]
        if tuple(a.shape) != t.shape:
            raise file_error(path, f"param '{p}' should be {t}, found shape {fmt_shape(a.shape)}")
        if a.dtype.kind != "f":
            raise file_error(path, f"param '{p}' should hold floats, found {a.dtype}")
        if not np.isfinite(a).all():
            raise file_error(path, f"param '{p}' holds NaN or infinity")
        out[p] = a.astype(np.float32)
    return out
