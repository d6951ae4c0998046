"""Optimizers and initialisers a model may name, with their settings and defaults.

Kept in `ir` because both the front end (to check what the user wrote) and the passes and
runtime (to act on it) read them; what each optimizer *does* is in `passes/optimizer.py`,
what each initialiser draws is in `runtime/init.py`.
"""
from .ops import REQUIRED

# name -> {setting: default}; conventions follow PyTorch (torch.optim) so results compare.
OPTIMIZERS = {
    "sgd": {"lr": REQUIRED, "momentum": 0.0, "nesterov": False},
    "rmsprop": {"lr": 0.01, "alpha": 0.99, "eps": 1e-8},
    "adam": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
}

# name -> the numeric arguments it takes
INITIALISERS = {
    "zeros": (), "ones": (), "xavier": (), "he": (),
    "normal": ("mean", "std"), "uniform": ("lo", "hi"), "constant": ("value",),
}

# settings a model may give in `train(...)`, with their types; command-line flags override them
TRAIN_SETTINGS = {"data": str, "epochs": int, "batch": int, "val_split": float, "seed": int}


def parse_init(spec: str) -> tuple[str, tuple[float, ...]]:
    """'normal(0.0, 0.01)' -> ('normal', (0.0, 0.01)); the text is what the IR stores."""
    name, _, rest = spec.partition("(")
    args = tuple(float(a) for a in rest.rstrip(")").split(",") if a.strip()) if rest else ()
    return name, args
