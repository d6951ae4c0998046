"""ONNX export (`dlc export`, runtime/onnx_export.py): the exported inference graph passes the ONNX
checker, and onnxruntime computes what the interpreter computes on every example and on a model
that uses every op the front end offers.

Tolerance: outputs agree within |a - b| <= 1e-5 + 1e-5 * |ref|. Both sides compute in float32,
but onnxruntime sums convolutions, matrix products and reductions in another order (blocked
kernels) than NumPy does, so results differ by a few ulps per accumulated term, not bit for bit;
the largest differences seen are about 2e-6 on values of about 3 (bottleneck's 5x5 convolution
over 192 channels, 4,800 terms per output).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import dlc
from dlc.ir.text import parse_ir
from dlc.runtime.interp import Interpreter
from conftest import EXAMPLE_NAMES, EXAMPLES, dlc_cli

try:  # the test extra installs both: without them every test here fails (the fixture), none is skipped green
    import onnx
    import onnxruntime as ort
except ImportError:
    onnx = ort = None
pytestmark = pytest.mark.usefixtures("onnx_runtime")

from dlc.runtime.onnx_export import OPSET, export_onnx  # noqa: E402

RTOL = ATOL = 1e-5


def session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def run_onnx(proto, feeds: dict) -> dict:
    s = session(proto)
    names = [i.name for i in s.get_inputs()]
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {k: feeds[k] for k in names})))


def random_feeds(g, n: int, rng) -> dict:
    feeds = {}
    for name in g.inputs:
        t = g.type(name)
        shape = [n if isinstance(d, str) else d for d in t.shape]
        if t.dtype == "i32":
            feeds[name] = rng.integers(0, 3, shape).astype(np.int32)
        else:
            feeds[name] = rng.normal(size=shape).astype(np.float32)
    return feeds


def randomize(m, rng):
    """Non-zero weights everywhere: params initialised to zeros (biases, logreg's matrix) get small
    random values; the others keep their He/Xavier values, which keep activations near 1."""
    for p in m.params:
        if not np.asarray(m.params[p]).any():
            m.params[p] = (0.1 * rng.normal(size=np.shape(m.params[p]))).astype(np.float32)


def export(m):
    proto, summary = m.to_onnx()
    onnx.checker.check_model(proto, full_check=True)
    return proto, summary


def assert_agree(m, proto, feeds):
    got = run_onnx(proto, feeds)
    ref = m.forward(**{k: v for k, v in feeds.items()})
    assert set(got) == set(m.outputs)
    for k in m.outputs:
        assert got[k].shape == ref[k].shape, k
        np.testing.assert_allclose(got[k], ref[k], rtol=RTOL, atol=ATOL, err_msg=f"output {k}")


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_every_example_exports_and_agrees_with_the_interpreter(name):
    m = dlc.compile(EXAMPLES / f"{name}.dln", backend="interp")
    rng = np.random.default_rng(1)
    randomize(m, rng)
    proto, _ = export(m)
    g = m.stages["forward"]
    # only what the outputs read: no labels, no loss, no training nodes
    assert [i.name for i in proto.graph.input] == [n for n in g.inputs
                                                    if n in g.upstream(list(g.meta.outputs.values()))]
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"SoftmaxCrossEntropyLoss", "ReduceSumSquare"}, ops
    assert {i.name for i in proto.graph.initializer} >= set(m.params) or name == "bottleneck"
    assert proto.opset_import[0].version == OPSET
    # the batch is symbolic: two batch sizes through the same file
    for n in (1, 2 if name == "bottleneck" else 7):
        feeds = {k: v for k, v in random_feeds(m.graph, n, rng).items() if k in
                 [i.name for i in proto.graph.input]}
        assert_agree(m, proto, feeds)


def test_batch_dimension_is_a_dim_param():
    m = dlc.compile(EXAMPLES / "mlp.dln", backend="interp")
    proto, _ = export(m)
    (x,) = proto.graph.input
    dims = x.type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 64
    (out,) = proto.graph.output
    assert out.name == "logits" and out.type.tensor_type.shape.dim[0].dim_param == "N"
    # the weights are initializers named after the params
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    np.testing.assert_array_equal(inits["w1"], np.asarray(m.params["w1"]))


ALL_OPS = """
model allops {
    input x : f32[N, 2, 9, 9]
    input y : i32[N]
    param k : f32[4, 2, 3, 3] = he
    param w : f32[5, 16] = xavier
    param v : f32[16, 5] = xavier
    param s : f32[5] = ones

    c    = conv2d(x, k, stride = 2, padding = 1, dilation = 2)     # [N, 4, 4, 4]
    a    = avgpool2d(c, 3, stride = 1, padding = 1)                # padding counts as zeros
    mx   = maxpool2d(c, 2)
    mp   = maxpool2d(c, 3, stride = 1, padding = 1)
    cat  = concat(a, c, mp, axis = 1)
    t    = transpose(cat, [0, 2, 3, 1])
    f    = reshape(mx, [N, 16])
    g    = reshape(f, [-1, 4, 4])
    moved = reshape(c, [4, N, 16])                                 # N moves: Reshape with -1
    q    = sum(g, axis = 1)
    h    = matmul(f, w, tb = true)
    h2   = matmul(transpose(h), transpose(v), ta = true)
    e    = exp(neg(abs(h))) + sqrt(abs(h) + 1.0) - log(sigmoid(h) + 0.5) / s
    d    = dropout(tanh(e) * sign(h), 0.5)
    p    = softmax(d)
    lp   = log_softmax(d, axis = 1)
    m    = mean(t, axis = [1, 2], keepdims = true)
    m2   = mean(relu(h2)) + mean(leaky_relu(h2, slope = 0.3)) + mean(elu(h2, alpha = 0.6))
    sl   = slice(cat, axis = 1, start = 2, stop = 6)
    loss = softmax_xent(lp, y) + mse(p, d) + 0.01 * l2(w) + 0.01 * l1(v)

    output p, lp, m, m2, q, sl, moved, loss
    minimize loss with sgd(lr = 0.1)
}
"""


def test_every_front_end_op_exports_and_agrees():
    """A model using every op callable from .dln (with strides, padding, dilation, transposed
    matmul operands, dropout, a loss as an output) against the interpreter."""
    m = dlc.compile(ALL_OPS, backend="interp")
    proto, _ = export(m)
    ops = {n.op_type for n in proto.graph.node}
    for want in ("Conv", "AveragePool", "MaxPool", "Concat", "Transpose", "Reshape", "ReduceSum", "Gemm",
                 "Softmax", "LogSoftmax", "ReduceMean", "Slice", "SoftmaxCrossEntropyLoss", "ReduceL1",
                 "ReduceSumSquare", "Sign", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Abs", "Neg", "Div",
                 "LeakyRelu", "Elu"):
        assert want in ops, want
    pools = [n for n in proto.graph.node if n.op_type == "AveragePool"]
    assert {a.name: a.i for a in pools[0].attribute}["count_include_pad"] == 1
    rng = np.random.default_rng(3)
    for n in (1, 5):
        feeds = random_feeds(m.graph, n, rng)
        feeds["y"] = rng.integers(0, 5, n).astype(np.int32)
        assert_agree(m, proto, feeds)


# IR text in: ops that only passes create (broadcast_like, size, pad) and a reshape that has to
# read two symbols off the input's shape.
IR_OPS = """model irops stage=forward
%x : f32[N, T, 3] = input()
%c : f32[1, 3] = input()
%b : f32[N, T, 3] = broadcast_like(%c, %x)
%s : f32[] = size[axis=[0, 1]](%x)
%n : f32[] = size[axis=2](%x)
%r : f32[T, N, 3] = reshape[shape=[T, N, 3]](%x)
%p : f32[N, T, 7] = pad[axis=2, start=1, total=7](%x)
output b = %b
output s = %s
output n = %n
output r = %r
output p = %p
"""


def test_ir_only_ops_export():
    g = parse_ir(IR_OPS)
    proto, _ = export_onnx(g, {}, "test")
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(2, 5, 3)).astype(np.float32), "c": rng.normal(size=(1, 3)).astype(np.float32)}
    got = run_onnx(proto, feeds)
    ref = Interpreter(g).run(list(g.meta.outputs.values()), feeds)
    for k, v in g.meta.outputs.items():
        np.testing.assert_allclose(got[k], ref[v], rtol=RTOL, atol=ATOL, err_msg=k)
    assert float(got["s"]) == 10.0 and float(got["n"]) == 3.0


def test_op_without_mapping_is_a_located_error():
    g = parse_ir("""model m stage=forward
%x : f32[N, 4] = input()
%y : f32[N, 4] = relu(%x)  @ m.dln:3:5
%z : f32[N, 4] = relu_grad(%x, %y)  @ m.dln:4:9
output z = %z
""")
    with pytest.raises(dlc.DlcError) as ei:
        export_onnx(g, {}, "test")
    s = str(ei.value)
    assert s.startswith("m.dln:4:9: error: cannot export to ONNX: op 'relu_grad' (%z) has no ONNX mapping"), s


def test_model_without_outputs_is_an_error():
    m = dlc.compile("model m {\n input x : f32[N, 2]\n param w : f32[2] = ones\n loss = l2(x * w)\n"
                    " minimize loss with sgd(lr = 0.1)\n}\n", backend="interp")
    with pytest.raises(dlc.DlcError, match="no outputs to export"):
        export(m)


# -- the command -------------------------------------------------------------------------------
def test_export_command_with_trained_weights(tmp_path):
    w = tmp_path / "w.npz"
    r = dlc_cli("run", EXAMPLES / "logreg.dln", "--epochs", "1", "--no-progress", "--save", w)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "sub" / "logreg.onnx"
    r = dlc_cli("export", EXAMPLES / "logreg.dln", "--load", w, "-o", out)
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout and "opset 17" in r.stdout
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    m = dlc.load(EXAMPLES / "logreg.dln", w, backend="interp")
    x = np.load(EXAMPLES / "data" / "digits.npz")["x"][:50]
    got = run_onnx(proto, {"x": x})["logits"]
    np.testing.assert_allclose(got, m.forward(x=x)["logits"], rtol=RTOL, atol=ATOL)
    # the trained weights, not the initial zeros
    assert np.abs(got).max() > 0.1


def test_export_errors(tmp_path):
    r = dlc_cli("export", EXAMPLES / "mlp.dln", "--load", tmp_path / "missing.npz", "-o", tmp_path / "m.onnx")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"{tmp_path / 'missing.npz'}: error: no such file"), r.stderr
    assert not (tmp_path / "m.onnx").exists()
    r = dlc_cli("export", EXAMPLES / "mlp.dln", "-o", tmp_path)  # a folder
    assert r.returncode == 2 and r.stderr.startswith("error: -o: "), r.stderr
    # issue 23: ONNX written under `m.txt` without a word; now refused before anything is written
    r = dlc_cli("export", EXAMPLES / "mlp.dln", "-o", tmp_path / "m.txt", rc=2)
    assert r.stderr == f"error: {tmp_path / 'm.txt'}: an ONNX model is written to a file ending in .onnx, not '.txt'\n"
    assert not (tmp_path / "m.txt").exists()
    m = dlc.compile(EXAMPLES / "mlp.dln", backend="interp")
    with pytest.raises(dlc.DlcError, match="ending in .onnx, not a name without one"):
        m.export_onnx(tmp_path / "model")


def test_missing_onnx_is_a_clear_error(tmp_path):
    """Without the onnx package: exit 2, a message naming the extra, no traceback, no file."""
    fake = tmp_path / "fake"
    (fake / "onnx").mkdir(parents=True)
    (fake / "onnx" / "__init__.py").write_text("raise ImportError('No module named onnx (test)')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "m.onnx"
    r = dlc_cli("export", EXAMPLES / "mlp.dln", "-o", out, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "pip install 'dlc[onnx]'" in r.stderr, r.stderr
    assert not out.exists()


def test_batched_products_and_zeros_export():
    """Every batched product form (3-D @ 2-D, 2-D @ 3-D, 3-D @ 3-D, transposed operands) and a
    zeros state with a symbolic batch, through onnxruntime at two batch sizes."""
    src = """
model b {
    input x : f32[N, 5, 3]
    param u : f32[4, 5] = xavier
    param v : f32[7, 3] = xavier
    e  = elman(x, 6)
    q  = matmul(x, e, ta = true)
    r  = matmul(e, q, tb = true)
    k  = u @ matmul(x, x, tb = true)
    w  = matmul(v, x, tb = true)
    z  = r + zeros([N, 5, 3])
    output z, k, w
}"""
    m = dlc.compile(src, backend="interp")
    rng = np.random.default_rng(3)
    randomize(m, rng)
    proto, _ = export(m)
    for n in (1, 4):
        assert_agree(m, proto, random_feeds(m.graph, n, rng))
