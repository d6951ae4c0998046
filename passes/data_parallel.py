"""Data parallelism: an opt-in pass (`data_parallel=True`; on in every process of an MPI run of
more than one rank) that sums the gradients over the ranks before the optimizer update.

It runs after autodiff and before the optimizer. Every rank runs the same step on its own share
of the global batch, n_r of the N examples, so its gradient g_r is that of the MEAN loss over its
share. For each trainable param the pass writes

    %dp.share         = batch_share()                  (n_r / N, from the run's communicator)
    %d.P.share        = mul(%d.P, %dp.share)
    %d.P.allreduce    = allreduce(%d.P.share)          (the sum over the ranks)

and makes `%d.P.allreduce` the param's gradient (`grad %P = %d.P.allreduce`), so the optimizer,
clipping and `Model.grad` read the sum. That sum, sum_r (n_r / N) g_r, is the gradient of the
mean loss over all N examples: what one process computes on the whole batch, whatever the shares'
sizes (a penalty such as l2(w), the same on every rank, comes out once: sum_r n_r / N = 1). Every
rank then holds the same gradient and applies the same update, so the weights stay identical.
In a process of its own both new ops are the identity, and the step is the one-process step.

Only the gradients are reduced here; the loss and accuracy a run reports are reduced by the
training loop (runtime/train.py), once per epoch, so evaluation runs never communicate.
"""
from __future__ import annotations

from ..ir.errors import DlcError
from ..ir.graph import Graph


def data_parallel(g: Graph, on) -> tuple[Graph, list[str]]:
    """The pass as an opt-in pipeline entry (passes/manager.py): (graph, report lines)."""
    if on is not True:
        raise DlcError(f"data_parallel: expected True or None, found {on!r}")
    if not g.meta.loss or not g.meta.grads:
        return g, ["data parallel: the model minimises nothing, so no gradient is all-reduced"]
    g = g.copy()
    loc = g.loc(g.meta.loss)
    share = g.add("batch_share", [], name="dp.share", loc=loc)
    reduced: dict[str, str] = {}  # gradient node -> its all-reduced value (two params may share one)
    count = 0
    for p, gr in list(g.meta.grads.items()):
        if gr not in reduced:
            at = g.loc(p)
            w = g.add("mul", [gr, share], name=f"{gr}.share", loc=at)
            reduced[gr] = g.add("allreduce", [w], name=f"{gr}.allreduce", loc=at)
            count += g.type(gr).numel() or 0
        g.meta.grads[p] = reduced[gr]
    return g, [f"data parallel: {len(reduced)} gradient{'s' * (len(reduced) != 1)} all-reduced per step "
               f"({count:,} values, {4 * count:,} bytes in float32), each weighted by its rank's share of the batch"]
