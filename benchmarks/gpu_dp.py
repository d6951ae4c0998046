"""Data parallel on the cuda backend through NCCL, for a GPU machine (benchmarks/gpu_check.sh,
section train, step mlp-nccl):

    mpiexec -n K python benchmarks/gpu_dp.py [MODEL] [--epochs E]     # K <= the GPUs of the machine

Every rank trains MODEL (default examples/mlp.dln) data-parallel on the cuda backend, steps
captured as CUDA graphs, its gradients summed by NCCL (cupy.cuda.nccl) in the pass's buckets;
rank 0 then trains the same epochs in one interpreter process (float32, the same global batch)
and prints one line: ok or FAILED, the largest relative difference of the weights (tolerance
1e-4: the GPU's kernels sum in another order than NumPy, over every step of the epochs), the
bucket count, and the step's NCCL calls. NCCL needs one GPU per rank: on a machine with one GPU
only K = 1 runs, which still takes the whole NCCL path (communicator, id broadcast over MPI, the
all-reduce captured in the step's CUDA graph), with nothing to sum but its own gradients.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=str(ROOT / "examples" / "mlp.dln"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    import dlc
    m = dlc.compile(args.model, backend="cuda", cuda_graph=True, data_parallel=True)
    settings = m.settings(epochs=args.epochs, batch=args.batch, val_split=0.0)
    data = m.read_data(str(ROOT / "examples" / "data" / "digits.npz"))
    m.fit(data, settings, progress=False)
    calls = len(m._backend._nccl.calls) if m._backend._nccl is not None else 0
    if m.rank != 0:
        return 0
    one = dlc.compile(args.model, backend="interp", data_parallel=False)
    one.fit(data, settings, progress=False)
    worst = max(float(np.abs(m.params[k] - v).max() / max(np.abs(v).max(), 1e-30)) for k, v in one.params.items())
    ok = worst < 1e-4
    print(f"{'ok' if ok else 'FAILED'} {m.ranks} rank(s) on NCCL: weights within {worst:.2e} of one interpreter "
          f"process (tolerance 1e-4); {m.build.parallel[0]}; {calls} NCCL "
          f"all-reduce call(s) captured", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
