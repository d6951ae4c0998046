"""Edges of the IR and the front end, each once a bug: DOT labels escaped twice, gradient nodes
named after the wrong value, misspelt dimensions taken for new symbols, `true` rebound, two
assigns to one variable, CUDA text in ir/."""
from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import dlc
from dlc.dsl.frontend import lower
from dlc.ir.dot import to_dot
from dlc.ir.errors import DlcError
from dlc.ir.graph import Graph
from dlc.ir.text import parse_ir
from dlc.ir.types import TensorType
from dlc.ir.verify import verify
from dlc.passes.autodiff import autodiff
from conftest import EXAMPLE_FILES, ROOT


# -- 1. DOT labels ------------------------------------------------------------------------------

def _odd_graph() -> Graph:
    """A small graph whose model name, a node name and an output name hold quotes and backslashes."""
    g = Graph('we"ird\\model')
    x = g.add("input", [], name="x", type=TensorType("f32", (2, 3)))
    t = g.add("tanh", [x], name="t")
    g.rename(t, 'q"t\\n')               # not a name .dln makes, but DOT must survive it
    g.meta.outputs['o"ut\\'] = 'q"t\\n'
    return g


def _labels(dot: str) -> dict:
    """node id (as written, unquoted) -> label text as written between the quotes."""
    out = {}
    for m in re.finditer(r'^  "((?:[^"\\]|\\.)*)" \[label="((?:[^"\\]|\\.)*)"', dot, re.M):
        out[m.group(1)] = m.group(2)
    return out


def test_dot_labels_break_lines_with_single_escapes():
    g = lower((ROOT / "examples" / "mlp.dln").read_text(), "examples/mlp.dln")
    dot = to_dot(g)
    labels = _labels(dot)
    # was a bug: the label held `\\n` (an escaped backslash, then n), shown literally by graphviz
    assert labels["h.matmul"] == r"%h.matmul\nmatmul : f32[N, 128]\nline 12"
    assert labels["x"] == r"%x\ninput : f32[N, 64]\nline 4"
    assert "\\\\n" not in dot


def test_dot_still_escapes_quotes_and_backslashes_in_names():
    dot = to_dot(_odd_graph())
    assert dot.startswith('digraph "we\\"ird\\\\model" {\n')
    labels = _labels(dot)
    # the node's id and its name in the label: quote and backslash escaped; the breaks single
    assert labels['q\\"t\\\\n'] == '%q\\"t\\\\n\\ntanh : f32[2, 3]'
    assert '  "q\\"t\\\\n" -> "output o\\"ut\\\\";' in dot
    assert '  "x" -> "q\\"t\\\\n" [label=0];' in dot


def _svg_nodes(dot: str) -> dict:
    svg = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, check=True).stdout
    ns = {"s": "http://www.w3.org/2000/svg"}
    root = ET.fromstring(svg)
    return {grp.find("s:title", ns).text: [t.text for t in grp.findall("s:text", ns)]
            for grp in root.iter("{http://www.w3.org/2000/svg}g") if grp.get("class") == "node"}


@pytest.mark.skipif(shutil.which("dot") is None,
                    reason="graphviz `dot` is not installed; the text checks above run anyway")
def test_dot_renders_labels_on_separate_lines():
    g = lower((ROOT / "examples" / "mlp.dln").read_text(), "examples/mlp.dln")
    nodes = _svg_nodes(to_dot(g))
    assert nodes["h.matmul"] == ["%h.matmul", "matmul : f32[N, 128]", "line 12"]
    # a label shows the name as it is: the quote, and the backslash before `n` (not a line break)
    shown = sorted(_svg_nodes(to_dot(_odd_graph())).values())
    assert shown == [["%q\"t\\n", "tanh : f32[2, 3]"], ["%x", "input : f32[2, 3]"], ['output o"ut\\']], shown


# -- 2. gradient names --------------------------------------------------------------------------

def _backward(path: Path) -> Graph:
    return dlc.compile(path.read_text(), backend="interp").stages["backward"]


def test_gradient_names_say_whose_gradient_they_are():
    g = _backward(ROOT / "examples" / "mlp.dln")
    assert g.meta.grads == {"w1": "d.w1", "b1": "d.b1", "w2": "d.w2", "b2": "d.b2"}
    # d.h is h's adjoint: h's type, dlogits @ w2^T (was: %d.h was relu_grad, the adjoint of h.add,
    # and %d.h.matmul, of type [64, 128], was w1's gradient)
    assert g.type("d.h") == g.type("h")
    assert g.op("d.h") == "matmul" and g.operands("d.h") == ["d.logits", "w2"]
    assert g.attrs("d.h") == {"ta": False, "tb": True, "min_precision": None}
    assert g.op("d.h.add") == "relu_grad" and g.operands("d.h.add") == ["d.h", "h"]
    # w1 has two uses (h.matmul and the l2 penalty): two named contributions and their sum
    assert g.op("d.w1") == "add"
    assert sorted(g.operands("d.w1")) == ["d.w1.from.h.matmul", "d.w1.from.loss.l2"]
    assert g.operands("d.w1.from.h.matmul") == ["x", "d.h.add"]


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.stem for p in EXAMPLE_FILES])
def test_every_adjoint_has_its_values_type_and_every_param_its_name(path):
    g = _backward(path)
    for p, gr in g.meta.grads.items():
        assert gr == f"d.{p}", (p, gr)
    for n in g.nx:
        if n.startswith("d.") and n[2:] in g.nx:
            assert g.type(n) == g.type(n[2:]), f"%{n} is not the adjoint of %{n[2:]}"


def test_a_fan_out_names_each_contribution():
    g = parse_ir("model t stage=forward\n%x : f32[2] = input()\n%w : f32[2] = param[init=zeros]()\n"
                 "%a : f32[2] = tanh(%w)\n%b : f32[2] = exp(%w)\n%c : f32[2] = mul(%a, %b)\n"
                 "%loss : f32[] = sum[axis=null, keepdims=false](%c)\nloss %loss\n")
    out = verify(autodiff(g))
    assert out.meta.grads == {"w": "d.w"}
    assert out.op("d.w") == "add"
    assert sorted(out.operands("d.w")) == ["d.w.from.a", "d.w.from.b"]
    assert out.op("d.w.from.a") == "tanh_grad" and out.operands("d.w.from.a") == ["d.a", "a"]
    assert out.op("d.w.from.b") == "mul" and out.operands("d.w.from.b") == ["d.b", "b"]


def test_an_adjoint_name_taken_in_the_forward_graph_gets_a_suffix():
    g = parse_ir("model t stage=forward\n%w : f32[2] = param[init=zeros]()\n%d.w : f32[2] = tanh(%w)\n"
                 "%loss : f32[] = sum[axis=null, keepdims=false](%d.w)\nloss %loss\n")
    out = verify(autodiff(g))
    assert out.op("d.w") == "tanh"                      # the forward value keeps its name
    assert out.meta.grads["w"] == "d.w.1" and out.op("d.w.1") == "tanh_grad"
    assert out.operands("d.w.1") == ["d.d.w", "d.w"]


# -- 3. misspelt dimensions ---------------------------------------------------------------------

def _lower(body: str):
    return lower("model m {\n" + body + "\n}\n", "m.dln")


@pytest.mark.parametrize("body, name, near, col", [
    ("input x : f32[N, 64]\ninput y : i32[M]\noutput x", "M", "N", 15),
    ("input x : f32[batch, 64]\ninput y : i32[bacth]\noutput x", "bacth", "batch", 15),
    ("hidden = 32\ninput x : f32[N, hiden]\noutput x", "hiden", "hidden", 18),
    ("input x : f32[N, 4]\ninput y : f32[n, 4]\noutput x", "n", "N", 15),
    # the typo would otherwise surface later, as a confusing shape mismatch in softmax_xent
    ("input x : f32[N, 64]\ninput y : i32[M]\nparam w : f32[64, 10]\nloss = softmax_xent(x @ w, y)\n"
     "minimize loss with sgd(lr = 0.1)", "M", "N", 15),
])
def test_a_misspelt_dimension_is_an_error_at_the_name(body, name, near, col):
    with pytest.raises(DlcError) as e:
        _lower(body)
    assert e.value.message.startswith(f"unknown dimension '{name}' (did you mean '{near}'?)"), e.value.message
    assert (e.value.loc.line, e.value.loc.col) == (3, col)


@pytest.mark.parametrize("body, dims", [
    ("input x : f32[N, C, H, W]\noutput x", {"x": ("N", "C", "H", "W")}),   # one type: not compared
    ("input x : f32[N, 4]\ninput z : f32[K, 4]\noutput x, z", {"z": ("K", 4)}),  # K is far from N
    ("input x : f32[N, 4]\ninput z : f32[M, 4]\nw = reshape(z, [M, 2, 2])\noutput x, w", {"z": ("M", 4)}),
    ("input x : f32[N, 4]\ninput y : i32[N]\noutput x", {"y": ("N",)}),
])
def test_new_symbols_that_are_not_typos_are_accepted(body, dims):
    g = _lower(body)
    for n, shape in dims.items():
        assert g.type(n).shape == shape


def test_a_bound_constant_in_an_input_type_is_its_value():
    g = _lower("hidden = 4 * 8\ninput x : f32[N, hidden]\noutput x")
    assert g.type("x").shape == ("N", 32)
    with pytest.raises(DlcError, match="already defined as a symbolic dimension") as e:
        _lower("input x : f32[N, hidden]\nhidden = 32\noutput x")
    assert e.value.loc.line == 3


def test_true_in_an_input_type_is_not_a_symbol():
    with pytest.raises(DlcError, match="positive integer, found true"):
        _lower("input x : f32[N, true]\noutput x")


# -- 4. true and false are reserved ---------------------------------------------------------------

@pytest.mark.parametrize("src, line, col", [
    ("model m {\n    input x : f32[2]\n    true = 3\n    output x\n}\n", 3, 5),
    ("model m {\n    input false : f32[2]\n    output x\n}\n", 2, 11),
    ("model m {\n    input x : f32[2]\n    param true : f32[2]\n    output x\n}\n", 3, 11),
    ("def f(x, false) {\n    return x\n}\nmodel m {\n    input x : f32[2]\n    output x\n}\n", 1, 10),
    ("def f(x: [true, K]) {\n    return x\n}\nmodel m {\n    input x : f32[2, 3]\n    output x\n}\n", 1, 11),
    ("def true() {\n    return 1\n}\nmodel m {\n    input x : f32[2]\n    output x\n}\n", 1, 5),
])
def test_true_and_false_cannot_be_bound(src, line, col):
    with pytest.raises(DlcError) as e:
        lower(src, "m.dln")
    assert "reserved" in e.value.message
    assert (e.value.loc.line, e.value.loc.col) == (line, col)


def test_true_and_false_still_read_as_booleans():
    g = lower("model m {\n    input x : f32[2, 3]\n    y = matmul(x, x, tb = true, ta = false)\n    output y\n}\n")
    assert g.attrs("y") == {"ta": False, "tb": True, "min_precision": None}


# -- 5. one assign per target -------------------------------------------------------------------

def test_verifier_rejects_two_assigns_to_one_target():
    text = ("model t stage=train\n%x : f32[2] = input()\n%w : f32[2] = param[init=zeros]()\n"
            "%a : f32[2] = tanh(%x)\n%b : f32[2] = exp(%x)\n"
            "%w.assign : f32[2] = assign(%w, %a)  @ m.dln:3:5\n"
            "%w.assign.1 : f32[2] = assign(%w, %b)  @ m.dln:4:5\n")
    with pytest.raises(DlcError) as e:
        verify(parse_ir(text, "t.ir"))
    msg = e.value.message
    assert "%w" in msg and "%w.assign" in msg and "%w.assign.1" in msg and "twice" in msg, msg
    assert e.value.loc is not None and e.value.loc.line == 4
    # one assign per target is fine, as is one assign to each of two targets
    verify(parse_ir(text.replace("assign(%w, %b)", "tanh(%b)").replace("%w.assign.1 : f32[2]", "%v : f32[2]")))


# -- 6. nothing in ir/ knows about CUDA -----------------------------------------------------------

def test_ir_holds_no_cuda_code():
    for f in sorted((ROOT / "ir").glob("*.py")):
        text = f.read_text()
        for word in ("__device__", "__global__", "__forceinline__"):  # CUDA qualifiers: C text for kernels
            assert word not in text, f"{f.relative_to(ROOT)} contains {word}"


def test_the_c_philox_is_the_numpy_philox():
    from dlc.codegen.philox import PHILOX_C
    from dlc.ir import philox
    assert "dlc_philox_word0" in PHILOX_C and "dlc_uniform" in PHILOX_C
    for k in (philox.M0, philox.M1):
        assert f"0x{k:08X}ull" in PHILOX_C
    for k in (philox.W0, philox.W1):
        assert f"0x{k:08X}u;" in PHILOX_C
    assert f"r < {philox.ROUNDS};" in PHILOX_C


def test_a_raw_control_character_in_an_ir_string_is_a_located_error():
    """A quoted attribute holding a raw control character (found by test_fuzz) is refused on its
    line, as the .dln parser refuses one, not with a Lark VisitError."""
    text = ('model m stage=forward\n%w : f32[3, 4] = param[init="uniform(-1\x01.0, 1.0)"]()  @ <string>:4:5\n'
            'output w = %w\n')
    with pytest.raises(DlcError, match="invalid string literal") as e:
        parse_ir(text)
    assert e.value.loc is not None and e.value.loc.line == 2
