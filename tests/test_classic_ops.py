"""Pieces of the classic convnets (issue 20), each against an implementation nobody here wrote:

- `elu` (one registry entry, like leaky_relu) against PyTorch's ELU;
- the prelude's `lrn` (local response normalization across channels, AlexNet's and GoogLeNet's,
  built from an average pool along the channels) against PyTorch's LocalResponseNorm, and against
  ONNX's own LRN operator run by onnxruntime;
- the prelude's `global_avgpool` against PyTorch's AdaptiveAvgPool2d(1).

Forward values and gradients compare on the interpreter in float64, where both sides are exact to
rounding (tolerance 1e-10 relative); the emulator runs the generated kernels against the float32
interpreter (1e-5: summation order in the pools and products), at -O0 and fused at -O2; onnxruntime
runs the exported file in float32 (1e-5).
"""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from conftest import import_torch, needs_emu

NET = """model classic {
    input  x : f32[N, 6, 5, 5]
    input  y : i32[N]
    param  k : f32[6, 6, 3, 3] = normal(0, 0.3)
    param  w : f32[6, 4] = normal(0, 0.5)
    c      = conv2d(x, k, padding = 1)
    n      = lrn(c, size = 3, alpha = 0.5, beta = 0.75, k = 2.0)
    h      = elu(n, alpha = 0.7)
    logits = global_avgpool(h) @ w
    loss   = softmax_xent(logits, y)
    output logits, n
    minimize loss with sgd(lr = 0.1)
}"""


def batch(n=3, seed=0):
    r = np.random.default_rng(seed)
    return r.normal(size=(n, 6, 5, 5)), r.integers(0, 4, n).astype(np.int32)


def torch_net(torch, m):
    """The same network in PyTorch, from dlc's weights (float64)."""
    F = torch.nn.functional
    k = torch.tensor(np.asarray(m.params["k"], np.float64), requires_grad=True)
    w = torch.tensor(np.asarray(m.params["w"], np.float64), requires_grad=True)
    lrn = torch.nn.LocalResponseNorm(3, alpha=0.5, beta=0.75, k=2.0)

    def run(x, y):
        n = lrn(F.conv2d(torch.tensor(x), k, padding=1))
        logits = F.adaptive_avg_pool2d(F.elu(n, alpha=0.7), 1).flatten(1) @ w
        return n, logits, F.cross_entropy(logits, torch.tensor(y, dtype=torch.long))
    return run, k, w


def test_elu_is_one_entry():
    d = dlc.ir.ops.OPS["elu"]
    assert d.attrs == {"alpha": 1.0} and "alpha" in d.c and d.vjp is not None and d.onnx is not None


def test_forward_and_gradients_agree_with_pytorch():
    torch = import_torch()
    m = dlc.compile(NET, backend="interp", float_dtype="float64", seed=1)
    run, k, w = torch_net(torch, m)
    x, y = batch()
    n, logits, loss = run(x, y)
    loss.backward()
    out = m.forward(x=x)
    np.testing.assert_allclose(out["n"], n.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["logits"], logits.detach().numpy(), rtol=1e-10, atol=1e-12)
    got, grads = m.grad(x=x, y=y)
    assert got == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(grads["k"], k.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grads["w"], w.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn_sizes_agree_with_pytorch(size):
    torch = import_torch()
    src = (f"model m {{\n input x : f32[N, 7, 2, 3]\n h = lrn(x, size = {size}, alpha = 0.01, beta = 0.5)\n"
           " output h\n}")
    m = dlc.compile(src, backend="interp", float_dtype="float64")
    x = np.random.default_rng(size).normal(size=(2, 7, 2, 3)) * 3
    want = torch.nn.LocalResponseNorm(size, alpha=0.01, beta=0.5)(torch.tensor(x)).numpy()
    np.testing.assert_allclose(m.forward(x=x)["h"], want, rtol=1e-12, atol=1e-14)


def test_an_even_lrn_size_is_a_located_error():
    with pytest.raises(dlc.DlcError, match=r"padding must be an integer .* found \[1.5, 0\].*in lrn\(\) called at"):
        dlc.compile("model m {\n input x : f32[N, 7, 2, 3]\n h = lrn(x, size = 4)\n output h\n}", backend="interp")


@needs_emu
@pytest.mark.parametrize("level", [0, 2])
def test_emu_runs_the_network_like_the_interpreter(level):
    ref = dlc.compile(NET, backend="interp", seed=2)
    emu = dlc.compile(NET, backend="emu", opt_level=level, seed=2)
    for s in range(3):
        x, y = batch(4, seed=s)
        x = x.astype(np.float32)
        np.testing.assert_allclose(emu.step(x=x, y=y), ref.step(x=x, y=y), rtol=1e-5)
    for p in ref.params:
        np.testing.assert_allclose(emu.params[p], ref.params[p], rtol=1e-5, atol=1e-6)
    x, _ = batch(2, seed=9)
    np.testing.assert_allclose(emu.forward(x=x.astype(np.float32))["n"], ref.forward(x=x.astype(np.float32))["n"],
                               rtol=1e-5, atol=1e-6)


def test_export_agrees_with_onnxruntime_and_with_onnx_lrn(onnx_runtime):
    onnx, ort = onnx_runtime
    m = dlc.compile(NET, backend="interp", seed=3)
    proto, _ = m.to_onnx()
    assert "Elu" in {n.op_type for n in proto.graph.node}
    x = batch(2, seed=4)[0].astype(np.float32)
    s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"x": x})))
    want = m.forward(x=x)
    for k in ("logits", "n"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    # ONNX's own LRN operator (its definition, run by onnxruntime) on the convolution's output
    h = onnx.helper
    node = h.make_node("LRN", ["c"], ["n"], size=3, alpha=0.5, beta=0.75, bias=2.0)
    g = h.make_graph([node], "lrn", [h.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [2, 6, 5, 5])],
                     [h.make_tensor_value_info("n", onnx.TensorProto.FLOAT, [2, 6, 5, 5])])
    lrn_model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    c = m.run(["c"], {"x": x})["c"]
    ref = ort.InferenceSession(lrn_model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"c": c})[0]
    np.testing.assert_allclose(want["n"], ref, rtol=1e-5, atol=1e-6)
