"""Imported networks: how long `dlc import` takes, and how fast the imported model runs inference on
dlc's interpreter, against onnxruntime (CPU) and PyTorch eager (CPU) on the same file, in one run.

    python benchmarks/bench_import.py                          # GoogLeNet and ResNet-50, batch 1 and 8
    python benchmarks/bench_import.py --nets resnet50 --batches 1 --reps 2
    python benchmarks/bench_import.py --nets resnet18 --size 32 --batches 1 --reps 1 --no-save   # a quick look

Per network (the PyTorch definitions of examples/imagenet/*.dln in benchmarks/torch_models.py,
random weights, batch norm's statistics too, evaluation mode, exported by `torch.onnx.export(..., dynamo=False)` at opset 17
with a symbolic batch; the exporter folds each batch norm into the convolution before it, so the
file, and the imported model, hold one bias per channel where the module has a scale and a shift):

- import: `dlc.import_onnx(file)` — reading, checking and translating the graph, and compiling
  the `.dln` it writes to check it — in seconds, the better of two; then `dlc.compile` of that text for the
  interpreter and loading the weights;
- inference at each batch size: the median time of a forward pass of the interpreter (float32,
  -O1), of an onnxruntime CPU session of the same file, and of the PyTorch module in eager mode
  under `torch.inference_mode()`, with the same thread count for all three (`--threads`, default
  1: the BLAS, onnxruntime's intra-op pool and torch.set_num_threads), blocks of the three taking
  turns; the ratio columns are dlc's time over each;
- agreement: the largest difference of dlc's logits from onnxruntime's, relative to their scale
  (a check that what is timed is the same network, not a test: tests/test_onnx_import.py is).

Nothing here is asserted by the test suite but that the script runs (tests/test_bench_import.py,
at a tiny size). Results: docs/performance.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import environment, import_torch, save_report, set_threads, time_blocks  # noqa: E402


def export(torch, net, size: int, path: Path) -> None:
    """The module as ONNX, as a PyTorch user writes it (TorchScript exporter: no onnxscript needed)."""
    x = torch.randn(1, 3, size, size)
    with warnings.catch_warnings():  # the TorchScript exporter warns that it is the legacy one
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})


def bench_net(name: str, args, torch, ort, np, dlc, folder: Path) -> list[str]:
    import torch_models as tm
    torch.manual_seed(0)
    net, size = tm.imagenet_net(name)
    size = args.size or size
    with torch.no_grad():  # batch norm as trained, not as initialised: with all its biases zero the
        for mod in net.modules():  # exporter would store one shared tensor for all the folded biases
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5), mod.bias.uniform_(-0.1, 0.1)
                mod.running_mean.uniform_(-0.1, 0.1), mod.running_var.uniform_(0.5, 1.5)
    net.eval()
    path = folder / f"{name}.onnx"
    export(torch, net, size, path)
    t_import = []
    for _ in range(2):  # the better of two: the first import of a process also starts up the front end
        t0 = time.perf_counter()
        text, weights = dlc.import_onnx(path)
        t_import.append(time.perf_counter() - t0)
    t_import = min(t_import)
    t0 = time.perf_counter()
    m = dlc.compile(text, backend="interp")
    m.set_state(weights)
    t_compile = time.perf_counter() - t0
    out = next(iter(m.graph.meta.outputs))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    n_params = sum(int(np.asarray(weights[p]).size) for p in m.graph.params)
    import onnx
    in_file = sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer
                  if t.data_type == onnx.TensorProto.FLOAT)
    lines = [f"{name}: {size}x{size} input, {n_params:,} params (float weights in the ONNX file: {in_file:,}; "
             f"PyTorch's module: {sum(q.numel() for q in net.parameters()):,}), "
             f"{path.stat().st_size / 2**20:.1f} MiB ONNX, "
             f"{len(text.splitlines())} .dln lines; import {t_import:.2f} s, compile + load {t_compile:.2f} s"]
    rows = []
    for batch in args.batches:
        x = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
        xt = torch.from_numpy(x)
        got = m.forward(x=x)[out]
        ref = sess.run(None, {"x": x})[0]
        err = float(np.abs(got - ref).max() / np.abs(ref).max())

        def eager():
            with torch.inference_mode():
                net(xt)
        res = time_blocks({"dlc": lambda: m.forward(x=x), "ort": lambda: sess.run(None, {"x": x}), "torch": eager},
                          steps=1, blocks=args.reps, warmup=1)
        d, o, t = (res[k][0] * 1e3 for k in ("dlc", "ort", "torch"))
        rows.append(f"{name:<10} {batch:>5} {d:>10.1f} {o:>10.1f} {t:>10.1f} {d / o:>8.2f} {d / t:>8.2f} {err:>10.1e}")
    return lines, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", default="googlenet,resnet50", help="of alexnet, vgg16, googlenet, resnet18, resnet50")
    ap.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions of each (after one warm-up)")
    ap.add_argument("--size", type=int, default=0, help="input height and width (default: the network's, 224)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="the report file (default benchmarks/results/import-DATE.txt)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    set_threads(args.threads)
    import numpy as np
    import onnxruntime as ort

    import dlc
    if not import_torch(args.threads):
        sys.exit("bench_import.py needs PyTorch (it builds and exports the networks)")
    import torch
    head = environment(args.threads, True) + [f"onnxrt     {ort.__version__} (CPUExecutionProvider, "
                                              f"intra-op threads {args.threads})", ""]
    nets, table = [], [f"{'network':<10} {'batch':>5} {'dlc ms':>10} {'ort ms':>10} {'torch ms':>10} "
                       f"{'dlc/ort':>8} {'dlc/torch':>8} {'max diff':>10}"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.nets.split(","):
            lines, rows = bench_net(name, args, torch, ort, np, dlc, Path(tmp))
            nets += lines
            table += rows
            print("\n".join(lines + rows), flush=True)
    report = head + nets + [""] + table + ["", "ms: median time of one inference (forward pass) of the batch; "
                                          "max diff: of dlc's logits from onnxruntime's, over their largest"]
    print("\n".join(report))
    if not args.no_save:
        print(f"wrote {save_report(report, args.out, 'import')}")


if __name__ == "__main__":
    main()
