"""Parallel reductions and vectorised elementwise kernels (docs/codegen.md, "Reductions" and
"Elementwise kernels"), against the NumPy interpreter on the `emu` backend.

What is checked, and with which tolerance:

- Reductions on integer-valued float32 data (|x| <= 4) are EXACT in float32 whatever the order
  of the additions, as long as every partial sum is an integer below 2^24 (each test asserts that
  the sum of |terms| is). So sum, l1 and l2 must equal the float64 reference bit for bit, and mean
  and mse (one division after an exact sum) must be within half an ulp: a chunk added twice, a
  row left out, a partial read from the wrong place cannot hide in a tolerance.
- The same reductions on normal random data, the softmax cross-entropy and its gradient, and
  whole training steps use the project's float32 tolerance (tests/test_emu.py `assert_close`:
  1e-4 relative plus 1e-5 of the tensor's largest magnitude). The kernels add in another order
  than NumPy (per-thread strides, row lanes, chunks, trees), and expf/logf may differ from
  NumPy's by an ulp; every chain of additions here is at most a few hundred long (a thread's
  stride through its chunk, then a tree or a chunk column), so the difference is a few hundred
  ulps of the sum of |terms| at worst and about its square root in practice, ~1e-6 relative.
  A row or element missing from a mean over <= 3000 rows moves it by > 3e-4: still caught.
- Determinism: two runs of the same step give the same bits (fixed summation order, no atomics),
  with the stage-1 blocks running concurrently on OpenMP threads.
- The plan: which reductions take two launches, at which batch, their grids and workspaces.
"""
import ctypes

import numpy as np
import pytest

import dlc
from dlc.codegen import generate
from dlc.codegen.pointwise import ELEMENTWISE_BLOCK, ELEMENTWISE_MAX_BLOCKS
from dlc.codegen.reductions import (COLUMN_CHUNK_ROWS, COLUMN_LANES, COLUMN_ONE_LAUNCH_ROWS, COLUMN_TILE,
                                    REDUCE_BLOCKS, REDUCE_CHUNK, REDUCE_ONE_BLOCK, XENT_ROWS_PER_BLOCK)
from dlc.codegen.sizes import Size, at_most, beyond, capped_div, evaluate, gated
from dlc.runtime.diff import synth_feeds
from dlc.runtime.emu import EmuBackend
from dlc.runtime.init import initial_state
from dlc.runtime.interp import Interpreter
from dlc.passes.fusion import plan
from test_emu import assert_close, compare_step
from conftest import EXAMPLES, needs_emu

# Every reduction form: columns (leading axes) over 37 (two tiles, the second partly empty), 8
# (the threshold), 1500 (47 tiles) and 7 (below the threshold: a block per output) columns; one
# column; a few outputs over a long gathered extent; full reductions of every op; static extents
# below and above the one-launch limits (600 rows > COLUMN_ONE_LAUNCH_ROWS, 130 x 130 >
# REDUCE_ONE_BLOCK); a row reduction (many outputs: one block each).
REDUCTIONS = """
model red {
    input x : f32[N, 37]
    input y : f32[N, 37]
    input v : f32[N, 8]
    input s : f32[N, 7]
    input t : f32[N, 1]
    input u : f32[N, 1500]
    input z : f32[N, 3, 50]
    param w : f32[600, 40] = zeros
    param k : f32[50, 40]  = zeros
    param q : f32[130, 130] = zeros
    param p : f32[100, 100] = zeros

    cs   = sum(x, axis = 0)
    cm   = mean(x * y + 1, axis = 0)
    c8   = sum(v * 2, axis = 0)
    c7   = mean(s, axis = 0, keepdims = true)
    c1   = sum(t, axis = 0)
    cu   = sum(u, axis = 0)
    g3   = sum(z * z, axis = [0, 2])
    fs   = sum(x)
    fm   = mean(u)
    f1   = l1(x - y)
    f2   = l2(u)
    fe   = mse(x, y)
    ws   = sum(w, axis = 0)
    ks   = mean(k, axis = 0)
    ql   = l2(q)
    pl   = l1(p + 1)
    rows = mean(u, axis = 1)

    output cs, cm, c8, c7, c1, cu, g3, fs, fm, f1, f2, fe, ws, ks, ql, pl, rows
}
"""
SUMS = ("cs", "c8", "c1", "cu", "g3", "fs", "f1", "f2", "ws", "ql", "pl")   # exact in float32 here
MEANS = ("cm", "c7", "fm", "fe", "ks", "rows")                              # an exact sum, one division

# softmax_xent and its gradient with 1 class, 10 (a warp per row) and 1500 (a block per row); the
# gradients of the biases are column reductions of the gradients' rows
XENT = """
model xe {
    input x1 : f32[N, 1]
    input y1 : i32[N]
    input xa : f32[N, 10]
    input ya : i32[N]
    input xb : f32[N, 1500]
    input yb : i32[N]
    param b1 : f32[1]    = normal(0, 1)
    param ba : f32[10]   = normal(0, 1)
    param bb : f32[1500] = normal(0, 1)

    l1   = x1 + b1
    la   = xa * 2 + ba
    lb   = xb + bb
    loss = softmax_xent(l1, y1) + softmax_xent(la, ya) + softmax_xent(lb, yb)

    output la
    minimize loss with sgd(lr = 0.1)
}
"""

# elementwise kernels: float4 where every load reads the stored element (a, and the copies of
# assignments), scalar for broadcasts (b), sizes under 4 (d) and parts stored into a concat's
# buffer at -O2 (the two parts of h)
ELEMENTWISE = """
model ew {
    input x : f32[N, 37]
    input y : f32[N, 37]
    input s : f32[37]
    input c : f32[3]
    input e : f32[N, 5]
    a = relu(x) * y + 1.5
    b = x * s - y
    d = c * c + 1
    h = concat(x * y, e * 2 + 1, axis = 1)
    output a, b, d, h
}
"""


def _graph(text, level):
    return dlc.compile(text, backend="interp", opt_level=level).graph


def _integer_data(g, batch, seed):
    """Integer-valued float32 feeds and params in [-4, 4] (u: [-1, 1]): sums of them are exact."""
    r = np.random.default_rng(seed)
    feeds = {}
    for n in g.inputs:
        shape = [batch if isinstance(d, str) else d for d in g.type(n).shape]
        hi = 1 if n == "u" else 4
        feeds[n] = r.integers(-hi, hi + 1, shape).astype(np.float32)
    state = {n: r.integers(-4, 5, v.shape).astype(np.float32) for n, v in initial_state(g, 0).items()}
    return feeds, state


def _terms_bound(feeds, state) -> float:
    """The largest sum of |terms| that a reduction of REDUCTIONS adds (in float64): every partial
    sum of these integers is at most that."""
    x, y, v, s, t, u, z = (feeds[k].astype(np.float64) for k in "xyvstuz")
    w, k, q, p = (state[n].astype(np.float64) for n in "wkqp")
    terms = [x, x * y + 1, v * 2, s, t, u, z * z, x - y, u * u, (x - y) ** 2, w, k, q * q, p + 1]
    return max(float(np.abs(a).sum()) for a in terms)


@needs_emu
@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("batch", [1, 7, 65, 512, 513, 3000])   # 512 | 513: columns in one launch | two
def test_reductions_are_exact_on_integer_data(backends, level, batch):
    g, emu = backends(REDUCTIONS, level)
    feeds, state = _integer_data(g, batch, seed=batch + level)
    assert _terms_bound(feeds, state) < 2 ** 24   # every partial sum an exact float32 integer
    exact = Interpreter(g, np.float64)
    exact.set_state(state)
    emu.set_state(state)
    roots = list(g.meta.outputs.values())
    want = exact.run(roots, feeds)
    got = emu.run(roots, feeds)
    for name, node in g.meta.outputs.items():
        w, o = np.asarray(want[node]), np.asarray(got[node])
        assert o.dtype == np.float32 and o.shape == w.shape, name
        if name in SUMS:
            np.testing.assert_array_equal(o, w.astype(np.float32), err_msg=f"{name} at batch {batch}, -O{level}")
        else:
            assert name in MEANS
            np.testing.assert_allclose(o, w, rtol=2.0 ** -24, atol=0, err_msg=f"{name} at batch {batch}, -O{level}")


@needs_emu
@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("batch", [7, 3000])
def test_reductions_agree_on_random_data(backends, level, batch):
    g, emu = backends(REDUCTIONS, level)
    ref = Interpreter(g)
    state = {n: np.random.default_rng(5).standard_normal(v.shape).astype(np.float32)
             for n, v in initial_state(g, 0).items()}
    ref.set_state(state)
    emu.set_state(state)
    feeds = synth_feeds(g, batch, seed=batch)
    roots = list(g.meta.outputs.values())
    want, got = ref.run(roots, feeds), emu.run(roots, feeds)
    for name, node in g.meta.outputs.items():
        assert_close(got[node], want[node], f"{name} at batch {batch}, -O{level}")


@needs_emu
@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("batch", [1, 37, 700])
def test_softmax_xent_and_its_gradient(backends, level, batch):
    """One training step (loss, every gradient, the updated biases) with 1, 10 and 1500 classes."""
    g, emu = backends(XENT, level)
    compare_step(g, emu, batch, seed=batch)


@needs_emu
@pytest.mark.parametrize("level", [0, 2])
def test_elementwise_kernels_cover_every_element(backends, level):
    """Sizes with a tail (37 N odd), batch 1, a grid that hits its cap (37 * 120001 elements:
    more than ELEMENTWISE_MAX_BLOCKS blocks of float4s, so threads loop); two runs with
    different data, so that an element left unwritten keeps the first run's value and fails."""
    g, emu = backends(ELEMENTWISE, level)
    ref = Interpreter(g)
    roots = list(g.meta.outputs.values())
    for batch in (1, 2, 3, 7, 64, 1001, 120001):
        for seed in (1, 2):
            feeds = synth_feeds(g, batch, seed=seed)
            want, got = ref.run(roots, feeds), emu.run(roots, feeds)
            for r in roots:
                assert_close(got[r], want[r], f"{r} at batch {batch}, -O{level}")


@needs_emu
@pytest.mark.parametrize("name", ["mlp", "lenet"])
@pytest.mark.parametrize("level", [0, 2])
def test_examples_training_step(backends, name, level):
    g, emu = backends((EXAMPLES / f"{name}.dln").read_text(), level)
    for batch in (1, 33, 600):   # 600: the loss and bias gradients in two launches, the others one
        compare_step(g, emu, batch, seed=batch)


# -- determinism -------------------------------------------------------------------------------

def _bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


@needs_emu
@pytest.mark.parametrize("level", [0, 2])
def test_two_runs_give_the_same_bits(backends, level):
    """The same step twice on one backend, and once on a second backend, gives identical bits:
    at batch 3000 the stage-1 launches have over 16384 threads, so their blocks run concurrently
    on OpenMP threads, in no fixed order; what they write, and the order stage 2 adds it, is fixed."""
    for text in (REDUCTIONS, XENT):
        g, emu = backends(text, level)
        state = initial_state(g, 3)
        feeds = synth_feeds(g, 3000, seed=4)
        roots = list(g.meta.outputs.values()) + ([g.meta.loss] if g.meta.loss else []) + list(g.meta.grads.values())
        runs = []
        for backend in (emu, emu, EmuBackend(g)):
            backend.set_state(state)
            runs.append(backend.run(roots, feeds))
        for r in roots:
            assert np.array_equal(_bits(runs[0][r]), _bits(runs[1][r])), r
            assert np.array_equal(_bits(runs[0][r]), _bits(runs[2][r])), r


@needs_emu
@pytest.mark.parametrize("level", [0, 2])
def test_no_thread_order_changes_a_bit(backends, level):
    """The emulator can run a block's threads in reverse or shuffled order (cuda_emu.h,
    `dlc_emu_set_order`): a kernel without a race (a shared-memory read before the barrier that
    publishes it, a lane reading another's value without a shuffle) gives the same bits in every
    order; the row lanes' shared sums and the warps' butterflies are checked this way, in both
    forms of a reduction over the batch (batch 37: one launch; 600: two)."""
    for text, batch in ((REDUCTIONS, 37), (REDUCTIONS, 600), (XENT, 37), (XENT, 600), (ELEMENTWISE, 300)):
        g, emu = backends(text, level)
        set_order = emu.lib.dlc_emu_set_order  # cuda_emu.h's: a rename fails here, not skips
        set_order.argtypes, set_order.restype = [ctypes.c_int, ctypes.c_ulonglong], ctypes.c_int
        state = initial_state(g, 3)
        feeds = synth_feeds(g, batch, seed=6)
        roots = list(g.meta.outputs.values()) + ([g.meta.loss] if g.meta.loss else []) + list(g.meta.grads.values())
        runs = []
        try:
            for mode, seed in ((0, 0), (1, 0), (2, 11)):
                assert set_order(mode, seed) == 0
                emu.set_state(state)
                runs.append(emu.run(roots, feeds))
        finally:
            set_order(0, 0)
        for r in roots:
            for other in runs[1:]:
                assert np.array_equal(_bits(runs[0][r]), _bits(other[r])), r


# -- the plan ------------------------------------------------------------------------------------

def _launches(mod, node, dims=None):
    """Node's launches in plan order; with `dims`, only those that run at those sizes (a
    launch of an empty grid is left out by the runtimes: the form the batch did not pick)."""
    return [l for l in mod.launches if l.node == node
            and (dims is None or min(evaluate(x, dims) for x in l.grid) > 0)]


def _workspace(mod, l):
    return "@" in l.args[0] and mod.buffers[l.args[0]].kind == "temp"


# extents over the batch: (rows or elements per example, the most that stays one launch)
OVER_BATCH = {"cs": (1, COLUMN_ONE_LAUNCH_ROWS), "cm": (1, COLUMN_ONE_LAUNCH_ROWS),
              "c8": (1, COLUMN_ONE_LAUNCH_ROWS), "c1": (1, REDUCE_ONE_BLOCK), "cu": (1, COLUMN_ONE_LAUNCH_ROWS),
              "c7": (1, REDUCE_ONE_BLOCK), "g3": (50, REDUCE_ONE_BLOCK), "fs": (37, REDUCE_ONE_BLOCK),
              "fm": (1500, REDUCE_ONE_BLOCK), "f1": (37, REDUCE_ONE_BLOCK), "f2": (1500, REDUCE_ONE_BLOCK),
              "fe": (37, REDUCE_ONE_BLOCK)}


@pytest.mark.parametrize("level", [0, 2])
def test_one_launch_or_two_is_picked_by_the_batch(level):
    """Over the batch the plan holds both forms of a reduction; at every batch exactly one runs:
    one launch while the extent is at most the crossover (COLUMN_ONE_LAUNCH_ROWS rows of a column
    reduction, REDUCE_ONE_BLOCK elements of a block per output), two beyond it. The plan's
    grids are checked on both sides of each crossover. At -O2 each reduction's own kernels (sibling
    groups are checked in test_sibling_groups_pick_one_launch_or_two_by_the_batch)."""
    g = _graph(REDUCTIONS, level)
    if level == 2:
        g.meta.groups, _ = plan(g, siblings=False)
    mod = generate(g, reuse=False)
    node = g.meta.outputs
    for name, (per, most) in OVER_BATCH.items():
        last_one = most // per
        for batch in (1, last_one - 1, last_one, last_one + 1, 10 ** 5):
            if batch < 1:
                continue
            runs = _launches(mod, node[name], {"N": batch})
            want = 1 if per * batch <= most else 2
            assert len(runs) == want, (name, batch, [l.kernel for l in runs])
            if want == 1:
                assert not _workspace(mod, runs[0]), (name, batch)
            else:
                assert _workspace(mod, runs[0]) and runs[1].args[1:] == [runs[0].args[0]], (name, batch)
        assert len(_launches(mod, node[name])) == 3, name   # in the plan: one form, then the other


def test_sibling_groups_pick_one_launch_or_two_by_the_batch():
    """A sibling group (-O2) takes the single reduction's rule: both forms in the plan, launched for
    the group's last reduction, and at each batch exactly one runs (1 launch, or 2 through a workspace)."""
    g = _graph(REDUCTIONS, 2)
    mod = generate(g, reuse=False)
    groups = [ms for rule, ms in g.meta.groups.values() if rule == "siblings"]
    assert groups
    for ms in groups:
        last = [m for m in ms if g.op(m) in ("sum", "mean", "l1", "l2", "mse")][-1]
        assert len(_launches(mod, last)) == 3, ms
        counts = {len(_launches(mod, last, {"N": b})) for b in (1, 2, 10 ** 5)}
        assert _launches(mod, last, {"N": 1}) and len(_launches(mod, last, {"N": 1})) == 1, ms
        assert len(_launches(mod, last, {"N": 10 ** 5})) == 2 and counts <= {1, 2}, ms


@pytest.mark.parametrize("level", [0, 2])
def test_two_stage_reductions_are_chosen_from_the_plan(level):
    g = _graph(REDUCTIONS, level)
    if level == 2:  # each reduction's own kernels: at -O2 cs and cm, fs, f1 and fe would be sibling
        g.meta.groups, _ = plan(g, siblings=False)    # reductions, one kernel each (test_bn_fusion.py)
    mod = generate(g, reuse=False)       # workspaces keep their names `node@tag`
    node = g.meta.outputs
    dims = {"N": 3000}
    two = {name: _launches(mod, node[name], dims) for name in node}
    big = {"N": 20000}      # a block per output of N elements: two launches beyond REDUCE_ONE_BLOCK
    two.update({name: _launches(mod, node[name], big) for name in ("c7", "c1")})
    for name in ("cs", "cm", "c8", "c7", "c1", "cu", "g3", "fs", "fm", "f1", "f2", "fe", "ws", "ql"):
        first, second = two[name]
        assert _workspace(mod, first) and not _workspace(mod, second), name
        assert second.args[1:] == [first.args[0]], name   # stage 2 reads only the workspace
        assert first.barriers and "@" not in second.args[0], name
    for name in ("ks", "pl", "rows"):                     # one launch: static and short, or outputs enough
        (only,) = _launches(mod, node[name])
        assert not _workspace(mod, only), name
    assert len(_launches(mod, node["ws"])) == len(_launches(mod, node["ql"])) == 2   # static: decided here
    # columns: 32 x 8 blocks, a chunk of >= COLUMN_CHUNK_ROWS rows each, up to REDUCE_BLOCKS blocks
    first = two["cs"][0]
    assert first.block == [COLUMN_TILE, COLUMN_LANES, 1]
    assert [evaluate(x, dims) for x in first.grid] == [2, -(-3000 // COLUMN_CHUNK_ROWS), 1]
    (small,) = _launches(mod, node["cs"], {"N": 1})      # one launch: a block per tile, every row
    assert [evaluate(x, {"N": 1}) for x in small.grid] == [2, 1, 1] and small.block == first.block
    cu = two["cu"][0]
    assert [evaluate(x, dims) for x in cu.grid] == [47, REDUCE_BLOCKS // 47, 1]   # capped
    ws = two["ws"][0]                                      # a static extent: a static grid
    assert ws.grid == [2, 10, 1] and mod.buffers[ws.args[0]].shape == [10, 40]
    # full and gathered reductions: grid (outputs, parts), parts a grid stride over the extent
    fs = two["fs"][0]
    assert [evaluate(x, dims) for x in fs.grid] == [1, -(-37 * 3000 // REDUCE_CHUNK), 1]
    g3 = two["g3"][0]
    assert [evaluate(x, dims) for x in g3.grid] == [3, -(-50 * 3000 // REDUCE_CHUNK), 1]
    assert [evaluate(x, {"N": 10 ** 4}) for x in g3.grid] == [3, REDUCE_BLOCKS // 3, 1]   # capped
    assert mod.buffers[g3.args[0]].shape == [3, REDUCE_BLOCKS // 3]
    assert two["ql"][0].grid == [1, -(-130 * 130 // REDUCE_CHUNK), 1]
    # the row reduction keeps a block per row; under COLUMN_OUTPUTS columns, blocks per output
    assert [evaluate(x, dims) for x in two["rows"][0].grid] == [3000, 1, 1]
    assert two["c7"][0].block == [256, 1, 1] and [evaluate(x, big) for x in two["c7"][0].grid] == [7, 10, 1]


def test_softmax_xent_forms_from_the_plan():
    """Two launches (rows into a workspace, then their mean) beyond the crossover, one block
    taking every row below it: 512 rows of 1 or 10 classes (a warp per row, 8 warps, 64 rows
    each), 10 rows of 1500 (a 256-thread block per row, 6 loads a thread each pass)."""
    g = _graph(XENT, 0)
    mod = generate(g, reuse=False)
    xents = [n for n in g.order() if g.op(n) == "softmax_xent"]
    grads = [n for n in g.order() if g.op(n) == "softmax_xent_grad"]
    by_classes = {g.type(g.operands(n)[0]).shape[1]: n for n in xents}
    for classes, n in by_classes.items():
        last_one = 8 * 64 if classes <= 1024 else 64 // 6
        for batch in (1, last_one, last_one + 1, 3000):
            runs = _launches(mod, n, {"N": batch})
            if batch <= last_one:
                (whole,) = runs
                assert not _workspace(mod, whole) and [evaluate(x, {"N": batch}) for x in whole.grid] == [1, 1, 1]
                continue
            rows, mean = runs
            assert _workspace(mod, rows) and mod.buffers[rows.args[0]].shape == ["N"]
            assert mean.args[1:] == [rows.args[0]] and [evaluate(x, {"N": batch}) for x in mean.grid] == [1, 1, 1]
            if classes <= 1024:    # a warp per row, 8 rows a block
                assert rows.block == [32 * XENT_ROWS_PER_BLOCK, 1, 1]
                assert evaluate(rows.grid[0], {"N": batch}) == -(-batch // XENT_ROWS_PER_BLOCK)
            else:                  # a block per row
                assert rows.block == [256, 1, 1] and evaluate(rows.grid[0], {"N": batch}) == batch
        assert len(_launches(mod, n)) == 3
    for n in grads:
        (l,) = _launches(mod, n)
        classes = g.type(n).shape[1]
        assert evaluate(l.grid[0], {"N": 37}) == (5 if classes <= 1024 else 37)


@pytest.mark.parametrize("size", [Size(7, ("N",)), Size(1, ("N",)), Size(300), Size(0)])
def test_gates_let_exactly_one_form_run(size):
    """at_most / beyond are 1 and 0 on the two sides of `most`, and gated grids follow them."""
    for n in (0, 1, 2, 73, 74, 512, 513, 10 ** 6):
        value = size.k * (n if size.syms else 1)
        for most in (0, 1, 512, 518):
            low, high = (evaluate(f(size, most), {"N": n}) for f in (at_most, beyond))
            assert (low, high) == ((1, 0) if value <= most else (0, 1)), (size, n, most)
            for extent in (1, 4, "(N + 7) // 8", "min((N + 63) // 64, 128)"):
                grid = evaluate(extent, {"N": n})
                assert evaluate(gated(extent, at_most(size, most)), {"N": n}) == grid * low
                assert evaluate(gated(extent, beyond(size, most)), {"N": n}) == grid * high


def test_elementwise_kernels_vectorise_only_same_index_loads():
    for level in (0, 2):
        mod = generate(_graph(ELEMENTWISE, level))
        pointwise = [k for k in mod.kernels if k.template == "pointwise.cu.j2"]
        for k in pointwise:
            assert ("float4" in k.body) == k.ctx["vector"], k.name
            if k.ctx["vector"]:   # every load at the stored element; a quarter of the blocks
                assert all(index == "i" for _, _, index in k.ctx["loads"]), k.name
                size = evaluate(k.ctx["size"].replace("dim_", ""), {"N": 7})
                assert evaluate(k.launch.grid[0], {"N": 7}) == -(-size // (4 * ELEMENTWISE_BLOCK))
        vector = {k.launch.node: k.ctx["vector"] for k in pointwise}
        # -O0: relu(x) reads x at i (float4); `+ 1.5` reads a scalar constant's buffer (scalar)
        assert vector["a" if level == 2 else next(n for n in vector if mod.graph.op(n) == "relu")]
        g = mod.graph   # a broadcast of s (at -O2 inside b's group); 3 elements (d's nodes)
        assert not any(v for n, v in vector.items() if "s" in g.operands(n) or "c" in g.operands(n) or n == "d")
        if level == 2:
            assert not vector["b"] and not vector["d"]
        if level == 2:   # the parts of h are stored into its buffer: scalar, at their own size
            parts = [k for k in pointwise if any("concat elimination" in c for c in k.comment)]
            assert len(parts) == 2 and not any(k.ctx["vector"] for k in parts)
            assert {evaluate(k.ctx["size"].replace("dim_", ""), {"N": 7}) for k in parts} == {7 * 37, 7 * 5}


def test_grid_stride_grids_are_capped():
    g = _graph(ELEMENTWISE, 0)
    mod = generate(g)
    a = _launches(mod, "a")[0]
    assert evaluate(a.grid[0], {"N": 10 ** 6}) == ELEMENTWISE_MAX_BLOCKS
    assert evaluate(a.grid[0], {"N": 1}) == 1


@pytest.mark.parametrize("size,by,cap", [(Size(7, ("N",)), 64, 128), (Size(1, ("N",)), 2048, 512),
                                          (Size(300), 64, 3), (Size(0), 64, 3)])
def test_capped_div_plan_and_c_agree(size, by, cap):
    py, c = capped_div(size, by, cap)
    for n in (0, 1, 2, 63, 64, 65, 1000, 99999):
        want = min(-(-(size.k * (n if size.syms else 1)) // by), cap)
        assert evaluate(py, {"N": n}) == want
        # the C text: integer division of non-negative ints, `a < b ? a : b`
        text = c.replace("dim_N", str(n))
        cond = text.replace("/", "//")
        if "?" in cond:
            body = cond[1:-1]
            test, rest = body.split(" ? ")
            a, b = rest.split(" : ")
            value = eval(a) if eval(test) else eval(b)
        else:
            value = eval(cond)
        assert value == want, (c, n)


# -- buffers -------------------------------------------------------------------------------------

@needs_emu
def test_emu_buffers_are_16_byte_aligned(backends):
    """float4 loads and stores (reinterpret_cast<float4*>(buffer)[q]) assume every buffer starts
    on a 16-byte boundary. CuPy allocates on 256 bytes; the emu backend's buffers are NumPy arrays,
    whose data comes from malloc: 16 bytes on x86-64 and aarch64 glibc. Checked here for every
    buffer of the plans above, at several batch sizes (small and large allocations differ)."""
    for text in (ELEMENTWISE, REDUCTIONS):
        g, emu = backends(text, 2)
        for n in (1, 3, 7, 1000):
            env = emu._buffers({"N": n})
            assert env
            for name, buf in env.items():
                assert buf.ctypes.data % 16 == 0, (name, n, buf.ctypes.data)


# -- NVRTC -------------------------------------------------------------------------------------

from test_nvrtc import assert_kernels_compile  # noqa: E402


@pytest.mark.usefixtures("nvrtc")
@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("text", [REDUCTIONS, XENT, ELEMENTWISE], ids=["reductions", "xent", "elementwise"])
def test_kernels_compile_with_nvrtc(text, level):
    assert_kernels_compile(generate(_graph(text, level)))
