"""Inception reductions at -O2 (passes/inception.py): an inception module's sibling 1x1
convolutions are one GEMM in the forward pass and in both adjoints, and the merged model computes
the same loss and gradients as the one written (golden IR cases: tests/golden/inception)."""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.codegen import generate
from dlc.runtime.diff import synth_feeds
from conftest import EXAMPLES, needs_emu


def _graph(level):
    return dlc.compile(EXAMPLES / "inception.dln", backend="interp", opt_level=level).graph


def _one_by_one(g, n):
    w = [a for a in g.operands(n) if g.type(a).rank == 4 and tuple(g.type(a).shape[2:]) == (1, 1)
         and g.op(n) in ("conv2d", "conv2d_grad_x", "conv2d_grad_w")]
    return bool(w)


def _reading(g, n, x):
    return x in g.operands(n)


@pytest.mark.parametrize("module, x", [("i3a", "stem"), ("i3b", "pool")])
def test_sibling_1x1_convs_are_one_gemm_forward_and_in_both_adjoints(module, x):
    for level, want in ((1, 3), (2, 1)):
        g = _graph(level)
        mod = generate(g)
        launched = {l.node for l in mod.launches}
        groups = {m: r for r, (_, ms) in g.meta.groups.items() for m in ms}

        def kernels(op):  # 1x1 kernels of this op that read x (the module's input), as launched
            nodes = [n for n in g.nx if g.op(n) == op and _one_by_one(g, n) and _reading(g, n, x)]
            return {groups.get(n, n) for n in nodes if groups.get(n, n) in launched}
        assert len(kernels("conv2d")) == want, (level, kernels("conv2d"))
        assert len(kernels("conv2d_grad_w")) == want, (level, kernels("conv2d_grad_w"))
        # the input gradient: one GEMM for the merged kernel, which reads the adjoint, not x
        grad_x = {n for n in g.nx if g.op(n) == "conv2d_grad_x" and g.operands(n)[2] == x
                  and tuple(g.type(g.operands(n)[1]).shape[2:]) == (1, 1)}
        assert len(grad_x) == want, (level, grad_x)
    merged = [n for n in _graph(2).nx if n.startswith(f"{module}.conv1x1")]
    assert f"{module}.conv1x1" in merged


def test_the_merged_model_has_the_same_loss_and_gradients():
    """float64 on the interpreter: -O2 (merged) against -O0 (as written), to 1e-9 relative: only
    the order of sums differs."""
    feeds = synth_feeds(_graph(0), 3, 0)
    m0 = dlc.compile(EXAMPLES / "inception.dln", backend="interp", opt_level=0, float_dtype="float64", seed=2)
    m2 = dlc.compile(EXAMPLES / "inception.dln", backend="interp", opt_level=2, float_dtype="float64", seed=2)
    assert sorted(m0.params) == sorted(m2.params)  # the model's params are unchanged
    l0, g0 = m0.grad(**feeds)
    l2, g2 = m2.grad(**feeds)
    assert l2 == pytest.approx(l0, rel=1e-9)
    for p in g0:
        np.testing.assert_allclose(g2[p], g0[p], rtol=1e-9, atol=1e-12, err_msg=p)


def test_slices_that_partition_a_value_send_back_one_concat():
    g = _graph(2)
    (z,) = [n for n in g.nx if n == "d.i3a.conv1x1.relu"]
    assert g.op(z) == "concat" and not [n for n in g.nx if g.op(n) == "pad"]


# -- --insert-bottlenecks: a model rewrite, opt-in --------------------------------------------------

def test_bottleneck_rewrite_counts_by_hand():
    from dlc.dsl.frontend import lower
    from dlc.ir.verify import verify
    from dlc.passes.bottleneck import insert_bottlenecks
    g = lower((EXAMPLES / "bottleneck.dln").read_text(), "bottleneck.dln")
    r = insert_bottlenecks(g)  # R = 1/3: 192 -> 64 maps before the direct 5x5 layer
    verify(r.graph)
    hw = 28 * 28
    before_direct = 2 * 32 * hw * 192 * 25 + 2 * 32 * hw          # 5x5 conv, then + bias and relu
    after_direct = 2 * 64 * hw * 192 + 2 * 64 * hw + 2 * 32 * hw * 64 * 25 + 2 * 32 * hw
    total_before = 265_857_536                                     # what `dlc check` reports
    want = f"FLOPs per example {total_before:,} -> {total_before - before_direct + after_direct:,}"
    assert want in r.lines[-1]
    assert r.graph.type("direct.w").shape == (32, 64, 5, 5)
    assert r.graph.type("direct.conv2d.reduce.w").shape == (64, 192, 1, 1)
    assert "reduced.w" in r.graph and r.graph.type("reduced.w").shape == (32, 16, 5, 5)  # already reduced
    assert "THIS CHANGES THE MODEL" in r.lines[0]
    assert g.type("direct.w").shape == (32, 192, 5, 5)             # the input graph is untouched


def test_bottleneck_flag_on_the_command_line(capsys):
    from dlc.cli import main
    assert main(["check", str(EXAMPLES / "bottleneck.dln"), "--insert-bottlenecks=0.25"]) == 0
    out = capsys.readouterr().out
    assert "direct.conv2d: 192 -> 48 channels" in out and "THIS CHANGES THE MODEL" in out
    assert main(["check", str(EXAMPLES / "bottleneck.dln"), "--insert-bottlenecks=1.5"]) == 2
    assert "--insert-bottlenecks: the ratio must be between 0 and 1" in capsys.readouterr().err


@needs_emu
def test_a_rewritten_model_trains_and_agrees_on_emu():
    ref = dlc.compile(EXAMPLES / "lenet.dln", backend="interp", insert_bottlenecks=0.5, seed=4)
    emu = dlc.compile(EXAMPLES / "lenet.dln", backend="emu", opt_level=2, insert_bottlenecks=0.5, seed=4)
    assert "c2.conv2d.reduce.w" in ref.params and ref.params["c2.w"].shape == (32, 8, 3, 3)
    feeds = synth_feeds(ref.graph, 6, 1)
    for _ in range(2):  # float32, other summation orders: see test_fusion
        np.testing.assert_allclose(emu.step(**feeds), ref.step(**feeds), rtol=1e-4, atol=1e-5)


def test_concat_elimination_forward_and_backward():
    """At -O2 each branch of a module stores straight into its slice of the module's output, and
    the merged 1x1's adjoint is assembled the same way: no concat kernel runs for either; at -O1
    every concat is a kernel. (test_fusion.py checks the -O2 step against the interpreter.)"""
    for level in (1, 2):
        g = _graph(level)
        mod = generate(g)
        launched = {l.node for l in mod.launches}
        concats = [n for n in g.nx if g.op(n) == "concat" and g.type(n).rank == 4 and g.type(n).shape[0] == "N"]
        assert {"i3a", "i3b"} <= set(concats)
        eliminated = [c for c in concats if c not in launched]
        if level == 1:
            assert not eliminated
        else:
            assert set(eliminated) == set(concats) and "d.i3a.conv1x1.relu" in eliminated
            for c in eliminated:  # the buffer exists and every part's kernel writes into it
                writers = [l for l in mod.launches if l.args[0] == mod.node_buffer[c]]
                assert len(writers) == len(g.operands(c)), c
                assert all("concat elimination" in "".join(k.comment) for k in mod.kernels
                           if k.name in {l.kernel for l in writers})
