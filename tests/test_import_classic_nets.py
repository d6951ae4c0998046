"""`dlc import` of the classic networks as PyTorch defines and exports them (issue 21): AlexNet,
GoogLeNet, VGG-16, ResNet-18 and SqueezeNet 1.1 (benchmarks/torch_models.py, random weights and
random running statistics), exported by PyTorch's TorchScript exporter (`dynamo=False`, opset 17,
a symbolic batch, batch norm kept as BatchNormalization: TrainingMode.PRESERVE on a module in
evaluation mode), then imported and run by dlc's interpreter against onnxruntime on the same file
and input; and a character-level language model (nn.Embedding, nn.LSTM). An LSTM classifier is
covered in tests/test_onnx_import.py.

Tolerance: relative 1e-4 of the logits' largest magnitude, on the interpreter in float32. Both
sides sum the same products in float32 in different orders; over a VGG-16 (15.5G multiply-adds,
sums of up to 25,088 terms) the differences measured here stay near 1e-6 of the scale. On emu
(the generated CUDA compiled for the CPU, float32) the two fully convolutional networks run at a
64x64 input, which their global pooling allows, so that the emulated kernels finish in seconds.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import dlc
from conftest import import_torch_models, needs_emu

NETS = ["alexnet", "googlenet", "vgg16", "resnet18", "squeezenet"]


def _export(name, path, size=None):
    torch, tm = import_torch_models()
    torch.manual_seed(0)
    net, full = tm.imagenet_net(name)
    size = size or full
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # statistics that matter: not 0 and 1
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    net.eval()
    x = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings():  # the TorchScript exporter's notes on tracing and constant folding
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
                          training=torch.onnx.TrainingMode.PRESERVE)
    return net, size


@pytest.mark.parametrize("name", NETS)
def test_an_imported_classic_network_agrees_with_onnxruntime_and_counts_pytorchs_params(name, tmp_path,
                                                                                        onnx_runtime):
    f = tmp_path / f"{name}.onnx"
    net, size = _export(name, f)
    text, weights = dlc.import_onnx(f)
    m = dlc.compile(text, backend="interp")
    m.set_state(weights)
    # dlc check's parameter count is the framework's (running statistics are buffers on both sides)
    assert sum(m.graph.type(p).numel() for p in m.graph.params) == sum(p.numel() for p in net.parameters())
    x = np.random.default_rng(1).normal(size=(2, 3, size, size)).astype(np.float32)
    ours = next(iter(m.forward(**{m.graph.inputs[0]: x}).values()))
    ref = onnx_runtime[1].InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert ours.shape == ref.shape == (2, 1000)
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err < 1e-4, f"{name}: relative error {err:.2e}"


@needs_emu
@pytest.mark.parametrize("name", ["squeezenet", "resnet18"])
def test_an_imported_classic_network_on_emu_agrees_with_onnxruntime(name, tmp_path, onnx_runtime):
    f = tmp_path / f"{name}.onnx"
    _export(name, f, size=64)
    text, weights = dlc.import_onnx(f)
    m = dlc.compile(text, backend="emu", opt_level=2)
    m.set_state(weights)
    x = np.random.default_rng(2).normal(size=(2, 3, 64, 64)).astype(np.float32)
    ours = next(iter(m.forward(**{m.graph.inputs[0]: x}).values()))
    ref = onnx_runtime[1].InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err < 1e-4, f"{name} on emu: relative error {err:.2e}"


def test_an_embedding_and_lstm_language_model_exported_by_pytorch(tmp_path, onnx_runtime):
    """PyTorch's nn.Embedding arrives as a Gather of its weight at int64 ids, which `dlc import` reads
    as dlc's `embedding` with the ids an i32 input (the character model of examples/charlm.dln, as
    benchmarks/torch_models.py's CharLM twin defines it: embedding, LSTM, a read-out per step)."""
    torch, tm = import_torch_models()
    torch.manual_seed(0)
    net = tm.CharLM().eval()
    f = tmp_path / "charlm.onnx"
    ids = torch.zeros(1, 16, dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (ids,), str(f), dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["logits"])
    text, weights = dlc.import_onnx(f)
    assert "embedding(" in text and "input  x : i32[N, 16]" in text, text
    m = dlc.compile(text, backend="interp")
    m.set_state(weights)
    assert sum(m.graph.type(p).numel() for p in m.graph.params) == \
        sum(p.numel() for p in net.parameters()) - 4 * 64  # the LSTM's two bias vectors become one (docs/import.md)
    x = np.random.default_rng(3).integers(0, 28, (3, 16))
    ours = m.forward(x=x.astype(np.int32))["logits"]
    ref = onnx_runtime[1].InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4
