"""Evaluation runs specialised at compile time (passes/evaluation.py, -O1) and batch norm folded into
the convolution or matmul before it (passes/fold_bn.py, -O2).

- the outputs of an evaluation run against PyTorch in eval mode (the oracle nobody here wrote):
  examples/resnet_small.dln (its twin in benchmarks/torch_models.py) and a small conv + bias +
  batch norm + dense + batch norm model, on the interpreter in float64 (relative 1e-10: both sides
  exact to rounding, only the order of sums and the folded product's rounding differ) and on emu in
  float32 (1e-4 of the largest output: float32 convolutions over a few hundred terms, the folded
  weight rounded once more);
- training runs are unchanged: the same step, bit for bit, as the build without the two passes,
  and the same launch plan; training-mode `forward` still draws dropout masks;
- an evaluation run launches no `if_training` kernel and fewer kernels than before (Build.stats,
  `dlc compile --stats`); NVRTC compiles the module with its evaluation kernels;
- the cuda backend's bookkeeping (over tests/fake_cupy.py) runs training steps and evaluation runs
  from one state, with and without captured graphs;
- models without an op that depends on the mode keep their IR exactly;
- bad IR: an evaluation form that reads the mode, or lacks an output, is refused by the verifier;
  an op with the TRAINING effect must declare its evaluation meaning.
"""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from conftest import EXAMPLE_FILES, EXAMPLES, dlc_cli, import_torch, import_torch_models, needs_emu
from dlc.codegen import generate
from dlc.ir.errors import DlcError
from dlc.ir.ops import OPS, TRAINING
from dlc.ir.registry import op
from dlc.ir.text import parse_ir
from dlc.ir.verify import verify

RESNET = EXAMPLES / "resnet_small.dln"
# -O2 as it was before the two passes: what an evaluation run computed then
BEFORE = dict(passes=["inception", "fold-transpose", "constant-fold", "cse", "dce", "fuse"])
TOL = {"interp": 1e-10, "emu": 1e-4}   # of the largest |output|: see the module doc
BACKENDS = ["interp", pytest.param("emu", marks=needs_emu)]

SMALL = """model cbn {
    input x : f32[N, 2, 6, 6]
    input y : i32[N]
    c   = conv(x, 4, 3, stride = 2, padding = 1, groups = 2)   # with a bias; strided, two groups
    n   = batchnorm2d(c)
    f   = reshape(relu(n), [N, 36])
    d   = dense(f, 5)                          # a matmul with a bias, then batch norm
    logits = batchnorm1d(d)
    loss = softmax_xent(logits, y)
    output logits
    minimize loss with sgd(lr = 0.1)
}"""


def _random_state(m, rng) -> dict:
    """Params and running statistics drawn at random, float32 values (so PyTorch holds the same
    numbers): running variances in [0.5, 2], gammas in [0.5, 1.5]."""
    state = {}
    for k in list(m.params) + list(m.buffers):
        shape = m.graph.type(k).shape
        if k.endswith(".var"):
            v = rng.uniform(0.5, 2, shape)
        elif k.endswith(".gamma"):
            v = rng.uniform(0.5, 1.5, shape)
        else:
            v = rng.normal(0, 0.5, shape)
        state[k] = v.astype(np.float32).astype(np.float64)
    m.set_state(state)
    return state


def _close(got, want, tol, what=""):
    err = float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())
    assert err < tol, f"{what}: relative error {err:.2e} (tolerance {tol:g})"


def _torch_resnet(torch, tm, state):
    net = tm.build("resnet_small").double().eval()
    tm.load_dlc_params(net, {k: v for k, v in state.items() if k in net.dlc})
    bufs = dict(net.named_buffers())
    with torch.no_grad():
        for k, t in net.dlc_buffers.items():
            bufs[t].copy_(torch.tensor(state[k], dtype=torch.float64))
    return net


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("level", [0, 1, 2])
def test_resnet_small_evaluation_matches_pytorch_eval(backend, level):
    torch, tm = import_torch_models()
    dtype = "float64" if backend == "interp" else "float32"
    m = dlc.compile(RESNET, backend=backend, opt_level=level, float_dtype=dtype)
    rng = np.random.default_rng(7)
    state = _random_state(m, rng)
    x = rng.uniform(0, 16, (6, 64)).astype(np.float32)
    net = _torch_resnet(torch, tm, state)
    with torch.no_grad():
        want = net(torch.tensor(x, dtype=torch.float64)).numpy()
    _close(m.forward(x=x)["logits"], want, TOL[backend], f"{backend} -O{level} forward")
    loss, outs = m.evaluate({"x": x, "y": np.arange(6, dtype=np.int32)})
    _close(outs["logits"], want, TOL[backend], f"{backend} -O{level} evaluate")
    want_loss = torch.nn.functional.cross_entropy(torch.tensor(want), torch.arange(6)).item()
    assert abs(loss - want_loss) < 1e-4 * abs(want_loss) + TOL[backend]
    assert all(np.array_equal(v, state[k].astype(dtype)) for k, v in m.buffers.items())  # nothing updated


def _torch_small(torch, state):
    nn = torch.nn
    conv, bn2, fc, bn1 = nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2), nn.BatchNorm2d(4), nn.Linear(36, 5), \
        nn.BatchNorm1d(5)
    net = nn.Sequential(conv, bn2, nn.ReLU(), nn.Flatten(), fc, bn1).double().eval()
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in state.items()}
    with torch.no_grad():
        conv.weight.copy_(t["c.w"]), conv.bias.copy_(t["c.b"].reshape(4))
        fc.weight.copy_(t["d.w"].T), fc.bias.copy_(t["d.b"])
        for bn, name in ((bn2, "n"), (bn1, "logits")):
            bn.weight.copy_(t[f"{name}.gamma"]), bn.bias.copy_(t[f"{name}.beta"])
            bn.running_mean.copy_(t[f"{name}.mean"]), bn.running_var.copy_(t[f"{name}.var"])
    return net


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("level", [1, 2])
def test_conv_bias_bn_and_dense_bn_match_pytorch_eval(backend, level):
    torch = import_torch()
    dtype = "float64" if backend == "interp" else "float32"
    m = dlc.compile(SMALL, backend=backend, opt_level=level, float_dtype=dtype)
    assert sorted(m.params) == ["c.b", "c.w", "d.b", "d.w", "logits.beta", "logits.gamma", "n.beta", "n.gamma"], \
        sorted(m.params)
    rng = np.random.default_rng(3)
    state = _random_state(m, rng)
    x = rng.normal(size=(5, 2, 6, 6)).astype(np.float32)
    with torch.no_grad():
        want = _torch_small(torch, state)(torch.tensor(x, dtype=torch.float64)).numpy()
    _close(m.forward(x=x)["logits"], want, TOL[backend], f"{backend} -O{level}")
    g = m.graph
    folded = [n for n in g.upstream(g.eval_roots()) if OPS[g.op(n)].channel_weight
              and g.op(g.operands(n)[1]) == "mul"]   # a product on a scaled weight
    assert len(folded) == (2 if level == 2 else 0), folded


def test_evaluation_form_reads_no_mode_and_keeps_the_training_step():
    """The evaluation form reads no op with the TRAINING effect and no batch statistic; the
    training step of -O2 is the old one: the same launches, and bit for bit the same step."""
    new, old = dlc.build(RESNET, opt_level=2), dlc.build(RESNET, **BEFORE)
    g = new.graph
    assert g.eval_roots() and not old.graph.eval_roots()
    ev = g.upstream(g.eval_roots())
    assert not [n for n in ev if OPS[g.op(n)].has(TRAINING)]
    assert not [n for n in ev if "batch_" in n]
    steps = [[(l.kernel, l.node) for l in b.module().launches if l.node in b.graph.upstream(b.graph.roots(False))]
             for b in (new, old)]
    assert steps[0] == steps[1]
    # the same step; its memory plan may differ in a slot the evaluation form's kernels now share
    # (512 bytes fewer at batch 128 since sibling reductions hold both launch forms), never grow
    ns, os_ = new.stats(run="step"), old.stats(run="step")
    assert ns["peak_bytes"] <= os_["peak_bytes"]
    assert {k: v for k, v in ns.items() if k != "peak_bytes"} == {k: v for k, v in os_.items() if k != "peak_bytes"}
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 16, (8, 64)).astype(np.float32), rng.integers(0, 10, 8).astype(np.int32)
    a, b = (dlc.compile(RESNET, backend="interp", seed=2, **opts) for opts in (dict(opt_level=2), BEFORE))
    assert a.step(x=x, y=y) == b.step(x=x, y=y)
    assert all(np.array_equal(a.state[k], b.state[k]) for k in b.state)


def test_an_evaluation_run_launches_fewer_kernels_and_no_mode_select():
    new, old = dlc.build(RESNET, opt_level=2), dlc.build(RESNET, **BEFORE)
    s_new, s_old = new.stats(run="evaluation"), old.stats(run="evaluation")
    # (the old path's batch statistics cost fewer launches since batch norm's reductions are sibling
    # reductions, 59 instead of 91: the first evaluation run, which also folds the weights, is no
    # longer under half of it; every later one is)
    assert s_new["launches"] < s_old["launches"], (s_new, s_old)
    assert s_new["repeat_launches"] < s_old["repeat_launches"] / 2, (s_new, s_old)
    assert s_new["flops"] < s_old["flops"] and s_new["peak_bytes"] < s_old["peak_bytes"]
    g = new.graph
    need = g.upstream(g.eval_roots())
    runs = [g.meta.groups.get(l.node, (None, [l.node]))[1] for l in new.module().launches if l.node in need]
    ops = [g.op(n) for nodes in runs for n in nodes]   # what each launch computes (a group: its members)
    assert "if_training" not in ops and "assign" not in ops
    # one launch per convolution (its batch norm in its weight and epilogue), 7 of 8 with the ReLU or
    # the residual add in the epilogue (the projection's product is stored: the residual add's kernel
    # has the other branch's product as its producer)
    assert ops.count("conv2d") == 8 == len([1 for nodes in runs if g.op(nodes[0]) == "conv2d"]) + 1
    assert ops.count("sub") == 0 and ops.count("sqrt") == 8   # no normalisation by element; a scale per channel


def test_dlc_compile_stats_prints_the_evaluation_rows(tmp_path):
    r = dlc_cli("compile", RESNET, "-o", tmp_path, "-O", "2", "--emit", "plan", "--stats", rc=0)
    rows = {line[:9].strip(): line[9:].split() for line in r.stdout.splitlines() if line.startswith(("-O", "eval"))}
    b = dlc.build(RESNET, opt_level=2)
    assert int(rows["eval -O2"][1]) == b.stats(run="evaluation")["launches"]
    assert int(rows["-O2"][1]) == b.stats(run="step")["launches"]
    assert int(rows["eval -O2"][1]) < int(rows["eval -O0"][1])


def test_stats_names_an_unknown_run():
    with pytest.raises(DlcError, match="run: expected one of step, evaluation, found 'infer'"):
        dlc.build(RESNET).stats(run="infer")


def test_module_with_evaluation_kernels_compiles_with_nvrtc():
    from test_nvrtc import assert_kernels_compile
    mod = generate(dlc.build(RESNET, opt_level=2).graph)
    assert {"fused_eval_stem", "mul_eval_stem_bn_weight"} <= set(mod.kernel_names), mod.kernel_names
    assert_kernels_compile(mod)


DROP = """model d {
    input x : f32[N, 6]
    param w : f32[6, 4] = he
    h = dropout(relu(x @ w), 0.5)
    output h
}"""


@pytest.mark.parametrize("level", [1, 2])
def test_dropout_is_the_identity_in_the_evaluation_form_and_draws_in_training(level):
    m = dlc.compile(DROP, backend="interp", opt_level=level, float_dtype="float64")
    x = np.random.default_rng(0).normal(size=(50, 6))
    want = np.maximum(x @ m.params["w"], 0)
    np.testing.assert_array_equal(m.forward(x=x)["h"], want)
    assert not [n for n in m.graph.upstream(m.graph.eval_roots()) if m.graph.op(n) == "dropout"]
    got = m.train().forward(x=x)["h"]           # training mode: the graph's dropout, masks drawn
    kept = got != 0
    assert 0.2 < kept[want > 0].mean() < 0.8
    np.testing.assert_allclose(got[kept], 2 * want[kept], rtol=1e-12)


def test_a_deferred_evaluation_run_is_keyed_by_the_nodes_asked_for():
    m = dlc.compile(RESNET, backend="interp")
    x = np.random.default_rng(0).uniform(0, 16, (4, 64)).astype(np.float32)
    out = m.graph.meta.outputs["logits"]
    res = m.run([out], {"x": x}, wait=False).result()
    assert list(res) == [out]
    np.testing.assert_array_equal(res[out], m.forward(x=x)["logits"])


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_models_that_read_no_mode_keep_their_ir(path):
    """Only a model whose outputs or loss read an op with the TRAINING effect gets an evaluation
    form; any other keeps exactly the IR it had (the passes add nothing)."""
    b = dlc.build(path)
    fwd = b.forward
    reads_mode = any(OPS[fwd.op(n)].has(TRAINING) for n in fwd.upstream(b.graph.meta.outputs.values()))
    assert bool(b.graph.eval_roots()) == reads_mode
    if not reads_mode:
        assert b.ir() == dlc.build(path, passes=["fold-transpose", "constant-fold", "cse", "dce"]).ir()


# -- bad IR and bad declarations ------------------------------------------------------------------

GOOD = """model t stage=train
%x : f32[N, 4] = input()
%a : f32[N, 4] = relu(%x)
%d : f32[N, 4] = dropout[p=0.5, salt=0](%a)
%eval.a : f32[N, 4] = relu(%x)
output y = %d
eval output y = %eval.a
"""


def test_the_evaluation_lines_read_back():
    g = verify(parse_ir(GOOD))
    assert g.meta.eval_outputs == {"y": "eval.a"} and g.eval_roots() == ["eval.a"]


def test_an_evaluation_form_that_reads_the_mode_is_refused():
    g = parse_ir(GOOD.replace("eval output y = %eval.a", "eval output y = %d"))
    with pytest.raises(DlcError, match=r"the evaluation form reads %d, a dropout, whose value depends on the mode"):
        verify(g)


def test_an_evaluation_form_without_every_output_is_refused():
    g = parse_ir(GOOD.replace("output y = %d\n", "output y = %d\noutput z = %a\n"))
    with pytest.raises(DlcError, match=r"the evaluation form must give every output"):
        verify(g)


def test_an_evaluation_line_naming_an_unknown_value_is_located():
    with pytest.raises(DlcError) as e:
        parse_ir(GOOD.replace("%eval.a\n", "%nothing\n"), "bad.ir")
    assert e.value.loc.line == 7 and "undefined value %nothing" in e.value.message


def test_an_op_that_reads_the_mode_must_declare_its_evaluation_meaning():
    with pytest.raises(ValueError, match="declares eval_operand"):
        op("test_mode_op", 1, lambda t, a: t[0], lambda x, training: x, effects={TRAINING}, c="a")
    with pytest.raises(ValueError, match="eval_operand is for an op with the TRAINING effect"):
        op("test_pure_op", 1, lambda t, a: t[0], lambda x: x, eval_operand=0, c="a")
    assert "test_mode_op" not in OPS and "test_pure_op" not in OPS


@needs_emu  # the CuPy stand-in of tests/fake_cupy.py runs kernels on the emulator
@pytest.mark.parametrize("graphed", [False, True], ids=["launches", "cuda-graph"])
def test_the_cuda_backend_runs_both_forms_from_one_state(monkeypatch, graphed):
    """The cuda backend's bookkeeping (buffers, programs per set of roots, captured graphs) with a
    training step and an evaluation run taking turns at -O2: each agrees with the interpreter
    (float32 both; 1e-4 of the largest value), and the evaluation run sees the running statistics
    the steps before it updated."""
    import sys
    from fake_cupy import fake_cupy
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    gpu = dlc.compile(RESNET, backend="cuda", opt_level=2, seed=4, cuda_graph=graphed)
    ref = dlc.compile(RESNET, backend="interp", opt_level=2, seed=4)
    rng = np.random.default_rng(2)
    for _ in range(2):
        x, y = rng.uniform(0, 16, (8, 64)).astype(np.float32), rng.integers(0, 10, 8).astype(np.int32)
        _close(gpu.step(x=x, y=y), np.float64(ref.step(x=x, y=y)), 1e-4, "loss")
        _close(gpu.forward(x=x)["logits"], ref.forward(x=x)["logits"].astype(np.float64), 1e-4, "eval")
    for k, v in ref.buffers.items():
        _close(gpu.buffers[k], v.astype(np.float64), 1e-4, k)


# -- values computed from stored values alone are kept between evaluation runs ------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_folded_weights_are_computed_again_only_when_the_state_changes(backend, monkeypatch):
    """The evaluation form's values computed from params and buffers alone (the scaled weights,
    scale and shift) are kept from one evaluation run to the next: a second run launches only the
    rest (Build.stats' repeat_launches), and a change of params (set_state) or a training step
    (a commit) makes the next run compute them again, so its outputs are those of a model
    compiled afresh with the new state (-O0: no evaluation form; 1e-4 of the largest output for
    float32 emu, where the fold rounds the weights once more; 1e-10 on the float64 interpreter)."""
    dtype = "float64" if backend == "interp" else "float32"
    m = dlc.compile(RESNET, backend=backend, opt_level=2, seed=3, float_dtype=dtype)
    s = m.build.stats(8, run="evaluation")       # the batch the runs below have
    assert 0 < s["repeat_launches"] < s["launches"]
    kept = m.graph.eval_constants()
    assert {g for g in kept if g.endswith(".weight")} and not any(n in m.graph.upstream(m.graph.roots(False))
                                                                  for n in kept)
    launched = []
    if backend == "emu":
        engine = m.engine
        real = engine._launch
        monkeypatch.setattr(engine, "_launch", lambda bound: (launched.append(1), real(bound))[1])
    rng = np.random.default_rng(5)
    x, y = rng.uniform(0, 16, (8, 64)).astype(np.float32), rng.integers(0, 10, 8).astype(np.int32)

    def fresh():
        ref = dlc.compile(RESNET, backend="interp", opt_level=0, float_dtype="float64")
        ref.set_state(m.state)
        return ref.forward(x=x)["logits"]

    def forward_launches():
        before = len(launched)
        out = m.forward(x=x)["logits"]
        return out, len(launched) - before
    out, n1 = forward_launches()
    _close(out, fresh(), TOL[backend], "first run")
    out2, n2 = forward_launches()
    np.testing.assert_array_equal(out2, out)
    m.params["stem.bn.gamma"] = m.params["stem.bn.gamma"] * 1.5     # set_state: the fold is stale
    out3, n3 = forward_launches()
    _close(out3, fresh(), TOL[backend], "after set_state")
    assert not np.allclose(out3, out)
    m.step(x=x, y=y)                                                 # a commit: stale again
    out4, n4 = forward_launches()
    _close(out4, fresh(), TOL[backend], "after a step")
    if backend == "emu":   # every launch of the run, then only those that read the data (forward
        # computes no loss: one launch fewer than the stats' run, which has it: at batch 8, one block)
        assert n1 - n2 == s["launches"] - s["repeat_launches"] == 24 and n1 == n3 == n4 == s["launches"] - 1
