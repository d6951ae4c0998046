"""The package layout: the repository root is the import package `dlc`, a built wheel holds the
grammar, prelude, templates and emulation header, and `import dlc` is the real package from any
folder. Also: the README's install line is the one CI runs."""
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

SUBPACKAGES = ("dsl", "ir", "passes", "codegen", "runtime")


def _copy_tree(dst: Path) -> Path:
    """The working tree without git data, virtual environments or build outputs."""
    skip = shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                  ".hypothesis", "*.so")
    shutil.copytree(ROOT, dst, ignore=skip)
    return dst


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_tree(tmp / "src")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = (tmp / "dist").glob("dlc-*.whl")
    return whl


def test_wheel_holds_one_package_with_its_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names}
    # one import package and its metadata: no generic `ir`, `runtime`, `tests` ... in site-packages
    assert {t for t in tops if not t.endswith(".dist-info")} == {"dlc"}, tops
    for f in ["dlc/__init__.py", "dlc/__main__.py", "dlc/api.py", "dlc/cli.py", "dlc/dsl/dln.lark",
              "dlc/dsl/prelude.dln", "dlc/ir/ir.lark", "dlc/ir/ops.py", "dlc/codegen/cuda_emu.h",
              "dlc/codegen/templates/module.cu.j2", "dlc/codegen/templates/matmul.cu.j2"]:
        assert f in names, f
    for pkg in SUBPACKAGES:
        assert f"dlc/{pkg}/__init__.py" in names
    # every template in the tree is in the wheel
    want = {f"dlc/codegen/templates/{p.name}" for p in (ROOT / "codegen" / "templates").iterdir()}
    assert want <= names, want - names
    # and nothing from tests/, benchmarks/, examples/ or docs/
    assert not [n for n in names if re.match(r"dlc/(tests|benchmarks|examples|docs)/", n)]


def test_the_built_wheel_runs_from_anywhere(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import dlc, sys; from pathlib import Path;"
            "assert Path(dlc.__file__).parent == Path(sys.argv[1]) / 'dlc', dlc.__file__;"
            "m = dlc.compile(sys.argv[2], backend='interp');"
            "from dlc.codegen import generate; src = generate(m.graph).source;"
            "print(len(src) > 1000, sorted(m.params))")
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code, str(site), str(ROOT / "examples" / "mlp.dln")],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True ['b1', 'b2', 'w1', 'w2']"


def test_import_from_the_parent_of_a_clone_named_dlc(tmp_path):
    """A clone named `dlc` in the current folder shadows any installed copy; it must still be the
    real package (before the move it was an empty namespace package without `compile`)."""
    _copy_tree(tmp_path / "dlc")
    r = subprocess.run([sys.executable, "-c", "import dlc; print(dlc.__file__); print(callable(dlc.compile))"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    file, ok = r.stdout.split()
    assert Path(file) == tmp_path / "dlc" / "__init__.py" and ok == "True"


def test_import_from_the_repository_root_gives_the_package():
    r = subprocess.run([sys.executable, "-c", "import dlc; print(dlc.compile.__module__)"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "dlc.api"


def test_readme_install_line_is_the_one_ci_runs():
    readme = (ROOT / "README.md").read_text()
    install = readme[readme.index("## Install"):readme.index("## Quick start")]
    (line,) = re.findall(r"^pip install .*$", install, re.M)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert any(c.split("#")[0].strip() == line for c in ci), (line, ci)
    # and the test command in the README is the one CI ends with
    (test_cmd,) = re.findall(r"^python -m pytest.*$", readme[readme.index("## Test"):], re.M)
    assert ci[-1].strip() == test_cmd
