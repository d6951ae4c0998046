"""Learning-rate and momentum schedules in the optimizer clause (passes/optimizer.py): the rates the
IR computes, step by step, against the formulas of docs/language.md; the same on the emu backend;
the momentum ramp; the settings' errors.

How the learning rate is read: a model `loss = sum(w)` has dL/dw = 1 everywhere, so plain SGD moves
w by exactly -lr_t. Resetting w to 0 before every step makes the new w exactly -lr_t (0 - x is
exact in float32), so the rate is read without any rounding of its own; the step counter is state,
so the reset does not disturb the schedule.

Tolerances: the IR computes in float32, the reference in float64. Each op rounds by at most half
an ulp (6e-8 relative); the longest chain (the cosine's polynomial, ~20 ops) stays below 1e-6
relative, and exp(k ln gamma) adds |k ln gamma| * 6e-8 <= 1e-6 for the exponents used here (at most
20 * |ln 0.9| ~ 2 and 6 * |ln 0.5| ~ 4). Rates that are exactly 0 (a cosine ending at lr_min = 0)
are exact: the polynomial of 0 is 0. Between backends the float32 ops are the same, so emu must
agree with the interpreter to 1e-6 relative (in practice they are identical or 1 ulp apart, from
expf against NumPy's exp).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import dlc
from dlc.ir.errors import DlcError
from conftest import needs_emu

STEPS = 20
LR = 0.1
RTOL = 1e-6


def reference_lr(t: int, lr=LR, schedule="constant", step_size=None, gamma=None, total=None, lr_min=0.0,
                 warmup=0) -> float:
    """docs/language.md's formula, in float64: step t counts from 0."""
    u = max(0, t - warmup)
    if schedule == "constant":
        f = lr
    elif schedule == "step":
        f = lr * gamma ** (u // step_size)
    elif schedule == "exponential":
        f = lr * gamma ** u
    else:
        span = total - warmup
        f = lr_min + (lr - lr_min) * (1 + math.cos(math.pi * min(u, span) / span)) / 2
    return f * (min(1.0, (t + 1) / warmup) if warmup else 1.0)


CASES = {
    "step": dict(schedule="step", step_size=3, gamma=0.5),
    "step_default_gamma": dict(schedule="step", step_size=7),
    "exponential": dict(schedule="exponential", gamma=0.9),
    "cosine": dict(schedule="cosine", total=15, lr_min=0.01),       # reaches lr_min at 15, then stays
    "cosine_to_zero_warmup": dict(schedule="cosine", total=16, warmup=4),
    "step_warmup": dict(schedule="step", step_size=4, gamma=0.5, warmup=3),
    "exponential_warmup": dict(schedule="exponential", gamma=0.8, warmup=2),
    "warmup_only": dict(warmup=5),
}


def source(settings: dict, optimizer="sgd", extra="") -> str:
    args = ", ".join(f"{k} = {v}" for k, v in settings.items())
    return (f"model s {{\n    param w : f32[3] = zeros\n    loss = sum(w)\n    output w\n"
            f"    minimize loss with {optimizer}(lr = {LR}{extra}{', ' + args if args else ''})\n}}\n")


def lr_sequence(m, steps=STEPS) -> list[float]:
    out = []
    for _ in range(steps):
        m.params["w"] = np.zeros(3, np.float32)
        m.step()
        w = np.asarray(m.params["w"])
        assert w[0] == w[1] == w[2]
        out.append(-float(w[0]))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_interpreter_follows_the_formula(case):
    settings = CASES[case]
    got = lr_sequence(dlc.compile(source(settings), backend="interp"))
    want = [reference_lr(t, **{**settings, "gamma": settings.get("gamma", 0.1)}) for t in range(STEPS)]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)
    assert len(set(got)) >= 3, "the schedule should change the rate"


def test_the_sequences_have_the_documented_shape():
    """Spot checks of the formula itself, so that a wrong reference cannot agree with a wrong IR."""
    step = [reference_lr(t, **CASES["step"]) for t in range(7)]
    assert step == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]
    warm = [reference_lr(t, **CASES["warmup_only"]) for t in range(7)]
    assert warm == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1, 0.1])
    cos = [reference_lr(t, **CASES["cosine_to_zero_warmup"]) for t in range(18)]
    assert cos[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])   # warm-up to the peak ...
    assert cos[4] == pytest.approx(0.1) and cos[10] == pytest.approx(0.05)  # ... half way at 4 + 12/2
    assert cos[16] == cos[17] == 0.0                                  # lr_min from `total` on
    got = lr_sequence(dlc.compile(source(CASES["cosine_to_zero_warmup"]), backend="interp"), 18)
    assert got[16] == got[17] == 0.0


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_adam_and_rmsprop_scale_their_step_by_the_scheduled_rate(optimizer):
    """The same optimizer with and without `schedule = exponential, gamma = 0.5`: every step of the
    first is 0.5^t times the second's (their moments are the same float32 ops on the same
    gradients; only the final multiply by lr_t rounds differently)."""
    sched = lr_sequence(dlc.compile(source(dict(schedule="exponential", gamma=0.5), optimizer), backend="interp"), 8)
    const = lr_sequence(dlc.compile(source({}, optimizer), backend="interp"), 8)
    if optimizer == "adam":
        # a constant gradient g: Adam's bias-corrected moments are g and g^2 exactly, as in torch (the
        # corrections 1 - beta^t use the constants 1 - beta of the moments: passes/optimizer.py), so
        # every step is lr * g / (|g| + eps), which is lr in float32
        assert const == [float(np.float32(LR))] * 8
    else:
        assert len(set(const)) > 1  # RMSprop's steps are not lr itself: the test is not trivial
    np.testing.assert_allclose(np.array(sched) / np.array(const), [0.5 ** t for t in range(8)], rtol=1e-6)


@needs_emu
@pytest.mark.parametrize("opt_level", [1, 2])
@pytest.mark.parametrize("case", ["step_warmup", "exponential", "cosine", "cosine_to_zero_warmup"])
def test_emu_agrees_with_the_interpreter(case, opt_level):
    src = source(CASES[case])
    ref = lr_sequence(dlc.compile(src, backend="interp"))
    got = lr_sequence(dlc.compile(src, backend="emu", opt_level=opt_level))
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=0)


# -- the momentum ramp ---------------------------------------------------------------------------
RAMP = dict(momentum=0.9, momentum_start=0.5, momentum_warmup=8)


def reference_momentum(t, momentum, momentum_start, momentum_warmup):
    return momentum - (momentum - momentum_start) * max(0.0, 1 - t / momentum_warmup)


def test_momentum_ramp_unit():
    """The node %schedule.momentum at chosen values of the step counter: 0.5 at the first step,
    rising linearly by 0.05 a step, exactly 0.9 from step 8 on."""
    m = dlc.compile(source({}, extra=", momentum = 0.9, momentum_start = 0.5, momentum_warmup = 8"),
                    backend="interp")
    assert "schedule.momentum" in m.graph and "schedule.lr" not in m.graph  # the rate stays a constant
    got = []
    for t in range(12):
        m.set_state({"schedule.t": np.float32(t)})
        got.append(float(m.run(["schedule.momentum"], {})["schedule.momentum"]))
    want = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.9, 0.9, 0.9]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    assert got[8:] == [np.float32(0.9)] * 4  # the ramp ends exactly on momentum


def test_momentum_ramp_trajectory():
    """Ten steps of sgd with the ramp and gradient 1: v = mu_t v + 1, w -= lr v, against float64."""
    m = dlc.compile(source({}, extra=", momentum = 0.9, momentum_start = 0.5, momentum_warmup = 8"),
                    backend="interp")
    v = w = 0.0
    for t in range(10):
        m.step()
        v = reference_momentum(t, **RAMP) * v + 1.0
        w -= LR * v
        np.testing.assert_allclose(np.asarray(m.params["w"]), w, rtol=1e-6)
        np.testing.assert_allclose(m.state["w.velocity"], v, rtol=1e-6)
    assert m.state["schedule.t"] == 10


@needs_emu
def test_momentum_ramp_on_emu():
    src = source(CASES["step"], extra=", momentum = 0.9, momentum_start = 0.5, momentum_warmup = 8")
    a, b = dlc.compile(src, backend="interp"), dlc.compile(src, backend="emu", opt_level=2)
    for _ in range(12):
        a.step()
        b.step()
    for k, v in a.state.items():
        np.testing.assert_allclose(b.state[k], v, rtol=1e-6, err_msg=k)


# -- syntax and errors ---------------------------------------------------------------------------
def test_no_schedule_no_counter():
    """A model without schedule settings keeps its IR: no step counter, constant rates."""
    text = dlc.compile(source({}, extra=", momentum = 0.9"), backend="interp").ir()
    assert "schedule" not in text
    text = dlc.compile(source(CASES["cosine"]), backend="interp").ir()
    assert "%schedule.t : f32[] = state[init=zeros]()" in text and "%schedule.lr" in text
    assert "schedule=cosine, total=15, lr_min=0.01" in text  # the settings, in the IR's optimizer line


def test_schedule_given_as_a_string_is_the_same():
    a = dlc.compile(source({"schedule": "cosine", "total": 15}), backend="interp")
    b = dlc.compile(source({"schedule": '"cosine"', "total": 15}), backend="interp")
    assert a.ir() == b.ir()


@pytest.mark.parametrize("settings,message", [
    ({"schedule": "cosin"}, r"schedule must be one of constant, step, exponential, cosine, found 'cosin'"),
    ({"schedule": "cosine"}, r"schedule = cosine needs the setting 'total'"),
    ({"schedule": "exponential"}, r"schedule = exponential needs the setting 'gamma'"),
    ({"schedule": "cosine", "total": 10, "step_size": 2}, r"step_size is a setting of the step schedule"),
    ({"gamma": 0.5}, r"gamma is a setting of the step and exponential schedules, not of schedule = constant"),
    ({"schedule": "cosine", "total": 10, "warmup": 10}, r"total must be greater than warmup \(10\), found 10"),
    ({"schedule": "cosine", "total": 10, "lr_min": 0.5}, r"lr_min must be in \[0, lr\]"),
    ({"schedule": "step", "step_size": 0}, r"step_size must be at least 1, found 0"),
    ({"schedule": "step", "step_size": 2.5}, r"step_size must be an integer number of steps, found 2.5"),
    ({"warmup": -3}, r"warmup must not be negative, found -3"),
    ({"momentum_start": 0.5, "momentum_warmup": 10}, r"momentum_start needs sgd with a momentum greater than 0"),
    ({"shedule": "cosine"}, r"has no setting 'shedule' \(did you mean 'schedule'\?\)"),
])
def test_bad_settings_are_located_errors(settings, message):
    with pytest.raises(DlcError, match=message) as e:
        dlc.compile(source(settings), backend="interp")
    assert e.value.loc is not None and e.value.loc.line == 5


def test_ramp_needs_both_settings():
    with pytest.raises(DlcError, match=r"momentum_warmup goes with 'momentum_start'"):
        dlc.compile(source({}, extra=", momentum = 0.9, momentum_warmup = 10"), backend="interp")


def test_schedule_settings_are_by_name_only():
    """Positional settings stop at the optimizer's own (sgd: lr, momentum, nesterov, weight_decay)."""
    src = source({}).replace("sgd(lr = 0.1)", "sgd(0.1, 0.9, false, 0.0, cosine)")
    with pytest.raises(DlcError, match=r"takes at most 4 settings, found 5"):
        dlc.compile(src, backend="interp")
