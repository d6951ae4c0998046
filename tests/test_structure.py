"""The structure the design asks for, read from the source: no import circles anywhere in the package,
dependencies one way (dsl -> ir, passes -> ir, codegen -> ir, runtime -> ir and codegen), and one
front door (`cli.py` imports only `dlc.api`, and `dlc.ir.errors` for the error type). Imports are
read with `ast`, function-level ones included, so a lazy import cannot hide a circle.

Also DLC_DEBUG, which every command honours through the API: 1 traces the passes, 2 adds the IR
after each, 3 the generated source.
"""
from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import networkx as nx
import pytest

from conftest import ROOT, XOR, dlc_cli

SKIP = {"tests", "benchmarks", "examples", "docs", "build"}


def modules(root: Path, package: str = "dlc") -> dict[str, Path]:
    """Module name -> file of every module of the package rooted at `root` (the repository root is
    the package itself)."""
    out = {}
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if rel.parts[0] in SKIP or rel.parts[0].startswith("."):
            continue
        name = ".".join((package,) + rel.with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def import_graph(root: Path, package: str = "dlc") -> nx.DiGraph:
    """An edge a -> b for every import of module b (of this package) anywhere in module a."""
    mods = modules(root, package)
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, p in mods.items():
        pkg = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                subs = [f"{mod}.{a.name}" for a in node.names]
                # `from . import api` imports the module dlc.api; `from .ops import OPS` the module ops
                targets = [t for t in subs if t in mods] + ([mod] if not all(t in mods for t in subs) else [])
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                if t in mods and t != name:
                    g.add_edge(name, t)
    return g


def test_the_import_graph_finds_a_circle_where_there_is_one(tmp_path):
    """The checker itself: a package whose b imports c lazily, inside a function, and c imports b."""
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "b.py").write_text("def f():\n    from .c import g\n    return g\n")
    (tmp_path / "c.py").write_text("from . import b\n\ndef g():\n    return b\n")
    (tmp_path / "d.py").write_text("from .b import f\n")
    cycles = list(nx.simple_cycles(import_graph(tmp_path, "pkg")))
    assert [sorted(c) for c in cycles] == [["pkg.b", "pkg.c"]]


def test_no_import_circle_in_the_package():
    cycles = list(nx.simple_cycles(import_graph(ROOT)))
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles)


# the design's layering: which folders a folder's modules may import (besides their own)
MAY_IMPORT = {
    "ir": set(),
    "dsl": {"ir"},
    "passes": {"ir"},
    "codegen": {"ir"},
    "runtime": {"ir", "codegen"},
}


def _folder(module: str) -> str:
    """dlc.ir.ops -> ir; dlc.codegen -> codegen; dlc.api -> api; dlc -> dlc."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else module


def test_dependencies_flow_one_way():
    g = import_graph(ROOT)
    wrong = [(a, b) for a, b in g.edges if _folder(a) in MAY_IMPORT and _folder(b) != _folder(a)
             and _folder(b) not in MAY_IMPORT[_folder(a)]]
    assert not wrong, f"imports against the layering: {wrong}"


def test_the_command_line_goes_through_the_api_only():
    g = import_graph(ROOT)
    assert set(g.successors("dlc.cli")) == {"dlc.api", "dlc.ir.errors"}
    assert "dlc.api" in set(g.successors("dlc"))  # dlc.compile is the same door


# -- DLC_DEBUG ---------------------------------------------------------------------------------------

def dlc_cmd(*args, debug: str, cwd):
    """`dlc ARGS` with DLC_DEBUG=debug, and this interpreter's sys.path as the child's PYTHONPATH."""
    return dlc_cli(*args, cwd=cwd, env={"DLC_DEBUG": debug, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})


@pytest.mark.parametrize("level", ["1", "2", "3"])
def test_dlc_debug_levels(level, tmp_path):
    r = dlc_cmd("compile", XOR, "-o", tmp_path / "out", "--emit", "cuda",
                debug=level, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    err = r.stderr
    assert "pass autodiff" in err and "pass dce" in err                   # 1: passes, times, sizes
    assert ("model xor stage=train" in err) == (level >= "2")             # 2: the IR after each pass
    assert ("// generated CUDA of model xor" in err) == (level == "3")    # 3: the generated source
    assert "pass autodiff" not in r.stdout


def test_dlc_debug_runs_the_verifier_for_every_command(tmp_path):
    """With DLC_DEBUG set, `run` (not only check/compile/diff) verifies after every pass: the
    passes' trace appears for it too."""
    r = dlc_cmd("run", XOR, "--epochs", "1", "--no-progress", debug="1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "pass optimizer" in r.stderr
