"""Tensor types: a dtype and a shape whose dimensions are integers or symbols (`N`).

Symbols are bound when data arrives (the batch size `N`); two dimensions agree when they are
the same integer or the same symbol. Broadcasting follows NumPy: shapes are aligned on the
right, and a dimension of 1 stretches to match the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

from .errors import DlcError

Dim = int | str
DTYPES = ("f32", "i32")
NUMPY_DTYPE = {"f32": "float32", "i32": "int32"}
MAX_ELEMENTS = 2**31 - 1  # one tensor larger than this is a mistake, not a model


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise DlcError(f"unknown dtype '{self.dtype}' (expected one of {', '.join(DTYPES)})")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype == "f32"

    @property
    def symbols(self) -> set[str]:
        return {d for d in self.shape if isinstance(d, str)}

    def with_shape(self, shape) -> "TensorType":
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: str) -> "TensorType":
        return TensorType(dtype, self.shape)

    def concrete(self, dims: dict[str, int]) -> tuple[int, ...]:
        """The shape with every symbol replaced by its bound value."""
        return tuple(dims[d] if isinstance(d, str) else d for d in self.shape)

    def numel(self) -> int | None:
        """Element count, or None when a dimension is symbolic."""
        return None if self.symbols else prod(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def scalar(dtype: str = "f32") -> TensorType:
    return TensorType(dtype, ())


def fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def broadcast_shapes(a: tuple, b: tuple, what: str = "operands") -> tuple:
    """NumPy broadcasting of two (possibly symbolic) shapes; raises on a mismatch."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            raise DlcError(f"shape mismatch: cannot broadcast {fmt_shape(a)} with {fmt_shape(b)} ({what})")
    return tuple(reversed(out))


def normalize_axes(axes, rank: int, what: str = "axis") -> tuple[int, ...]:
    """Axes as a sorted tuple of non-negative ints; None means every axis."""
    if axes is None:
        return tuple(range(rank))
    if isinstance(axes, int):
        axes = (axes,)
    if not isinstance(axes, (list, tuple)):
        raise DlcError(f"{what} must be an integer or a list of integers, found {axes!r}")
    out = []
    for a in axes:
        if not isinstance(a, int) or isinstance(a, bool):
            raise DlcError(f"{what} must be an integer, found {a!r}")
        if not -rank <= a < rank:
            raise DlcError(f"{what} {a} is out of range for a tensor of rank {rank}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise DlcError(f"repeated {what} in {tuple(axes)}")
    return tuple(sorted(out))


def symbolic_product(dims) -> tuple[int, tuple[str, ...]]:
    """A product of dims as (integer factor, sorted symbols)."""
    k, syms = 1, []
    for d in dims:
        if isinstance(d, str):
            syms.append(d)
        else:
            k *= d
    return k, tuple(sorted(syms))


def reshape_shape(src: tuple, target: tuple) -> tuple:
    """Result shape of reshaping `src` to `target` (which may hold one -1); raises on a mismatch."""
    if sum(1 for d in target if d == -1) > 1:
        raise DlcError(f"reshape target {fmt_shape(target)} has more than one -1")
    for d in target:
        if isinstance(d, int) and (d == 0 or d < -1):
            raise DlcError(f"reshape target {fmt_shape(target)} has a non-positive dimension")
    sk, ssyms = symbolic_product(src)
    known = [d for d in target if d != -1]
    tk, tsyms = symbolic_product(known)
    if -1 in target:
        rest = list(ssyms)
        for s in tsyms:
            if s not in rest:
                raise DlcError(f"cannot reshape {fmt_shape(src)} to {fmt_shape(target)}")
            rest.remove(s)
        if len(rest) == 1 and sk == tk:  # -1 stands for the one symbol left, e.g. [N, 12] -> [-1, 4, 3]
            return tuple(rest[0] if d == -1 else d for d in target)
        if rest or sk % tk:
            raise DlcError(f"cannot reshape {fmt_shape(src)} to {fmt_shape(target)}")
        return tuple(sk // tk if d == -1 else d for d in target)
    if (sk, ssyms) != (tk, tsyms):
        raise DlcError(f"cannot reshape {fmt_shape(src)} to {fmt_shape(target)}: element counts differ")
    return tuple(target)
