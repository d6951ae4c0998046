"""Split-K products and convolutions as implicit GEMMs (codegen/products.py `gemm`, `_convolution`): every
such kernel on the emu backend against the interpreter, at -O0/-O1 (each product on its own) and
-O2 (fused epilogues, concat slices, whole training steps); where the plan splits K and where it
does not; NVRTC for the test models.

Tolerances (float32 kernels against the interpreter):
- Each product alone (`check_products`, -O0/-O1): the interpreter's reference of the op, in
  float64, applied to the very float32 operands the emu read (its own upstream values), so only
  the product's own rounding is measured, not what it inherits. However it is summed (a thread's
  fmaf chain over its part of K, then the S split-K partials added in order: no term passes
  through more than n = terms + S roundings), a float32 sum of products is within
  gamma_n * sum|a_i b_i| of the exact value, gamma_n = n u / (1 - n u), u = 2^-24 (Higham,
  Accuracy and Stability of Numerical Algorithms, ch. 3). The check is that rigorous bound,
  elementwise: the terms per output counted by the reference (the op on all-ones operands, so
  padding is left out), sum|a_i b_i| computed by the reference on |operands|. A wrong index or a
  missed tap moves an element by about a whole term, sum|a_i b_i| / n: 1 / (n^2 u) times the
  bound, over 40 for the sums of n <= 600 terms here, still 2 for the longest (a kernel gradient
  at batch 40, n ~ 2,600), and an index error moves many terms, not one.
- Whole steps (-O2, and one model at -O0): `test_emu.compare_step`, the tolerance stated there
  (1e-4 relative plus 1e-5 of the tensor's magnitude: sums of up to a few thousand terms in
  another order, an ulp or two from expf/logf).
"""
import re

import numpy as np
import pytest

import dlc
from dlc.codegen import generate
from dlc.codegen.sizes import Size, evaluate
from dlc.ir.ops import OPS
from dlc.runtime.diff import synth_feeds
from dlc.runtime.emu import EmuBackend
from dlc.runtime.init import initial_state
from test_codegen import MODELS
from test_emu import compare_step
from conftest import EXAMPLES, needs_emu

PRODUCTS = ("matmul", "conv2d", "conv2d_grad_x", "conv2d_grad_w")
U = 2.0 ** -24

# Convolutions of every geometry on a 7x9 image (no size a multiple of a tile or of BK), with
# their adjoints: the layers on top need grad_x of the ones below, every kernel needs grad_w.
CONVS = """
model convs {
    input  x  : f32[N, 3, 7, 9]
    param  k1 : f32[5, 3, 3, 3] = he     # 3x3, padding 1: the same size
    param  k2 : f32[4, 3, 3, 2] = he     # non-square kernel, stride [2, 1], padding [0, 2]
    param  k3 : f32[2, 3, 3, 3] = he     # stride 2, padding 2, dilation 2
    param  k4 : f32[6, 3, 1, 1] = he     # 1x1: the same pixel
    param  k5 : f32[4, 3, 1, 1] = he     # 1x1, stride [1, 3]
    param  k6 : f32[2, 3, 7, 9] = he     # a kernel as large as the image: a 1x1 output
    param  k7 : f32[3, 5, 3, 3] = he     # on a: stride 2, padding 1 (grad_x where the tap meets the stride)
    param  k8 : f32[2, 4, 2, 3] = he     # on b: dilation [2, 1], padding [1, 0]
    param  k9 : f32[70, 6, 1, 1] = he    # on d: 70 rows, two row tiles
    param  ka : f32[1, 3, 1, 1] = he     # one channel out ...
    param  kb : f32[1, 1, 1, 1] = he     # ... then K = 1 forward and in grad_x
    param  kc : f32[3, 2, 3, 3] = he     # on c: padding 1, stride 2 on a 2x3 input
    param  kd : f32[2, 3, 2, 2] = he     # stride 3 padding 1 dilation 3 on 7x9
    a  = relu(conv2d(x, k1, padding = 1))
    b  = conv2d(x, k2, stride = [2, 1], padding = [0, 2])
    c  = conv2d(x, k3, stride = 2, padding = 2, dilation = 2)
    d  = conv2d(x, k4)
    e  = conv2d(x, k5, stride = [1, 3])
    f  = conv2d(x, k6)
    a2 = conv2d(a, k7, stride = 2, padding = 1)
    b2 = conv2d(b, k8, padding = [1, 0], dilation = [2, 1])
    d2 = conv2d(tanh(d), k9)
    o1 = conv2d(conv2d(x, ka), kb)
    c2 = conv2d(c, kc, stride = 2, padding = 1)
    s3 = conv2d(x, kd, stride = 3, padding = 1, dilation = 3)
    loss = mean(a2 * a2) + mean(b2 * b2) + mean(d2 * d2) + mean(o1 * o1) + mean(c2 * c2) + mean(e * e)
           + mean(f * f) + mean(s3 * s3)
    output a2
    minimize loss with sgd(lr = 0.01)
}"""

# Products whose K is the batch (weight gradients: split-K), one with K = 1, one whose long K is
# static; at -O2 the split ones carry fused epilogues (weight decay, bias + relu) and two are
# stored straight into their slices of a concat.
PRODUCTS_MODEL = """
model mm {
    input  x  : f32[N, 37]
    input  u  : f32[N, 1]
    param  w1 : f32[37, 70] = he
    param  w2 : f32[70, 5]  = xavier
    param  v  : f32[1, 5]   = xavier
    param  p  : f32[10, 700] = xavier
    param  q  : f32[700, 7] = xavier
    param  s  : f32[700, 4] = xavier
    param  c  : f32[7]      = normal(0, 1)
    h   = relu(x @ w1)
    o   = h @ w2 + u @ v
    cat = concat(relu(p @ q + c), p @ s, axis = 1)
    loss = mean(o * o) + mean(cat * cat) + 1e-3 * l2(w1, w2, v)
    output o
    minimize loss with sgd(lr = 0.1, momentum = 0.9)
}"""

# A weight gradient of 4 x 35 = 140 tiles: enough blocks without a split
LARGE = """
model large {
    input  x   : f32[N, 256]
    param  big : f32[256, 2200] = he
    loss = mean(x @ big)
    minimize loss with sgd(lr = 0.1)
}"""


# Products of every tile shape of `tiles.gemm_tile` (GEMM_SHORT_TILES): static sides of 24 and 30 next
# to long ones, and their gradients
TILES = """
model tiles {
    input  x  : f32[N, 30]
    param  p1 : f32[24, 50] = xavier
    param  p2 : f32[50, 70] = xavier
    param  p4 : f32[100, 50] = xavier
    param  p5 : f32[50, 30] = xavier
    param  w  : f32[30, 24] = xavier
    a = p1 @ p2
    b = p4 @ p5
    c = x @ w
    loss = mean(a * a) + mean(b * b) + mean(c * c)
    minimize loss with sgd(lr = 0.1)
}"""


# Rows of 36, 20 and 12 floats: every operand is staged with float4 loads, along each fast index
# (x @ w1: A along k, B along n; x^T @ dh: A along m; dh @ w2^T: B along k)
FOURS = """
model fours {
    input  x  : f32[N, 36]
    input  y  : i32[N]
    param  w1 : f32[36, 20] = he
    param  w2 : f32[20, 12] = xavier
    h = relu(x @ w1)
    loss = softmax_xent(h @ w2, y)
    minimize loss with sgd(lr = 0.1)
}"""


def compiled(text, level):
    return dlc.compile(text, backend="interp", opt_level=level).graph


def template(mod, launch):
    return next(k.template for k in mod.kernels if k.name == launch.kernel)


def launches_of(mod, n):
    """(launch, template) of node n's launches, in plan order: at -O2 a fused product's second
    launch (and its only one, unsplit) names its group's root."""
    root = next((r for r, (_, members) in mod.graph.meta.groups.items() if n in members), n)
    return [(l, template(mod, l)) for l in mod.launches if l.node in (n, root)]


def product_of(g, n):
    """The matmul that computes n, or that n adds something to (a gradient with weight decay)."""
    return n if g.op(n) == "matmul" else next(a for a in g.operands(n) if g.op(a) == "matmul")


def splits_of(mod, n, dims):
    """The parts node n's product is split into: the grid z of its split launch (1: none)."""
    return max((evaluate(l.grid[2], dims) for l, t in launches_of(mod, n)
                if t == "matmul.cu.j2" and any(t2 == "split_sum.cu.j2" for _, t2 in launches_of(mod, n))), default=1)


def check_products(g, emu, batch, seed=0):
    """Every product node (matmul, conv2d and its adjoints) as the emu computes it, against the
    interpreter's reference of the op in float64 on the operands the emu read; bound: see the
    module's docstring."""
    state, feeds = initial_state(g, seed), synth_feeds(g, batch, seed)
    emu.set_state(state)
    nodes = [n for n in g.order() if g.op(n) in PRODUCTS]
    assert nodes
    operands = sorted({a for n in nodes for a in g.operands(n)} - set(state) - set(feeds))
    got = emu.run(list(dict.fromkeys(nodes + operands)), feeds, training=True, rng=(1, 0))
    vals = {**state, **feeds, **got}
    for n in nodes:
        ref, attrs = OPS[g.op(n)].ref, g.attrs(n)
        args = [np.asarray(vals[a], np.float64) for a in g.operands(n)]
        exact = ref(*args, **attrs)
        magnitude = ref(*[np.abs(a) for a in args], **attrs)
        terms = ref(*[np.ones_like(a) for a in args], **attrs) + splits_of(emu.module, n, {"N": batch})
        gamma = terms * U / (1 - terms * U)
        err = np.abs(np.asarray(got[n], np.float64) - exact)
        bad = err > gamma * magnitude + 2.0 ** -60
        assert not bad.any(), (f"{n} ({g.op(n)}, batch {batch}): NOT OK, maxdiff {err.max():.3g}, "
                               f"allowed {float((gamma * magnitude).max()):.3g}, at {np.argwhere(bad)[0]}")
    return nodes


# -- every kernel against the interpreter -------------------------------------------------------

@needs_emu
@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("batch", [1, 2, 7, 40])  # 40: more K slices than split parts
@pytest.mark.parametrize("text", [CONVS, PRODUCTS_MODEL], ids=["convs", "products"])
def test_each_product_agrees_with_the_interpreter(backends, text, batch, level):
    g, emu = backends(text, level)
    nodes = check_products(g, emu, batch, seed=batch)
    ops = {g.op(n) for n in nodes}
    assert ops == ({"conv2d", "conv2d_grad_x", "conv2d_grad_w"} if text is CONVS else {"matmul"})


def test_every_tile_shape_is_tested():
    """Each tile of the menu is used by a product the tests above and below check."""
    from dlc.codegen.tiles import GEMM_SHORT_TILES, GEMM_TILE
    used = set()
    for text in (CONVS, PRODUCTS_MODEL, TILES):
        for k in generate(compiled(text, 0)).kernels:
            if k.template == "matmul.cu.j2":
                used.add(tuple(k.ctx[x] for x in ("BM", "BN", "BK", "TM", "TN")))
    assert used == {GEMM_TILE} | {tile for _, tile in GEMM_SHORT_TILES}


@needs_emu
@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("batch", [1, 5, 70])
def test_every_tile_shape_agrees_with_the_interpreter(backends, batch, level):
    g, emu = backends(TILES, level)
    if level == 0:
        check_products(g, emu, batch, seed=batch)
    else:
        compare_step(g, emu, batch, seed=batch)


@needs_emu
@pytest.mark.parametrize("batch", [1, 5, 70])
def test_float4_staging_agrees_with_the_interpreter(backends, batch):
    g, emu = backends(FOURS, 0)
    fast = {(k.ctx["a_fast"], k.ctx["a_vec"], k.ctx["b_fast"], k.ctx["b_vec"])
            for k in emu.module.kernels if k.template == "matmul.cu.j2"}
    assert {("k", True), ("m", True)} <= {f[:2] for f in fast} and {("n", True), ("k", True)} <= {f[2:] for f in fast}
    check_products(g, emu, batch, seed=batch)
    # a row of 37 floats is not aligned every 4: PRODUCTS_MODEL's x is staged one float at a time
    reads_x = [k for k in generate(compiled(PRODUCTS_MODEL, 0)).kernels
               if k.template == "matmul.cu.j2" and k.launch.args[1] == "x"]
    assert reads_x and not any(k.ctx["a_vec"] for k in reads_x)


@needs_emu
@pytest.mark.parametrize("batch", [1, 3, 7])
@pytest.mark.parametrize("text", [CONVS, PRODUCTS_MODEL], ids=["convs", "products"])
def test_fused_training_step_agrees_with_the_interpreter(backends, text, batch):
    g, emu = backends(text, 2)
    compare_step(g, emu, batch, seed=batch)


@needs_emu
def test_unfused_training_step_agrees_with_the_interpreter(backends):
    g, emu = backends(CONVS, 0)
    compare_step(g, emu, 5, seed=3)


@needs_emu
@pytest.mark.parametrize("batch", [1, 4])
def test_the_convolutional_test_models_agree_at_o0_and_o2(batch):
    from test_codegen import ONE_BY_ONE
    for text in (ONE_BY_ONE, MODELS["cnn"]):
        for level in (0, 2):
            g = compiled(text, level)
            compare_step(g, EmuBackend(g), batch, seed=batch, rng=(5, 1))


@needs_emu
def test_split_k_is_deterministic(backends):
    """Two runs of the same step give the same bits: the parts are added in a fixed order."""
    g, emu = backends(CONVS, 2)
    state, feeds = initial_state(g, 0), synth_feeds(g, 6, 0)
    roots = list(g.meta.grads.values())
    runs = []
    for _ in range(2):
        emu.set_state(state)
        runs.append(emu.run(roots, feeds))
    for r in roots:
        np.testing.assert_array_equal(runs[0][r], runs[1][r], err_msg=r)


# -- where K is split ---------------------------------------------------------------------------

@pytest.mark.parametrize("level", [0, 2])
def test_weight_gradients_are_split_and_summed_by_a_second_launch(level):
    g = compiled(CONVS, level)
    mod = generate(g)
    for param in ("k1", "k9", "kb"):  # K = the batch times the output pixels
        n = g.meta.grads[param]
        (gemm, t1), (total, t2) = launches_of(mod, n)
        assert (t1, t2) == ("matmul.cu.j2", "split_sum.cu.j2"), param
        assert evaluate(gemm.grid[2], {"N": 32}) > 1 and total.grid[2] == 1, gemm
        assert gemm.kernel.startswith("conv_grad_w_") and total.kernel == gemm.kernel + "_sum"
        work = gemm.args[0]      # the workspace [S, M, N] that the second launch reads
        assert mod.buffers[work].kind == "temp" and work in total.args[1:]
        if level == 0:  # (at -O2 memory planning gives it a shared slot)
            assert work == f"{n}@split" and mod.buffers[work].shape == [gemm.grid[2], *g.type(n).shape[:1],
                                                                         Size.of(g.type(n).shape[1:]).static]
        assert "atomicAdd" not in next(k.body for k in mod.kernels if k.name == total.kernel)
    # k6's output is one pixel: K = the batch, 2 parts of its estimate (64) < SPLIT_MIN_PARTS
    assert [t for _, t in launches_of(mod, g.meta.grads["k6"])] == ["matmul.cu.j2"]
    # forward convolutions and input gradients (outputs that grow with the batch) are not split
    for n in g.order():
        if g.op(n) in ("conv2d", "conv2d_grad_x"):
            assert [(t, l.grid[2]) for l, t in launches_of(mod, n)] == [("matmul.cu.j2", 1)], n


def test_lenet_first_layer_weight_gradient_is_spread_over_the_gpu():
    mod = generate(dlc.compile(EXAMPLES / "lenet.dln", backend="interp", opt_level=2).graph)
    (gemm, t), (total, t2) = launches_of(mod, "d.c1.w")
    assert (t, t2) == ("matmul.cu.j2", "split_sum.cu.j2")
    assert gemm.grid[2] >= 64 and gemm.kernel == "conv_grad_w_d_c1_w"
    assert total.kernel == "conv_grad_w_d_c1_w_sum"


def test_products_split_only_when_the_output_is_small_and_static():
    g = compiled(PRODUCTS_MODEL, 0)
    mod = generate(g)
    z = {n: splits_of(mod, n, {"N": 64}) for n in g.order() if g.op(n) == "matmul"}
    grads = g.meta.grads
    # K = the batch: 2 parts of its estimate (64), fewer than SPLIT_MIN_PARTS: not worth a launch
    assert all(z[product_of(g, grads[w])] == 1 for w in ("w1", "w2", "v"))
    p_q = next(n for n in g.order() if g.op(n) == "matmul" and list(g.operands(n)) == ["p", "q"])
    assert z[p_q] > 1                                                       # K = 700, static
    for n in g.order():   # outputs that grow with the batch, or a short K: one launch, no split
        if g.op(n) == "matmul" and g.type(n).shape[0] == "N":
            assert z[n] == 1 and len(launches_of(mod, n)) == 1, n
    assert z[product_of(g, grads["p"])] == 1 and z[grads["q"]] == 1       # K = 7 and 10
    big = generate(compiled(LARGE, 0))
    (launch, t), = launches_of(big, big.graph.meta.grads["big"])
    assert t == "matmul.cu.j2" and launch.grid == [35, 4, 1]


def test_batched_products_keep_blockidx_z_for_the_batch():
    mod = generate(compiled(MODELS["seq"], 1))
    batched = [l for l in mod.launches if l.kernel.startswith("bmatmul_")]
    assert batched
    for l in batched:
        assert len(launches_of(mod, l.node)) == 1 and l.grid[2] != 1


def test_fused_split_products_store_through_the_epilogue_and_into_the_concat():
    mod = generate(compiled(PRODUCTS_MODEL, 2))
    sums = [k for k in mod.kernels if k.template == "split_sum.cu.j2"]
    assert any(k.ctx["epilogue"] for k in sums)                     # weight decay, bias + relu
    assert sum("(concat elimination)" in "\n".join(k.comment) for k in sums) == 2
    assert not any(k.ctx["epilogue"] or "(concat elimination)" in "\n".join(k.comment)
                   for k in mod.kernels if k.template == "matmul.cu.j2" and k.ctx["splits"] > 1)


@pytest.mark.parametrize("text", [CONVS, PRODUCTS_MODEL], ids=["convs", "products"])
def test_kernels_are_named_after_their_node_and_line(text):
    mod = generate(compiled(text, 2))
    for k in mod.kernels:
        if k.template in ("matmul.cu.j2", "split_sum.cu.j2"):
            assert any(line.startswith("%") for line in k.comment), k.comment        # its node
            assert any(re.match(r"\S+:\d+:\d+: ", line) for line in k.comment), k.comment  # its line
    names = {k.name for k in mod.kernels}
    if text is CONVS:
        assert {n.split("_")[0] for n in names if n.startswith("conv")} == {"conv"}
        assert any(n.startswith("conv_grad_x_") for n in names) and any(n.startswith("conv_grad_w_") for n in names)


# -- NVRTC --------------------------------------------------------------------------------------

from test_nvrtc import assert_kernels_compile  # noqa: E402


@pytest.mark.usefixtures("nvrtc")
@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("text", [CONVS, PRODUCTS_MODEL, LARGE], ids=["convs", "products", "large"])
def test_kernels_compile_with_nvrtc(text, level):
    assert_kernels_compile(generate(compiled(text, level)))
