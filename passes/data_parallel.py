"""Data parallelism: an opt-in pass (`data_parallel=True`, or a bucket size in bytes; on in every
process of an MPI run of more than one rank) that sums the gradients over the ranks before the
optimizer update, in buckets whose all-reduce starts as soon as their gradients are computed.

It runs after autodiff and before the optimizer. Every rank runs the same step on its own share
of the global batch, n_r of the N examples, so its gradient g_r is that of the MEAN loss over its
share. The sum over the ranks of (n_r / N) g_r is the gradient of the mean loss over all N
examples: what one process computes on the whole batch, whatever the shares' sizes (a penalty
such as l2(w), the same on every rank, comes out once: sum_r n_r / N = 1). Every rank then holds
the same gradient and applies the same update, so the weights stay identical.

Buckets, as PyTorch DDP makes them. The distinct gradient nodes are taken in the order the
backward pass computes them (the plan order: the last layers' gradients come first) and packed
into buckets: a bucket closes once it holds at least `BUCKET_BYTES` (float32) — a gradient larger
than that is a bucket of its own. For bucket i the pass writes

    %d.P.flat            = reshape(%d.P)                       (each gradient, as a vector)
    %dp.bucket{i}        = concat(%d.P.flat, %d.Q.flat, ...)   (one contiguous buffer)
    %dp.bucket{i}.share  = mul(%dp.bucket{i}, %dp.share)       (%dp.share = batch_share(): n_r / N)
    %dp.bucket{i}.start  = allreduce_start[bucket=i](...)      (MPI_Iallreduce: does not wait)
    %dp.bucket{i}.wait   = allreduce_wait[bucket=i](...)       (the sum over the ranks)
    %d.P.allreduce       = reshape(slice(%dp.bucket{i}.wait))  (the param's part of the sum)

and makes `%d.P.allreduce` the param's gradient (`grad %P = %d.P.allreduce`), so the optimizer,
clipping and `Model.grad` read the sum. The order the backends run nodes in is `Graph.order()`:
among the nodes ready to run, the oldest (lowest `seq`) first. The pass gives a bucket's packing
and its start the place just after the bucket's last gradient, so the start runs as soon as that
gradient exists, while the rest of the backward pass is still to run; and it gives the waits the
latest places of all (in bucket order), so a wait runs only when nothing but updates that need it
is left: after the whole backward pass, and bucket i+1's wait after bucket i's updates. In a
process of its own the new ops are the identity, and the step computes the one-process step.

Only the gradients are reduced here; the loss and accuracy a run reports are reduced by the
training loop (runtime/train.py), once per epoch, so evaluation runs never communicate.
"""
from __future__ import annotations

from ..ir.errors import DlcError
from ..ir.graph import Graph

# PyTorch DDP's default bucket is 25 MB, about a quarter of ResNet-50's 100 MB of gradients. The
# example models here hold 40-60 KB of gradients (mlp 38 KB, lenet 55 KB): 25 MB would make one
# bucket, started after the whole backward pass, and nothing would overlap. 4 KiB gives them 2-4
# buckets; in a model with MB-sized weights every weight's gradient is a bucket of its own.
BUCKET_BYTES = 4096
LATE = 1 << 60  # the `seq` of the waits: after every node the graph will ever number itself


def data_parallel(g: Graph, on) -> tuple[Graph, list[str]]:
    """The pass as an opt-in pipeline entry (passes/manager.py): (graph, report lines). `on` is True
    (buckets of BUCKET_BYTES) or a bucket size in bytes (an int >= 1)."""
    if on is True:
        cap = BUCKET_BYTES
    elif isinstance(on, int) and not isinstance(on, bool) and on >= 1:
        cap = on
    else:
        raise DlcError(f"data_parallel: expected True or a bucket size in bytes (an integer >= 1), found {on!r}")
    if not g.meta.loss or not g.meta.grads:
        return g, ["data parallel: the model minimises nothing, so no gradient is all-reduced"]
    g = g.copy()
    grads = list(dict.fromkeys(g.meta.grads.values()))  # distinct gradient nodes (two params may share one)
    position = {n: i for i, n in enumerate(g.order())}
    grads.sort(key=position.__getitem__)  # as the backward pass computes them
    buckets, size = [[]], 0
    for gr in grads:
        buckets[-1].append(gr)
        size += 4 * (g.type(gr).numel() or 0)
        if size >= cap:
            buckets.append([])
            size = 0
    buckets = [b for b in buckets if b]
    loc = g.loc(g.meta.loss)
    share = g.add("batch_share", [], name="dp.share", loc=loc)
    g.nx.nodes[share]["seq"] = g.nx.nodes[grads[0]]["seq"] - 0.5  # ready before the first bucket needs it
    reduced: dict[str, str] = {}  # gradient node -> its part of its bucket's sum
    total = 0
    for i, bucket in enumerate(buckets):
        last = g.nx.nodes[bucket[-1]]["seq"]
        early = []  # the packing and the start: placed right after the bucket's last gradient
        flat = []
        for gr in bucket:
            n = g.type(gr).numel()
            flat.append(gr if g.type(gr).rank == 1 else g.add("reshape", [gr], {"shape": [n]}, name=f"{gr}.flat",
                                                                 loc=g.loc(gr)))
            early += flat[-1:] if flat[-1] != gr else []
        at = g.loc(bucket[-1])
        packed = flat[0] if len(flat) == 1 else g.add("concat", flat, {"axis": 0}, name=f"dp.bucket{i}", loc=at)
        weighted = g.add("mul", [packed, share], name=f"dp.bucket{i}.share", loc=at)
        start = g.add("allreduce_start", [weighted], {"bucket": i}, name=f"dp.bucket{i}.start", loc=at)
        early += ([packed] if packed not in flat else []) + [weighted, start]
        for k, n in enumerate(early):
            g.nx.nodes[n]["seq"] = last + (k + 1) / (len(early) + 1)  # between the last gradient and the next node
        wait = g.add("allreduce_wait", [start], {"bucket": i}, name=f"dp.bucket{i}.wait", loc=at)
        g.nx.nodes[wait]["seq"] = LATE + i
        lo = 0
        for gr in bucket:
            t, n = g.type(gr), g.type(gr).numel()
            part = wait
            if len(bucket) > 1:
                part = g.add("slice", [wait], {"axis": 0, "start": lo, "stop": lo + n}, name=f"{gr}.part", loc=g.loc(gr))
            if t.rank != 1:
                part = g.add("reshape", [part], {"shape": list(t.shape)}, name=f"{gr}.allreduce", loc=g.loc(gr))
            reduced[gr] = part
            lo += n
        total += lo
    for p, gr in list(g.meta.grads.items()):
        g.meta.grads[p] = reduced[gr]
    return g, [f"data parallel: {len(grads)} gradient{'s' * (len(grads) != 1)} all-reduced per step in "
               f"{len(buckets)} bucket{'s' * (len(buckets) != 1)} of up to {cap:,} bytes, each started as soon as "
               f"its gradients are computed ({total:,} values, {4 * total:,} bytes in float32), weighted by the "
               f"rank's share of the batch"]
