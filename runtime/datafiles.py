"""Data files as the model's inputs: `.npz`, IDX (the MNIST format, plain or gzipped) and CSV
(see `load_data`). Every problem is a `DlcError` that names the file and the array: a missing
file, a file that is not an `.npz`, a bad IDX header, a CSV line that does not parse, a missing
input, a wrong shape or dtype, NaN or infinity in the data, a batch size that differs between
inputs, labels out of range.
"""
from __future__ import annotations

import gzip
import io
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..ir.errors import DlcError, Loc, file_error
from ..ir.graph import Graph
from ..ir.ops import OPS, label_operands, out_of_range
from ..ir.types import fmt_shape
from .feeds import check_feeds
from .files import read_npz


# -- data files: .npz, IDX (MNIST), CSV ------------------------------------------------------------
# How files map to inputs (docs/runtime.md, "Data files"):
#   --data D.npz                 one array per input, named after it
#   --data F [--labels L]        F (IDX or CSV) feeds the one feature input (the input the outputs
#                                depend on); a CSV's label column, or L, feeds the one label input
#   --data x=F1,y=F2             one file per input, any format
DATA_FORMATS = ("npz", "idx", "csv")
NORMALIZE = ("none", "scale", "standardize")
CSV_HEADER = ("auto", "yes", "no")
# IDX element types: code -> (big-endian dtype, name)
IDX_TYPES = {0x08: (">u1", "unsigned byte"), 0x09: (">i1", "signed byte"), 0x0B: (">i2", "short"),
             0x0C: (">i4", "int"), 0x0D: (">f4", "float"), 0x0E: (">f8", "double")}


class DataOptions:
    """How data files become inputs (the data flags of `dlc run` and `dlc eval`).

    `labels`: a file for the label input. `normalize`: "none", "scale" (integers divided by the
    largest value of their type: 255 for uint8) or "standardize" (per feature: minus the mean, over
    the standard deviation, across the file's examples); it applies to float feature inputs only.
    `label_column` (CSV): a 0-based index (negative counts from the end), a header name, "none",
    or None for the default, the last column. `label_offset`: subtracted from integer labels (1
    when a file numbers its classes from 1). `header` (CSV): "auto", "yes" or "no"."""

    def __init__(self, labels=None, normalize: str = "none", label_column=None, label_offset: int = 0,
                 header: str = "auto"):
        if normalize not in NORMALIZE:
            raise DlcError(f"--normalize: expected one of {', '.join(NORMALIZE)}, found {normalize!r}")
        if header not in CSV_HEADER:
            raise DlcError(f"--header: expected one of {', '.join(CSV_HEADER)}, found {header!r}")
        if isinstance(label_offset, bool) or not isinstance(label_offset, (int, np.integer)):
            raise DlcError(f"--label-offset: expected an integer, found {label_offset!r}")
        self.labels, self.normalize, self.header = labels, normalize, header
        self.label_column, self.label_offset = label_column, int(label_offset)


def label_inputs(g: Graph) -> list[str]:
    """The inputs no output depends on: labels and targets, which only the loss reads."""
    used = g.upstream(list(g.meta.outputs.values())) if g.meta.outputs else set()
    return [n for n in g.inputs if n not in used]


def feature_inputs(g: Graph) -> list[str]:
    labels = label_inputs(g)
    return [n for n in g.inputs if n not in labels]


def data_format(path) -> str:
    """npz, idx or csv: from the name (a trailing .gz aside), else from the first bytes."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".npz"):
        return "npz"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".idx") or re.search(r"idx\d+[-.]ubyte$|-ubyte$|\.idx\d+$", name):
        return "idx"
    head = _read_bytes(p)[:4]
    if head[:2] == b"PK":
        return "npz"
    if len(head) == 4 and head[:2] == b"\0\0" and head[2] in IDX_TYPES and head[3] > 0:
        return "idx"
    raise file_error(p, "cannot tell the data format from the name: expected .npz, .csv or an IDX file "
                        "(.idx, or MNIST's *-idx3-ubyte), each optionally .gz for IDX and CSV")


def _read_bytes(path) -> bytes:
    """The file's bytes, gunzipped when it starts with gzip's magic number."""
    p = Path(path)
    if not p.exists():
        raise file_error(p, "no such file")
    if p.is_dir():
        raise file_error(p, "is a directory, expected a data file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise file_error(p, f"cannot be read ({e.strerror})")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise file_error(p, f"not a readable gzip file ({type(e).__name__}: {e})")
    return raw


def read_idx(path) -> np.ndarray:
    """An IDX file (the MNIST format), plain or gzipped: two zero bytes, a type code, the number of
    dimensions, each dimension as a big-endian uint32, then the values, big-endian."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise file_error(path, f"truncated: {len(raw)} bytes, shorter than an IDX header")
    if raw[:2] != b"\0\0":
        raise file_error(path, f"not an IDX file: bad magic number 0x{raw[:4].hex()} (an IDX file starts "
                               "with two zero bytes, a type code and the number of dimensions)")
    code, ndim = raw[2], raw[3]
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{k:02X} {v[1]}" for k, v in IDX_TYPES.items())
        raise file_error(path, f"not an IDX file: bad magic number 0x{raw[:4].hex()}: unknown element type "
                               f"0x{code:02X} (known: {known})")
    if ndim == 0:
        raise file_error(path, f"bad magic number 0x{raw[:4].hex()}: an IDX file needs at least one dimension")
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise file_error(path, f"truncated: the header of {ndim} dimensions needs {start} bytes, the file has "
                               f"{len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:start])
    dtype = np.dtype(IDX_TYPES[code][0])
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(raw) - start
    if have != need:
        what = "truncated" if have < need else f"{have - need} bytes too long"
        raise file_error(path, f"{what}: the header promises {fmt_shape(dims)} {IDX_TYPES[code][1]} values "
                               f"({need} bytes), the file holds {have} bytes of data")
    return np.frombuffer(raw, dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def _number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def read_csv(path, header: str = "auto"):
    """(column names or None, values [rows, columns] float64, the line number of each row) from a
    comma-separated text file (plain or gzipped) with one example per row. Blank lines are skipped;
    `header` "auto" takes the first line as a header when one of its fields is not a number."""
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise file_error(path, "not a CSV text file (it is not valid UTF-8)")
    lines = [(i, s) for i, s in enumerate(text.splitlines(), 1) if s.strip()]
    if not lines:
        raise file_error(path, "holds no examples (the file is empty)")
    names = None
    first = [f.strip() for f in lines[0][1].split(",")]
    if header == "yes" or (header == "auto" and not all(_number(f) for f in first)):
        names = [f.strip('"').strip("'") for f in first]
        lines = lines[1:]
        if not lines:
            raise file_error(path, "holds no examples (only a header line)")
    width = len(names) if names else len(first)
    body = "\n".join(s for _, s in lines)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = np.loadtxt(io.StringIO(body), delimiter=",", dtype=np.float64, ndmin=2, comments=None)
        if values.shape[1] != width:
            raise ValueError
    except ValueError:
        _csv_problem(path, lines, width, names)
        raise file_error(path, "not a readable CSV file")  # _csv_problem finds every case numpy refuses
    return names, values, [i for i, _ in lines]


def _csv_problem(path, lines, width, names) -> None:
    """Raise an error located at the first line numpy could not read: a wrong number of fields, an
    empty field, a field that is not a number."""
    for no, s in lines:
        fields = s.split(",")
        if len(fields) != width:
            what = f"the header has {width}" if names else f"the first line has {width}"
            raise DlcError(f"{len(fields)} fields, but {what}", Loc(str(path), no, 1))
        col = 1
        for j, f in enumerate(fields):
            if not _number(f.strip()):
                name = f" ('{names[j]}')" if names else ""
                shown = f"'{f.strip()}'" if f.strip() else "an empty field"
                raise DlcError(f"column {j}{name} holds {shown}, not a number", Loc(str(path), no, col))
            col += len(f) + 1


def _int_type(values: np.ndarray):
    """The smallest integer dtype holding every value, or None when some value is not whole: what a
    CSV column "is", for --normalize scale."""
    if values.size == 0 or not np.isfinite(values).all() or (values != np.round(values)).any():
        return None
    lo, hi = values.min(), values.max()
    for t in ("uint8", "int8", "uint16", "int16", "uint32", "int32"):
        info = np.iinfo(t)
        if info.min <= lo and hi <= info.max:
            return np.dtype(t)
    return None


def _column(spec, names, width, path) -> int | None:
    """The label column's index from --label-column (None: the last; "none": no label column)."""
    if spec is None:
        return width - 1
    if isinstance(spec, str) and spec.lower() == "none":
        return None
    if isinstance(spec, (int, np.integer)) or re.fullmatch(r"-?\d+", str(spec).strip()):
        i = int(spec)
        if not -width <= i < width:
            raise file_error(path, f"--label-column {i}: the file has {width} columns (0..{width - 1})")
        return i % width
    if names is None:
        raise file_error(path, f"--label-column '{spec}': the file has no header line to find a column name in "
                               "(give its 0-based index)")
    if spec not in names:
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} columns)" if len(names) > 8 else "")
        raise file_error(path, f"--label-column '{spec}': no such column in the header (columns: {shown})")
    return names.index(spec)


def _whole(values: np.ndarray, path, what: str, rows=None, col: str = "") -> np.ndarray:
    """CSV values that must be integers (class labels) as int64: text has no dtype, so 3.0 is 3,
    but 2.5 is an error."""
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        i = int(np.argwhere(bad)[0][0])
        v = values.reshape(len(values), -1)[i][bad.reshape(len(values), -1)[i]][0]
        raise DlcError(f"{what} holds integer labels, found {v:g}{col}", Loc(str(path), rows[i], 1) if rows else
                       Loc(str(path), 0, 0))
    if values.size and (values.max() > 2**31 - 1 or values.min() < -2**31):
        raise file_error(path, f"{what} has values beyond the i32 range")
    return values.astype(np.int64)


def _data_sources(spec, g: Graph, opts: DataOptions) -> list[tuple[Path, str | None]]:
    """[(file, input name or None)]: None takes inputs by the file's format (an .npz by array names;
    IDX or CSV for the feature input, a CSV's label column for the label input)."""
    s = str(spec)
    if not isinstance(spec, Path) and not Path(s).exists() and "=" in s:
        out = []
        for part in s.split(","):
            name, eq, file = part.partition("=")
            name, file = name.strip(), file.strip()
            if not eq or not name or not file:
                raise DlcError(f"--data: expected FILE or INPUT=FILE,INPUT=FILE, found {part!r} in {s!r}")
            if name not in g.inputs:
                raise DlcError(f"--data: '{name}' is not an input of model {g.meta.name} "
                               f"(inputs: {', '.join(g.inputs)})")
            if name in [n for _, n in out]:
                raise DlcError(f"--data: input '{name}' is named twice in {s!r}")
            out.append((Path(file), name))
        if opts.labels:
            raise DlcError("--labels: the labels already have their file in --data INPUT=FILE,...")
        return out
    out = [(Path(s), None)]
    if opts.labels:
        labels = label_inputs(g)
        if len(labels) != 1:
            raise DlcError(f"--labels: model {g.meta.name} has "
                           + (f"{len(labels)} label inputs ({', '.join(labels)}): give each its file with "
                              "--data INPUT=FILE,INPUT=FILE" if labels else
                              "no label input (an input that only the loss reads)"))
        out.append((Path(opts.labels), labels[0]))
    return out


def _arrays_from(path: Path, target: str | None, g: Graph, opts: DataOptions, taken: set) -> dict:
    """input name -> (array, source dtype or None, CSV line numbers or None) read from one file."""
    fmt = data_format(path)
    if fmt != "csv" and target is None and opts.label_column is not None:
        raise DlcError(f"--label-column: only for CSV data, and {path} is {'an' if fmt == 'idx' else 'a'} "
                       f"{fmt.upper()} file")
    if fmt == "npz":
        arrays = read_npz(path)
        if target is not None:
            if target in arrays:
                a = arrays[target]
            elif len(arrays) == 1:
                a = next(iter(arrays.values()))
            else:
                raise file_error(path, f"no array named '{target}' for input '{target}' : {g.type(target)} "
                                       f"(it has: {', '.join(sorted(arrays)) or 'nothing'})")
            return {target: (a, a.dtype, None)}
        return {n: (a, a.dtype, None) for n, a in arrays.items() if n in g.inputs and n not in taken}
    if fmt == "idx":
        a = read_idx(path)
        if target is None:
            target = _one_feature(g, path, "an IDX file holds one array")
        return {target: (a, a.dtype, None)}
    names, values, rows = read_csv(path, opts.header)
    if target is not None:  # a whole CSV file for one input
        return {target: (values, _int_type(values), rows)}
    out = {}
    labels = [n for n in label_inputs(g) if n not in taken]
    col = _column(opts.label_column, names, values.shape[1], path) if labels else None
    if col is not None:
        if len(labels) > 1:
            raise file_error(path, f"model {g.meta.name} has {len(labels)} label inputs ({', '.join(labels)}): "
                                   "give each its file with --data INPUT=FILE,INPUT=FILE")
        lab = values[:, col]
        name = f" (column {col}{' ' + repr(names[col]) if names else ''})"
        out[labels[0]] = (lab, _int_type(lab), rows, name)
        values = np.delete(values, col, axis=1)
    target = _one_feature(g, path, "a CSV file's columns feed one input")
    out[target] = (values, _int_type(values), rows)
    return out


def _one_feature(g: Graph, path, why: str) -> str:
    feats = feature_inputs(g)
    if len(feats) != 1:
        raise file_error(path, f"{why}, but model {g.meta.name} has {len(feats)} inputs its outputs read "
                               f"({', '.join(feats) or 'none'}): give each its file with --data INPUT=FILE,INPUT=FILE")
    return feats[0]


def _fit(a: np.ndarray, n: str, g: Graph, path, kind: str) -> np.ndarray:
    """Reshape an array to the input's declared shape when each example holds the same number of
    values (IDX images [N, 28, 28] -> f32[N, 784] or [N, 1, 28, 28]); otherwise as it is."""
    t = g.type(n)
    per = t.shape[1:]
    if a.ndim == 0:
        raise file_error(path, f"{kind} '{n}' : {t} needs one row per example, found a single value")
    if not t.shape or not isinstance(t.shape[0], str) or not all(isinstance(d, int) for d in per):
        return a
    if tuple(a.shape[1:]) == tuple(per):
        return a
    have = int(np.prod(a.shape[1:], dtype=np.int64))
    want = int(np.prod(per, dtype=np.int64))
    if have != want:
        raise file_error(path, f"{kind} '{n}' : {t} needs {want} value{'s' * (want != 1)} per example, the file "
                               f"holds {fmt_shape(a.shape)}: {have} per example")
    return a.reshape((len(a),) + tuple(per))


def _normalize(a: np.ndarray, how: str, src, n: str, path, text: bool = False, warn=None) -> np.ndarray:
    if how == "scale":
        if src is None or np.dtype(src).kind not in "iub":
            raise file_error(path, f"--normalize scale: input '{n}' holds {'non-integer' if src is None else src} "
                                   "values, which have no integer range to divide by (use standardize or none)")
        top = 1 if np.dtype(src).kind == "b" else np.iinfo(src).max
        lo, hi = (a.min(), a.max()) if a.size else (0, 0)
        if text and warn is not None and 0 < hi < top / 2:
            # a CSV's type is a guess from its values: 0..16 grey levels are not 0..255 pixels
            warn.append(f"{path}: input '{n}' holds whole numbers {lo:g}..{hi:g}, taken as {src} and divided by "
                        f"{top}, so they span {lo / top:.3g}..{hi / top:.3g}; if {hi:g} is their full scale, "
                        f"divide by it when making the file, or use --normalize standardize")
        return a.astype(np.float64) / top
    if how == "standardize":
        a = a.astype(np.float64)
        mean, std = a.mean(axis=0), a.std(axis=0)
        return (a - mean) / np.where(std > 0, std, 1.0)
    return a


def check_labels_in_range(g: Graph, feeds: dict, files: dict) -> None:
    """Class labels and token ids against every op that reads them from an input as indices
    (softmax_xent's labels, embedding's ids): one outside its range is a data error, named at load
    time, not when the op first runs."""
    for labels, bound, node in label_operands(g):
        if labels not in g.inputs or labels not in feeds or not isinstance(bound, int):
            continue
        y = feeds[labels]
        bad = out_of_range(y, bound)
        if bad is None:
            continue
        first = g.operands(node)[OPS[g.op(node)].labels_operand]
        loc = g.loc(node)
        where = f" at {loc}" if loc else ""
        if OPS[g.op(node)].labels_axis != -1:
            raise file_error(files.get(labels, "data"), f"ids '{labels}': {bad} is out of range for the {bound} "
                             f"rows of {g.op(node)}'s table {g.type(first)}{where} (ids are 0..{bound - 1})")
        hint = ""
        if y.min() == 1 and y.max() == bound:
            hint = f"; the labels run 1..{bound}: --label-offset 1 makes them 0..{bound - 1}"
        raise file_error(files.get(labels, "data"), f"labels '{labels}': {bad} is out of range for the {bound} "
                         f"classes of {g.op(node)} (logits {g.type(first)}){where}{hint}")


class _OneInput:
    """A view of a graph with one input, for checking one file's array on its own."""

    def __init__(self, g: Graph, n: str):
        self.inputs, self.meta, self.type = [n], g.meta, g.type


@dataclass
class Dataset:
    """Checked arrays for a model's inputs: `feeds` (input name -> array), `n` examples, and `what`
    was read (the file names, for messages)."""
    feeds: dict
    n: int
    what: str
    warnings: list = field(default_factory=list)  # lines `dlc` prints as `warning: ...` (load_data's warn)
    targets: object = None  # class labels for a model that declares no labels input (an imported
                            # classifier): the data file's `y`, for `dlc eval` (data_targets)


def load_data(path, g: Graph, options: DataOptions | None = None, warn: list | None = None) -> tuple[dict, int]:
    """Arrays for every input, checked against the model: from an .npz (arrays named after the
    inputs; others are ignored), an IDX or CSV file (with `options.labels`), or one file per input
    (`"x=F1,y=F2"`); see DataOptions. Returns (feeds, N); what looks wrong but may be meant (a CSV
    whose values span far less than the type `scale` divides by) is appended to `warn`."""
    opts = options or DataOptions()
    labels = set(label_inputs(g))
    found: dict[str, tuple] = {}   # input -> (array, source dtype, rows, file, note)
    csv_used = False
    sources = _data_sources(path, g, opts)
    for file, target in sources:
        fmt = data_format(file)
        csv_used |= fmt == "csv"
        try:
            arrays = _arrays_from(file, target, g, opts, set(found))
        except DlcError as e:  # a file that cannot be read: say which input it was for
            feats = feature_inputs(g)
            who = target or (feats[0] if fmt == "idx" and len(feats) == 1 else None)
            if who and f"'{who}'" not in e.message and e.loc and e.loc.file == str(file):
                e.message += f" (the data for input '{who}')"
            raise
        for n, got in arrays.items():
            found[n] = (got[0], got[1], got[2], file, got[3] if len(got) > 3 else "")
    if not csv_used and (opts.header != "auto"):
        raise DlcError("--header: only for CSV data")
    int_labels = [n for n in g.inputs if n in labels and g.type(n).dtype == "i32"]
    if opts.label_offset and not any(n in found for n in int_labels):
        raise DlcError(f"--label-offset: model {g.meta.name} has no integer labels in the data")
    feeds, files, dims = {}, {}, {}
    for n in g.inputs:
        if n not in found:
            if all(target for _, target in sources):   # --data INPUT=FILE,...: the mapping lacks it
                mapped = ", ".join(f"{target}={file}" for file, target in sources)
                raise DlcError(f"--data: no file for input '{n}' : {g.type(n)}: the mapping gives only "
                               f"{mapped} (add {n}=FILE, or give one .npz holding every input)")
            have = ", ".join(sorted(found)) or "nothing"
            where = " and ".join(dict.fromkeys(str(f) for f, _ in sources))
            hint = ""
            if n in labels and len(sources) == 1 and sources[0][1] is None and data_format(sources[0][0]) != "npz":
                hint = "; give the labels with --labels FILE"
            raise file_error(where, f"no array for input '{n}' : {g.type(n)} (found: {have}){hint}")
        a, src, rows, file, note = found[n]
        t = g.type(n)
        kind = "labels" if n in labels else "input"
        try:
            if t.dtype == "i32" and rows is not None:  # CSV text: 3.0 is the label 3
                a = _whole(a, file, f"{kind} '{n}'", rows, note)
            a = _fit(np.asarray(a), n, g, file, kind)
            if t.dtype == "i32" and opts.label_offset and n in labels and a.dtype.kind in "iu":
                a = a.astype(np.int64) - opts.label_offset
            if t.is_float and n not in labels and opts.normalize != "none":
                a = _normalize(a, opts.normalize, src, n, file, text=rows is not None, warn=warn)
            one, bound = check_feeds(_OneInput(g, n), {n: a}, check_finite=True)
            feeds[n] = one[n]
        except DlcError as e:
            raise e.located(Loc(str(file), 0, 0))
        for d, v in bound.items():
            if d in dims and dims[d][0] != v:
                v0, n0, f0 = dims[d]
                also = f" from {f0}" if Path(f0) != Path(file) else ""
                raise file_error(file, f"input '{n}' has {d}={v}, but input '{n0}'{also} has {d}={v0}"
                                       + (" (a different number of examples)" if t.shape and t.shape[0] == d else ""))
            dims.setdefault(d, (v, n, file))
        files[n] = file
    sizes = {len(v) for v in feeds.values() if v.ndim}
    if len(sizes) != 1:
        raise file_error(path, f"inputs have different numbers of examples {sorted(sizes)}")
    n = sizes.pop()
    if n == 0:
        raise file_error(path, "holds no examples")
    check_labels_in_range(g, feeds, files)
    return feeds, n


def data_targets(path, labels, n: int):
    """The class labels a data file holds besides what a model reads: the integer array `y` of an
    .npz with one entry per example, or the `--labels` file; None if there is none. `dlc eval` scores
    a model that declares no labels input (an imported classifier) against them."""
    try:
        if labels is None and data_format(path) == "npz":
            with np.load(path) as z:
                y = z["y"] if "y" in z.files else None
        elif labels is not None and data_format(labels) == "idx":
            y = read_idx(labels)
        else:
            return None
    except Exception:  # noqa: BLE001 - the file was read once already; anything odd: no targets
        return None
    if y is None or y.ndim != 1 or len(y) != n or y.dtype.kind not in "iu":
        return None
    return y.astype(np.int64)
