"""benchmarks/bench_import.py runs: a smoke test at a tiny size (ResNet-18's PyTorch definition on
32x32 inputs, batch 1, one repetition). No timing is asserted; what is asserted is that the table
has its row, that the imported model holds every weight of the file, that the three times are positive numbers, and that the imported network computes
what onnxruntime computes from the same file (the script's "max diff" column: the largest
difference of the logits over their largest magnitude, below 1e-4 — float32 on both sides, sums
of at most a few thousand terms, so about 1e-6 is expected).
"""
from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT, import_torch


def test_bench_import_runs_at_a_tiny_size(onnx_runtime):
    import_torch()  # the script builds and exports the networks with PyTorch
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_import.py"), "--nets", "resnet18",
                        "--size", "32", "--batches", "1", "--reps", "1", "--no-save"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    counts = re.search(r"resnet18: 32x32 input, ([0-9,]+) params \(float weights in the ONNX file: ([0-9,]+); "
                       r"PyTorch's module: ([0-9,]+)\)", r.stdout)
    assert counts and counts.group(1) == counts.group(2), r.stdout  # the import lost or added no weight
    # the exporter folds each batch norm into its convolution: a bias per channel instead of a scale and a
    # shift, 4,800 channels of batch norm in a ResNet-18
    assert int(counts.group(3).replace(",", "")) - int(counts.group(1).replace(",", "")) == 4800
    row = re.search(r"^resnet18 +1 +([0-9.]+) +([0-9.]+) +([0-9.]+) +([0-9.]+) +([0-9.]+) +([0-9.e+-]+)$", r.stdout,
                    re.M)
    assert row, r.stdout
    dlc_ms, ort_ms, torch_ms = (float(row.group(k)) for k in (1, 2, 3))
    assert dlc_ms > 0 and ort_ms > 0 and torch_ms > 0
    assert float(row.group(6)) < 1e-4
