"""Data files beyond .npz (runtime/data.py load_data): IDX (the MNIST format, plain and gzipped)
and CSV, how files map to inputs (--data FILE --labels FILE, --data x=FILE,y=FILE, a CSV's label
column), reshaping to the declared input shape, --normalize, --label-offset, and a located error
for every mismatch between a file and the model's inputs. Every file is written here, by code
independent of the loader (struct.pack for IDX headers, plain text for CSV)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

import dlc
from dlc.runtime.datafiles import DataOptions, load_data, read_idx
from conftest import DIGITS, MLP, ROOT, XOR, dlc_cli

# where mlp.dln's softmax_xent is: line 14, column 14 (`softmax_xent(logits, y) + ...`)
MLP_XENT = f"{MLP}:14:14"

IDX_CODES = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D, "float64": 0x0E}


def write_idx(path: Path, a: np.ndarray, gz: bool | None = None) -> Path:
    """An IDX file as the MNIST page describes it: 0, 0, type code, rank, big-endian uint32 dims,
    big-endian values; gzipped when the name ends in .gz."""
    a = np.asarray(a)
    raw = bytes([0, 0, IDX_CODES[a.dtype.name], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    raw += a.astype(a.dtype.newbyteorder(">")).tobytes()
    if gz if gz is not None else path.name.endswith(".gz"):
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


@pytest.fixture(scope="module")
def digits():
    """60 digit images as MNIST stores them: uint8 pixels [N, 8, 8] (0..16 grey levels) and uint8 labels."""
    d = np.load(DIGITS)
    x = np.round(d["x"][:60] * 16).astype(np.uint8).reshape(60, 8, 8)
    return x, d["y"][:60].astype(np.uint8)


@pytest.fixture(scope="module")
def mlp():
    return dlc.compile(MLP, backend="interp")


def load(spec, model, **opts):
    return load_data(spec, model.graph, DataOptions(**opts))


# -- IDX ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_images_and_labels_reshape_to_the_declared_input(tmp_path, digits, mlp, gz):
    x, y = digits
    ext = ".gz" if gz else ""
    xi = write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", x)
    yi = write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", y)
    feeds, n = load(xi, mlp, labels=yi)
    assert n == 60
    assert feeds["x"].dtype == np.float32 and feeds["x"].shape == (60, 64)  # [N, 8, 8] -> f32[N, 64]
    np.testing.assert_array_equal(feeds["x"], x.reshape(60, 64).astype(np.float32))
    assert feeds["y"].dtype == np.int32
    np.testing.assert_array_equal(feeds["y"], y)


def test_idx_reshapes_to_a_4d_input(tmp_path, digits):
    x, y = digits
    m = dlc.compile("""model conv {
    input x : f32[N, 1, 8, 8]
    input y : i32[N]
    param k : f32[2, 1, 3, 3] = he
    logits = reshape(conv2d(x, k), [N, 72])
    loss = softmax_xent(logits, y)
    output logits
    minimize loss with sgd(lr = 0.1)
}""", backend="interp")
    feeds, n = load(write_idx(tmp_path / "im.idx", x), m, labels=write_idx(tmp_path / "lab.idx", y))
    assert feeds["x"].shape == (60, 1, 8, 8)
    np.testing.assert_array_equal(feeds["x"][:, 0], x)


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "float32", "float64"])
def test_idx_element_types_are_big_endian(tmp_path, dtype):
    a = (np.arange(24).reshape(2, 3, 4) * 37 - 300).astype(dtype)
    if dtype == "int8":
        a = (np.arange(24).reshape(2, 3, 4) - 12).astype(dtype)
    got = read_idx(write_idx(tmp_path / "a.idx", a))
    assert got.dtype == np.dtype(dtype) and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, a)


def test_normalize_scale_and_standardize(tmp_path, digits, mlp):
    x, y = digits
    xi, yi = write_idx(tmp_path / "im.idx3-ubyte", x), write_idx(tmp_path / "lab.idx1-ubyte", y)
    scaled, _ = load(xi, mlp, labels=yi, normalize="scale")
    np.testing.assert_allclose(scaled["x"], x.reshape(60, 64) / 255.0, rtol=1e-6)  # uint8: / 255
    np.testing.assert_array_equal(scaled["y"], y)  # labels are never normalised
    std, _ = load(xi, mlp, labels=yi, normalize="standardize")
    flat = x.reshape(60, 64).astype(np.float64)
    spread = flat.std(axis=0)
    varying = spread > 0
    np.testing.assert_allclose(std["x"].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(std["x"][:, varying].std(axis=0), 1, rtol=1e-4)
    assert (std["x"][:, ~varying] == 0).all() and (~varying).any()  # constant pixels (the corners) become 0
    # int16 data is divided by 32767, the largest int16
    wide = write_idx(tmp_path / "wide.idx", (x.astype(np.int16) * 1000))
    got, _ = load(wide, mlp, labels=yi, normalize="scale")
    np.testing.assert_allclose(got["x"], x.reshape(60, 64).astype(np.float64) * 1000 / 32767.0, rtol=1e-6)


def test_normalize_scale_refuses_float_data(tmp_path, mlp):
    with pytest.raises(dlc.DlcError) as ei:
        load(DIGITS, mlp, normalize="scale")
    assert str(ei.value).startswith(f"{DIGITS}: error: --normalize scale: input 'x' holds float32 values")


# one bad IDX file each: (id, how to make it from good images, substrings of the error)
def _bad_idx(kind, tmp_path, x):
    p = tmp_path / f"{kind}-idx3-ubyte"
    good = write_idx(tmp_path / "good.idx", x).read_bytes()
    raw = {
        "bad-magic": b"\x08\x03" + good[2:],
        "unknown-type": good[:2] + b"\x0a" + good[3:],
        "no-dims": good[:3] + b"\x00",
        "short-header": good[:10],
        "truncated": good[:-5],
        "too-long": good + b"\x00\x00",
        "tiny": good[:3],
    }[kind]
    p.write_bytes(raw)
    return p


IDX_CASES = [
    ("bad-magic", ["bad magic number 0x0803", "two zero bytes"]),
    ("unknown-type", ["unknown element type 0x0A"]),
    ("no-dims", ["at least one dimension"]),
    ("short-header", ["truncated", "16 bytes"]),
    ("truncated", ["truncated", "[60, 8, 8]", "3840 bytes", "3835"]),
    ("too-long", ["2 bytes too long"]),
    ("tiny", ["truncated", "3 bytes"]),
]


@pytest.mark.parametrize("kind,must", IDX_CASES, ids=[c[0] for c in IDX_CASES])
def test_bad_idx_files(kind, must, tmp_path, digits, mlp):
    x, y = digits
    p = _bad_idx(kind, tmp_path, x)
    with pytest.raises(dlc.DlcError) as ei:
        load(p, mlp, labels=write_idx(tmp_path / "lab.idx1-ubyte", y))
    s = str(ei.value)
    assert s.startswith(f"{p}: error: "), s
    for m in must:
        assert m in s, (m, s)
    assert s.endswith("(the data for input 'x')"), s  # the file and the input it was for


def test_truncated_gzip(tmp_path, digits, mlp):
    x, y = digits
    p = tmp_path / "im-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(write_idx(tmp_path / "g.idx", x).read_bytes())[:-12])
    with pytest.raises(dlc.DlcError) as ei:
        load(p, mlp, labels=write_idx(tmp_path / "lab.idx1-ubyte", y))
    assert str(ei.value).startswith(f"{p}: error: not a readable gzip file"), str(ei.value)
    assert str(ei.value).endswith("(the data for input 'x')")
    # a broken labels file names the label input
    with pytest.raises(dlc.DlcError) as ei:
        load(write_idx(tmp_path / "im.idx", x), mlp, labels=p)
    assert str(ei.value).startswith(f"{p}: error: ") and str(ei.value).endswith("(the data for input 'y')")


def _err(spec, model, **opts) -> str:
    with pytest.raises(dlc.DlcError) as ei:
        load(spec, model, **opts)
    return str(ei.value)


def test_mismatches_between_files_and_inputs(tmp_path, digits, mlp):
    x, y = digits
    yi = write_idx(tmp_path / "lab.idx1-ubyte", y)
    # wrong count per example: 7x7 images for f32[N, 64]
    small = write_idx(tmp_path / "small-idx3-ubyte", x[:, :7, :7].copy())
    assert _err(small, mlp, labels=yi) == (f"{small}: error: input 'x' : f32[N, 64] needs 64 values per example, "
                                           "the file holds [60, 7, 7]: 49 per example")
    # wrong dtype: float labels
    fl = write_idx(tmp_path / "float-labels.idx", y.astype(np.float32))
    xi = write_idx(tmp_path / "im.idx", x)
    s = _err(xi, mlp, labels=fl)
    assert s.startswith(f"{fl}: error: ") and "'y'" in s and "float32" in s, s
    # N differs between the images and the labels: both files named
    short = write_idx(tmp_path / "short.idx1-ubyte", y[:50])
    assert _err(xi, mlp, labels=short) == (f"{short}: error: input 'y' has N=50, but input 'x' from {xi} has N=60 "
                                           "(a different number of examples)")
    # labels with two values per example
    wide = write_idx(tmp_path / "wide.idx", np.stack([y, y], axis=1))
    assert _err(xi, mlp, labels=wide).startswith(f"{wide}: error: labels 'y' : i32[N] needs 1 value per example")
    # no labels at all
    s = _err(xi, mlp)
    assert s == f"{xi}: error: no array for input 'y' : i32[N] (found: x); give the labels with --labels FILE", s


def test_labels_out_of_range_are_a_data_error_at_load_time(tmp_path, digits, mlp):
    x, y = digits
    bad = y.copy()
    bad[7] = 12
    xi, yi = write_idx(tmp_path / "im.idx", x), write_idx(tmp_path / "labels.idx1-ubyte", bad)
    assert _err(xi, mlp, labels=yi) == (f"{yi}: error: labels 'y': 12 is out of range for the 10 classes of "
                                        f"softmax_xent (logits f32[N, 10]) at {MLP_XENT}")
    # classes numbered 1..10: a hint, and --label-offset 1 fixes it
    one = write_idx(tmp_path / "one.idx1-ubyte", (y + 1).astype(np.uint8))
    one_based = np.append(y[:-1] + 1, 10).astype(np.uint8)  # some 10 among them
    write_idx(one, one_based)
    s = _err(xi, mlp, labels=one)
    assert "10 is out of range" in s and "--label-offset 1 makes them 0..9" in s, s
    feeds, _ = load(xi, mlp, labels=one, label_offset=1)
    np.testing.assert_array_equal(feeds["y"], one_based.astype(np.int32) - 1)
    neg = write_idx(tmp_path / "neg.idx", np.array([0, -1] * 30, dtype=np.int8))
    assert "labels 'y': -1 is out of range" in _err(xi, mlp, labels=neg)


def test_one_file_per_input(tmp_path, digits, mlp):
    x, y = digits
    xi = write_idx(tmp_path / "im.idx3-ubyte.gz", x)
    np.savez(tmp_path / "labels.npz", whatever=y)  # one array: taken whatever its name
    np.savetxt(tmp_path / "labels.csv", y, fmt="%d")
    for labels in ("labels.npz", "labels.csv"):
        feeds, n = load(f"x={xi},y={tmp_path / labels}", mlp)
        assert n == 60
        np.testing.assert_array_equal(feeds["y"], y)
    assert _err(f"x={xi},z={tmp_path / 'labels.npz'}", mlp) == (
        "error: --data: 'z' is not an input of model mlp (inputs: x, y)")
    assert "named twice" in _err(f"x={xi},x={xi}", mlp)
    assert "--labels: the labels already have their file" in _err(f"x={xi},y={xi}", mlp, labels=str(xi))


# -- CSV ---------------------------------------------------------------------------------------
def write_csv(path: Path, rows, header=None, gz=False) -> Path:
    text = "".join(line + "\n" for line in ([header] if header else []) + [",".join(map(str, r)) for r in rows])
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


@pytest.mark.parametrize("header,gz", [(True, False), (False, False), (True, True)], ids=["header", "bare", "gz"])
def test_csv_label_column_defaults_to_the_last(tmp_path, digits, mlp, header, gz):
    x, y = digits
    rows = [list(px) + [lab] for px, lab in zip(x.reshape(60, 64).tolist(), y.tolist())]
    names = ",".join([f"p{i}" for i in range(64)] + ["label"]) if header else None
    p = write_csv(tmp_path / ("d.csv.gz" if gz else "d.csv"), rows, names, gz)
    feeds, n = load(p, mlp)
    assert n == 60
    np.testing.assert_array_equal(feeds["x"], x.reshape(60, 64).astype(np.float32))
    np.testing.assert_array_equal(feeds["y"], y)
    scaled, _ = load(p, mlp, normalize="scale")  # CSV integers 0..16 fit uint8: / 255
    np.testing.assert_allclose(scaled["x"], x.reshape(60, 64) / 255.0, rtol=1e-6)


def test_csv_label_column_by_index_and_name(tmp_path, digits, mlp):
    x, y = digits
    rows = [[lab] + list(px) for px, lab in zip(x.reshape(60, 64).tolist(), y.tolist())]  # MNIST-CSV style
    bare = write_csv(tmp_path / "first.csv", rows)
    named = write_csv(tmp_path / "named.csv", rows, ",".join(["digit"] + [f"p{i}" for i in range(64)]))
    for p, col in ((bare, "0"), (named, "digit"), (named, "-65")):
        feeds, _ = load(p, mlp, label_column=col)
        np.testing.assert_array_equal(feeds["y"], y)
        np.testing.assert_array_equal(feeds["x"], x.reshape(60, 64).astype(np.float32))
    assert "no such column in the header" in _err(named, mlp, label_column="label")
    assert "no header line" in _err(bare, mlp, label_column="digit")
    assert "the file has 65 columns" in _err(bare, mlp, label_column="65")
    # without a label column, the labels must come from elsewhere
    s = _err(bare, mlp, label_column="none")
    assert "needs 64 values per example" in s and "65 per example" in s, s


def test_csv_header_flag(tmp_path, mlp):
    rows = [[1] * 64 + [3]] * 4
    named = write_csv(tmp_path / "named.csv", rows, ",".join([f"p{i}" for i in range(64)] + ["label"]))
    assert _err(named, mlp, header="no") == f"{named}:1:1: error: column 0 holds 'p0', not a number"
    numeric_header = write_csv(tmp_path / "nh.csv", rows, ",".join(str(i % 10) for i in range(65)))
    feeds, n = load(numeric_header, mlp, header="yes")  # a header of numbers: auto would read it as data
    assert n == 4
    feeds, n = load(numeric_header, mlp)
    assert n == 5


def test_csv_errors_are_located(tmp_path, mlp):
    good = [0.5] * 64 + [3]
    p = write_csv(tmp_path / "ragged.csv", [good, good, good[:-2]])
    assert _err(p, mlp) == f"{p}:3:1: error: 63 fields, but the first line has 65"
    bad = [str(v) for v in good]
    bad[2] = "abc"
    p = write_csv(tmp_path / "word.csv", [good, bad])
    assert _err(p, mlp) == f"{p}:2:9: error: column 2 holds 'abc', not a number"
    empty = list(good)
    empty[1] = ""
    p = write_csv(tmp_path / "empty.csv", [good, good, empty])
    assert _err(p, mlp) == f"{p}:3:5: error: column 1 holds an empty field, not a number"
    half = [0.5] * 64 + [2.5]
    p = write_csv(tmp_path / "half.csv", [good, half], ",".join([f"p{i}" for i in range(64)] + ["label"]))
    assert _err(p, mlp) == f"{p}:3:1: error: labels 'y' holds integer labels, found 2.5 (column 64 'label')"
    p = write_csv(tmp_path / "nan.csv", [good, [0.5] * 10 + ["nan"] + [0.5] * 53 + [1]])
    s = _err(p, mlp)
    assert s.startswith(f"{p}: error: ") and "NaN" in s and "'x'" in s, s
    p = tmp_path / "only-header.csv"
    p.write_text("a,b\n")
    assert _err(p, mlp) == f"{p}: error: holds no examples (only a header line)"


def test_csv_float_targets(tmp_path):
    """xor's targets are f32[N, 1]: the label column becomes [N, 1]."""
    m = dlc.compile(XOR, backend="interp")
    p = write_csv(tmp_path / "xor.csv", [[0, 0, 0], [0, 1, 1], [1, 0, 1], [1, 1, 0]], "a,b,target")
    feeds, n = load(p, m)
    assert feeds["y"].shape == (4, 1) and feeds["x"].shape == (4, 2)
    np.testing.assert_array_equal(feeds["y"][:, 0], [0, 1, 1, 0])


def test_flags_that_do_not_fit_the_data(tmp_path, digits, mlp):
    x, y = digits
    xi, yi = write_idx(tmp_path / "im.idx", x), write_idx(tmp_path / "lab.idx", y)
    assert "--label-column: only for CSV data" in _err(xi, mlp, labels=yi, label_column="0")
    assert _err(DIGITS, mlp, header="yes") == "error: --header: only for CSV data"
    xor = dlc.compile(XOR, backend="interp")
    assert "--label-offset: model xor has no integer labels" in _err(ROOT / "examples/data/xor.npz", xor,
                                                                      label_offset=1)
    bottleneck = dlc.compile(ROOT / "examples" / "bottleneck.dln", backend="interp")
    assert "--labels: model bottleneck has no label input" in _err(xi, bottleneck, labels=yi)
    p = tmp_path / "data.bin"
    p.write_bytes(b"hello")
    assert "cannot tell the data format" in _err(p, mlp)


# -- through the command -------------------------------------------------------------------------
def test_run_trains_on_idx_files(tmp_path, digits):
    x, y = digits
    xi = write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    yi = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y)
    r = dlc_cli("run", MLP, "--data", xi, "--labels", yi, "--normalize", "scale", "--epochs", "2",
                "--val-split", "0", "--no-progress", "--backend", "interp")
    assert r.returncode == 0, r.stderr
    assert f"60 examples from {xi} and {yi}" in r.stdout
    assert "epoch   2/2" in r.stdout


def test_run_reports_bad_labels_before_training(tmp_path, digits):
    x, y = digits
    bad = y.copy()
    bad[3] = 12
    xi = write_idx(tmp_path / "im-idx3-ubyte", x)
    yi = write_idx(tmp_path / "labels-idx1-ubyte", bad)
    r = dlc_cli("run", MLP, "--data", xi, "--labels", yi, "--epochs", "1", "--no-progress",
                "--save", tmp_path / "w.npz", "--backend", "interp")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"{yi}: error: labels 'y': 12 is out of range for the 10 classes of softmax_xent "
                                f"(logits f32[N, 10]) at {MLP_XENT}")
    assert "epoch" not in r.stdout and not (tmp_path / "w.npz").exists()


def test_run_with_csv_and_label_offset(tmp_path, digits):
    x, y = digits
    rows = [[lab + 1] + list(px) for px, lab in zip(x.reshape(60, 64).tolist(), y.tolist())]
    p = write_csv(tmp_path / "d.csv", rows, ",".join(["label"] + [f"p{i}" for i in range(64)]))
    r = dlc_cli("run", MLP, "--data", p, "--label-column", "label", "--label-offset", "1", "--epochs", "1",
                "--no-progress", "--backend", "interp")
    assert r.returncode == 0, r.stderr
    r = dlc_cli("run", MLP, "--data", p, "--label-column", "label", "--epochs", "1", "--no-progress",
                "--backend", "interp")
    assert r.returncode == 2 and "--label-offset 1" in r.stderr, r.stderr


def test_csv_whole_numbers_far_below_their_guessed_type_warn_under_scale(tmp_path, digits, mlp):
    """The issue's stumble: a CSV of 0..16 grey levels is taken as uint8 and divided by 255; it
    still is (the documented rule), but `dlc` now says so, with the range and what to do instead."""
    x, y = digits
    rows = [list(px) + [lab] for px, lab in zip(x.reshape(60, 64).tolist(), y.tolist())]
    p = write_csv(tmp_path / "d16.csv", rows)
    warn = []
    load_data(p, mlp.graph, DataOptions(normalize="scale"), warn=warn)
    assert len(warn) == 1 and "0..16, taken as uint8 and divided by 255" in warn[0], warn
    r = dlc_cli("run", MLP, "--data", p, "--normalize", "scale", "--epochs", "0", rc=0)
    assert f"warning: {p}: input 'x' holds whole numbers 0..16" in r.stderr
    assert "--normalize standardize" in r.stderr
    # no warning where the range fills the type (0..255 pixels), for typed files (IDX: the type is
    # the file's, not a guess), or without --normalize scale
    full = write_csv(tmp_path / "d255.csv", [[min(v * 16, 255) for v in r_[:-1]] + r_[-1:] for r_ in rows])
    xi, yi = write_idx(tmp_path / "im.idx3-ubyte", x), write_idx(tmp_path / "lab.idx1-ubyte", y)
    for spec, opts in ((full, {"normalize": "scale"}), (xi, {"normalize": "scale", "labels": yi}), (p, {})):
        warn = []
        load_data(spec, mlp.graph, DataOptions(**opts), warn=warn)
        assert warn == [], (spec, warn)
