"""Weight decay and AdamW (passes/optimizer.py) against torch.optim, step by step.

The same small classifier is trained for STEPS steps by dlc and by PyTorch from the same weights
on the same batches; the optimizers and the lr schedulers on the PyTorch side are torch's own
(torch.optim.SGD / RMSprop / Adam / AdamW with weight_decay, lr_scheduler.StepLR and
ExponentialLR), so the oracle is code nobody here wrote.

Tolerances. Relative error is normwise per tensor: max |dlc - torch| / max |torch|.
- interp runs in float64 against torch in float64: both evaluate the same formulas and differ in
  operation order only (~1e-15 per op, a few hundred ops); 1e-9 leaves a wide margin while a
  difference of convention (coupled vs decoupled decay, decay before or after the moments,
  scheduled vs base lr in the decay) moves the params by >= 1e-6 (checked: every case also
  differs from the run without decay by far more than the tolerance).
- emu runs in float32 against torch in float32: ~6e-8 per op, amplified by Adam's division by
  sqrt(v) over a few steps; 1e-4 is the project's bar for float32 backends.
"""
from __future__ import annotations

import numpy as np
import pytest

import dlc
from dlc.ir.errors import DlcError
from conftest import dlc_cli, import_torch, needs_emu

STEPS = 5
MODEL = """\
model wd {{
    input  x : f32[N, 5]
    input  y : i32[N]
    param  w1 : f32[5, 8] = normal(0, 0.5)
    param  b1 : f32[8]    = constant(0.1)
    param  w2 : f32[8, 3] = normal(0, 0.5)
    param  b2 : f32[3]    = constant(-0.2)
    logits = tanh(x @ w1 + b1) @ w2 + b2
    loss   = softmax_xent(logits, y)
    output logits
    minimize loss with {opt}
}}
"""

# name -> (dlc optimizer clause, torch optimizer class name, its keyword arguments, torch scheduler or None)
CASES = {
    "sgd": ("sgd(lr = 0.1, weight_decay = 0.05)", "SGD", dict(lr=0.1, weight_decay=0.05), None),
    "sgd_momentum": ("sgd(lr = 0.1, momentum = 0.9, weight_decay = 0.05)", "SGD",
                     dict(lr=0.1, momentum=0.9, weight_decay=0.05), None),
    "sgd_nesterov": ("sgd(lr = 0.1, momentum = 0.8, nesterov = true, weight_decay = 0.1)", "SGD",
                     dict(lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.1), None),
    "sgd_exponential": ("sgd(lr = 0.1, momentum = 0.5, weight_decay = 0.05, schedule = exponential, gamma = 0.8)",
                        "SGD", dict(lr=0.1, momentum=0.5, weight_decay=0.05), ("ExponentialLR", dict(gamma=0.8))),
    "rmsprop": ("rmsprop(lr = 0.01, alpha = 0.9, eps = 1e-6, weight_decay = 0.1)", "RMSprop",
                dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.1), None),
    "adam": ("adam(lr = 0.01, beta1 = 0.8, beta2 = 0.95, weight_decay = 0.1)", "Adam",
             dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1), None),
    "adamw": ("adamw(lr = 0.01, weight_decay = 0.5)", "AdamW", dict(lr=0.01, weight_decay=0.5), None),
    "adamw_positional": ("adamw(0.02, 0.85, 0.99, 1e-7, 0.3)", "AdamW",
                         dict(lr=0.02, betas=(0.85, 0.99), eps=1e-7, weight_decay=0.3), None),
    "adamw_defaults": ("adamw()", "AdamW", {}, None),  # torch's defaults: lr 1e-3, betas (.9, .999), eps 1e-8, wd 1e-2
    "adamw_step_schedule": ("adamw(lr = 0.02, weight_decay = 0.3, schedule = step, step_size = 2, gamma = 0.5)",
                            "AdamW", dict(lr=0.02, weight_decay=0.3), ("StepLR", dict(step_size=2, gamma=0.5))),
    "adamw_exponential": ("adamw(lr = 0.02, weight_decay = 0.4, schedule = exponential, gamma = 0.7)", "AdamW",
                          dict(lr=0.02, weight_decay=0.4), ("ExponentialLR", dict(gamma=0.7))),
    "adam_clip": ("adam(lr = 0.01, weight_decay = 0.1, clip = 0.1)", "Adam", dict(lr=0.01, weight_decay=0.1), None),
}
CLIP = {"adam_clip": 0.1}   # torch.nn.utils.clip_grad_norm_ first: the decay joins the clipped gradient
EMU_CASES = ["sgd_momentum", "rmsprop", "adam", "adamw_step_schedule"]


def batches(seed=7):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(6, 5)).astype(np.float32), "y": rng.integers(0, 3, size=6).astype(np.int32)}
            for _ in range(STEPS)]


def torch_run(case, start: dict, data, dtype, decay=True):
    """The params after each step of torch's optimizer (and scheduler) on the same batches."""
    torch = import_torch()
    _, cls, kw, sched = CASES[case]
    kw = dict(kw) if decay else {**kw, "weight_decay": 0.0}
    ps = {k: torch.tensor(np.asarray(v, np.float64), dtype=dtype, requires_grad=True) for k, v in start.items()}
    opt = getattr(torch.optim, cls)(list(ps.values()), **kw)
    lr_sched = getattr(torch.optim.lr_scheduler, sched[0])(opt, **sched[1]) if sched else None
    out = []
    for f in data:
        x = torch.tensor(f["x"], dtype=dtype)
        y = torch.tensor(f["y"], dtype=torch.long)
        logits = torch.tanh(x @ ps["w1"] + ps["b1"]) @ ps["w2"] + ps["b2"]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(logits, y).backward()
        if case in CLIP:
            norm = torch.nn.utils.clip_grad_norm_(list(ps.values()), CLIP[case])
            assert norm > CLIP[case], "the clip must act for the case to test anything"
        opt.step()
        if lr_sched:
            lr_sched.step()
        out.append({k: v.detach().numpy().astype(np.float64) for k, v in ps.items()})
    return out


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def dlc_run(m, data):
    out = []
    for f in data:
        m.step(**f)
        out.append({k: np.array(v, np.float64) for k, v in m.params.items()})
    return out


def compare(case, backend, dtype_name, tol, opt_level=1):
    torch = import_torch()
    dtype = getattr(torch, dtype_name)
    m = dlc.compile(MODEL.format(opt=CASES[case][0]), backend=backend, opt_level=opt_level, seed=3,
                    float_dtype=dtype_name)
    start = {k: np.array(v) for k, v in m.params.items()}
    data = batches()
    want, got = torch_run(case, start, data, dtype), dlc_run(m, data)
    for step, (gs, ws) in enumerate(zip(got, want), 1):
        for k in ws:
            err = rel_err(gs[k], ws[k])
            assert err < tol, f"{case} on {backend}: {k} after step {step}: relative error {err:.2e} >= {tol}"
    # the decay matters: without it torch ends far from dlc's params
    plain = torch_run(case, start, data, dtype, decay=False)[-1]
    assert max(rel_err(got[-1][k], plain[k]) for k in plain) > 100 * tol, f"{case}: the decay changed nothing"


@pytest.mark.parametrize("case", sorted(CASES))
def test_interp_float64_matches_torch_step_by_step(case):
    compare(case, "interp", "float64", 1e-9)


@needs_emu
@pytest.mark.parametrize("case", EMU_CASES)
def test_emu_float32_matches_torch_step_by_step(case):
    """-O2: the updates run as the multi-tensor update kernels (codegen/updates.py)."""
    compare(case, "emu", "float32", 1e-4, opt_level=2)


def test_adamw_keeps_its_own_state_and_adam_ir_is_unchanged_without_decay():
    ir = dlc.compile(MODEL.format(opt="adamw(lr = 0.01)"), backend="interp").ir("optimized")
    assert "adamw.one_minus_beta1_t" in ir and "weight_decay=0.01" in ir
    plain = dlc.compile(MODEL.format(opt="adam(lr = 0.01)"), backend="interp").ir("optimized")
    assert "weight_decay" not in plain  # a model that gives no decay keeps the IR it had


@pytest.mark.parametrize("opt, message", [
    ("adamw(lr = 0.01, weight_decay = -0.1)", "optimizer adamw: weight_decay must not be negative, found -0.1"),
    ("sgd(lr = 0.1, weight_decay = -1)", "optimizer sgd: weight_decay must not be negative, found -1"),
    ("adam(weight_decay = \"big\")", "optimizer adam: weight_decay must be a number, found the string \"big\""),
    ("rmsprop(weight_decay = true)", "optimizer rmsprop: weight_decay must be a number, found true"),
    ("adamw(lr = 0.01, wieght_decay = 0.1)", "optimizer adamw has no setting 'wieght_decay'"),
])
def test_bad_decay_settings_are_located_errors(opt, message):
    src = MODEL.format(opt=opt)
    with pytest.raises(DlcError) as e:
        dlc.compile(src, backend="interp")
    assert e.value.message.startswith(message), e.value.message
    line = next(i for i, l in enumerate(src.splitlines(), 1) if "minimize" in l)
    assert e.value.loc is not None and e.value.loc.line == line


def test_negative_decay_on_the_command_line_points_at_the_value(tmp_path):
    src = tmp_path / "wd.dln"
    src.write_text(MODEL.format(opt="adamw(lr = 0.01, weight_decay = -0.5)"))
    r = dlc_cli("check", src, rc=2)
    line = next(i for i, l in enumerate(src.read_text().splitlines(), 1) if "minimize" in l)
    assert r.stderr.startswith(f"{src}:{line}:"), r.stderr
    assert "error: optimizer adamw: weight_decay must not be negative, found -0.5" in r.stderr


@pytest.mark.parametrize("case", ["adamw_step_schedule", "sgd_momentum"])
@pytest.mark.parametrize("opt_level", [1, 2])
def test_decay_kernels_compile_with_nvrtc(nvrtc, case, opt_level):
    """The updates with decay (pointwise kernels at -O1, the multi-tensor update kernels at -O2)
    compile to PTX for every arch, no GPU needed."""
    from dlc.codegen import generate
    from test_nvrtc import assert_kernels_compile
    mod = generate(dlc.compile(MODEL.format(opt=CASES[case][0]), backend="interp", opt_level=opt_level).graph)
    assert any(k.startswith("update_") for k in mod.kernel_names) == (opt_level == 2)
    assert_kernels_compile(mod)
