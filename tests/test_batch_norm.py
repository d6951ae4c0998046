"""Batch normalization against PyTorch's BatchNorm1d/2d, the oracle nobody here wrote.

- training mode: the output, the gradients of x, gamma and beta, and the running statistics after
  several steps (momentum as PyTorch defines it, the unbiased variance);
- evaluation mode: the output from the running statistics, and nothing updated;
- on the interpreter in float64 (relative 1e-10: both sides exact to rounding) and on emu (-O0,
  -O1, and -O2 where the statistics and the backward's sums are sibling reductions), the
  generated CUDA compiled for the CPU, in float32 (relative 1e-4: float32 sums of a few hundred
  terms, and a division by a standard deviation);
- the lowered form (passes/lower.py) against the op's NumPy reference, in both modes;
- model buffers: saved with the weights, loaded back, exported to ONNX (onnxruntime agrees in
  evaluation mode);
- bad input: a missing axis, the batch axis, statistics of the wrong size — located errors, exit 2.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import dlc
from conftest import EXAMPLES, dlc_cli, import_torch, needs_emu
from dlc.ir.ops import OPS
from dlc.ir.ops_norm import running_statistics

NET = """model bn {{
    input  x : f32[N, {shape}]
    input  t : f32[N, {shape}]
    param  p : f32[{pshape}] = ones
    y    = {layer}(x * p, momentum = 0.2)
    loss = mean((y - t) * (y - t))
    output y
    minimize loss with sgd(lr = 0.1)
}}"""
CASES = {  # the prelude's layer, a sample's shape, PyTorch's module
    "2d": ("batchnorm2d", "3, 4, 5", "3, 1, 1", "BatchNorm2d"),
    "1d": ("batchnorm1d", "6", "6", "BatchNorm1d"),
}


def _setup(case, backend):
    """`backend`: interp, emu, or emu-O0 / emu-O2 (emu at that level; plain emu is -O1)."""
    layer, shape, pshape, module = CASES[case]
    backend, _, level = backend.partition("-O")
    dtype = "float64" if backend == "interp" else "float32"
    m = dlc.compile(NET.format(layer=layer, shape=shape, pshape=pshape), backend=backend, float_dtype=dtype, seed=3,
                    opt_level=int(level or 1))
    rng = np.random.default_rng(5)
    dims = [int(d) for d in shape.split(",")]
    x = (rng.normal(size=[8] + dims) * 2 + 1).astype(np.float32)
    t = rng.normal(size=x.shape).astype(np.float32)
    gamma = rng.uniform(0.5, 2, dims[0]).astype(np.float32)
    beta = rng.normal(size=dims[0]).astype(np.float32)
    p = rng.uniform(0.5, 1.5, [int(d) for d in pshape.split(",")]).astype(np.float32)
    m.params["y.gamma"], m.params["y.beta"], m.params["p"] = gamma, beta, p
    torch = import_torch()
    bn = getattr(torch.nn, module)(dims[0], momentum=0.2).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma, dtype=torch.float64))
        bn.bias.copy_(torch.tensor(beta, dtype=torch.float64))
    return m, bn, torch, x, t, p


def _torch_step(torch, bn, x, t, p):
    """PyTorch's loss, output and gradients (x * p, p a param: its gradient carries x's)."""
    pt = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    y = bn(torch.tensor(x, dtype=torch.float64) * pt)
    loss = ((y - torch.tensor(t, dtype=torch.float64)) ** 2).mean()
    bn.zero_grad()
    loss.backward()
    return loss.item(), y.detach().numpy(), pt.grad.numpy(), bn.weight.grad.numpy(), bn.bias.grad.numpy()


TOL = {"interp": dict(rtol=1e-10, atol=1e-12), "emu": dict(rtol=1e-4, atol=1e-5)}
TOL["emu-O0"] = TOL["emu-O2"] = TOL["emu"]
# at -O2 the statistics and the backward's sums are sibling reductions (one kernel each, passes/fusion.py)
BACKENDS = ["interp", pytest.param("emu", marks=needs_emu), pytest.param("emu-O0", marks=needs_emu),
            pytest.param("emu-O2", marks=needs_emu)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_training_mode_matches_pytorch(case, backend):
    """Output, gradients (through the batch statistics) and three steps of running statistics."""
    m, bn, torch, x, t, p = _setup(case, backend)
    tol = TOL[backend]
    bn.train()
    m.train()
    loss, y, gp, gg, gb = _torch_step(torch, bn, x, t, p)
    np.testing.assert_allclose(m.forward(x=x)["y"], y, **tol)     # m.train(): batch statistics
    ours, grads = m.grad(x=x, t=t)
    assert ours == pytest.approx(loss, rel=tol["rtol"])
    np.testing.assert_allclose(grads["p"], gp, **tol)
    np.testing.assert_allclose(grads["y.gamma"], gg, **tol)
    np.testing.assert_allclose(grads["y.beta"], gb, **tol)
    # forward and grad updated nothing; each step updates the running statistics once
    np.testing.assert_array_equal(m.buffers["y.mean"], np.zeros(len(gg)))
    np.testing.assert_array_equal(m.buffers["y.var"], np.ones(len(gg)))
    bn.reset_running_stats()
    for step in range(3):
        xs = x * (step + 1) + step   # different batches: the statistics move
        before = torch.tensor(np.asarray(m.params["p"]), dtype=torch.float64)  # the step updates p too
        m.step(x=xs, t=t)
        with torch.no_grad():
            bn(torch.tensor(xs, dtype=torch.float64) * before)
        np.testing.assert_allclose(m.buffers["y.mean"], bn.running_mean.numpy(), **tol)
        np.testing.assert_allclose(m.buffers["y.var"], bn.running_var.numpy(), **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_evaluation_mode_uses_the_running_statistics(case, backend):
    m, bn, torch, x, t, p = _setup(case, backend)
    tol = TOL[backend]
    mean = np.linspace(-1, 1, len(bn.running_mean)).astype(np.float32)
    var = np.linspace(0.5, 3, len(bn.running_var)).astype(np.float32)
    m.set_state({"y.mean": mean, "y.var": var})
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor(mean, dtype=torch.float64))
        bn.running_var.copy_(torch.tensor(var, dtype=torch.float64))
    bn.eval()
    m.eval()
    want = bn(torch.tensor(x, dtype=torch.float64) * torch.tensor(p, dtype=torch.float64)).detach().numpy()
    np.testing.assert_allclose(m.forward(x=x)["y"], want, **tol)
    loss, outputs = m.evaluate({"x": x, "t": t})
    assert loss == pytest.approx(np.mean((want - t) ** 2), rel=tol["rtol"])
    # evaluation depends on the batch only through each example: one example alone gives its row
    np.testing.assert_allclose(m.forward(x=x[:1])["y"], want[:1], **tol)
    np.testing.assert_array_equal(m.buffers["y.mean"], mean)   # and it updated nothing


def test_the_lowered_form_is_the_ops_reference():
    """passes/lower.py writes batch_norm in other ops; the interpreter runs that form. Against the
    registry's NumPy reference (what the op means), in both modes, and the running statistics
    against `running_statistics` (PyTorch's rule, checked above against PyTorch)."""
    src = NET.format(layer="batchnorm2d", shape="3, 4, 5", pshape="3, 1, 1")
    m = dlc.compile(src, backend="interp", float_dtype="float64")
    assert "batch_norm" not in {m.graph.op(n) for n in m.graph.nx}           # lowered...
    assert "batch_norm" in {m.build.forward.op(n) for n in m.build.forward.nx}  # ...after the forward stage
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 3, 4, 5))
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    m.params["y.gamma"], m.params["y.beta"] = gamma, beta
    m.set_state({"y.mean": mean, "y.var": var})
    ref = OPS["batch_norm"].ref
    attrs = dict(axis=1, momentum=0.2, eps=1e-5)
    for training in (True, False):
        m.train() if training else m.eval()
        np.testing.assert_allclose(m.forward(x=x)["y"], ref(x, gamma, beta, mean, var, training=training, **attrs),
                                   rtol=1e-12, atol=1e-12)
    m.step(x=x, t=x)
    want_mean, want_var = running_statistics(x, mean, var, 1, 0.2)
    np.testing.assert_allclose(m.buffers["y.mean"], want_mean, rtol=1e-12)
    np.testing.assert_allclose(m.buffers["y.var"], want_var, rtol=1e-12)


def test_running_statistics_travel_with_the_weights(tmp_path, onnx_runtime):
    """Model buffers: saved and loaded with the weights (not the optimizer's state), restored by
    --resume, and exported to ONNX, where onnxruntime's BatchNormalization agrees in evaluation."""
    src = NET.format(layer="batchnorm2d", shape="3, 4, 5", pshape="3, 1, 1")
    m = dlc.compile(src, backend="interp", seed=2)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 3, 4, 5)).astype(np.float32) * 3 + 2
    t = rng.normal(size=x.shape).astype(np.float32)
    for _ in range(4):
        m.step(x=x, t=t)
    assert np.abs(m.buffers["y.mean"]).min() > 0.1          # moved off their initial values
    path = tmp_path / "w.npz"
    m.save(path)
    fresh = dlc.compile(src, backend="interp", seed=9)
    fresh.load(path)
    for k in ("y.mean", "y.var"):
        np.testing.assert_array_equal(fresh.buffers[k], m.buffers[k])
    m.eval()
    fresh.eval()
    np.testing.assert_array_equal(fresh.forward(x=x)["y"], m.forward(x=x)["y"])
    onnx, ort = onnx_runtime
    onnx_path = tmp_path / "bn.onnx"
    m.export_onnx(onnx_path)
    kinds = [node.op_type for node in onnx.load(str(onnx_path)).graph.node]
    assert kinds.count("BatchNormalization") == 1, kinds
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["y"], {"x": x})[0]
    np.testing.assert_allclose(got, m.forward(x=x)["y"], rtol=1e-5, atol=1e-5)


BAD = [
    ("batch_norm(x, g, b, m, v, axis = 4)", "axis 4 is not an axis of its input f32[N, 3, 4, 5]"),
    ("batch_norm(x, g, b, m, v, axis = 0)", "axis 0 of f32[N, 3, 4, 5] is the batch"),
    ("batch_norm(x, g, b, m, v, axis = 2)", "gamma must be f32[4]"),
    ("batch_norm(x, g, b, m, v, momentum = 2)", "momentum must be in [0, 1]"),
]


@pytest.mark.parametrize("call,message", BAD)
def test_bad_batch_norm_is_a_located_error(tmp_path, call, message):
    src = tmp_path / "bad.dln"
    src.write_text("model bad {\n    input x : f32[N, 3, 4, 5]\n    param g : f32[3] = ones\n"
                   "    param b : f32[3] = zeros\n    buffer m : f32[3] = zeros\n    buffer v : f32[3] = ones\n"
                   f"    y = {call}\n    output y\n}}\n")
    r = dlc_cli("check", src, rc=2)
    assert message in r.stderr, r.stderr
    assert "bad.dln:7:" in r.stderr and "Traceback" not in r.stderr


def test_a_buffer_must_have_a_known_shape(tmp_path):
    src = tmp_path / "bad.dln"
    src.write_text("model bad {\n    input x : f32[N, 3]\n    buffer m : f32[N] = zeros\n    output x\n}\n")
    r = dlc_cli("check", src, rc=2)
    assert "bad.dln:3:" in r.stderr and "shape must be known" in r.stderr, r.stderr


def test_the_small_resnet_reaches_lenets_held_out_accuracy(tmp_path, lenet_held_out):
    """examples/resnet_small.dln (batch norm after every convolution, basic blocks) trained as `dlc
    run` trains it: at least examples/lenet.dln's held-out accuracy, measured in evaluation mode
    (running statistics). emu gives the same accuracy (0.9972, measured: 15 epochs on emu take
    minutes, so the suite checks emu step by step below instead)."""
    mj = tmp_path / "m.json"
    dlc_cli("run", EXAMPLES / "resnet_small.dln", "--backend", "interp", "--no-progress", "--metrics-json", mj,
            rc=0, timeout=None)
    acc = json.loads(mj.read_text())["val_accuracy"]
    assert acc >= lenet_held_out >= 0.97, (acc, lenet_held_out)


@needs_emu
def test_the_small_resnet_on_emu_matches_the_interpreter():
    """Five training steps of examples/resnet_small.dln from the same weights: the loss of each, the
    params and the running statistics after them, emu (float32 kernels) against the interpreter
    (float32 NumPy): sums in another order, so agreement to 1e-4 relative."""
    rng = np.random.default_rng(4)
    ref, emu = (dlc.compile(EXAMPLES / "resnet_small.dln", backend=b, seed=1) for b in ("interp", "emu"))
    for _ in range(5):
        x, y = rng.uniform(0, 16, (32, 64)).astype(np.float32), rng.integers(0, 10, 32).astype(np.int32)
        np.testing.assert_allclose(emu.step(x=x, y=y), ref.step(x=x, y=y), rtol=1e-4)
    for k in ref.params:
        np.testing.assert_allclose(emu.params[k], ref.params[k], rtol=1e-4, atol=1e-5, err_msg=k)
    for k in ref.buffers:
        np.testing.assert_allclose(emu.buffers[k], ref.buffers[k], rtol=1e-4, atol=1e-5, err_msg=k)
    emu.eval()
    ref.eval()
    np.testing.assert_allclose(emu.forward(x=x)["logits"], ref.forward(x=x)["logits"], rtol=1e-4, atol=1e-4)


# -- a training batch with one value per channel: refused, as PyTorch refuses it --------------------
@pytest.mark.parametrize("shape", [(1, 6), (2, 6), (1, 3, 1, 1), (1, 3, 2, 1), (2, 3, 1, 1)])
def test_one_value_per_channel_is_refused_in_training_exactly_where_pytorch_refuses_it(shape):
    torch = import_torch()
    bn = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(shape[1]).train()
    try:
        bn(torch.zeros(shape))
        torch_refuses = False
    except ValueError:  # "Expected more than 1 value per channel when training"
        torch_refuses = True
    problem = OPS["batch_norm"].train_check([list(shape)], {"axis": 1})
    assert (problem is not None) == torch_refuses, (shape, problem)


def test_a_one_example_training_step_is_a_located_error_and_changes_nothing(tmp_path):
    layer, shape, pshape, _ = CASES["1d"]
    m = dlc.compile(NET.format(layer=layer, shape=shape, pshape=pshape), backend="interp")
    before = {k: np.array(v) for k, v in m.state.items()}
    x = np.ones((1, 6), np.float32)
    with pytest.raises(dlc.DlcError) as e:
        m.step(x=x, t=x)
    s = str(e.value)
    assert "needs more than one value per channel, found 1 (input [1, 6])" in s
    # located at the model's line that called the prelude's batchnorm1d, naming the op inside it
    assert e.value.loc.line == 5 and "(y: batch_norm at prelude.dln:" in s
    for k, v in m.state.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)  # before: the running var became NaN
    m.forward(x=x)  # evaluation mode reads the running statistics: one example is fine
    assert m.step(x=np.ones((2, 6), np.float32), t=np.zeros((2, 6), np.float32)) >= 0
    # the command line: the last batch of an epoch may be the one
    f = tmp_path / "bn.dln"
    f.write_text(NET.format(layer=layer, shape=shape, pshape=pshape))
    np.savez(tmp_path / "d.npz", x=np.ones((5, 6), np.float32), t=np.zeros((5, 6), np.float32))
    r = dlc_cli("run", f, "--data", tmp_path / "d.npz", "--batch", "2", "--epochs", "1", "--no-progress", rc=2)
    assert r.stderr.startswith(f"{f}:5:12: error: batch_norm in training needs more than one value"), r.stderr


# -- fewer launches in training: if_training fuses with the per-channel arithmetic -----------------

def test_the_picks_run_inside_the_statistics_kernel():
    """At -O2 `if_training` is a pointwise member of fusion groups: each batch norm's two picks
    (batch or running mean, and variance) are computed in the second stage of its statistics'
    sibling-reduction kernel, with sqrt(var + eps) and the scale, so none is a launch of its own.
    The values are checked on emu against the interpreter step by step above."""
    b = dlc.build(EXAMPLES / "resnet_small.dln", opt_level=2)
    g = b.graph
    picks = g.nodes_of("if_training")
    group_of = {m: r for r, (_, ms) in g.meta.groups.items() for m in ms}
    assert len(picks) == 16 and all(g.meta.groups[group_of[n]][0] == "siblings" for n in picks), picks
    assert all(g.op(group_of[n]) == "div" for n in picks)     # the group ends with gamma / std
    assert not [l for l in b.module().launches if l.node in picks]
    src = b.module().source
    assert src.count("!= 0.0f ?") >= 2   # the mode word picks an operand inside fused kernels
