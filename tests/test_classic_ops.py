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
from conftest import EXAMPLES, import_torch, needs_emu

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


# -- pooling as the classic models define it -----------------------------------------------------------
# (op, kernel, stride, padding, ceil_mode, count_include_pad): GoogLeNet's 3x3/2 ceil-mode pools,
# windows past the padded input, divisors without the padding, 1-wide windows
POOLS = [("max", 3, 2, 0, True, True), ("max", 3, 2, 1, True, True), ("max", 2, 2, 0, False, True),
         ("avg", 3, 2, 1, True, True), ("avg", 3, 2, 1, True, False), ("avg", 3, 1, 1, False, False),
         ("avg", 3, 3, 1, True, False), ("avg", 2, 2, 0, True, True), ("max", 3, 3, 1, True, True)]


def probe_model(x, t, params, y, lr) -> str:
    """A model of one layer `y` over `x : f32[N, x]` whose loss probes it: the mse of each map's
    mean square against `t : f32[N, t, 1, 1]` (`probe_loss` is PyTorch's side)."""
    lines = [f"input x : f32[N, {x}]", f"input t : f32[N, {t}, 1, 1]", *params, f"y = {y}",
             "loss = mse(mean(y * y, axis = [2, 3], keepdims = true), t)", "output y",
             f"minimize loss with sgd(lr = {lr})"]
    return "model m {\n" + "".join(f" {line}\n" for line in lines) + "}"


def probe_loss(torch, y, t):
    return torch.nn.functional.mse_loss((y * y).mean(dim=(2, 3), keepdim=True), torch.tensor(t))


def pool_model(kind, k, s, p, ceil, cip, shape=(2, 3, 7, 6)):
    extra = f", count_include_pad = {str(cip).lower()}" if kind == "avg" else ""
    pad = f"[{', '.join(map(str, p))}]" if isinstance(p, list) else p
    return probe_model(", ".join(map(str, shape[1:])), shape[1], [f"param w : f32[{shape[1]}, 1, 1] = normal(1, 0.2)"],
                       f"{kind}pool2d(x * w, {k}, stride = {s}, padding = {pad}, ceil_mode = {str(ceil).lower()}{extra})",
                       0.1)


@pytest.mark.parametrize("kind, k, s, p, ceil, cip", POOLS)
def test_pooling_agrees_with_pytorch(kind, k, s, p, ceil, cip):
    torch = import_torch()
    F = torch.nn.functional
    m = dlc.compile(pool_model(kind, k, s, p, ceil, cip), backend="interp", float_dtype="float64")
    r = np.random.default_rng(k * 10 + s)
    x, t = r.normal(size=(2, 3, 7, 6)), r.normal(size=(2, 3, 1, 1))
    w = torch.tensor(np.asarray(m.params["w"], np.float64), requires_grad=True)
    xt = torch.tensor(x) * w
    y = (F.max_pool2d(xt, k, s, p, ceil_mode=ceil) if kind == "max"
         else F.avg_pool2d(xt, k, s, p, ceil_mode=ceil, count_include_pad=cip))
    loss = probe_loss(torch, y, t)
    loss.backward()
    assert m.forward(x=x)["y"].shape == tuple(y.shape)
    np.testing.assert_allclose(m.forward(x=x)["y"], y.detach().numpy(), rtol=1e-12, atol=1e-14)
    got, grads = m.grad(x=x, t=t)
    assert got == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(grads["w"], w.grad.numpy(), rtol=1e-10, atol=1e-13)


@needs_emu
@pytest.mark.parametrize("kind, k, s, p, ceil, cip", POOLS + [("avg", 3, 2, [0, 1, 1, 0], True, False),
                                                           ("max", 3, 2, [1, 0, 0, 1], False, True)])
def test_pooling_on_emu_matches_the_interpreter(kind, k, s, p, ceil, cip):
    src = pool_model(kind, k, s, p, ceil, cip)
    ref, emu = dlc.compile(src, backend="interp", seed=1), dlc.compile(src, backend="emu", seed=1)
    r = np.random.default_rng(7)
    for _ in range(2):
        x, t = r.normal(size=(3, 3, 7, 6)).astype(np.float32), r.normal(size=(3, 3, 1, 1)).astype(np.float32)
        np.testing.assert_allclose(emu.forward(x=x)["y"], ref.forward(x=x)["y"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(emu.step(x=x, t=t), ref.step(x=x, t=t), rtol=1e-5)
    np.testing.assert_allclose(emu.params["w"], ref.params["w"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind, k, s, p, ceil, cip", POOLS + [("avg", 3, 2, [0, 1, 1, 0], False, True),
                                                           ("avg", 3, 2, [1, 1, 0, 0], False, False),
                                                           ("max", 3, 2, [1, 0, 0, 1], False, True)])
def test_pooling_exports_and_agrees_with_onnxruntime(onnx_runtime, kind, k, s, p, ceil, cip):
    """onnxruntime is the oracle for asymmetric padding, which PyTorch's pools do not take."""
    _, ort = onnx_runtime
    m = dlc.compile(pool_model(kind, k, s, p, ceil, cip), backend="interp")
    proto, _ = m.to_onnx()
    x = np.random.default_rng(3).normal(size=(2, 3, 7, 6)).astype(np.float32)
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(m.forward(x=x)["y"], got, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("line, message", [
    ("y = maxpool2d(x, 9)", "kernel 9 is larger than the padded input 7+0+0"),
    ("y = avgpool2d(x, 3, padding = 2)", "padding [2, 2, 2, 2] must be at most half the kernel [3, 3]"),
    ("y = avgpool2d(x, 3, padding = [1, 0, 2])", "padding must be an integer, [h, w] or [top, left, bottom, right]"),
    ("y = maxpool2d(x, 2, ceil_mode = 1)", "ceil_mode must be true or false"),
])
def test_bad_pooling_is_a_located_error(tmp_path, line, message):
    from conftest import dlc_cli
    f = tmp_path / "p.dln"
    f.write_text(f"model m {{\n    input x : f32[N, 3, 7, 6]\n    {line}\n    output y\n}}\n")
    r = dlc_cli("check", f, cwd=tmp_path, rc=2)
    assert r.stderr.startswith(f"{f}:3:") and message in r.stderr, r.stderr


def test_the_new_kernels_compile_with_nvrtc(nvrtc):
    """Every kernel of the network above and of the pooling variants compiles to PTX for sm_80 and sm_90."""
    from dlc.codegen import generate
    from test_nvrtc import assert_kernels_compile
    for src in [NET] + [pool_model(*case) for case in POOLS[:5]]:
        for level in (1, 2):
            assert_kernels_compile(generate(dlc.compile(src, backend="interp", opt_level=level).graph))


# -- grouped and depthwise convolution -------------------------------------------------------------------
# (channels, outputs, groups, kernel, stride, padding, dilation): AlexNet's two groups, a depthwise
# convolution (groups = channels), a 1x1 grouped one, strided, padded and dilated ones
GROUPED = [(4, 6, 2, 3, 1, 1, 1), (6, 6, 6, 3, 1, 1, 1), (6, 12, 3, 1, 1, 0, 1), (4, 8, 4, 3, [1, 2], 1, 1),
           (6, 4, 2, 3, 2, 2, 2)]


def grouped_model(c, o, g, k, s, p, d):
    stride = f"[{', '.join(map(str, s))}]" if isinstance(s, list) else s
    return probe_model(f"{c}, 7, 6", o, [f"param w : f32[{o}, {c // g}, {k}, {k}] = normal(0, 0.5)",
                                         f"param b : f32[{o}, 1, 1] = normal(0, 0.5)"],
                       f"relu(conv2d(x, w, stride = {stride}, padding = {p}, dilation = {d}, groups = {g}) + b)", 0.05)


@pytest.mark.parametrize("c, o, g, k, s, p, d", GROUPED)
def test_grouped_convolution_agrees_with_pytorch(c, o, g, k, s, p, d):
    torch = import_torch()
    F = torch.nn.functional
    m = dlc.compile(grouped_model(c, o, g, k, s, p, d), backend="interp", float_dtype="float64")
    r = np.random.default_rng(c * o + g)
    x, t = r.normal(size=(2, c, 7, 6)), r.normal(size=(2, o, 1, 1))
    w = torch.tensor(np.asarray(m.params["w"], np.float64), requires_grad=True)
    b = torch.tensor(np.asarray(m.params["b"], np.float64), requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    y = F.relu(F.conv2d(xt, w, stride=s, padding=p, dilation=d, groups=g) + b)
    loss = probe_loss(torch, y, t)
    loss.backward()
    np.testing.assert_allclose(m.forward(x=x)["y"], y.detach().numpy(), rtol=1e-10, atol=1e-12)
    got, grads = m.grad(x=x, t=t)
    assert got == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(grads["w"], w.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grads["b"], b.grad.numpy(), rtol=1e-9, atol=1e-12)
    # the input's gradient, through a model that differentiates with respect to its input
    src = grouped_model(c, o, g, k, s, p, d).replace(" input x :", " param x :").replace(
        f"f32[N, {c}, 7, 6]", f"f32[2, {c}, 7, 6] = zeros").replace("f32[N, {o}".format(o=o), f"f32[2, {o}")
    mx = dlc.compile(src, backend="interp", float_dtype="float64")
    mx.params.update(w=np.asarray(m.params["w"]), b=np.asarray(m.params["b"]), x=x)
    np.testing.assert_allclose(mx.grad(t=t)[1]["x"], xt.grad.numpy(), rtol=1e-9, atol=1e-12)


@needs_emu
@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("c, o, g, k, s, p, d", GROUPED)
def test_grouped_convolution_on_emu_matches_the_interpreter(level, c, o, g, k, s, p, d):
    src = grouped_model(c, o, g, k, s, p, d)
    ref, emu = dlc.compile(src, backend="interp", seed=1), dlc.compile(src, backend="emu", opt_level=level, seed=1)
    r = np.random.default_rng(5)
    for _ in range(2):
        x, t = r.normal(size=(3, c, 7, 6)).astype(np.float32), r.normal(size=(3, o, 1, 1)).astype(np.float32)
        np.testing.assert_allclose(emu.step(x=x, t=t), ref.step(x=x, t=t), rtol=1e-5)
    for q in ref.params:
        np.testing.assert_allclose(emu.params[q], ref.params[q], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(emu.forward(x=x)["y"], ref.forward(x=x)["y"], rtol=1e-5, atol=1e-5)


def test_grouped_convolutions_compile_with_nvrtc_and_export(nvrtc, onnx_runtime):
    from dlc.codegen import generate
    from test_nvrtc import assert_kernels_compile
    _, ort = onnx_runtime
    for case in GROUPED:
        m = dlc.compile(grouped_model(*case), backend="interp", opt_level=2)
        assert_kernels_compile(generate(m.graph))
        proto, _ = m.to_onnx()
        assert [a.i for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"] == [case[2]]
        x = np.random.default_rng(1).normal(size=(2, case[0], 7, 6)).astype(np.float32)
        got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, m.forward(x=x)["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("line, message", [
    ("y = conv2d(x, w6, groups = 4)", "groups = 4 does not divide the 6 output channels"),
    ("y = conv2d(x, w6, groups = 3)", "groups = 3 does not divide the 4 channels of the input"),
    ("y = conv2d(x, w6, groups = 2)", "expects 3 per group, 6 for 2 groups"),
    ("y = conv2d(x, w6, groups = 0)", "groups must be an integer >= 1"),
    ("y = conv(x, 6, 3, groups = 3)", "must be a positive integer"),
])
def test_bad_groups_are_a_located_error(tmp_path, line, message):
    from conftest import dlc_cli
    f = tmp_path / "g.dln"
    f.write_text(f"model m {{\n    input x : f32[N, 4, 7, 6]\n    param w6 : f32[6, 3, 3, 3] = he\n    {line}\n"
                 "    output y\n}\n")
    r = dlc_cli("check", f, cwd=tmp_path, rc=2)
    assert f"{f}:4:" in r.stderr and message in r.stderr, r.stderr


# -- a residual connection fuses into the convolution's epilogue ------------------------------------------
RESIDUAL = """model res {
    input  x : f32[N, 8, 6, 6]
    input  y : i32[N]
    h      = relu(conv(x, 8, 3, padding = 1))
    r      = relu(conv(h, 8, 3, padding = 1) + x)
    logits = linear(global_avgpool(r), 4)
    loss   = softmax_xent(logits, y)
    output logits
    minimize loss with sgd(lr = 0.1)
}"""


def test_a_residual_add_runs_in_the_convolutions_epilogue():
    """relu(conv(h) + b + x) is one kernel at -O2: the product, its bias, the shortcut and the ReLU."""
    g = dlc.compile(RESIDUAL, backend="interp", opt_level=2).graph
    rule, members = g.meta.groups["r"]
    assert rule == "epilogue"
    assert [g.op(m) for m in members] == ["conv2d", "add", "add", "relu"]
    assert "x" in {a for m in members for a in g.operands(m)}  # the shortcut is loaded in the epilogue


@needs_emu
def test_the_residual_network_on_emu_matches_the_interpreter():
    ref = dlc.compile(RESIDUAL, backend="interp", seed=4)
    emu = dlc.compile(RESIDUAL, backend="emu", opt_level=2, seed=4)
    r = np.random.default_rng(2)
    for _ in range(3):
        x, y = r.normal(size=(5, 8, 6, 6)).astype(np.float32), r.integers(0, 4, 5).astype(np.int32)
        np.testing.assert_allclose(emu.step(x=x, y=y), ref.step(x=x, y=y), rtol=1e-5)
    for q in ref.params:
        np.testing.assert_allclose(emu.params[q], ref.params[q], rtol=1e-4, atol=1e-6)


def test_the_small_alexnet_reaches_lenets_held_out_accuracy(tmp_path, lenet_held_out):
    """examples/alexnet_small.dln (LRN and a grouped convolution) trained as `dlc run` trains it (15
    epochs, the same 20% held out as examples/lenet.dln): at least LeNet's held-out accuracy."""
    import json
    from conftest import dlc_cli
    mj = tmp_path / "m.json"
    dlc_cli("run", EXAMPLES / "alexnet_small.dln", "--backend", "interp", "--no-progress", "--metrics-json", mj,
            rc=0, timeout=None)
    acc = json.loads(mj.read_text())["val_accuracy"]
    assert acc >= lenet_held_out >= 0.97, (acc, lenet_held_out)
