"""The ops of data parallelism, registered in the op registry like every other op (see ops.py).

All three declare the COMMUNICATES effect: their value depends on the other processes of the run, so
no pass folds, merges or removes them, and every backend hands their reference the run's
communicator as `comm=` (runtime/collectives.py: `rank`, `size`, `share`, `start`, `wait`),
or None in a process of its own, where they are what one rank of one computes.

    batch_share()   this rank's fraction of the step's global batch, n_r / N, as an f32 scalar
                    (1 without a communicator: one process holds the whole batch)
    allreduce_start[bucket=i](x)
                    starts the sum over all ranks of bucket i, a flat f32 vector of gradients, without
                    waiting for it (MPI_Iallreduce on a copy of x); its value is x itself, this rank's
                    contribution
    allreduce_wait[bucket=i](s)
                    waits for bucket i's sum and is that sum, the same on every rank; its operand is
                    the bucket's start, which orders the two (s without a communicator)

The data-parallel pass (passes/data_parallel.py) writes each trainable param's gradient g as its
part of allreduce_wait(allreduce_start(bucket * batch_share())), the bucket holding g and its
neighbours in the backward order, flattened and concatenated. Each rank's g is the gradient of
the MEAN loss over its n_r examples, so the sum over ranks of (n_r / N) * g_r is the gradient of the mean over all N, the
gradient one process computes on the whole batch, shares of unequal size included.

None has a kernel: they are family `host`, which the emu runner executes between kernels through
the same NumPy reference (the operands brought to the host, the result sent back), and they have
no derivative rule (the pass inserts them after autodiff). Each declares what it is on a GPU,
`kernel={"device": ...}`, which the cuda backend does on its stream without the host (so a step
still captures into one CUDA graph; runtime/cuda.py): "share" (a copy of this rank's share, set
before the step), "copy" (its operand's value) or "sum" (NCCL's all-reduce of its operand).
"""
from __future__ import annotations

import numpy as np

from .errors import DlcError
from .registry import COMMUNICATES, REQUIRED, op
from .types import scalar


def _share(comm):
    return np.asarray(1.0 if comm is None else comm.share, dtype=np.float64)


def _start(x, bucket, comm):
    if comm is not None:
        comm.start(bucket, x)
    return x


def _wait(x, bucket, comm):
    return x if comm is None else comm.wait(bucket)


op("batch_share", 0, lambda types, attrs: scalar(), _share, None, family="host", dsl=False,
   effects={COMMUNICATES}, kernel={"device": "share"},
   doc="this rank's fraction n_r / N of the step's global batch (1 in a process of its own)")

def _bucket_rule(types, attrs):
    t = types[0]
    if not t.is_float:
        raise DlcError(f"a gradient bucket holds floating-point values, found {t}")
    if t.rank != 1:
        raise DlcError(f"a gradient bucket is a flat vector, found {t}")
    if not isinstance(attrs["bucket"], int) or attrs["bucket"] < 0:
        raise DlcError(f"bucket: expected a bucket number >= 0, found {attrs['bucket']!r}")
    return t


op("allreduce_start", 1, _bucket_rule, _start, None, family="host", dsl=False, effects={COMMUNICATES},
   attrs={"bucket": REQUIRED}, kernel={"device": "copy"},  # on a GPU NCCL sums at the wait, on the stream
   doc="starts the sum over all ranks of a gradient bucket without waiting (its value: the operand)")
op("allreduce_wait", 1, _bucket_rule, _wait, None, family="host", dsl=False, effects={COMMUNICATES},
   attrs={"bucket": REQUIRED}, kernel={"device": "sum"},
   doc="waits for a started bucket's sum over all ranks and is that sum (the operand in a process of its own)")
