"""The ops of data parallelism, registered in the op registry like every other op (see ops.py).

Both declare the COMMUNICATES effect: their value depends on the other processes of the run, so
no pass folds, merges or removes them, and every backend hands their reference the run's
communicator as `comm=` (runtime/collectives.py: `rank`, `size`, `share`, `allreduce(array)`),
or None in a process of its own, where they are what one rank of one computes.

    batch_share()   this rank's fraction of the step's global batch, n_r / N, as an f32 scalar
                    (1 without a communicator: one process holds the whole batch)
    allreduce(x)    the sum of x over all ranks, every rank getting the same value (x without a
                    communicator)

The data-parallel pass (passes/data_parallel.py) writes each trainable param's gradient g as
allreduce(g * batch_share()): each rank's g is the gradient of the MEAN loss over its n_r
examples, so the sum over ranks of (n_r / N) * g_r is the gradient of the mean over all N, the
gradient one process computes on the whole batch, shares of unequal size included.

Neither has a kernel: they are family `host`, which the generated-code runners execute between
kernels through the same NumPy reference (the operands brought to the host, the result sent
back), and they have no derivative rule (the pass inserts them after autodiff).
"""
from __future__ import annotations

import numpy as np

from .errors import DlcError
from .registry import COMMUNICATES, op
from .types import scalar


def _share(comm):
    return np.asarray(1.0 if comm is None else comm.share, dtype=np.float64)


def _allreduce(x, comm):
    return x if comm is None else comm.allreduce(x)


def _allreduce_rule(types, attrs):
    t = types[0]
    if not t.is_float:
        raise DlcError(f"allreduce: sums floating-point values, found {t}")
    return t


op("batch_share", 0, lambda types, attrs: scalar(), _share, None, family="host", dsl=False,
   effects={COMMUNICATES},
   doc="this rank's fraction n_r / N of the step's global batch (1 in a process of its own)")
op("allreduce", 1, _allreduce_rule, _allreduce, None, family="host", dsl=False, effects={COMMUNICATES},
   doc="the sum over all ranks of the run, the same on every rank (the value itself in a process of its own)")
