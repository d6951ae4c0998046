"""The syntax tree of a `.dln` file: small typed nodes, each carrying its location.

A Lark Transformer builds them straight from the parse tree; nothing after the front end sees
Lark's trees.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import json
import math

from lark import Lark, Transformer, v_args

from ..ir.errors import DlcError, Loc

MAX_INT = 2**62  # integer literals beyond this are mistakes, and would overflow float()
RESERVED = ("true", "false")  # the booleans: names that nothing may bind


@dataclass
class Node:
    loc: Loc = field(repr=False, compare=False)


@dataclass
class Num(Node):
    value: int | float


@dataclass
class Str(Node):
    value: str


@dataclass
class Name(Node):
    name: str  # may be dotted: h1.w


@dataclass
class List(Node):
    items: list


@dataclass
class Call(Node):
    fn: str
    args: list
    kwargs: dict


@dataclass
class BinOp(Node):
    op: str
    a: Node
    b: Node


@dataclass
class Neg(Node):
    a: Node


@dataclass
class TypeExpr(Node):
    dtype: str
    dims: list


@dataclass
class Input(Node):
    name: str
    type: TypeExpr


@dataclass
class Param(Node):
    name: str
    type: TypeExpr
    init: Node | None
    op: str = "param"   # "buffer": model state that is not learned (running statistics)


@dataclass
class Bind(Node):
    name: str
    expr: Node


@dataclass
class Output(Node):
    names: list


@dataclass
class Minimize(Node):
    expr: Node
    optimizer: str
    args: list
    kwargs: dict


@dataclass
class Freeze(Node):
    names: list


@dataclass
class Return(Node):
    expr: Node


@dataclass
class Train(Node):
    args: list
    kwargs: dict


@dataclass
class FParam(Node):
    name: str
    pattern: list | None  # dims: names to bind or ints to check
    dtype: str | None
    default: Node | None = None  # a constant expression


@dataclass
class Func(Node):
    name: str
    params: list
    body: list


@dataclass
class Model(Node):
    name: str
    body: list


GRAMMAR = Path(__file__).with_name("dln.lark").read_text()
parser = Lark(GRAMMAR, parser="lalr", propagate_positions=True)


class ToAst(Transformer):
    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _loc(self, meta_or_tok):
        return Loc(self.file, meta_or_tok.line, meta_or_tok.column)

    def _bound(self, tok) -> str:
        """A name being bound (an input, param, binding, function or parameter, pattern dimension):
        never one of the reserved names."""
        if str(tok) in RESERVED:
            raise DlcError(f"'{tok}' is reserved (it is the boolean {tok}) and cannot be bound as a name",
                           self._loc(tok))
        return str(tok)

    def __default__(self, data, children, meta):  # pragma: no cover - every rule is handled
        raise NotImplementedError(data)

    @v_args(meta=True)
    def start(self, meta, items):
        return items

    @v_args(meta=True)
    def model(self, meta, c):
        return Model(self._loc(meta), str(c[0]), c[1:])

    @v_args(meta=True)
    def func(self, meta, c):
        params = [p for p in c[1:] if isinstance(p, FParam)]
        body = [s for s in c[1:] if s is not None and not isinstance(s, FParam)]
        return Func(self._loc(meta), self._bound(c[0]), params, body)

    @v_args(meta=True)
    def fparam(self, meta, c):
        pat = c[1]
        return FParam(self._loc(meta), self._bound(c[0]), pat[1] if pat else None, pat[0] if pat else None, c[2])

    def pattern(self, c):
        dtype = str(c[0]) if c[0] is not None else None
        dims = [] if c[1:] == [None] else [int(d) if d.type == "INT" else self._bound(d) for d in c[1:]]
        return (dtype, dims)

    @v_args(meta=True)
    def input(self, meta, c):
        return Input(self._loc(meta), self._bound(c[0]), c[1])

    @v_args(meta=True)
    def param(self, meta, c):
        return Param(self._loc(meta), self._bound(c[0]), c[1], c[2])

    @v_args(meta=True)
    def buffer(self, meta, c):
        return Param(self._loc(meta), self._bound(c[0]), c[1], c[2], op="buffer")

    @v_args(meta=True)
    def bind(self, meta, c):
        return Bind(self._loc(meta), self._bound(c[0]), c[1])

    @v_args(meta=True)
    def output(self, meta, c):
        return Output(self._loc(meta), [str(n) for n in c])

    @v_args(meta=True)
    def minimize(self, meta, c):
        args, kwargs = c[2] if c[2] else ([], {})
        return Minimize(self._loc(meta), c[0], str(c[1]), args, kwargs)

    @v_args(meta=True)
    def freeze(self, meta, c):
        return Freeze(self._loc(meta), c)

    @v_args(meta=True)
    def ret(self, meta, c):
        return Return(self._loc(meta), c[0])

    @v_args(meta=True)
    def train(self, meta, c):
        args, kwargs = c[0] if c[0] else ([], {})
        return Train(self._loc(meta), args, kwargs)

    @v_args(meta=True)
    def type(self, meta, c):
        return TypeExpr(self._loc(meta), str(c[0]), [] if c[1:] == [None] else c[1:])

    @v_args(meta=True)
    def binop(self, meta, c):
        a, tok, b = c
        return BinOp(self._loc(tok), str(tok), a, b)

    @v_args(meta=True)
    def neg(self, meta, c):
        return Neg(self._loc(meta), c[0])

    def number(self, c):
        tok = c[0]
        s = str(tok)
        if any(ch in s for ch in ".eE"):
            v = float(s)
            if not math.isfinite(v):
                raise DlcError(f"number {s[:20]}{'...' * (len(s) > 20)} is too large", self._loc(tok))
        else:
            if len(s) > 18 or int(s) > MAX_INT:
                raise DlcError(f"integer {s[:20]}{'...' * (len(s) > 20)} is too large (at most {MAX_INT})",
                               self._loc(tok))
            v = int(s)
        return Num(self._loc(tok), v)

    def string(self, c):
        try:
            return Str(self._loc(c[0]), json.loads(c[0]))  # strict: no raw control characters
        except ValueError:
            raise DlcError(f"invalid string literal {c[0]} (escapes allowed: \\\\ \\\" \\n \\t \\uXXXX)",
                           self._loc(c[0]))

    @v_args(meta=True)
    def dotted(self, meta, c):
        return Name(self._loc(meta), ".".join(str(t) for t in c))

    @v_args(meta=True)
    def call(self, meta, c):
        args, kwargs = c[1] if c[1] else ([], {})
        return Call(self._loc(meta), str(c[0]), args, kwargs)

    @v_args(meta=True)
    def list(self, meta, c):
        return List(self._loc(meta), [] if c == [None] else c)

    def arglist(self, c):
        args, kwargs = [], {}
        for a in c:
            if isinstance(a, tuple):
                if a[0] in kwargs:
                    raise DlcError(f"argument '{a[0]}' given twice", a[2])
                kwargs[a[0]] = a[1]
            else:
                if kwargs:
                    raise DlcError("a positional argument follows a keyword argument", a.loc)
                args.append(a)
        return (args, kwargs)

    @v_args(meta=True)
    def kwarg(self, meta, c):
        return (str(c[0]), c[1], self._loc(meta))
