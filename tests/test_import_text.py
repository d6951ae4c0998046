"""The `.dln` that `dlc import` writes reads like the source: a round trip (`dlc export`, then `dlc
import`) of the plain examples gives back the original bindings up to names, and the ONNX nodes of
one source line (or one module) are merged back into one binding whose comment lists them all
(runtime/onnx_import.py, `merge_chains`), parenthesised where precedence needs it.

Tolerance of the onnxruntime comparison: as in tests/test_onnx_import.py (`close`): the imported
model on the interpreter in float64 against onnxruntime in float32 on the same float32 input,
within 1e-4 relative (emu: float32 on both sides); float32's rounding over these few elementwise
ops is about 1e-7.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import dlc
from conftest import EXAMPLES, dlc_cli, needs_emu
from test_onnx_import import F2, X2, agree, helper, make, onnx, ort_run, rnd

KEYWORDS = ("input", "param", "buffer", "output", "minimize", "freeze", "train", "model", "}")


def shape_of(path) -> tuple[list, list, list]:
    """(f32 inputs, params as (name, type), bindings as (name, expression)) of a one-model .dln, the
    loss and its labels left out, every declared name renamed to v0, v1, ... in order of first
    appearance and all spaces removed: what two files share when they are the same up to names."""
    text = re.sub(r"#.*", "", path.read_text())
    lines = []
    for ln in (ln.strip() for ln in text.splitlines() if ln.strip()):
        if lines and lines[-1].count("(") > lines[-1].count(")"):
            lines[-1] += " " + ln  # a statement continued on the next line
        else:
            lines.append(ln)
    loss = next((m.group(1) for ln in lines for m in [re.match(r"minimize\s+(\w+)", ln)] if m), None)
    inputs = [m.groups() for ln in lines for m in [re.match(r"input\s+(\w+)\s*:\s*(f32\S*.*)", ln)] if m]
    params = [m.groups() for ln in lines for m in [re.match(r"param\s+(\w+)\s*:\s*([^=]+)", ln)] if m]
    binds = [m.groups() for ln in lines for m in [re.match(r"(\w+)\s*=\s*(.+)", ln)]
             if m and not ln.startswith(KEYWORDS) and m.group(1) != loss]
    names = {}
    for n in [i[0] for i in inputs] + [p[0] for p in params] + [b[0] for b in binds]:
        names.setdefault(n, f"v{len(names)}")

    def canon(s):
        return re.sub(r"\s+", "", re.sub(r"(?<![\w.])\w+(?![\w(])", lambda m: names.get(m.group(0), m.group(0)), s))
    return ([(canon(a), canon(b)) for a, b in inputs], [(canon(a), canon(b)) for a, b in params],
            [(canon(a), canon(b)) for a, b in binds])


@pytest.mark.parametrize("name", ["mlp", "logreg"])
def test_plain_examples_come_back_as_written(name, tmp_path, onnx_runtime):
    src = EXAMPLES / f"{name}.dln"
    dlc_cli("export", src, "-o", tmp_path / f"{name}.onnx", rc=0)
    dlc_cli("import", tmp_path / f"{name}.onnx", "-o", tmp_path / f"{name}.dln", rc=0)
    back = tmp_path / f"{name}.dln"
    assert shape_of(back) == shape_of(src), back.read_text()
    # and every ONNX node is still named in a comment: `h = relu(x @ w1 + b1)` lists three
    text = back.read_text()
    if name == "mlp":
        assert 'h = relu(x @ w1 + b1)                         # onnx: MatMul "h.matmul" + Add "h.add" + Relu "h"' \
            in text, text
    assert 'logits = ' in text and 'MatMul "logits.matmul" + Add "logits"' in text, text


def test_a_layer_and_its_activation_come_back_as_one_line_named_after_the_layer(tmp_path, onnx_runtime):
    """transfer_base: `h1 = relu(dense(x, 64))` exports as MatMul "h1.matmul", Add "h1.dense" and Relu
    "h1" and comes back as `h1 = relu(linear(x, 64))` (linear and dense differ in their initialiser
    only), its weights still h1.w and h1.b; the file is the original up to names."""
    src = EXAMPLES / "transfer_base.dln"
    dlc_cli("export", src, "-o", tmp_path / "t.onnx", rc=0)
    dlc_cli("import", tmp_path / "t.onnx", "-o", tmp_path / "t.dln", rc=0)
    text = (tmp_path / "t.dln").read_text()
    assert 'h1 = relu(linear(x, 64))                      # onnx: MatMul "h1.matmul" + Add "h1.dense" + Relu "h1"' \
        in text, text
    assert sorted(np.load(tmp_path / "t.npz")) == ["digits.b", "digits.w", "h1.b", "h1.w", "h2.b", "h2.w"]
    original = tmp_path / "original.dln"
    original.write_text(src.read_text().replace("dense(", "linear("))
    assert shape_of(tmp_path / "t.dln") == shape_of(original), text


def merged_module():
    return [helper.make_node("Sub", ["x", "c"], ["a"], name="/blk/Sub"),
            helper.make_node("Add", ["x", "c"], ["b"], name="/blk/Add"),
            helper.make_node("Mul", ["a", "b"], ["p"], name="/blk/Mul"),
            helper.make_node("Neg", ["p"], ["q"], name="/blk/Neg"),
            helper.make_node("Relu", ["q"], ["r"], name="/blk/Relu"),
            helper.make_node("Div", ["r", "c"], ["y"], name="/out/Div")]


def test_nodes_of_one_module_merge_with_the_parentheses_precedence_needs(tmp_path, onnx_runtime):
    """Five elementwise nodes of one PyTorch-style module path merge into one binding; ((x - c) * (x + c))
    needs both pairs of parentheses; onnxruntime agrees."""
    text = agree(make(merged_module(), X2, {"c": rnd(6, seed=3)}), F2, tmp_path)
    assert re.search(r"\n    r = relu\(neg\(\(x - c\) \* \(x \+ c\)\)\) +# onnx: Sub \"/blk/Sub\" \+ Add \"/blk/Add\" \+ "
                     r"Mul \"/blk/Mul\" \+ Neg \"/blk/Neg\" \+ Relu \"/blk/Relu\"\n", text), text
    assert re.search(r"\n    y = r / c +# onnx: Div \"/out/Div\"\n", text), text  # another module: its own line


@needs_emu
def test_merged_module_on_emu(tmp_path, onnx_runtime):
    """The merged binding through the generated CUDA (emu, float32) against onnxruntime."""
    text = agree(make(merged_module(), X2, {"c": rnd(6, seed=3)}), F2, tmp_path, backend="emu")
    assert "r = relu(neg((x - c) * (x + c)))" in text


def test_a_value_read_twice_or_from_another_scope_keeps_its_line(tmp_path, onnx_runtime):
    nodes = [helper.make_node("Add", ["x", "c"], ["a"], name="blk.add"),
             helper.make_node("Mul", ["a", "a"], ["s"], name="blk.sq"),
             helper.make_node("Sigmoid", ["s"], ["y"], name="other")]
    text = agree(make(nodes, X2, {"c": rnd(6, seed=4)}), F2, tmp_path)
    assert re.search(r"\n    a = x \+ c +# onnx: Add \"blk.add\"\n", text), text  # read twice by the square
    assert re.search(r"\n    y = sigmoid\(s\) +# onnx: Sigmoid \"other\"\n", text), text


def test_merged_text_computes_what_the_original_does(tmp_path, onnx_runtime):
    """The round-tripped mlp with the original's weights: the same logits (float64 interpreter on both,
    the same arithmetic in the same order: equal to 1e-12)."""
    src = dlc.compile(EXAMPLES / "mlp.dln", backend="interp", seed=3)
    np.savez(tmp_path / "w.npz", **src.params)
    dlc_cli("export", EXAMPLES / "mlp.dln", "--load", tmp_path / "w.npz", "-o", tmp_path / "m.onnx", rc=0)
    dlc_cli("import", tmp_path / "m.onnx", "-o", tmp_path / "m.dln", rc=0)
    back = dlc.load(tmp_path / "m.dln", tmp_path / "m.npz", backend="interp")
    x = np.random.default_rng(0).normal(size=(7, 64)).astype(np.float32)
    np.testing.assert_allclose(back.forward(x=x)["logits"], src.forward(x=x)["logits"], rtol=1e-12, atol=0)


def test_an_unrolled_lstm_cell_reads_as_its_lines(tmp_path, onnx_runtime):
    """adding_lstm (40 steps unrolled by dlc): each step's cell update, written by dlc export as two
    Mul nodes (`h.s.t0.c2.mul`, `h.s.t0.c2.mul.1`) and an Add, comes back as the one line of the
    prelude's lstm cell, and the round trip computes what the original does (float32 interpreter on
    both, the same operations in the same order: within 1e-5 relative over 40 steps), and what
    onnxruntime computes from the file (float32 with its own kernels: 1e-4 relative)."""
    src = dlc.compile(EXAMPLES / "adding_lstm.dln", backend="interp", seed=1)
    np.savez(tmp_path / "w.npz", **src.params)
    dlc_cli("export", EXAMPLES / "adding_lstm.dln", "--load", tmp_path / "w.npz", "-o", tmp_path / "a.onnx", rc=0)
    dlc_cli("import", tmp_path / "a.onnx", "-o", tmp_path / "a.dln", rc=0)
    text = (tmp_path / "a.dln").read_text()
    assert re.search(r"\n    h_s_t0_c2 = h_s_t0_f \* h_s_t0_c \+ h_s_t0_i \* h_s_t0_g +# onnx: Mul \"h.s.t0.c2.mul\" \+ "
                     r"Mul \"h.s.t0.c2.mul.1\" \+ Add \"h.s.t0.c2\"\n", text), text
    back = dlc.load(tmp_path / "a.dln", tmp_path / "a.npz", backend="interp")
    x = np.random.default_rng(2).uniform(size=(4, 40, 2)).astype(np.float32)
    want, got = src.forward(x=x)["pred"], back.forward(x=x)["pred"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    ref = ort_run(onnx.load(str(tmp_path / "a.onnx")), {"x": x})["pred"]  # and onnxruntime on the file
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())
