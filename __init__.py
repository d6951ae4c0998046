"""dlc: a deep-learning compiler from the `.dln` language to CUDA, with a NumPy reference."""
from .api import Model, compile, load
from .ir.errors import DlcError

__all__ = ["compile", "load", "Model", "DlcError"]
__version__ = "0.1.0"
