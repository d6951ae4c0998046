"""Optimizers and initialisers a model may name, with their settings and defaults.

Kept in `ir` because both the front end (to check what the user wrote) and the passes and
runtime (to act on it) read them; what each optimizer *does* is in `passes/optimizer.py`,
what each initialiser draws is in `runtime/init.py`.
"""
from .ops import REQUIRED

# name -> {setting: default}; conventions follow PyTorch (torch.optim) so results compare.
# OPTIONAL: a number stored only when the model gives it, so a model without it keeps its IR.
# weight_decay: coupled (g += wd * p, before momentum and moments) on sgd, rmsprop and adam, as
# torch's weight_decay there; decoupled on adamw (p -= lr_t * wd * p, then the Adam step), as
# torch.optim.AdamW. Every trainable param decays, biases too (torch's model.parameters()).
OPTIONAL = None
OPTIMIZERS = {
    "sgd": {"lr": REQUIRED, "momentum": 0.0, "nesterov": False, "weight_decay": OPTIONAL},
    "rmsprop": {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": OPTIONAL},
    "adam": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": OPTIONAL},
    "adamw": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
}

# Schedules and clipping: settings every optimizer also takes, by name only. Only those a model
# gives (and the defaults of the schedule it chose) are stored, so a model without them keeps its IR.
# Steps are counted from 0: step t is the (t+1)-th optimizer step (passes/optimizer.py).
SCHEDULES = ("constant", "step", "exponential", "cosine")
SCHEDULE_SETTINGS = {
    "schedule": str,          # one of SCHEDULES (a bare name or a string)
    "step_size": int,         # step: decay every step_size steps
    "gamma": float,           # step (default 0.1), exponential (required): the decay factor
    "total": int,             # cosine: the step at which the lr reaches lr_min, warm-up included
    "lr_min": float,          # cosine: the final lr (default 0)
    "warmup": int,            # any schedule: linear warm-up over this many steps (default 0: none)
    "momentum_start": float,  # sgd with momentum: the momentum of the first step ...
    "momentum_warmup": int,   # ... rising linearly to `momentum` over this many steps
    "clip": float,            # clip the gradients by their global norm to at most this (> 0)
}
# what each schedule needs (REQUIRED) or defaults to; settings of another schedule are errors
SCHEDULE_NEEDS = {
    "constant": {},
    "step": {"step_size": REQUIRED, "gamma": 0.1},
    "exponential": {"gamma": REQUIRED},
    "cosine": {"total": REQUIRED, "lr_min": 0.0},
}


def schedule_problem(optimizer: str, s: dict) -> tuple[str, str] | None:
    """(setting, what is wrong) for optimizer settings `s` (own settings with defaults, plus the
    schedule settings given), or None; on success `s` gains the chosen schedule's defaults."""
    given = [k for k in SCHEDULE_SETTINGS if k in s]
    if not given:
        return None
    for k in given:
        v, want = s[k], SCHEDULE_SETTINGS[k]
        if want is str:
            if v not in SCHEDULES:
                return k, f"must be one of {', '.join(SCHEDULES)}, found {v!r}"
        elif want is int and (isinstance(v, bool) or not isinstance(v, int)):
            return k, f"must be an integer number of steps, found {v!r}"
        elif want is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return k, f"must be a number, found {v!r}"
    if "clip" in s and not s["clip"] > 0:
        return "clip", f"must be greater than 0 (the largest global gradient norm), found {s['clip']}"
    kind = s.get("schedule", "constant")
    needs = SCHEDULE_NEEDS[kind]
    for k in ("step_size", "gamma", "total", "lr_min"):
        if k in s and k not in needs:
            users = [n for n, t in SCHEDULE_NEEDS.items() if k in t]
            return k, f"is a setting of the {' and '.join(users)} schedule{'s' * (len(users) > 1)}, not of " \
                      f"schedule = {kind}"
    for k, default in needs.items():
        if k not in s:
            if default is REQUIRED:
                return "schedule", f"schedule = {kind} needs the setting '{k}'"
            s[k] = default
    if s.get("step_size", 1) < 1:
        return "step_size", f"must be at least 1, found {s['step_size']}"
    if "gamma" in s and not s["gamma"] > 0:
        return "gamma", f"must be greater than 0, found {s['gamma']}"
    if s.get("warmup", 0) < 0:
        return "warmup", f"must not be negative, found {s['warmup']}"
    if kind == "cosine":
        if s["total"] <= s.get("warmup", 0):
            return "total", f"must be greater than warmup ({s.get('warmup', 0)}), found {s['total']}"
        if not 0 <= s["lr_min"] <= s["lr"]:
            return "lr_min", f"must be in [0, lr] = [0, {s['lr']:g}], found {s['lr_min']}"
    ramp = [k for k in ("momentum_start", "momentum_warmup") if k in s]
    if ramp:
        if optimizer != "sgd" or not s.get("momentum"):
            return ramp[0], "needs sgd with a momentum greater than 0"
        if len(ramp) == 1:
            other = ({"momentum_start", "momentum_warmup"} - set(ramp)).pop()
            return ramp[0], f"goes with '{other}' (the momentum rises from momentum_start to momentum " \
                            f"over momentum_warmup steps)"
        if not 0 <= s["momentum_start"] < 1:
            return "momentum_start", f"must be in [0, 1), found {s['momentum_start']}"
        if s["momentum_warmup"] < 1:
            return "momentum_warmup", f"must be at least 1, found {s['momentum_warmup']}"
    return None


# name -> the numeric arguments it takes
INITIALISERS = {
    "zeros": (), "ones": (), "xavier": (), "he": (),
    "normal": ("mean", "std"), "uniform": ("lo", "hi"), "constant": ("value",),
}

# settings a model may give in `train(...)`, with their types; command-line flags override them
# (patience: early stopping after that many epochs without improvement of `monitor`, 0: off;
# test_split: a fraction held out from training and validation, scored at the end)
MONITORS = ("val_loss", "val_accuracy")   # what early stopping may watch; the first is the default
TRAIN_SETTINGS = {"data": str, "epochs": int, "batch": int, "val_split": float, "seed": int,
                  "patience": int, "monitor": str, "test_split": float}


def parse_init(spec: str) -> tuple[str, tuple[float, ...]]:
    """'normal(0.0, 0.01)' -> ('normal', (0.0, 0.01)); the text is what the IR stores."""
    name, _, rest = spec.partition("(")
    args = tuple(float(a) for a in rest.rstrip(")").split(",") if a.strip()) if rest else ()
    return name, args
