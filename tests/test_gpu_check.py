"""benchmarks/gpu_check.sh, the one command a GPU session runs, exercised here without a GPU so
that it cannot rot between GPU runs (issue 13):

- a quick dry run of every section on the CuPy stand-in of tests/fake_cupy.py (kernels on the
  emulator, PyTorch on the CPU): the result file has one row per section, ok / skipped / FAILED,
  tools missing here are "skipped: <reason>", and the exit status is the one the script documents;
- a run cut off by a signal still leaves its table;
- the preparation step: a dependency this python lacks is installed from the wheels folder, or
  named with the fix (gpu_prepare.sh) when the folder has no wheel for it, and the run stops there
  (exit 2) instead of reading as "no GPU"; dlc's own wheel is used only while it matches the tree.

A dependency is hidden by a module of that name, first on PYTHONPATH, whose import fails as a
missing module's does: the script must not mistake it for an installed one.
"""
import base64
import csv
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, needs_emu

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
SECTIONS = ("prep", "env", "tests", "diff", "train", "sanitize", "kernels", "speed", "suite")
STATUSES = ("ok", "skipped", "FAILED")
# the script's knobs: none of the caller's may leak into these runs
KNOBS = re.compile(r"^(T_[A-Z]+|BUDGET|TAG|OUT|GPU_WHEELS|DLC_FAKE_CUPY|DLC_GPU_CHECK_QUICK|GPU_CHECK_FORCE|"
                   r"DIFF_\w+|TRAIN_EPOCHS|SAN_\w+|RACE_BATCH|KERNEL_ARGS|SPEED_\w+|WARM_\w+|TESTS_K|TORCH_DEVICE)$")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="gpu_check.sh needs bash and coreutils' timeout")


def _env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not KNOBS.match(k)}
    env.update(OUT=str(tmp / "out"), PYTHON=sys.executable, GPU_WHEELS=str(tmp / "wheels"))
    (tmp / "wheels").mkdir(exist_ok=True)
    env.update(extra)
    return env


def _check(tmp: Path, *args, script=SCRIPT, timeout=300, **extra):
    r = subprocess.run(["bash", str(script), *args], env=_env(tmp, **extra), capture_output=True, text=True,
                       timeout=timeout, cwd=tmp)
    results = list((tmp / "out").glob("gpu-*.txt"))
    return r, (results[0].read_text() if results else "")


def _table(text: str) -> dict:
    """The section table of a result file: {section: (status, used, budget, detail)}."""
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if re.match(r"section +status +used/budget +detail$", l))
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip() or line.startswith("end:"):
            break
        m = re.match(r"(\w+) +(\S+) +(\d+)s/(\d+) +(.*)$", line)
        assert m and m[2] in STATUSES, line
        assert m[1] not in rows, f"two rows for {m[1]}"
        rows[m[1]] = (m[2], int(m[3]), int(m[4]), m[5])
    return rows


def _budgets(text: str) -> dict:
    head = text[text.index("budget (s)"):text.index("section ")]
    return {m[1]: int(m[2]) for m in re.finditer(r"^  (\w+) +(\d+)  ", head, re.M)}


def _hide(tmp: Path, *modules) -> str:
    """A folder whose modules fail to import as missing ones do, for PYTHONPATH."""
    hide = tmp / "hide"
    hide.mkdir(exist_ok=True)
    for m in modules:
        (hide / f"{m}.py").write_text(f"raise ModuleNotFoundError(\"No module named '{m}'\", name={m!r})\n")
    return os.pathsep.join([str(hide)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


def _real_cupy() -> bool:
    return importlib.util.find_spec("cupy") is not None


# -- the dry run ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    if _real_cupy():
        pytest.skip("a real CuPy is installed: DLC_FAKE_CUPY=1 gives way to it (run gpu_check.sh itself)")
    tmp = tmp_path_factory.mktemp("dry")
    t0 = time.perf_counter()
    r, text = _check(tmp, "--quick", DLC_FAKE_CUPY="1")
    return r, text, time.perf_counter() - t0


@needs_emu  # the CuPy stand-in runs the kernels on the emulator
def test_dry_run_has_a_row_per_section(dry_run):
    r, text, seconds = dry_run
    assert "DRY RUN" in r.stdout, r.stdout[-3000:]
    rows = _table(text)
    assert tuple(rows) == SECTIONS, (rows, r.stdout[-3000:])
    for sec in ("prep", "env", "tests", "diff", "train", "sanitize", "kernels", "speed"):
        assert rows[sec][0] == "ok", (sec, rows[sec], r.stdout[-4000:])
    # the program the sanitizer watches ran (on the stand-in); the sanitizer itself, missing
    # here, is skipped with its reason, never FAILED or silently absent
    assert re.search(r"sanitize +gpu_step\.py +ok +dry run, no sanitizer: one graphed step of 1 example", r.stdout)
    assert rows["sanitize"][3] == "1 ok, 1 skipped, 0 FAILED; compute-sanitizer: dry run: no GPU for it to watch"
    assert rows["suite"][0] == "skipped" and "quick mode" in rows["suite"][3]
    assert "agree" in rows["diff"][3] and "0 FAILED" in rows["diff"][3]
    for sec, (_status, used, budget, _detail) in rows.items():
        assert used <= budget + 5, (sec, used, budget)


@needs_emu
def test_dry_run_exit_status_is_the_documented_one(dry_run):
    r, text, _ = dry_run
    header = SCRIPT.read_text()
    assert "Exit status: 0 no FAILED row" in header
    failed = [s for s, row in _table(text).items() if row[0] == "FAILED"]
    assert r.returncode == (1 if failed else 0), (failed, r.stdout[-3000:])
    assert r.returncode == 0
    (end,) = [l for l in text.splitlines() if l.startswith("end: ")]
    assert end.startswith(f"end: exit {r.returncode} (8 ok, 1 skipped, 0 FAILED sections;"), end
    # and the summary after the table: every check, the training run, the speed table
    assert "accuracy cuda vs interp" in text and "step_ms:" in text


@needs_emu
def test_budgets_add_up_to_less_than_the_session_limit(dry_run):
    _r, text, _ = dry_run
    budgets = _budgets(text)
    assert set(budgets) == set(SECTIONS) | {"total"}
    assert budgets["total"] == sum(v for k, v in budgets.items() if k != "total")
    assert budgets["total"] <= 600 - 30, budgets
    assert "of the 600 s" in text


def test_a_cut_off_run_leaves_its_table(tmp_path):
    """Killed (its whole process group, as a session's time limit does) after two sections: the
    rows written so far stay, and the cut-off is said."""
    if _real_cupy():
        pytest.skip("a real CuPy is installed")
    env = _env(tmp_path, DLC_FAKE_CUPY="1")
    p = subprocess.Popen(["bash", str(SCRIPT), "--quick", "prep,env,tests,diff,train"], env=env, cwd=tmp_path,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            text = "".join(f.read_text() for f in (tmp_path / "out").glob("gpu-*.txt"))
            if re.search(r"^env +\w+ ", text, re.M):
                break
            time.sleep(0.2)
        assert p.poll() is None, "finished before it could be cut off"
        os.killpg(p.pid, signal.SIGTERM)
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    (result,) = (tmp_path / "out").glob("gpu-*.txt")
    text = result.read_text()
    rows = _table(text)
    assert rc == 124
    assert list(rows)[:2] == ["prep", "env"] and rows["prep"][0] == "ok", text
    assert "end: stopped by a signal" in text


def test_bad_arguments_exit_2(tmp_path):
    r, _ = _check(tmp_path, "env,nosuch")
    assert r.returncode == 2 and "unknown section 'nosuch'" in r.stderr


# -- the preparation: what a bare GPU machine lacks ------------------------------------------
def test_a_missing_lark_is_named_with_the_fix_not_taken_for_no_gpu(tmp_path):
    r, text = _check(tmp_path, PYTHONPATH=_hide(tmp_path, "lark"))
    assert r.returncode == 2, r.stdout[-3000:]
    want = f"lark is not installed and {tmp_path / 'wheels'}/ has no lark wheel"
    assert want in r.stdout and "run `bash benchmarks/gpu_prepare.sh` on a machine with network" in r.stdout
    assert "NO GPU" not in r.stdout
    rows = _table(text)
    assert tuple(rows) == SECTIONS
    assert rows["prep"][0] == "FAILED" and want in rows["prep"][3] and "gpu_prepare.sh" in rows["prep"][3]
    assert all(rows[s][0] == "skipped" and "preparation failed" in rows[s][3] for s in SECTIONS[1:])
    assert "end: exit 2 " in text


def _repack(dist: str, folder: Path) -> Path:
    """The installed distribution as the wheel it came from (its files and RECORD)."""
    d = importlib.metadata.distribution(dist)
    if not d.files:
        pytest.skip(f"{dist}'s installed files are not listed")
    whl = folder / f"{dist}-{d.version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for f in d.files:
            if f.parts[0] == ".." or "__pycache__" in f.parts or f.suffix == ".pyc" or not f.locate().is_file():
                continue
            z.write(f.locate(), str(f))
    return whl


def test_a_missing_lark_is_installed_from_the_wheels_folder(tmp_path):
    (tmp_path / "wheels").mkdir()
    whl = _repack("lark", tmp_path / "wheels")
    r, text = _check(tmp_path, "prep", PYTHONPATH=_hide(tmp_path, "lark"))
    assert r.returncode == 0, r.stdout[-3000:]
    assert re.search(rf"lark +installed +{re.escape(importlib.metadata.version('lark'))} from .*{whl.name}", r.stdout)
    rows = _table(text)
    assert tuple(rows) == ("prep",) and rows["prep"][0] == "ok"


def _record_hash(path: Path) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()


def _copy_of_the_tree(dst: Path) -> Path:
    skip = shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                  ".hypothesis", "*.so", "gpu_wheels")
    shutil.copytree(ROOT, dst, ignore=skip)
    return dst


def _dlc_wheel(tree: Path, folder: Path) -> Path:
    """A wheel of `tree` as `pip wheel` builds it: dlc/<file> for the package files, with RECORD."""
    files = [p for p in tree.rglob("*") if p.is_file() and p.relative_to(tree).parts[0] in
             ("dsl", "ir", "passes", "codegen", "runtime") or p.parent == tree and p.suffix == ".py"]
    files = [p for p in files if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    whl = folder / "dlc-0.1.0-py3-none-any.whl"
    rows = [[f"dlc/{p.relative_to(tree)}", _record_hash(p), str(p.stat().st_size)] for p in files]
    info = "dlc-0.1.0.dist-info"
    meta = {"METADATA": "Metadata-Version: 2.1\nName: dlc\nVersion: 0.1.0\n",
            "WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(whl, "w") as z:
        for p, row in zip(files, rows):
            z.write(p, row[0])
        for name, text in meta.items():
            z.writestr(f"{info}/{name}", text)
            rows.append([f"{info}/{name}", "", ""])
        rows.append([f"{info}/RECORD", "", ""])
        with open(folder / "RECORD", "w", newline="") as f:
            csv.writer(f).writerows(rows)
        z.write(folder / "RECORD", f"{info}/RECORD")
    (folder / "RECORD").unlink()
    return whl


def test_the_dlc_wheel_is_used_only_while_it_matches_the_tree(tmp_path):
    """On a copy of the repository (so that nothing edits it meanwhile): a wheel of exactly its
    files is installed and imported; once a file changes, the tree itself is, through a link."""
    tree = _copy_of_the_tree(tmp_path / "repo")
    (tmp_path / "wheels").mkdir()
    whl = _dlc_wheel(tree, tmp_path / "wheels")
    script = tree / "benchmarks" / "gpu_check.sh"
    r, _ = _check(tmp_path, "prep", script=script)
    assert r.returncode == 0, r.stdout[-3000:]
    assert re.search(rf"dlc +ok +0\.1\.0 from .*{whl.name}, which matches the working tree", r.stdout), r.stdout

    with open(tree / "cli.py", "a") as f:
        f.write("# changed after the wheel was built\n")
    (tree / "runtime" / "new_module.py").write_text("")
    r, _ = _check(tmp_path, "prep", script=script)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "from the working tree through a link" in r.stdout
    said = re.search(r"differs from the working tree in (\d+) files \(([^)]*\)?)\)", r.stdout)
    assert said and said[1] == "2" and said[2] == "cli.py, runtime/new_module.py (new)", r.stdout


def test_speed_table_tells_a_configuration_not_run_from_one_that_failed():
    """A configuration the budget left no time for is `skip` in the table and listed once as
    skipped; only one that ran and gave no record is FAILED (a dry run once listed 35 skipped
    configurations as FAILED)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    recs = [dict(kind="step", impl="dlc-graph", example="mlp", batch=128, step_ms=1.0, dev_ms=0.5),
            dict(kind="step", impl="eager", example="mlp", batch=128, step_ms=2.5, dev_ms=1.0),
            dict(kind="step", impl="dlc", example="mlp", batch=128, error="no record (exit 1)"),
            dict(kind="step", impl="eager", example="lenet", batch=128, error="skipped: no time left"),
            dict(kind="step", impl="dlc-graph", example="lenet", batch=128, error="skipped: no time left")]
    lines = bench_gpu.speed_table(recs)
    rows = [line.split() for line in lines if line.startswith("  lenet") or line.startswith("  mlp")]
    # columns: example batch dlc dlc-graph eager compile compile-ro eager/graph ...
    assert [r[2:5] for r in rows if r[0] == "lenet"] == [["-", "skip", "skip"]] * 2, rows
    assert [(r[2], r[7]) for r in rows if r[0] == "mlp"] == [("FAIL", "2.50"), ("FAIL", "2.00")], rows
    assert [line for line in lines if line.startswith("FAILED")] == ["FAILED dlc mlp batch 128: no record (exit 1)"]
    assert "skipped, no time left in the budget (2): eager lenet@128, dlc-graph lenet@128" in lines
