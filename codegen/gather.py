"""Token ids: `gather` (embedding: one thread per output element) and `scatter_add` (its adjoint,
embedding_grad: one thread per element of the table's gradient).

The adjoint sums, for each table element (v, d), the adjoint's column d over every position whose
id is v, walking the positions in order: each sum has one owner thread and a fixed order, so a
step gives the same bits run after run (no float atomics, whose order changes with scheduling).
Every thread reads all M ids: O(V * D * M) work, against O(M * D) for an atomic scatter. That is
cheap for a character vocabulary (examples/charlm.dln: V = 28, D = 16, M = 256 positions a batch,
0.11 M compares a step) and grows with the vocabulary; a word-level model would want a sort of the positions by id first
(docs/codegen.md, "Token ids").
"""
from __future__ import annotations

from .core import Emission, Generator
from .pointwise import ELEMENTWISE_BLOCK
from .sizes import Size, ceil_div


def _sizes(gen: Generator, ids: str, table: str) -> dict:
    """C sizes: positions M (the ids' element count), rows V and columns D of the table."""
    v, d = gen.g.type(table).shape
    return dict(positions=Size.of(gen.g.type(ids).shape).c(), rows=Size.of([v]).c(), cols=Size.of([d]).c())


def emit_gather(gen: Generator, n: str, em: Emission) -> None:
    """embedding(table, ids) -> [*ids.shape, D], one thread per output element."""
    table, ids = gen.g.operands(n)
    size = Size.of(gen.g.type(n).shape)
    gen.add(n, "gather.cu.j2", dict(_sizes(gen, ids, table), size=size.c()), gen.temp(n), gen.ins(n),
            [ceil_div(size, ELEMENTWISE_BLOCK), 1, 1], [ELEMENTWISE_BLOCK, 1, 1])


def emit_scatter_add(gen: Generator, n: str, em: Emission) -> None:
    """embedding_grad(g, ids, table) -> [V, D], one thread per table element; reads g and ids only
    (the table gives the shape)."""
    g, ids, table = gen.g.operands(n)
    size = Size.of(gen.g.type(n).shape)
    gen.add(n, "scatter_add.cu.j2", dict(_sizes(gen, ids, table), size=size.c()), gen.temp(n),
            gen.ins(n)[:2], [ceil_div(size, ELEMENTWISE_BLOCK), 1, 1], [ELEMENTWISE_BLOCK, 1, 1])
