"""Batch norm's training reductions, fused (-O2): sibling reductions and one-pass statistics.

- the statistics are two sums over x - shift (`channel_first`, each channel's first value):
  accurate for a large mean (x = 1000 + N(0, 1)) against PyTorch in float64, where the naive
  E[x^2] - E[x]^2 in float32 is visibly wrong;
- sibling reductions (rule `siblings`, passes/fusion.py) in each kernel form (a block per output
  or columns, one launch or two) on emu at -O2 against the interpreter: gradients and running
  statistics;
- in examples/resnet_small.dln every batch norm's statistics and its backward's sums are one
  kernel each, and a training step launches 117 kernels at batch 128 (245 before);
- a run that asks for one sibling computes the group (runtime/runner.py);
- the kernels compile with NVRTC; `channel_first`'s shape rule refuses what it cannot do.
"""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from conftest import EXAMPLES, import_torch, needs_emu
from dlc.ir.errors import DlcError
from dlc.ir.text import parse_ir
from dlc.ir.verify import verify

SIBLING_TEMPLATES = ("reduce_siblings.cu.j2", "reduce_siblings_finish.cu.j2", "reduce_columns_siblings.cu.j2",
                     "reduce_columns_siblings_finish.cu.j2")

LARGE_MEAN = """model bn {
    input  x : f32[N, 3, 4, 5]
    input  t : f32[N, 3, 4, 5]
    y    = batchnorm2d(x, momentum = 0.2)
    loss = mean((y - t) * (y - t))
    output y
    minimize loss with sgd(lr = 0.1)
}"""


@pytest.mark.parametrize("backend,level", [("interp", 2), pytest.param("emu", 0, marks=needs_emu),
                                           pytest.param("emu", 2, marks=needs_emu)])
def test_one_pass_statistics_stay_accurate_for_a_large_mean(backend, level):
    """x = 1000 + N(0, 1) in float32: E[x^2] - E[x]^2 in float32 is off by percents (checked here,
    so the input is a real test); the shifted sums keep the batch variance to float32 rounding.
    Tolerances: the running statistics and gamma's gradient 1e-5 relative (float32 sums of 320
    values of size 1; measured about 1e-7); the output 1e-4 absolute: x - mean, of size 1, carries
    the rounding of a float32 mean near 1000 (its ulp is 6e-5), as PyTorch's float32 output would."""
    torch = import_torch()
    rng = np.random.default_rng(7)
    x = (1000 + rng.normal(size=(16, 3, 4, 5))).astype(np.float32)
    t = rng.normal(size=x.shape).astype(np.float32)
    exact = x.astype(np.float64).var(axis=(0, 2, 3))
    naive = (x * x).mean(axis=(0, 2, 3)) - x.mean(axis=(0, 2, 3)) ** 2
    assert np.max(np.abs(naive - exact) / exact) > 1e-2   # the unshifted formula fails on this input
    bn = torch.nn.BatchNorm2d(3, momentum=0.2).double().train()
    y = bn(torch.tensor(x, dtype=torch.float64))
    ((y - torch.tensor(t, dtype=torch.float64)) ** 2).mean().backward()
    m = dlc.compile(LARGE_MEAN, backend=backend, opt_level=level, seed=1)
    m.train()
    np.testing.assert_allclose(m.forward(x=x)["y"], y.detach().numpy(), rtol=0, atol=1e-4)
    _, grads = m.grad(x=x, t=t)
    np.testing.assert_allclose(grads["y.gamma"], bn.weight.grad.numpy(), rtol=1e-5)
    m.step(x=x, t=t)
    np.testing.assert_allclose(m.buffers["y.var"], bn.running_var.numpy(), rtol=1e-5)
    np.testing.assert_allclose(m.buffers["y.mean"], bn.running_mean.numpy(), rtol=1e-5)


# every kernel form of sibling reductions: (layer, sample shape, batch; static batch or N)
FORMS = {
    "blocks, two launches": ("batchnorm2d", "3, 4, 5", "N", 40, "reduce_siblings_finish.cu.j2"),
    "blocks, one launch": ("batchnorm2d", "3, 4, 5", "8", 8, "reduce_siblings.cu.j2"),
    "columns, two launches": ("batchnorm1d", "40", "N", 300, "reduce_columns_siblings_finish.cu.j2"),
    "columns, one launch": ("batchnorm1d", "40", "24", 24, "reduce_columns_siblings.cu.j2"),
}
FORM_NET = """model bn {{
    input  x : f32[{batch}, {shape}]
    input  t : f32[{batch}, {shape}]
    param  w : f32[{shape}] = ones
    y    = {layer}(tanh(x * w), momentum = 0.3)     # tanh: w's gradient is not zero by scale invariance
    loss = mean((y - t) * (y - t) * (1 + t))
    output y
    minimize loss with sgd(lr = 0.1)
}}"""


def _form_model(form, backend):
    layer, shape, batch, _, _ = FORMS[form]
    return dlc.compile(FORM_NET.format(layer=layer, shape=shape, batch=batch), backend=backend, opt_level=2, seed=2)


@pytest.mark.parametrize("form", list(FORMS))
def test_each_kernel_form_is_used(form):
    """The batch norm's statistics and its backward's sums are siblings, and the kernel of the form
    named runs them (the last template of each: the one that stores the results)."""
    m = _form_model(form, "interp")
    g = m.graph
    groups = [ms for rule, ms in g.meta.groups.values() if rule == "siblings"]
    reductions = sorted(sum(1 for x in ms if g.op(x) in ("sum", "mean")) for ms in groups)
    assert reductions == [2, 3], groups     # mean(d), mean(d * d); sum(g), sum(g * xhat), sum(g * scale)
    templates = {k.template for k in dlc.codegen.generate(g).kernels}
    assert FORMS[form][4] in templates, templates
    if "one launch" in form:
        assert not {"reduce_siblings_finish.cu.j2", "reduce_columns_siblings_finish.cu.j2"} & templates


@needs_emu
@pytest.mark.parametrize("form", list(FORMS))
def test_each_kernel_form_on_emu_matches_the_interpreter(form):
    """Two training steps at -O2: the loss, the gradients (computed from the sums), the params and
    the running statistics, emu (float32) against the interpreter (float32, the reductions in
    NumPy's order). 1e-4 relative: float32 sums of up to 12,000 terms in two different orders."""
    _, _, _, batch, _ = FORMS[form]
    ref, emu = _form_model(form, "interp"), _form_model(form, "emu")
    rng = np.random.default_rng(3)
    shape = [batch] + list(ref.params["w"].shape)
    for step in range(2):
        x = (rng.normal(size=shape) * 1.5 + 0.5).astype(np.float32)
        t = rng.normal(size=shape).astype(np.float32)
        (l1, g1), (l2, g2) = ref.grad(x=x, t=t), emu.grad(x=x, t=t)
        assert l2 == pytest.approx(l1, rel=1e-4)
        for k in g1:
            np.testing.assert_allclose(g2[k], g1[k], rtol=1e-4, atol=1e-5 * np.abs(g1[k]).max(), err_msg=k)
        ref.step(x=x, t=t)
        emu.step(x=x, t=t)
    for k in ref.params:
        np.testing.assert_allclose(emu.params[k], ref.params[k], rtol=1e-4, atol=1e-6, err_msg=k)
    for k in ref.buffers:
        np.testing.assert_allclose(emu.buffers[k], ref.buffers[k], rtol=1e-4, atol=1e-6, err_msg=k)


@needs_emu
def test_a_run_of_one_sibling_computes_its_group():
    """The sibling kernel is launched for its group's last reduction (b); a run that asks for
    another one alone (a) still runs it, with everything it reads (runtime/runner.py; without
    that, a came back as the buffer's old zeros). Exact: small integers in float32."""
    src = """model s {
    input x : f32[N, 8]
    a = mean(x * x)
    b = sum(x)
    output a, b
}"""
    m = dlc.compile(src, backend="emu", opt_level=2)
    assert m.graph.meta.groups["b"] == ("siblings", ["a.mul", "a", "b"])
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    assert m.run(["a"], {"x": x})["a"] == (x * x).mean()
    assert m.run(["b"], {"x": x})["b"] == x.sum()


def test_resnet_small_launches_per_training_step():
    """Per batch norm, a training step launched 24 kernels and now launches 10. Forward 6: the
    shift, x - shift, the statistics (one siblings kernel and its second stage, which also computes
    mean and variance from them, both picks, sqrt(var + eps) and the scale), x - mean, and the
    unbiasing factor (was 10: two means of two launches each, x - mean for the variance, the mean's
    pick, sqrt, the scale). Backward 4: g * scale; sum(g), sum(g * (x - mean)) and sum(g * scale)
    as one siblings kernel and its second stage, which also computes the per-channel gradients
    (gamma's, the variance's, the shifted mean's); dx (was 14: four sums of two launches each,
    one of them needing the other three, and six per-channel or pointwise kernels). resnet_small
    has 8 batch norms, and two of them (the second block's shortcut and its last conv) shared
    their sum(g), 2 launches fewer before: 55 + 8 * 24 - 2 = 245 then, 55 + 8 * 10 = 135 with
    every reduction over the batch in two launches. Since a reduction over a short enough extent
    is one launch (reductions.py `_one_or_two`), at batch 128 each siblings kernel is one launch
    (its extent, 128 x H x W, is at most 16384 on resnet_small's 8 x 8 and smaller maps), 8 per
    batch norm, and so are the loss and the classifier's bias gradient (53 others): 53 + 8 * 8 = 117.
    At batch 1024 the two-launch forms come back."""
    b = dlc.build(EXAMPLES / "resnet_small.dln", opt_level=2)
    assert b.stats(128)["launches"] == 117 and b.stats(1024)["launches"] > 117
    g = b.graph
    groups = [ms for rule, ms in g.meta.groups.values() if rule == "siblings"]
    sums = sorted(sum(1 for x in ms if g.op(x) in ("sum", "mean")) for ms in groups)
    assert sums == [2] * 9 + [3] * 7, sums   # 8 forward pairs; backward: 7 triples and 1 pair (the shared sum(g))
    kernels = {k.name for k in b.module().kernels if k.template in SIBLING_TEMPLATES}
    # the plan holds both forms of each of the 16 groups (1 launch + 2), the bound batch runs one
    assert len([l for l in b.module().launches if l.kernel in kernels]) == 3 * 16
    # the per-channel arithmetic runs in the second stage: the forward's scale and picks are members,
    # and the backward's gradient of the shifted mean
    forward = [ms for ms in groups if any(m.endswith(".bn.shifted_mean") and not m.startswith("d.") for m in ms)]
    assert len(forward) == 8 and all(ms[-1].endswith(".bn.scale") for ms in forward), forward
    backward = [ms for ms in groups if ms not in forward]
    assert all(ms[-1].startswith("d.") and ms[-1].endswith(".bn.shifted_mean") for ms in backward), backward


def test_a_plan_whose_kernel_would_run_after_a_reader_is_refused():
    """`_in_order`, the check `plan` makes before keeping the arithmetic that sibling groups took in:
    a group computed at %z cannot hold %s, which %y reads before %z runs."""
    from dlc.passes.fusion import _in_order
    g = parse_ir("""model t stage=optimized
%x : f32[N, 3] = input()
%s : f32[3] = sum[axis=[0], keepdims=false](%x)
%y : f32[N, 3] = sub(%x, %s)
%e : f32[N, 3] = exp(%x)
%z : f32[3] = sum[axis=[0], keepdims=false](%e)
output y = %y
output z = %z
""")
    assert _in_order(g, {"y": ("elementwise", ["y"]), "z": ("siblings", ["s", "e", "z"])}) is False
    assert _in_order(g, {"y": ("elementwise", ["y"]), "z": ("reduce", ["e", "z"])}) is True


@pytest.mark.parametrize("form", list(FORMS))
def test_sibling_kernels_compile_with_nvrtc(form, nvrtc):
    from dlc.codegen.nvrtc import check_module
    mod = dlc.codegen.generate(_form_model(form, "interp").graph)
    assert {k.template for k in mod.kernels} & set(SIBLING_TEMPLATES)
    check_module(mod)


@pytest.mark.parametrize("axis,message", [
    (0, "axis 0 of f32[N, 3] is the batch"),
    (2, "axis 2 is not an axis of its input f32[N, 3]"),
])
def test_channel_first_refuses_the_batch_axis_and_a_missing_one(axis, message):
    text = f"""model t stage=forward
%x : f32[N, 3] = input()
%k : f32[1, 3] = channel_first[axis={axis}](%x)
output k = %k
"""
    with pytest.raises(DlcError, match=message.replace("[", r"\[").replace("]", r"\]")):
        verify(parse_ir(text))


def test_explain_fusion_lists_the_sibling_groups():
    """`dlc compile --explain-fusion` (Build.explain_fusion): each batch norm's statistics are a
    group of rule `siblings` with its per-channel arithmetic; it saves the squares' round trip
    (N * 16 * 8 * 8 floats at N = 128, written and read back) and the values of that arithmetic
    used only inside (16 floats each: the mean's square, the variance before its relu, the
    variance's pick, var + eps), not the values it stores."""
    lines = dlc.build(EXAMPLES / "resnet_small.dln", opt_level=2).explain_fusion(batch=128)
    i = next(i for i, line in enumerate(lines) if "group %stem.bn.scale  siblings  12 nodes" in line)
    assert lines[i + 1].strip().startswith(f"saves {2 * 4 * 128 * 16 * 8 * 8 + 2 * 4 * 16 * 4:,} bytes"), lines[i + 1]
