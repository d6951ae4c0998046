"""Golden tests of codegen's two plan steps: memory planning (codegen/memory.py) and concat
elimination (codegen/concat.py). The expected values are written here and derived by hand from
each step's rule (see the comments), not dumped from the code under test."""
from collections import defaultdict

import dlc
from dlc.codegen import generate
from dlc.codegen.concat import Place, plan_concats
from dlc.codegen.memory import plan_memory
from dlc.codegen.sizes import Size
from dlc.ir.ops import OPS
from conftest import EXAMPLE_FILES


# -- memory planning ----------------------------------------------------------------------------

# At -O0 every node is its own kernel, in source order, so the launches are (index: writes <- reads)
#   0: h <- x, w     1: a <- h     2: s <- a     3: b <- a     4: c <- b     5: y <- c, a     6: r <- s
# and the temps live (first launch .. last launch): h 0..1, a 1..5, s 2..6, b 3..4, c 4..5;
# y and r are outputs, which keep their own buffers. The rule: in order of first launch, a temp
# takes a slot of its dtype and size whose occupant's last launch is EARLIER than its first,
# else opens the next slot.
#   h [N, 16] at 0: no slot yet                                   -> opens @s0 (busy to 1)
#   a [N, 16] at 1: @s0's h is read by launch 1, not earlier      -> opens @s1 (busy to 5)
#   s [N]     at 2: @s0 is free by then, but has another size     -> opens @s2 (busy to 6)
#   b [N, 16] at 3: @s0 free since launch 1 < 3                   -> @s0 (busy to 4)
#   c [N, 16] at 4: @s0's b is read by launch 4 itself, @s1 busy  -> opens @s3
CHAIN = """
model chain {
    input  x : f32[N, 16]
    param  w : f32[16, 16] = normal(0, 0.1)
    h = x @ w
    a = relu(h)
    s = sum(a, axis = 1)
    b = tanh(a)
    c = exp(b)
    y = c * a
    r = exp(s)
    output y
    output r
}
"""


def test_memory_planning_assigns_slots_by_liveness():
    g = dlc.compile(CHAIN, backend="interp", opt_level=0).graph
    assert [n for n in g.order() if OPS[g.op(n)].family != "source"] == ["h", "a", "s", "b", "c", "y", "r"]
    mod = generate(g, reuse=False)     # the plan before the step: every value in its own buffer
    moved = plan_memory(mod)
    assert moved == {"h": "@s0", "a": "@s1", "s": "@s2", "b": "@s0", "c": "@s3"}
    assert mod.node_buffer == {"x": "x", "w": "w", "h": "@s0", "a": "@s1", "s": "@s2", "b": "@s0", "c": "@s3",
                               "y": "y", "r": "r"}
    assert {name: (b.dtype, b.shape) for name, b in mod.buffers.items() if name.startswith("@s")} == {
        "@s0": ("f32", ["N", 16]), "@s1": ("f32", ["N", 16]), "@s2": ("f32", ["N"]), "@s3": ("f32", ["N", 16])}
    assert not {"h", "a", "s", "b", "c"} & set(mod.buffers)   # the moved temps have no buffer left
    # the same through generate(..., reuse=True), which runs the step after emission
    assert generate(g, reuse=True).node_buffer == mod.node_buffer


def _live_ranges(mod):
    first, last = {}, {}
    for i, launch in enumerate(mod.launches):
        for b in launch.args:
            first.setdefault(b, i)
            last[b] = i
    return first, last


def _wanted(g) -> list[str]:
    """What the model hands out: outputs, the loss, gradients, and assignments' values."""
    m = g.meta
    return (list(m.outputs.values()) + [m.loss] * bool(m.loss) + list(m.grads.values())
            + [n for n in g.nx if OPS[g.op(n)].family == "assign"])


def test_memory_planning_properties_on_every_example():
    """On every example at -O2: a temp that moves, moves to one slot everywhere; values sharing a
    slot have live ranges (in the plan before the step) that do not overlap, and the same dtype
    and size; no launch reads a slot it writes; the values the model hands out keep their own
    buffers."""
    assert EXAMPLE_FILES
    shared_somewhere = 0
    for path in EXAMPLE_FILES:
        g = dlc.compile(path, backend="interp", opt_level=2).graph
        assert g.meta.groups, path.name     # fused: memory planning is on by default
        plain, planned = generate(g, reuse=False), generate(g)
        assert [l.kernel for l in plain.launches] == [l.kernel for l in planned.launches], path.name
        slot_of = {}
        for before, after in zip(plain.launches, planned.launches):
            assert len(before.args) == len(after.args)
            for b, s in zip(before.args, after.args):
                assert slot_of.setdefault(b, s) == s, (path.name, b)
        first, last = _live_ranges(plain)
        occupants = defaultdict(list)
        for b, s in slot_of.items():
            if s != b:
                assert s.startswith("@s") and plain.buffers[b].kind == "temp", (path.name, b, s)
                occupants[s].append(b)
        for s, values in occupants.items():
            values.sort(key=first.get)
            for p, q in zip(values, values[1:]):   # sorted by start: each ends before the next starts
                assert last[p] < first[q], (path.name, s, p, q)
            for b in values:
                assert plain.buffers[b].dtype == planned.buffers[s].dtype, (path.name, s, b)
                assert Size.of(plain.buffers[b].shape) == Size.of(planned.buffers[s].shape), (path.name, s, b)
            shared_somewhere += len(values) > 1
        for launch in planned.launches:
            written = launch.args[:max(launch.writes, 1)]
            assert not {a for a in written if a.startswith("@s")} & set(launch.args[len(written):]), (
                path.name, launch.kernel)
        for n in _wanted(g):
            if n in planned.node_buffer:
                assert not planned.node_buffer[n].startswith("@s"), (path.name, n)
                assert planned.node_buffer[n] == plain.node_buffer[n], (path.name, n)
    assert shared_somewhere      # the properties are not vacuous: slots are shared


# -- concat elimination -------------------------------------------------------------------------

# c = concat(h, v, axis = 1) : f32[N, 8], with h = x @ w : f32[N, 3] (a matmul, its template
# ends in the store hook) and v = sigmoid(z) * z : f32[N, 5] (a fused pointwise group, root v).
# Along axis 1 a row of c holds 8 elements (inner size 1): h's 3 first, at offset 0, then v's 5
# at offset 3. So element j of h (row j / 3, column j % 3) is c[(j / 3) * 8 + 0 + j % 3], and
# element j of v is c[(j / 5) * 8 + 3 + j % 5].
CONCAT = """
model cat {
    input  x : f32[N, 8]
    input  z : f32[N, 5]
    param  w : f32[8, 3] = normal(0, 0.1)
    h = x @ w
    v = sigmoid(z) * z
    c = concat(h, v, axis = 1)
    output c
%s}
"""


def test_concat_parts_store_into_the_concat_at_their_offsets():
    g = dlc.compile(CONCAT % "", backend="interp", opt_level=2).graph
    assert g.meta.groups["v"] == ("elementwise", ["v.sigmoid", "v"]) and "h" not in g.meta.groups
    plan = plan_concats(g)
    assert plan.eliminated == {"c": ("h", "v")}
    assert plan.parts == {"h": Place("c", span=Size(3), total=Size(8), offset=Size(0)),
                          "v": Place("c", span=Size(5), total=Size(8), offset=Size(3))}
    assert plan.parts["h"].index("j") == "((j) / 3) * 8 + 0 + (j) % 3"
    assert plan.parts["v"].index("i") == "((i) / 5) * 8 + 3 + (i) % 5"

    mod = generate(g)
    assert not any(OPS[l.op].family == "concat" for l in mod.launches)   # no concat kernel
    out = {l.node: l.args[0] for l in mod.launches}
    assert out == {"h": "c", "v": "c"}              # both producers write the concat's buffer
    assert mod.node_buffer["c"] == "c" and not {"h", "v"} & set(mod.node_buffer)
    assert {"h", "v"} <= mod.reused                 # their values live only inside c
    # the stores, at the offsets above: the matmul's element (row * N + col), the group's i
    assert "out[((row * N + col) / 3) * 8 + 0 + (row * N + col) % 3] = acc;" in mod.source
    assert "out[((i) / 5) * 8 + 3 + (i) % 5] = " in mod.source


def test_a_concat_whose_part_is_an_output_is_kept():
    # h is handed out, so it needs a buffer of its own: the concat copies it like any operand
    g = dlc.compile(CONCAT % "    output h\n", backend="interp", opt_level=2).graph
    plan = plan_concats(g)
    assert plan.eliminated == {} and plan.parts == {}
    mod = generate(g)
    concat = [l for l in mod.launches if OPS[l.op].family == "concat"]
    assert len(concat) == 1 and concat[0].node == "c"
    assert mod.node_buffer["h"] == "h" and concat[0].args[:2] == ["c", "h"]
    assert "(concat elimination)" not in mod.source


def test_no_concat_is_eliminated_without_fusion_groups():
    g = dlc.compile(CONCAT % "", backend="interp", opt_level=1).graph
    assert not g.meta.groups and plan_concats(g).eliminated == {}
