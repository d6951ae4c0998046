"""Data-parallel training on MPI: what a step costs on K ranks at a fixed batch per rank (weak
scaling), and how much of it is the all-reduce.

    python benchmarks/bench_dp.py                          # mlp and lenet, interp, K = 1 and 2
    python benchmarks/bench_dp.py --models mlp --ranks 1,2,4 --per-rank 64 --backend emu

For each model and K, `mpiexec -n K` (from the mpich wheel: pip install 'dlc[mpi]') starts K
processes of this script; each compiles the model data-parallel, warms up, then times `--steps`
training steps of `--per-rank` random examples each (the global batch is K times that), with a
barrier-free loop: every step ends in the all-reduces, so the ranks stay in step. Rank 0 reports
the median step time of the slowest rank and that rank's median time inside MPI_Allreduce per
step (the Communicator's own clock, so it includes waiting for the other ranks), and the bytes each rank sends per step (the
gradients: every trainable param once, float32). K = 1 runs the same data-parallel step on one
rank: its all-reduces are MPI calls on one process, the baseline measured in the same run.

    efficiency = step time at K = 1 / step time at K   (1.0: K ranks do K times the work in the same time)

On a machine with fewer cores than ranks the ranks share cores and efficiency drops for that
reason alone; the table says how many cores there are.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    """One rank: compile, warm up, time the steps; rank 0 prints one JSON line."""
    import numpy as np

    import dlc
    from dlc.runtime.diff import synth_feeds
    m = dlc.compile(ROOT / "examples" / f"{args.model}.dln", backend=args.backend, opt_level=args.O,
                    data_parallel=True)
    feeds = m.check_inputs(synth_feeds(m.graph, args.per_rank, seed=m.rank), m.roots("step"))
    share = 1.0 / m.ranks
    for _ in range(3):
        m.train_step(feeds, checked=True, share=share)
    m.comm.bytes = 0
    times, comm = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), m.comm.seconds
        m.train_step(feeds, checked=True, share=share)
        times.append(time.perf_counter() - t0)
        comm.append(m.comm.seconds - c0)
    # every rank's medians: the slowest rank's step is the run's
    medians = m.comm.allgather((statistics.median(times), statistics.median(comm)))
    if m.rank == 0:
        grads = sum(int(np.prod(m.graph.type(p).shape)) * 4 for p in m.graph.trainable)
        step, allreduce = max(medians)
        print(json.dumps({"model": args.model, "ranks": m.ranks, "step": step, "allreduce": allreduce,
                          "bytes": m.comm.bytes / args.steps, "grad_bytes": grads}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mlp,lenet")
    ap.add_argument("--ranks", default="1,2", help="rank counts to run, comma-separated (default 1,2)")
    ap.add_argument("--per-rank", type=int, default=64, help="examples per rank per step (default 64)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps after 3 untimed (default 30)")
    ap.add_argument("--backend", default="interp", choices=("interp", "emu"))
    ap.add_argument("-O", type=int, default=1)
    ap.add_argument("--worker", metavar="MODEL", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.model = args.worker
        worker(args)
        return 0
    from dlc.runtime.collectives import mpiexec
    launcher = mpiexec()
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    ranks = [int(k) for k in args.ranks.split(",")]
    print(f"data parallel, backend {args.backend} -O{args.O}, {args.per_rank} examples per rank per step, "
          f"{args.steps} steps, 1 BLAS thread per rank, {os.cpu_count()} cores")
    print(f"{'model':<8} {'ranks':>5} {'global batch':>12} {'step ms':>9} {'allreduce ms':>12} {'share':>6} "
          f"{'bytes/step':>11} {'examples/s':>11} {'efficiency':>10}")
    for model in args.models.split(","):
        base = None
        for k in ranks:
            cmd = [launcher, "-n", str(k), sys.executable, __file__, "--worker", model, "--per-rank",
                   str(args.per_rank), "--steps", str(args.steps), "--backend", args.backend, "-O", str(args.O)]
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if r.returncode != 0:
                print(r.stdout + r.stderr, file=sys.stderr)
                return r.returncode
            row = json.loads(r.stdout.strip().splitlines()[-1])
            assert row["bytes"] == row["grad_bytes"], row  # what is sent is the gradients, once
            base = base or row["step"]
            print(f"{model:<8} {k:>5} {k * args.per_rank:>12} {row['step'] * 1e3:>9.2f} "
                  f"{row['allreduce'] * 1e3:>12.3f} {row['allreduce'] / row['step']:>6.1%} {int(row['bytes']):>11,} "
                  f"{k * args.per_rank / row['step']:>11,.0f} {base / row['step']:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
