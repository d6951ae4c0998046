"""Code generation: the module text and the launch plan, without running anything.

The models below (MODELS) are shared with test_emu.py and test_nvrtc.py: between them they use
every non-source op of the registry, forward and backward, at sizes that do not divide the
block sizes (37, 33x17, 7x9 images, ...).
"""
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dlc
from dlc.codegen import generate
import importlib
from dlc.codegen.generate import EMITTERS
from dlc.codegen.plan import RNG_BUFFER
from dlc.codegen.pointwise import ELEMENTWISE_BLOCK, ELEMENTWISE_MAX_BLOCKS, _ewise, c_expr
from dlc.codegen.sizes import Size, broadcast_index, evaluate, gather_index, strides
from dlc.ir.graph import Graph
from dlc.ir.ops import FAMILIES, OPS, elementwise_ops
from dlc.ir.types import TensorType
from dlc.passes.manager import run_pipeline
from conftest import EXAMPLE_FILES, needs_emu

MODELS = {
    # slices that do not cover their operand: the adjoint is a pad (zeros around it), and slices of
    # two ends whose adjoints autodiff joins into a concat
    "slices": """
model slices {
    input  x : f32[N, 7]
    param  w : f32[7, 9] = normal(0, 0.5)
    h    = x @ w
    a    = slice(h, axis = 1, start = 2, stop = 5)
    e    = slice(x, axis = 1, start = 0, stop = 3) * a
    lo   = slice(h, axis = 1, start = 0, stop = 4)
    hi   = slice(h, axis = 1, start = 4, stop = 9)
    loss = sum(e * e) + sum(tanh(lo)) + mean(hi * hi)
    output e
    minimize loss with sgd(lr = 0.05)
}
""",
    # every elementwise op and its derivative helper; broadcasting against [37], [1, 37], [1]
    "ew": """
model ew {
    input  x : f32[N, 37]
    input  t : f32[N, 37]
    param  a : f32[37]    = normal(0.0, 1.0)
    param  b : f32[1, 37] = uniform(0.5, 1.5)
    param  s : f32[1]     = uniform(0.5, 1.5)

    u    = x * a + b
    v    = sigmoid(u) - tanh(u) / (exp(-abs(u)) + 1.5)
    p    = sqrt(b + 1) * log(b + 2) * relu(u) - s * sign(x) + leaky_relu(u, slope = 0.2) + elu(u, alpha = 0.5)
    q    = v * p / s
    loss = mse(q, t) + 0.01 * l1(a) + 0.001 * l2(b, s)

    output q
    minimize loss with sgd(lr = 0.1, momentum = 0.9, nesterov = true)
}
""",
    # issue 23's ops (ir/ops_math.py): erf, gelu both ways, softplus past its threshold, pow, max/min,
    # the comparisons, where (two picks), bce_logits; and layer_norm, lowered to reductions
    "practical": """
model practical {
    input  x : f32[N, 9]
    input  t : f32[N, 9]
    param  a : f32[9]    = normal(0.0, 1.0)
    param  b : f32[1, 9] = uniform(0.5, 1.5)
    param  s : f32[1]    = uniform(0.5, 1.5)

    u    = layernorm(x * a + b)
    g    = gelu(u) + gelu(u, approximate = "tanh") * erf(u)
    p    = softplus(u, beta = 2.0, threshold = 3.0) + pow(abs(u) + 1, s) + max(u, b) - min(u, 0.5)
    c    = where(u > 0, g, p) + (u < b) * s + (u >= 0.5) + (u <= s) * g + (u == 0) + (u != b) * p
    loss = bce_logits(c, t)

    output c
    minimize loss with sgd(lr = 0.1, momentum = 0.9)
}
""",
    # reductions over inner, outer and several axes; softmax over a middle axis and over the batch
    "red": """
model red {
    input  x : f32[N, 5, 7]
    input  y : i32[N]
    param  w : f32[5, 7] = normal(0.0, 1.0)
    param  v : f32[7, 3] = normal(0.0, 1.0)

    h      = x * w
    m1     = mean(h, axis = 1)
    m2     = sum(h, axis = [0, 2], keepdims = true)
    s0     = softmax(h, axis = 1)
    s1     = log_softmax(m1, axis = 0)
    logits = m1 @ v
    loss   = softmax_xent(logits, y) + mean(s0 * h) + 0.1 * sum(s1 * m1) + 0.01 * mean(m2 * m2)

    output logits, s0
    minimize loss with rmsprop(lr = 0.01)
}
""",
    # matmul with every transpose flag (the backward pass folds transposes), transposes that do
    # not fold (2-D and 3-D), reshapes; odd sizes over several 16x16 tiles
    "mm": """
model mm {
    input  x : f32[N, 33]
    param  w1 : f32[33, 17] = xavier
    param  w2 : f32[19, 17] = xavier
    param  w3 : f32[19, 19] = xavier

    h    = tanh(x @ w1)
    g    = h @ transpose(w2)
    k    = transpose(g) @ g
    r    = reshape(k * w3, [361])
    z    = transpose(reshape(g, [N, 19, 1]), perm = [1, 2, 0])
    q    = transpose(w2) @ transpose(g)
    loss = mean(r * r) + l2(g) / 100 + sum(transpose(h) * 0.5) + mean(z * z) + mean(q * q)

    output g
    minimize loss with adam(lr = 0.01)
}
""",
    # convolution (strided, padded, dilated, 1x1) and its two adjoints, pooling and adjoints,
    # concat and slice, dropout, batch norm (lowered: if_training)
    "cnn": """
model cnn {
    input  x : f32[N, 2, 7, 9]
    input  y : i32[N]
    param  k1 : f32[4, 2, 3, 3] = he
    param  k2 : f32[3, 2, 1, 1] = he
    param  k3 : f32[2, 2, 3, 3] = he
    param  k4 : f32[4, 4, 3, 3] = he
    param  wf : f32[126, 5]     = xavier

    c1     = relu(conv2d(x, k1, stride = [1, 2], padding = 1))
    c2     = conv2d(x, k2, stride = [1, 2])
    c3     = conv2d(x, k3, padding = 2, dilation = 2)
    c5     = conv2d(c1, k4, stride = 2, padding = 1)
    cat    = concat(c1, c2, axis = 1)
    p      = maxpool2d(cat, 3, stride = 2, padding = 1)
    a      = avgpool2d(cat, 2)
    d      = dropout(reshape(p, [N, 84]), 0.3)
    f      = concat(d, reshape(a, [N, 42]), axis = 1)
    logits = f @ wf
    n5     = batchnorm2d(c5)
    loss   = softmax_xent(logits, y) + 0.01 * mean(c3 * c3) + 0.01 * mean(n5 * n5)

    output logits
    minimize loss with sgd(lr = 0.05)
}
""",
    # sequences: an Elman network and an LSTM unrolled by scan (slices per step, stacking, zeros
    # for the initial state), batched products of every form: [B, M, K] @ [K, N] (the batch
    # folded into the rows), [M, K] @ [B, K, N] and [B, M, K] @ [B, K, N] with transposes
    "seq": """
model seq {
    input  x : f32[N, 5, 3]
    input  t : f32[N, 1]
    param  u : f32[4, 5] = xavier
    param  v : f32[7, 3] = xavier

    e    = elman(x, 6)
    l    = lstm(x, 4, forget_bias = 0.5)
    s    = l @ transpose(l, perm = [0, 2, 1])          # [N, 5, 5]
    q    = matmul(x, e, ta = true)                   # [N, 3, 6]
    r    = matmul(e, q, tb = true)                   # [N, 5, 3]
    k    = u @ l                                     # [4, 5] @ [N, 5, 4]
    w    = matmul(v, x, tb = true)                   # [7, 3] @ [N, 3, 5]^T
    pred = linear(concat(last(e), last(l), axis = 1), 1)
    loss = mse(pred, t) + 0.01 * (mean(s * s) + mean(r * r) + mean(k * k) + mean(w * w))

    output pred
    minimize loss with adam(lr = 0.01, clip = 0.5)
}
""",
    # token ids: embeddings of ids i32[N, T] and i32[N] (a batch repeats ids, so the scatter-add
    # adjoint sums rows), an LSTM over the embedded sequence, a softmax_xent per position [N, T, C]
    "tokens": """
model tokens {
    input  x : i32[N, 6]
    input  y : i32[N, 6]
    input  c : i32[N]
    param  w : f32[5, 9] = xavier

    e      = embed(x, 9, 3)                  # [N, 6, 3]
    k      = embed(c, 4, 9)                  # [N, 9]
    h      = lstm(e, 5)                      # [N, 6, 5]
    logits = h @ w + reshape(k, [N, 1, 9])   # [N, 6, 9]
    loss   = softmax_xent(logits, y)

    output logits
    minimize loss with adam(lr = 0.01)
}
""",
}


def compile_graph(name):
    return dlc.compile(MODELS[name], backend="interp").graph


@pytest.fixture(scope="module")
def modules():
    mods = {name: generate(compile_graph(name)) for name in MODELS}
    # data parallelism's ops (family host: plan steps computed on the host, no kernel), in a
    # data-parallel step: built without MPI, the IR needs none (tests/test_data_parallel.py runs it)
    mods["mm, data parallel"] = generate(dlc.build(MODELS["mm"], data_parallel=True).graph)
    return mods


def test_the_models_use_every_op(modules):
    used = {l.op for m in modules.values() for l in m.launches}
    used |= {m.graph.op(n) for m in modules.values() for n in m.graph.nx}
    # a composite op (batch_norm) is lowered before codegen: what it lowers to must be used
    missing = sorted(k for k, d in OPS.items() if d.family not in ("source", "composite") and k not in used)
    assert not missing, f"no test model uses {missing}"


def test_the_models_use_every_matmul_variant(modules):
    variants = {l.kernel.split("_")[0] + "_" + l.kernel.split("_")[1]
                for m in modules.values() for l in m.launches if l.op == "matmul"}
    assert {"matmul_nn", "matmul_nt", "matmul_tn", "matmul_tt"} <= variants
    assert {"bmatmul_nn", "bmatmul_nt", "bmatmul_tn"} <= variants  # one product per item of a batch


def test_every_non_source_node_gets_a_kernel_or_an_alias(modules):
    for m in modules.values():
        g = m.graph
        launched = {l.node for l in m.launches}
        for n in g.nx:
            op = g.op(n)
            if op in ("input", "param", "state", "buffer"):
                assert m.node_buffer[n] == n
            elif op == "reshape" or (op == "assign" and n not in launched):
                assert m.node_buffer[n] == m.node_buffer[g.operands(n)[-1 if op == "assign" else 0]]
            else:
                assert n in launched, f"{op} node {n} has no kernel"


def test_plan_is_json_and_names_kernels_of_the_source(modules):
    m = modules["mm"]
    plan = json.loads(m.plan_json())
    assert plan["symbols"] == ["N"]
    names = set(re.findall(r'extern "C" __global__ void (\w+)\(', m.source))
    for l in plan["launches"] + plan["commits"]:
        assert l["kernel"] in names
        assert all(a in {b["name"] for b in plan["buffers"]} for a in l["args"])
        assert len(l["grid"]) == len(l["block"]) == 3
    assert names == {k.name for k in m.kernels} and len(names) == len(m.kernels)  # names unique
    assert len(m.launches) >= len(m.kernels)
    text = m.plan_text()
    assert "# step launches" in text and "# commit launches" in text


def _deep(layers: int) -> str:
    body = "".join(f"    h{i} = relu(dense(h{i - 1}, 24))\n" for i in range(1, layers + 1))
    return (f"model deep {{\n    input x : f32[N, 20]\n    input y : i32[N]\n    h0 = x\n{body}"
            f"    logits = dense(h{layers}, 10)\n    loss = softmax_xent(logits, y)\n    output logits\n"
            f"    minimize loss with sgd(lr = 0.1, momentum = 0.9)\n}}\n")


def test_one_kernel_per_distinct_body_whatever_the_depth():
    """Layers of one width share their kernels: the module stays the same size as the net deepens,
    while the plan still launches a kernel for every node."""
    mods = {n: generate(dlc.compile(_deep(n), backend="interp").graph) for n in (3, 12)}
    assert len(mods[3].kernels) == len(mods[12].kernels)
    assert len(mods[12].launches) > len(mods[3].launches) + 9 * 10
    m = mods[12]
    bodies = [k.body for k in m.kernels]
    assert len(set(bodies)) == len(bodies) or all(  # equal bodies only with different parameters
        a.params != b.params for a in m.kernels for b in m.kernels if a is not b and a.body == b.body)
    shared = max(m.kernels, key=lambda k: k.uses)
    assert shared.uses >= 12 and sum(l.kernel == shared.name for l in m.launches) == shared.uses
    assert "also launched for %" in m.source


@needs_emu
def test_shared_kernels_run_on_each_nodes_buffers():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((9, 20)).astype(np.float32), rng.integers(0, 10, 9).astype(np.int32)
    ref, emu = (dlc.compile(_deep(5), backend=b, seed=3) for b in ("interp", "emu"))
    for _ in range(2):  # float32 sums in another order: agreement to a few ulps of the values
        np.testing.assert_allclose(emu.step(x=x, y=y), ref.step(x=x, y=y), rtol=1e-4)
    for p in ref.params:
        np.testing.assert_allclose(emu.params[p], ref.params[p], rtol=1e-4, atol=1e-5)


def test_kernels_are_preceded_by_their_node_and_dln_line(modules):
    m = modules["ew"]
    src = m.source
    k = next(k for k in m.kernels if k.launch.op == "sigmoid")
    i = src.index(f"void {k.name}(")
    head = src[:i].rsplit("\n\n", 1)[1]
    assert "= sigmoid(%u)" in head
    assert "<string>:10:" in head and "v    = sigmoid(u) - tanh(u)" in head


def test_elementwise_kernels_use_the_registry_expression(modules):
    """Each elementwise kernel stores the registry's C expression, its attributes written in."""
    for m in modules.values():
        for k in m.kernels:
            d = OPS[k.launch.op]
            if d.family == "elementwise":
                want = d.c_of(m.graph.attrs(k.launch.node))
                for name, v in m.graph.attrs(k.launch.node).items():
                    literal = str(int(v)) if isinstance(v, bool) else f"{v!r}f" if isinstance(v, float) else None
                    want = re.sub(rf"\b{name}\b", literal, want) if literal else want
                assert f"out[i] = {want};" in m.source.split(f"void {k.name}(")[1].split("\n}\n")[0]


def test_step_never_writes_params_state_or_inputs_and_commits_come_last(modules):
    for m in modules.values():
        phases = [l.phase for l in m.launches]
        assert phases == sorted(phases, key=lambda p: p == "commit")
        for l in m.launches:
            kind = m.buffers[l.args[0]].kind
            assert kind == ("temp" if l.phase == "step" else kind)
            if l.phase == "commit":   # params, optimizer state and model buffers take their new values
                assert kind in ("param", "state", "buffer")
                assert m.buffers[l.args[1]].kind == "temp"


def test_symbolic_sizes_are_kernel_arguments_and_plan_expressions(modules):
    m = modules["ew"]
    l = next(l for l in m.launches if l.op == "sigmoid")
    assert l.dims == ["N"] and "int dim_N" in m.source
    # a grid-stride loop over float4s (sigmoid reads its operand at the stored element), capped
    assert evaluate(l.grid[0], {"N": 1000}) == -(-1000 * 37 // (4 * ELEMENTWISE_BLOCK))
    assert evaluate(l.grid[0], {"N": 10 ** 6}) == ELEMENTWISE_MAX_BLOCKS
    assert l.block == [ELEMENTWISE_BLOCK, 1, 1]


def test_dropout_reads_the_rng_buffer_and_module_has_philox(modules):
    m = modules["cnn"]
    drops = [l for l in m.launches if l.op == "dropout"]
    assert drops and all(l.args[-1] == RNG_BUFFER for l in drops)
    assert "dlc_philox_word0" in m.source
    assert "dlc_philox_word0" not in modules["ew"].source


def test_emu_source_includes_the_header_and_a_launcher_per_kernel(modules):
    m = modules["red"]
    emu = m.emu_source()
    assert emu.startswith("// Host launch") and '#include "cuda_emu.h"' in emu
    for k in m.kernels:
        assert f"launch_{k.name}(" in emu


def test_generation_is_deterministic():
    g = compile_graph("red")
    a, b = generate(g), generate(g)
    assert a.source == b.source and a.plan_json() == b.plan_json()


# -- index arithmetic --------------------------------------------------------------------------

def _c_eval(expr: str, **values) -> int:
    """Evaluate a generated C index expression (non-negative ints: `/` is floor division)."""
    return eval(expr.replace("/", "//"), {}, values)


@pytest.mark.parametrize("out_shape,in_shape", [
    ((4, 5, 6), (5, 6)), ((4, 5, 6), (5, 1)), ((4, 5, 6), (4, 1, 6)), ((4, 5, 6), (1,)),
    ((3, 1, 2), (3, 1, 2)), ((2, 3), (2, 1)), ((7,), ()),
])
def test_broadcast_index_matches_numpy(out_shape, in_shape):
    src = np.arange(int(np.prod(in_shape)) or 1).reshape(in_shape)
    want = np.broadcast_to(src, out_shape).ravel()
    expr = broadcast_index("i", out_shape, in_shape)
    got = [src.ravel()[_c_eval(expr, i=i)] for i in range(len(want))]
    assert got == list(want)


def test_symbolic_shapes_index_with_dim_arguments():
    expr = broadcast_index("i", ("N", 3, 4), (3, 1))
    src = np.arange(3).reshape(3, 1)
    want = np.broadcast_to(src, (5, 3, 4)).ravel()
    assert [src.ravel()[_c_eval(expr, i=i, dim_N=5)] for i in range(60)] == list(want)
    assert Size.of(["N", 3, 4]).c() == "(12 * dim_N)" and Size.of(["N", 3, 4]).py() == "12*N"


def test_gather_index_is_a_transpose():
    x = np.arange(24).reshape(2, 3, 4)
    perm = (2, 0, 1)
    st = strides(x.shape)
    expr = gather_index("i", [x.shape[p] for p in perm], [st[p] for p in perm])
    want = np.transpose(x, perm).ravel()
    assert [x.ravel()[_c_eval(expr, i=i)] for i in range(24)] == list(want)


def test_plan_expressions_are_arithmetic_only():
    assert evaluate("(12*N + 255) // 256", {"N": 100}) == 5
    assert evaluate(7, {}) == 7
    assert evaluate("min((N + 63) // 64, 8)", {"N": 100}) == 2      # a capped grid
    assert evaluate("min((N + 63) // 64, 8)", {"N": 10 ** 5}) == 8
    with pytest.raises(ValueError):
        evaluate("__import__('os')", {})
    with pytest.raises(ValueError):
        evaluate("max(N, 8)", {"N": 1})
    # a dimension may be called min: the call is still the function
    assert evaluate("min((min + 63) // 64, 8)", {"min": 100}) == 2


def test_ewise_composes_registry_expressions():
    assert _ewise(OPS["abs"].c, "a") == "(fabsf((a)))"
    assert _ewise(OPS["mul"].c, "(a - b)", "x") == "(((a - b)) * (x))"


def test_c_expressions_read_the_attributes_of_their_node():
    """An elementwise op's C expression names its attributes (`slope`); codegen writes each node's
    value in as a literal, so one entry serves every slope (a variable named like an attribute
    inside another identifier is left alone)."""
    g = dlc.compile("model m { input x : f32[N, 3]\n a = leaky_relu(x, slope = 0.25)\n"
                    "b = leaky_relu(a)\n output b }", backend="interp").graph
    assert c_expr(g, "a") == "a > 0.0f ? a : 0.25f * a"
    assert c_expr(g, "b") == "a > 0.0f ? a : 0.01f * a"  # the default slope
    src = generate(g).source
    assert "0.25f * " in src and "0.01f * " in src and "slope" not in src.split("extern")[-1].split("//")[0]


# -- the family contract: codegen looks emitters up by family, never by op name -------------------

def test_every_family_has_an_emitter_and_every_op_a_family():
    assert set(FAMILIES) - {"composite"} == set(EMITTERS)   # a composite op is lowered before codegen
    for name, d in OPS.items():
        assert d.family in FAMILIES, name
        assert all(k in d.kernel for k in FAMILIES[d.family].keys), name


def test_codegen_has_no_branch_on_an_op_name():
    """No module of codegen/ names an op (the EMITTERS table in generate.py is keyed by family names)."""
    folder = Path(importlib.import_module("dlc.codegen.generate").__file__).parent
    modules = sorted(folder.glob("*.py"))
    assert {"generate.py", "core.py", "pointwise.py", "products.py"} <= {p.name for p in modules}
    named = {}
    for path in modules:
        body = path.read_text()
        if path.name == "generate.py":  # the table itself is keyed by family names
            start = body.index("EMITTERS = {")
            body = body[:start] + body[body.index("\n}\n", start):]
        if path.name == "sizes.py":  # the plan's size expressions call Python's min (not the op min)
            body = body.replace('node.func.id == "min"', "")
        # family names are codegen's vocabulary (some equal an op's name, e.g. const); other op names are not
        ops = [k for k in OPS if k not in FAMILIES and re.search(rf"[\"']{re.escape(k)}[\"']", body)]
        if ops:
            named[f"codegen/{path.name}"] = ops
    assert not named, f"codegen names ops: {named}"


@pytest.fixture
def new_ops_model():
    """A new elementwise op (cube) and a new reduction (sumsq_mean) registered in the registry only,
    for the length of a test; a model using both."""
    from dlc.ir.ops import _reduce_rule, _unary_float, op as register
    try:
        register("cube", 1, _unary_float("cube"), lambda x: x * x * x, c="a * a * a")
        register("sumsq_mean", 1, _reduce_rule("sumsq_mean"),
                 lambda x, axis, keepdims: np.mean(np.square(x), axis=axis, keepdims=keepdims),
                 family="reduce", kernel={"map": "a * a", "finish": "acc / (float)extent"},
                 attrs={"axis": None, "keepdims": False})
        yield """model m {
    input x : f32[N, 5]
    y = sumsq_mean(cube(x), axis = 1)
    output y
}"""
    finally:
        OPS.pop("cube", None)
        OPS.pop("sumsq_mean", None)


def test_an_op_of_an_existing_family_needs_no_codegen_change(new_ops_model):
    """Register a new elementwise op and a new reduction in the registry only: both compile to
    kernels (the next test runs them on the emulator against their NumPy references)."""
    mod = generate(dlc.compile(new_ops_model, backend="interp").graph)
    assert any("a * a * a" in mod.source.split(f"void {k.name}(")[1].split("\n}\n")[0] for k in mod.kernels)


@needs_emu
def test_an_op_of_an_existing_family_computes_its_reference_on_emu(new_ops_model):
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    got = dlc.compile(new_ops_model, backend="emu").forward(x=x)["y"]
    np.testing.assert_allclose(got, np.mean(x ** 6, axis=1), rtol=1e-5)


def test_registering_an_op_without_what_its_family_needs_fails():
    from dlc.ir.ops import _unary_float, op as register
    with pytest.raises(ValueError, match="needs"):
        register("bad_reduce", 1, _unary_float("bad_reduce"), np.sum, family="reduce", kernel={"map": "a"})
    with pytest.raises(ValueError, match="unknown kernel family"):
        register("bad_family", 1, _unary_float("bad_family"), np.sum, family="no_such_family")
    assert "bad_reduce" not in OPS and "bad_family" not in OPS


def test_flops_come_from_the_registry():
    """Counted by hand: a multiply-add is 2 FLOPs, a pooling tap 1, an elementwise op 1 per output."""
    from dlc.ir.ops import flops
    g = dlc.compile("""model m {
    input x : f32[N, 1, 8, 8]
    param w : f32[4, 1, 3, 3] = he
    param v : f32[64, 10] = he
    h = maxpool2d(relu(conv2d(x, w, padding = 1)), kernel = 2)
    y = reshape(h, shape = [N, 64]) @ v
    output y
}""", backend="interp").graph
    by_op = {g.op(n): flops(g, n, {"N": 3}) for n in g.nx}
    assert by_op["conv2d"] == 3 * 2 * (4 * 8 * 8) * (1 * 3 * 3)
    assert by_op["relu"] == 3 * 4 * 8 * 8
    assert by_op["maxpool2d"] == 3 * (4 * 4 * 4) * (2 * 2)
    assert by_op["matmul"] == 3 * 2 * 10 * 64
    assert by_op["reshape"] == by_op["param"] == by_op["input"] == 0


# -- random graphs ------------------------------------------------------------------------------
# A recipe is a list of steps applied to a running value v : f32[N, d]; every step keeps the
# graph well typed and the values bounded (log and sqrt see |v| + 1, exp sees tanh(v)), so that
# float32 comparisons stay meaningful. The registry supplies the ops: any elementwise op, in
# either operand order, against params of several broadcast shapes.

UNARY = sorted(k for k in elementwise_ops() if OPS[k].arity == 1)
# the comparisons are steps: a float32 rounding difference between two backends flips one, so the
# random graphs leave them out (test_practitioner_ops.py checks them against PyTorch)
STEPS = {"gt", "lt", "ge", "le"}
BINARY = sorted(k for k in elementwise_ops() if OPS[k].arity == 2 and not k.endswith("_grad") and k not in STEPS)
GUARD = {"log": "plus_one", "sqrt": "plus_one", "exp": "tanh"}

step = st.one_of(
    st.tuples(st.just("unary"), st.sampled_from(UNARY)),
    st.tuples(st.just("binary"), st.sampled_from(BINARY), st.sampled_from(["row", "row2", "scalar", "full"]),
              st.booleans()),
    st.tuples(st.just("matmul"), st.integers(1, 21), st.booleans()),
    st.tuples(st.just("gram"),),
    st.tuples(st.just("reduce"), st.sampled_from(["sum", "mean"]), st.sampled_from([0, 1])),
    st.tuples(st.just("softmax"), st.sampled_from(["softmax", "log_softmax"]), st.sampled_from([0, 1])),
)
recipes = st.tuples(st.integers(1, 20), st.lists(step, min_size=1, max_size=6),
                    st.sampled_from(["sum", "mean", "l1", "l2", "mse"]))


def build_random_graph(recipe) -> Graph:
    """The optimized graph (forward, backward, sgd update) of a recipe."""
    d, steps, loss_op = recipe
    g = Graph("random")
    f32 = lambda *shape: TensorType("f32", shape)
    x = v = g.add("input", [], name="x", type=f32("N", d))
    count = [0]

    def param(shape, init="uniform(0.5, 1.5)"):
        count[0] += 1
        return g.add("param", [], {"init": init}, name=f"p{count[0]}", type=f32(*shape))

    def const(value):
        return g.add("const", [], {"value": value})

    for s in steps:
        kind = s[0]
        if kind == "unary":
            arg = v
            if GUARD.get(s[1]) == "plus_one":
                arg = g.add("add", [g.add("abs", [v]), const(1.0)])
            elif GUARD.get(s[1]) == "tanh":
                arg = g.add("tanh", [v])
            v = g.add(s[1], [arg])
        elif kind == "binary":
            _, op, shape, swap = s
            other = {"row": lambda: param([d]), "row2": lambda: param([1, d]), "scalar": lambda: const(1.25),
                     "full": lambda: g.add("tanh", [x]) if g.type(x).shape[1] == d else param([d])}[shape]()
            if op == "div" and not swap:
                v = g.add("div", [v, other])          # the params and constants are positive
            elif op == "pow":                         # a positive base, a bounded exponent
                a, b = (other, v) if swap else (v, other)
                v = g.add("pow", [g.add("add", [g.add("abs", [a]), const(1.0)]), g.add("tanh", [b])])
            else:
                a, b = (other, v) if swap and op != "div" else (v, other)
                v = g.add(op, [a, b])
        elif kind == "matmul":
            _, n, tb = s
            w = param([n, d] if tb else [d, n], "xavier")
            v = g.add("matmul", [v, w], {"tb": tb})
            d = n
        elif kind == "gram":  # v @ (v^T v) / (N d): uses the transposed-left-operand kernel
            gram = g.add("matmul", [v, v], {"ta": True})
            v = g.add("tanh", [g.add("mul", [g.add("matmul", [v, gram]), const(0.05)])])
        elif kind == "reduce":
            _, op, axis = s
            r = g.add(op, [v], {"axis": axis, "keepdims": True})
            v = g.add("sub", [v, r])
        else:
            _, op, axis = s
            v = g.add(op, [v], {"axis": axis})
    if loss_op == "mse":
        t = g.add("input", [], name="t", type=f32("N", d))
        loss = g.add("mse", [v, t], name="loss")
    elif loss_op in ("sum", "mean"):
        loss = g.add(loss_op, [v], {"axis": None}, name="loss")
    else:
        loss = g.add(loss_op, [v], name="loss")
    if not g.params:  # something to train
        v = g.add("mul", [v, param([d])])
        loss = g.add("sum", [v], {"axis": None}, name="loss.p")
    g.meta.outputs = {"v": v}
    g.meta.loss = loss
    g.meta.optimizer = ("sgd", {"lr": 0.1, "momentum": 0.0, "nesterov": False})
    return run_pipeline(g, check=True).stages["optimized"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipes)
def test_random_graphs_generate_a_consistent_plan(recipe):
    g = build_random_graph(recipe)
    m = generate(g)
    names = set(re.findall(r'extern "C" __global__ void (\w+)\(', m.source))
    assert names == set(m.kernel_names)
    for n in g.nx:
        assert n in m.node_buffer
    json.loads(m.plan_json())


# -- a convolution is the matrix product it is (implicit GEMM) -----------------------------------

ONE_BY_ONE = """
model t {
    input x : f32[N, 5, 7, 9]
    input y : i32[N]
    param a : f32[6, 5, 1, 1] = he
    param k : f32[3, 6, 3, 3] = he
    param s : f32[4, 5, 1, 1] = he
    h = relu(conv2d(x, a))                       # 1x1: columns over (image, pixel), the same pixel of x
    z = conv2d(h, k, padding = 1)                # 3x3: K over (channel, tap), padding reads zero
    q = conv2d(x, s, stride = 2)                 # 1x1 but strided
    loss = sum(z * z) / 100 + sum(q * q) / 100
    output z
    minimize loss with sgd(lr = 0.01)
}"""


def test_convolutions_and_their_adjoints_use_the_tiled_product():
    from dlc.codegen import generate
    g = dlc.compile(ONE_BY_ONE, backend="interp").graph
    convs = [k for k in generate(g).kernels if k.launch.op.startswith("conv2d")]
    # every forward; the input adjoint of h (that of x is not needed); every kernel adjoint, split-K
    # (a GEMM into partial products, then their sum: tests/test_gemm_conv.py)
    assert sorted(k.name for k in convs) == [
        "conv_grad_w_d_a", "conv_grad_w_d_a_sum", "conv_grad_w_d_k", "conv_grad_w_d_k_sum", "conv_grad_w_d_s",
        "conv_grad_w_d_s_sum", "conv_grad_x_d_h", "conv_h_conv2d", "conv_q", "conv_z"]
    assert {k.template for k in convs} == {"matmul.cu.j2", "split_sum.cu.j2"}


@needs_emu
@pytest.mark.parametrize("batch", [1, 3])
def test_1x1_gemm_path_agrees_with_the_interpreter(batch):
    from dlc.runtime.diff import diff, synth_feeds
    from dlc.runtime.init import initial_state
    g = dlc.compile(ONE_BY_ONE, backend="interp").graph
    rows, first = diff(g, ["emu"], initial_state(g, 1), synth_feeds(g, batch, 1))["emu"]
    assert first is None and all(r.ok for r in rows), [(r.name, r.abs_err) for r in rows if not r.ok]


_DIGEST = """
import hashlib, sys
import dlc
for f in sys.argv[1:]:
    for precision in ("fp32", "bf16"):
        m = dlc.build(f, opt_level=2, precision=precision).module()
        print(hashlib.sha1((m.source + m.plan_json()).encode()).hexdigest())
"""


def test_generated_code_is_the_same_in_every_process():
    """The module text and plan do not depend on Python's string hashing (set iteration order):
    the examples with the most kinds of kernel (optimizer updates, batch norm, concats, 16-bit
    buffers), generated in two processes with different PYTHONHASHSEED, come out identical."""
    import os
    import subprocess
    import sys
    from conftest import EXAMPLES
    files = [str(EXAMPLES / f"{n}.dln") for n in ("resnet_small", "inception", "charlm", "adding_lstm")]
    digests = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", _DIGEST, *files], env=env, capture_output=True, text=True,
                             check=True, cwd=str(Path(__file__).parent))
        digests.append(out.stdout.split())
    assert len(digests[0]) == 2 * len(files)
    assert digests[0] == digests[1]


@pytest.mark.parametrize("source", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_every_value_with_a_buffer_is_written(source):
    """At -O2 (sibling reductions, epilogues, concat elimination) every IR value the plan gives a
    buffer of its own is written by some launch: `Model.run` and `dlc diff` may hand it out. (A
    batch-norm member that the backward reads only for its shape had a buffer nothing wrote:
    resnet_small's shifted squares came back as zeros.)"""
    mod = generate(dlc.build(source, opt_level=2).graph, reuse=False)
    written = {a for l in mod.launches for a in l.args[:max(1, l.writes)]}
    unwritten = [n for n, b in mod.node_buffer.items() if mod.buffers[b].kind == "temp" and b not in written]
    assert not unwritten
