"""16-bit storage at precision bf16 (codegen/storage.py): which values live in BF16 buffers, and that
storing them so changes no number.

- the host conversions (ir/precision.py narrow_bf16 / widen_bf16) against PyTorch's bfloat16;
- the decision: products' stored values and what only moves them are 16-bit; values handed out,
  params, state, gradients of params and values a loss reads are not; nothing at fp32 or tf32;
- the same training steps on emu with and without 16-bit storage give the same loss, outputs,
  params and optimizer state bit for bit (the strongest statement: no number changed), on models
  with every kind of 16-bit value (products, convolutions, batch norm's input, a concat's parts,
  a recurrence, fused epilogues);
- a fetched 16-bit value comes back as float32 and equals the interpreter's, and a NaN stored in
  16 bits is still found by --check-numerics at its node;
- the plan's byte counts use 2 bytes for a 16-bit element;
- the cuda backend's path (the CuPy stand-in, which runs the kernels on the emulator) agrees.
"""
import importlib
import sys

import numpy as np
import pytest

import dlc
from dlc.codegen import generate
from dlc.codegen.storage import HALF
from dlc.ir.errors import DlcError
from dlc.ir.precision import narrow_bf16, round_bf16, widen_bf16
from conftest import EXAMPLES, import_torch, needs_emu

GENERATE = importlib.import_module("dlc.codegen.generate")   # (the module, not the function)

MLP = """model m {
    input x : f32[N, 12]
    input y : i32[N]
    param w1 : f32[12, 16] = he
    param w2 : f32[16, 5] = xavier
    h = relu(x @ w1)                 # x @ w1: a product, stored rounded: 16-bit
    logits = matmul(h, w2)           # read by the loss (a row pointer): fp32
    loss = softmax_xent(logits, y)
    output h
    minimize loss with sgd(lr = 0.1)
}"""


def half_values(b) -> set[str]:
    return generate(b.graph).half


def test_conversions_match_torch_bfloat16():
    """narrow_bf16 is PyTorch's float32 -> bfloat16 (nearest, ties to even) on every finite value
    and infinity; a NaN becomes the quiet NaN of its sign; widen_bf16 is exact."""
    torch = import_torch()
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(1000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 1000),
                        np.array([0.0, -0.0, np.inf, -np.inf, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.4e38, 1e-40],
                                 np.float32)]).astype(np.float32)
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(narrow_bf16(x), want)
    np.testing.assert_array_equal(widen_bf16(narrow_bf16(x)), round_bf16(x))
    nans = np.array([0x7f800001, 0xff800001, 0x7fc00000, 0x7fffffff], np.uint32).view(np.float32)
    np.testing.assert_array_equal(narrow_bf16(nans), np.array([0x7fc0, 0xffc0, 0x7fc0, 0x7fc0], np.uint16))
    assert np.isnan(widen_bf16(narrow_bf16(nans))).all()


def test_which_values_are_16_bit():
    """At bf16 -O0: the product x @ w1 is 16-bit (its value is a BF16 number); the logits, read by
    softmax_xent through a row pointer, are not; outputs, the loss, params, gradients of params
    and optimizer state never are. At fp32 and tf32 nothing is."""
    b = dlc.build(MLP, precision="bf16", opt_level=0)
    g = b.graph
    half = half_values(b)
    product = next(n for n in g.order() if g.op(n) == "matmul" and g.operands(n)[1] == "w1")
    logits = next(n for n in g.order() if g.op(n) == "matmul" and g.operands(n)[1] == "w2")
    assert product in half and logits not in half
    m = g.meta
    kept = set(m.outputs.values()) | {m.loss} | set(m.grads.values()) | set(g.params) | set(g.inputs)
    assert not half & kept
    assert all(g.type(n).is_float for n in half)
    for p in ("fp32", "tf32"):
        assert not half_values(dlc.build(MLP, precision=p, opt_level=0))


def test_products_read_rounded_values_are_16_bit():
    """A value that only products read (after a reshape) is stored rounded, whatever computed it:
    the products round it on the way in anyway. One that another op also reads is not."""
    text = """model r {
        input x : f32[N, 2, 4]
        param w : f32[8, 3] = he
        param w2 : f32[8, 8] = he
        t = tanh(x)
        u = reshape(t, [N, 8]) @ w          # t reaches a product only: 16-bit (with its reshape)
        v = sigmoid(x)
        z = reshape(v, [N, 8]) @ w2
        q = v * 2.0                         # v is also read by a mul: fp32
        output u, z, q
    }"""
    b = dlc.build(text, precision="bf16", opt_level=0)
    half = half_values(b)
    assert "t" in half and "v" not in half


@needs_emu
@pytest.mark.parametrize("name, opt_level", [("mlp", 0), ("lenet", 2), ("inception", 2),
                                              ("resnet_small", 2), ("adding_lstm", 2)])
def test_same_bits_with_and_without_16_bit_storage(monkeypatch, name, opt_level):
    """Two training steps on emu at bf16 with 16-bit storage and with every buffer fp32 (the
    decision emptied): the losses, outputs, params and optimizer state are equal bit for bit."""
    def steps():
        m = dlc.compile(EXAMPLES / f"{name}.dln", backend="emu", precision="bf16", opt_level=opt_level, seed=0)
        count = len(m.engine.module.half)
        data = m.read_data()
        got = []
        for s in range(2):
            loss, outs = m.train_step({k: v[16 * s:16 * (s + 1)] for k, v in data.feeds.items()}, fetch_outputs=True)
            got.append(np.float32(loss))
            got += [outs[k] for k in sorted(outs)]
        state = m.state
        return count, got + [np.asarray(state[k]) for k in sorted(state)]
    count16, with16 = steps()
    monkeypatch.setattr(GENERATE, "plan_storage", lambda g, concats: set())
    count32, without = steps()
    assert count16 > 0 and count32 == 0
    assert len(with16) == len(without)
    for a, b in zip(with16, without):
        assert np.asarray(a).dtype == np.float32 or np.asarray(a).dtype.kind != "f"
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@needs_emu
def test_fetched_16_bit_value_is_float32_and_equals_interp():
    """Asking an -O0 step for a 16-bit value hands it back as float32: BF16 numbers (low 16 bits
    zero), equal to the interpreter's value of the same node to the fp32 tolerance of `dlc diff`."""
    b = dlc.build(MLP, precision="bf16", opt_level=0)
    g = b.graph
    product = next(n for n in g.order() if g.op(n) == "matmul" and g.operands(n)[1] == "w1")
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((5, 12)).astype(np.float32), "y": np.array([0, 1, 2, 3, 4], np.int32)}
    got, want = {}, {}
    for backend, out in (("emu", got), ("interp", want)):
        m = dlc.compile(MLP, backend=backend, precision="bf16", opt_level=0, seed=0)
        out.update(m.run([product], feeds))
    v = got[product]
    assert v.dtype == np.float32 and v.shape == (5, 16)
    assert not (v.view(np.uint32) & 0xffff).any()
    np.testing.assert_allclose(v, want[product], rtol=1e-3, atol=1e-4)


@needs_emu
def test_diff_compares_a_value_stored_rounded_as_bf16(opt_level=0):
    """`dlc diff` at bf16: a value stored in 16 bits because its readers round it (here the pooled
    value the product reads) comes back rounded to BF16, and is compared with the interpreter's
    value rounded so; the step agrees. Without that rule it diverges at that value."""
    b = dlc.build(EXAMPLES / "inception.dln", precision="bf16", opt_level=opt_level)
    mod = generate(b.graph, reuse=False)
    rounded = [n for n in mod.half if b.graph.op(n) == "avgpool2d"]
    assert rounded   # the global average pool, read only by the classifier's product
    got = dlc.diff(EXAMPLES / "inception.dln", backends="interp,emu", precision="bf16", opt_level=opt_level)
    firsts = {k: v[1] for k, v in got.results.items() if v[0] != "skipped"}
    assert firsts == {"emu": None} and got.agree


@needs_emu
def test_check_numerics_finds_a_nan_in_a_16_bit_buffer():
    """A product that overflows to infinity, stored in 16 bits: --check-numerics names its line."""
    text = """model n {
    input x : f32[N, 3]
    param w : f32[3, 3] = he
    h = x @ w
    y = h * 2.0
    output y
}"""
    m = dlc.compile(text, backend="emu", precision="bf16", opt_level=0, seed=0)
    assert "h" in m.engine.module.half
    m.check_numerics = True
    x = np.array([[3e38, 0.0, 0.0]], np.float32)
    m.params["w"] = np.full((3, 3), 3e38, np.float32)   # 3e38 * 3e38: infinite in every element of h
    with pytest.raises(DlcError, match=r":4:.*\bh\b") as e:
        m.run(["y"], {"x": x})
    assert "inf" in str(e.value).lower()


SLOT = """model n {
    input x : f32[N, 3]
    input z : f32[N, 3]
    param w : f32[3, 3] = he
    p = softmax(z)
    t = sum(p)
    h = (x + t) @ w
    y = sum(h)
    output y
}"""


@needs_emu
def test_16_bit_value_in_an_fp32_slot():
    """-O2 memory planning puts the 16-bit x + t (read only by the product) into the fp32 slot p
    left: the step gives the bits it gives without 16-bit storage, and --check-numerics, reading
    the slot's first half as BF16, finds the value that became infinite when stored in 16 bits
    (3.4e38 is past BF16's largest finite number, as the product's own rounding would find)."""
    m = dlc.compile(SLOT, backend="emu", precision="bf16", opt_level=2, seed=0)
    mod = m.engine.module
    assert "h.add" in mod.half and mod.buffers[mod.node_buffer["h.add"]].dtype == "f32"
    assert mod.node_buffer["h.add"] == mod.node_buffer["p"]
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((6, 3)).astype(np.float32), "z": rng.standard_normal((6, 3)).astype(np.float32)}
    got = m.run(["y"], feeds)["y"]
    want = dlc.compile(SLOT, backend="interp", precision="bf16", opt_level=2, seed=0)
    want.params["w"] = m.params["w"]
    np.testing.assert_allclose(got, want.run(["y"], feeds)["y"], rtol=1e-5)   # (fp32 sums in two orders)
    m.check_numerics = True
    feeds["x"] = np.full((6, 3), 3.4e38, np.float32)
    with pytest.raises(DlcError, match=r"node %h\.add\) produced inf \(18 of 18 values\)"):
        m.run(["y"], feeds)


def test_stats_count_two_bytes_a_16_bit_element():
    """Peak bytes at bf16 (no memory planning at -O0: every value its own buffer) are fp32's less
    2 bytes for each element of a 16-bit buffer."""
    f = dlc.build(MLP, precision="fp32", opt_level=0)
    h = dlc.build(MLP, precision="bf16", opt_level=0)
    mod = h.module()
    halves = sum(int(np.prod([7 if isinstance(d, str) else d for d in buf.shape]))
                 for buf in mod.buffers.values() if buf.dtype == HALF)
    assert halves > 0
    assert f.stats(batch=7)["peak_bytes"] - h.stats(batch=7)["peak_bytes"] == 2 * halves


def test_products_have_their_16_bit_operands_staged_as_bf16():
    """A product reading a 16-bit operand stages it in a dlc_bf16 shared array, by 8-byte copies
    where its rows allow, else by plain loads (cp.async has no 2-byte form): inception at -O2 has
    both (and test_same_bits_with_and_without_16_bit_storage runs them)."""
    mod = dlc.build(EXAMPLES / "inception.dln", precision="bf16", opt_level=2).module()
    assert "struct dlc_bf16" in mod.source
    halves = {name for name, buf in mod.buffers.items() if buf.dtype == HALF}
    staged = [k for k in mod.kernels if k.template == "matmul_mma.cu.j2" and set(k.launch.args[1:3]) & halves]
    assert staged
    for k in staged:
        assert "__shared__ dlc_bf16" in k.body
    assert any("dlc_cp_async8" in k.body for k in staged) and any("dlc_bf16{}" in k.body for k in staged)
    others = [k for k in mod.kernels if k.template == "matmul_mma.cu.j2" and k not in staged]
    assert all("dlc_bf16" not in k.body.split("const int t =")[0] for k in others)


@needs_emu
def test_cuda_backend_path_with_16_bit_buffers(monkeypatch):
    """The cuda backend (on the CuPy stand-in, kernels on the emulator) allocates 16-bit buffers as
    uint16, and a training step gives the emu backend's loss and params bit for bit."""
    from fake_cupy import fake_cupy
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    data = None
    results = []
    for backend in ("emu", "cuda"):
        m = dlc.compile(EXAMPLES / "lenet.dln", backend=backend, precision="bf16", opt_level=0, seed=0)
        data = data or m.read_data()
        loss = m.step(**{k: v[:8] for k, v in data.feeds.items()})
        results.append((np.float32(loss), {k: np.asarray(v) for k, v in m.state.items()}))
    (l0, s0), (l1, s1) = results
    assert np.float32(l0).tobytes() == np.float32(l1).tobytes()
    for k in s0:
        assert s0[k].tobytes() == s1[k].tobytes(), k


MIXED = """model mix {
    input x : f32[N, 32]
    input t : f32[N, 8]
    param w1 : f32[32, 48] = xavier
    param w2 : f32[48, 8] = xavier
    param w3 : f32[32, 8] = xavier
    z = x @ w1                      # a bf16 product: exact, so 16-bit though a tf32 product reads it
    s = tanh(x)                     # read by the second product only: 16-bit unless it is tf32
    y = matmul(z, w2, min_precision = "tf32") + matmul(s, w3%s)
    loss = mse(y, t)
    output y
    minimize loss with sgd(lr = 0.1)
}"""


@needs_emu
@pytest.mark.parametrize("opt_level", [0, 2])
def test_products_with_a_floor_in_16_bit_storage(monkeypatch, opt_level):
    """A product floored at tf32 (min_precision) neither stores an exact BF16 value nor reads its
    operands rounded: a value only it reads stays fp32, while a bf16 product's output it reads is
    still 16-bit (widened exactly on the way in). Two emu training steps are the same bit for bit
    with and without 16-bit storage."""
    floored = MIXED % ', min_precision = "tf32"'
    assert {"z", "s"} <= half_values(dlc.build(MIXED % "", precision="bf16", opt_level=opt_level))
    half = half_values(dlc.build(floored, precision="bf16", opt_level=opt_level))
    assert "z" in half and "s" not in half
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((6, 32)).astype(np.float32), "t": rng.standard_normal((6, 8)).astype(np.float32)}
             for _ in range(2)]

    def steps():
        m = dlc.compile(floored, backend="emu", precision="bf16", opt_level=opt_level, seed=0)
        got = [np.float32(m.train_step(f)) for f in feeds]
        return got + [np.asarray(m.state[k]) for k in sorted(m.state)]
    with16 = steps()
    monkeypatch.setattr(GENERATE, "plan_storage", lambda g, concats: set())
    for a, b in zip(with16, steps()):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
