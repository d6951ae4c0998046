"""dlc: a deep-learning compiler from the `.dln` language to CUDA, with a NumPy reference."""
from .api import Build, Model, Options, build, compile, diff, load
from .api import import_onnx
from .ir.errors import DlcError
from .version import VERSION as __version__

__all__ = ["compile", "load", "build", "diff", "Options", "Build", "Model", "DlcError"]
__all__ += ["import_onnx"]
