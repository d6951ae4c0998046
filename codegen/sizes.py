"""Sizes and index arithmetic for generated kernels.

A tensor dimension is an int or a symbol (`N`, bound at run time). Kernels take every symbol
they use as an `int dim_<name>` argument, so one compiled module serves every batch size.
A `Size` is a product `k * sym * sym ...`; it prints as C (`(128 * dim_N)`) for kernels and as
a Python expression (`128*N`) for the launch plan, which the runtimes evaluate with `evaluate`.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from math import prod


@dataclass(frozen=True)
class Size:
    k: int = 1
    syms: tuple[str, ...] = ()

    @staticmethod
    def of(dims) -> "Size":
        """The product of some dimensions (ints and symbols)."""
        dims = list(dims)
        return Size(prod(d for d in dims if isinstance(d, int)),
                    tuple(sorted(d for d in dims if isinstance(d, str))))

    def __mul__(self, other: "Size") -> "Size":
        return Size(self.k * other.k, tuple(sorted(self.syms + other.syms)))

    @property
    def is_one(self) -> bool:
        return self.k == 1 and not self.syms

    @property
    def static(self) -> int | None:
        return None if self.syms else self.k

    def c(self) -> str:
        parts = ([str(self.k)] if self.k != 1 or not self.syms else []) + [f"dim_{s}" for s in self.syms]
        return parts[0] if len(parts) == 1 else "(" + " * ".join(parts) + ")"

    def py(self) -> str:
        parts = ([str(self.k)] if self.k != 1 or not self.syms else []) + list(self.syms)
        return "*".join(parts)

    def plan(self) -> int | str:
        """The size as a launch-plan value: an int when static, else its expression (`py`)."""
        return self.static if self.static is not None else self.py()

    def estimate(self, sym_guess: int = 64) -> int:
        """A typical value, for launch-shape choices that must be made before the batch is known."""
        return self.k * sym_guess ** len(self.syms)


def strides(shape) -> list[Size]:
    """Row-major strides of a shape, as Sizes."""
    out, acc = [], Size()
    for d in reversed(shape):
        out.append(acc)
        acc = acc * Size.of([d])
    return out[::-1]


def gather_index(lin: str, dims, src_strides) -> str:
    """C expression for the source offset of element `lin` of an iteration space `dims`
    (row-major), where coordinate j advances the source by `src_strides[j]` (None: not at all)."""
    inner = strides(dims)
    terms = []
    for j, (d, s) in enumerate(zip(dims, src_strides)):
        if s is None or d == 1:
            continue
        coord = lin if inner[j].is_one else f"{lin} / {inner[j].c()}"
        if j > 0 and any(dd != 1 for dd in dims[:j]):  # the leading live coordinate needs no modulo
            coord = f"{_paren(coord)} % {Size.of([d]).c()}"
        terms.append(coord if s.is_one else f"{_paren(coord)} * {s.c()}")
    return " + ".join(terms) if terms else "0"


def _paren(e: str) -> str:
    return e if e.isidentifier() else f"({e})"


def broadcast_index(lin: str, out_shape, in_shape) -> str:
    """Offset into an operand of shape `in_shape` broadcast (NumPy rules) to `out_shape`."""
    if tuple(in_shape) == tuple(out_shape):
        return lin
    padded = (1,) * (len(out_shape) - len(in_shape)) + tuple(in_shape)
    st = strides(padded)
    return gather_index(lin, out_shape, [None if p == 1 else s for p, s in zip(padded, st)])


def symbols_of(*shapes) -> list[str]:
    return sorted({d for s in shapes for d in s if isinstance(d, str)})


def pair(v) -> tuple:
    """A 2-D window attribute (kernel, stride, padding, dilation), one int or a pair, as a pair."""
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


# -- evaluating plan expressions ---------------------------------------------------------------

_BINARY = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.FloorDiv: lambda a, b: a // b}


def evaluate(expr, dims: dict[str, int]) -> int:
    """Value of a launch-plan size: an int, or an expression over symbols with + - * // and
    `min(a, b)` (a capped grid, see `capped_div`). Walked here, not given to `eval`: nothing else
    runs, and `min` is the function whatever the symbols are called (a dimension may be `min`)."""
    if isinstance(expr, int):
        return expr

    def value(node) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in dims:
            return int(dims[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](value(node.left), value(node.right))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "min"
                and len(node.args) == 2 and not node.keywords):
            return min(value(node.args[0]), value(node.args[1]))
        if isinstance(node, ast.Name):
            raise NameError(f"name {node.id!r} is not defined")
        raise ValueError(f"not a plan size expression: {expr!r}")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise ValueError(f"not a plan size expression: {expr!r}")
    return value(tree.body)


def ceil_div(size: Size, by: int) -> str | int:
    """Number of blocks of `by` threads covering `size` elements, for the plan."""
    if size.static is not None:
        return -(-size.static // by)
    return f"({size.py()} + {by - 1}) // {by}" if by > 1 else size.plan()


def capped_div(size: Size, by: int, cap: int) -> tuple[str | int, str]:
    """min(ceil(size / by), cap): how many blocks (or chunks) of `by` elements cover `size`, at
    most `cap`; as a plan expression (an int when the size is static) and as the same value in C
    (`int` arithmetic that cannot overflow), for kernels that must agree with their launch's grid.
    0 for an empty size (the runtime then leaves the launch out)."""
    if size.static is not None:
        n = min(-(-size.static // by), cap)
        return n, str(n)
    py = f"min(({size.py()} + {by - 1}) // {by}, {cap})" if by > 1 else f"min({size.py()}, {cap})"
    s = size.c()
    blocks = f"({s} / {by} + ({s} % {by} != 0))" if by > 1 else s
    return py, f"({blocks} < {cap} ? {blocks} : {cap})"


def at_most(size: Size, most: int) -> int | str:
    """1 when `size` is at most `most` elements, else 0, as a plan value: an int for a static
    size, else the expression `1 - min(size // (most + 1), 1)` (sizes are never negative).
    A grid multiplied by it (`gated`) is empty beyond `most`, and a runtime leaves a launch of an
    empty grid out: so a plan can hold two ways of computing one value, and the bound batch
    picks the one that runs (a reduction's one launch or two, codegen/reductions.py)."""
    if size.static is not None:
        return int(size.static <= most)
    return f"1 - min({size.py()} // {most + 1}, 1)"


def beyond(size: Size, most: int) -> int | str:
    """1 when `size` is more than `most` elements, else 0: the complement of `at_most`."""
    if size.static is not None:
        return int(size.static > most)
    return f"min({size.py()} // {most + 1}, 1)"


def gated(extent, flag) -> int | str:
    """A grid extent (a plan value) times a 0/1 `flag` from `at_most` / `beyond`."""
    if isinstance(flag, int):
        return extent * flag if isinstance(extent, int) else (extent if flag else 0)
    if extent == 1:
        return flag
    factor = f"({flag})" if flag.startswith("1 - ") else flag
    return f"{extent if isinstance(extent, int) else f'({extent})'} * {factor}"

