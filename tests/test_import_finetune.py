"""Fine-tuning an imported network (docs/import.md, "Fine-tuning an imported network"), end to end
through the real command line: train examples/transfer_base.dln on digits 0-4, `dlc export` it,
`dlc import --train` it, point its last layer at 10 classes by editing one line, `--load-partial`
the imported weights, `--freeze` the hidden layers and train on all ten digits.

What is checked: the edit is one line; the load report names what was matched and what was not;
the frozen params are bit for bit the trained base's; the new 10-way layer learns (held-out
accuracy well above chance, 0.1), also on the held-out images of digits 5-9, which the base never
saw; and the fine-tuned weights compute, in PyTorch, the logits dlc predicts.

Tolerance of the PyTorch comparison: dlc's interpreter runs this model in float32 and PyTorch
in float64 on the same weights; three layers of at most 64-term sums in float32 are good to about
1e-6 relative, so 1e-4 relative (with an absolute floor of 1e-4 of the logits' scale, for logits
near 0 by cancellation) leaves a wide margin and still catches a wrong weight or layer.
"""
from __future__ import annotations

import re

import numpy as np

from conftest import EXAMPLES, dlc_cli, import_torch

HIDDEN = ["h1.w", "h1.b", "h2.w", "h2.b"]


def test_finetune_an_imported_network_on_new_classes(tmp_path, onnx_runtime):
    base, onnx_file, tuned = tmp_path / "base.npz", tmp_path / "base.onnx", tmp_path / "tuned.dln"
    dlc_cli("run", EXAMPLES / "transfer_base.dln", "--save", base, "--no-progress", "--backend", "interp", rc=0)
    dlc_cli("export", EXAMPLES / "transfer_base.dln", "--load", base, "-o", onnx_file, rc=0)
    dlc_cli("import", onnx_file, "-o", tuned, "--train", rc=0)
    text = tuned.read_text()
    assert "    input  y : i32[N]" in text and "loss = softmax_xent(digits, y)" in text
    assert "minimize loss with adam(lr = 0.001)" in text

    # the one-line edit: the last layer's 5 classes become 10
    assert "    h1 = relu(linear(x, 64))" in text and "    h2 = relu(linear(h1, 64))" in text, text
    edited = text.replace("digits = linear(h2, 5) ", "digits = linear(h2, 10)")
    changed = [(a, b) for a, b in zip(text.splitlines(), edited.splitlines()) if a != b]
    assert len(changed) == 1 and len(text.splitlines()) == len(edited.splitlines()), changed
    tuned.write_text(edited)

    out = tmp_path / "out.npz"
    r = dlc_cli("run", tuned, "--load-partial", tmp_path / "tuned.npz", "--freeze", ",".join(HIDDEN),
                "--data", EXAMPLES / "data" / "digits.npz", "--val-split", "0.2", "--epochs", "10", "--lr", "0.01",
                "--no-progress", "--backend", "interp", "--save", out, rc=0)
    assert "loaded 4 params (h1.w, h1.b, h2.w, h2.b)" in r.stdout, r.stdout
    assert "misshaped: digits.w (file [64, 5], model [64, 10]), digits.b (file [5], model [10]) (initialised)" \
        in r.stdout, r.stdout
    held_out = float(re.search(r"held-out accuracy ([0-9.]+) on 359 examples", r.stdout).group(1))
    assert held_out > 0.75, r.stdout  # chance is 0.1; this recipe reaches about 0.92

    trained, after = np.load(base), np.load(out)
    for p in HIDDEN:  # frozen: exactly as trained on digits 0-4, through export, import and training
        assert np.array_equal(after[p], trained[p]), p
    assert after["digits.w"].shape == (64, 10) and not np.allclose(after["digits.w"], 0)

    # the fine-tuned weights in PyTorch, against dlc's predictions, on the held-out fifth
    from dlc.runtime.train import split_indices
    digits = np.load(EXAMPLES / "data" / "digits.npz")
    _, val, _ = split_indices(len(digits["y"]), 0.2, 0)
    x, y = digits["x"][val], digits["y"][val]
    data = tmp_path / "val.npz"
    np.savez(data, x=x, y=y)
    dlc_cli("run", tuned, "--load", out, "--data", data, "--epochs", "0", "--predict", tmp_path / "p.npz",
            "--backend", "interp", rc=0)
    got = np.load(tmp_path / "p.npz")["digits"]
    torch = import_torch()
    t = {k: torch.tensor(after[k], dtype=torch.float64) for k in HIDDEN + ["digits.w", "digits.b"]}
    h = torch.relu(torch.tensor(x, dtype=torch.float64) @ t["h1.w"] + t["h1.b"])
    h = torch.relu(h @ t["h2.w"] + t["h2.b"])
    ref = (h @ t["digits.w"] + t["digits.b"]).numpy()
    err, bound = np.abs(got - ref), 1e-4 * (np.abs(ref) + 1e-4 * np.abs(ref).max())
    assert np.all(err <= bound), err.max()
    hit = ref.argmax(1) == y
    assert abs(hit.mean() - held_out) <= 5e-5  # the accuracy dlc printed (4 decimals) is PyTorch's on that split
    print(f"held-out {held_out:.4f}; on digits 5-9 {hit[y >= 5].mean():.4f}, on 0-4 {hit[y < 5].mean():.4f}")
    assert hit[y >= 5].mean() > 0.7, hit[y >= 5].mean()  # digits the base never saw, 5 of 10 classes


def test_import_train_refusals(tmp_path, onnx_runtime):
    """--train needs one output of logits [N, C]: a softmax output or several outputs are refused,
    exit 2, nothing written."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "w")

    def model(nodes, outs):
        g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
                              initializer=[w])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return onnx.shape_inference.infer_shapes(m)

    cases = [
        (model([helper.make_node("MatMul", ["x", "w"], ["s"]), helper.make_node("Softmax", ["s"], ["p"])], ["p"]),
         "--train: the output p is ONNX's Softmax, not logits"),
        (model([helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["b"])], ["a", "b"]),
         "--train: the model has 2 outputs (a, b)"),
        (model([helper.make_node("MatMul", ["x", "w"], ["a"]),
                helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([0, 2, 2]))),
                helper.make_node("Reshape", ["a", "shape"], ["s"])], ["s"]),
         "--train: the output s is f32[N, 2, 2]; --train adds a classifier's loss"),
    ]
    for k, (m, says) in enumerate(cases):
        src = tmp_path / f"m{k}.onnx"
        onnx.save(m, str(src))
        r = dlc_cli("import", src, "-o", tmp_path / f"m{k}.dln", "--train", rc=2)
        assert says in r.stderr, r.stderr
        assert not (tmp_path / f"m{k}.dln").exists() and not (tmp_path / f"m{k}.npz").exists()
        dlc_cli("import", src, "-o", tmp_path / f"m{k}.dln", rc=0)  # without --train it imports
