"""Files in and out: reading an .npz, and writing any output file atomically (a failure leaves
nothing half written)."""
from __future__ import annotations

import os
import secrets
import zipfile
from pathlib import Path

import numpy as np

from ..ir.errors import file_error


def read_npz(path) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.exists():
        raise file_error(p, "no such file")
    if p.is_dir():
        raise file_error(p, "is a directory, expected an .npz file")
    if not zipfile.is_zipfile(p):
        raise file_error(p, "not an .npz file (expected a zip archive of .npy arrays, as numpy.savez writes)")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except PermissionError:
        raise file_error(p, "permission denied")
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise file_error(p, f"not a readable .npz file ({type(e).__name__}: {e})")


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
