"""Token ids: the embedding lookup and its adjoint, registered in the op registry like every other
op (see ops.py).

`embedding(table, ids)`: table f32[V, D], ids i32 of any shape S -> f32[*S, D], row ids[s] of the
table at each position s (PyTorch's F.embedding(ids, table), ONNX's Gather(table, ids, axis=0)).
The table comes first, as in ONNX's Gather and in `table[ids]`, and because operand 0 is what the
registry's index check (`labels`, `labels_axis`) measures the ids against: an id must be one of
0..V-1, checked by every backend and the data loader, as softmax_xent's class labels are.

Its adjoint is a scatter-add: row v of the table's gradient is the sum of the adjoint's rows at
every position whose id is v. `embedding_grad(g, ids, table)` sums them in the order of the
positions on every backend (np.add.at in the reference; one thread per table element walking the
ids in order in the kernel, docs/codegen.md), so a step gives the same bits run after run: no
float atomics. The ids get no gradient.
"""
from __future__ import annotations

import numpy as np

from .errors import DlcError
from .registry import op, out_of_range, range_error
from .types import TensorType


def _check(table: TensorType, ids: TensorType, name: str) -> None:
    if not table.is_float or table.rank != 2:
        raise DlcError(f"{name} expects a table f32[V, D] as its first operand, found {table}")
    if ids.dtype != "i32":
        raise DlcError(f"{name} expects integer ids (i32, any shape) as its second operand, found {ids}")


def _embedding_rule(types, attrs):
    table, ids = types
    _check(table, ids, "embedding")
    return TensorType("f32", (*ids.shape, table.shape[1]))


def _embedding_grad_rule(types, attrs):
    g, ids, table = types
    _check(table, ids, "embedding_grad")
    if g.shape != (*ids.shape, table.shape[1]):
        raise DlcError(f"embedding_grad: the adjoint {g} does not match ids {ids} and table {table}")
    return table


def check_ids(ids, rows: int) -> None:
    bad = out_of_range(ids, rows)
    if bad is not None:
        raise DlcError(range_error("embedding", bad, rows))


def _embedding(table, ids):
    check_ids(ids, table.shape[0])
    return table[ids]


def _embedding_grad(g, ids, table):
    check_ids(ids, table.shape[0])
    out = np.zeros_like(table, dtype=g.dtype)
    # np.add.at adds the rows one position after another, in order: repeated ids are summed
    # deterministically (a fancy-indexed += would keep only one of them)
    np.add.at(out, ids.reshape(-1), g.reshape(-1, table.shape[1]))
    return out


def _onnx_embedding(e, n, ins, a, out):
    ids = e.node("Cast", [ins[1]], f"{n}.ids", to=e.INT64)  # Gather takes int32 or int64; int64 as PyTorch
    return e.node("Gather", [ins[0], ids], n, out, axis=0)


op("embedding", 2, _embedding_rule, _embedding,
   lambda b, n, g: [lambda: b.embedding_grad(g, n.args[1], n.args[0]), None],
   family="gather", labels=1, labels_axis=0, onnx=_onnx_embedding,
   doc="rows of a table f32[V, D] picked by integer ids i32[...] (ids 0..V-1): f32[..., D]")
op("embedding_grad", 3, _embedding_grad_rule, _embedding_grad, family="scatter_add", dsl=False,
   labels=1, labels_axis=0, labels_operand=2,
   flops=lambda n, size: size(n.types[0]),  # one addition per element of the adjoint
   doc="the adjoint of embedding w.r.t. its table: (g, ids, table for the shape), summed in id order")
