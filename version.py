"""The version of dlc, written once: pyproject.toml reads it (setuptools' dynamic version), `dlc
--version` prints it, exported ONNX files name it as their producer's."""
VERSION = "0.1.0"
