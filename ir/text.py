"""The IR as text: a deterministic printer and a parser that reads the same text back.

    model mlp stage=forward             # `precision=tf32` (or bf16) follows when it is not fp32
    %x : f32[N, 64] = input()  @ mlp.dln:3:5
    %w1 : f32[64, 128] = param[init=he]()  @ mlp.dln:6:5
    %h.matmul : f32[N, 128] = matmul[ta=false, tb=false](%x, %w1)  @ mlp.dln:11:14
    output logits = %logits
    loss %loss
    eval output logits = %eval.logits   # the evaluation form, when the model has one
    group %h[rule=elementwise] = %h.add, %h   # -O2: nodes that one kernel computes

One node per line in a stable topological order; `parse(print(g))` rebuilds the same graph
and prints to the same text, so passes are tested as "this text in, that text out".
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from lark import Lark, Transformer, v_args
from lark.exceptions import LarkError, UnexpectedInput, VisitError

from .errors import DlcError, Loc
from .graph import Graph
from .precision import MIN_PRECISION, PRECISIONS
from .types import TensorType

_BARE = re.compile(r"[A-Za-z_]\w*\Z")
_KEYWORDS = {"true", "false", "null"}


def fmt_value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return v if _BARE.match(v) and v not in _KEYWORDS else json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    raise TypeError(f"attribute value {v!r} has no text form")


def fmt_attrs(attrs: dict) -> str:
    """[k=v, ...] in the given order; a product's `min_precision` only where it is set."""
    attrs = {k: v for k, v in attrs.items() if not (k == MIN_PRECISION and v is None)}
    return "[" + ", ".join(f"{k}={fmt_value(v)}" for k, v in attrs.items()) + "]" if attrs else ""


_PLAIN_FILE = re.compile(r"[^\s:@\"]+\Z")


def fmt_loc(loc) -> str:
    """FILE:LINE:COL, the file quoted when it holds a space, ':', '@' or a quote."""
    f = loc.file if _PLAIN_FILE.match(loc.file) else json.dumps(loc.file)
    return f"{f}:{loc.line}:{loc.col}"


def print_ir(g: Graph) -> str:
    m = g.meta
    lines = [f"model {m.name} stage={m.stage}" + (f" precision={m.precision}" if m.precision != "fp32" else "")]
    for n in g.order():
        args = ", ".join(f"%{a}" for a in g.operands(n))
        line = f"%{n} : {g.type(n)} = {g.op(n)}{fmt_attrs(g.attrs(n))}({args})"
        loc = g.loc(n)
        lines.append(f"{line}  @ {fmt_loc(loc)}" if loc else line)
    for name, v in m.outputs.items():
        lines.append(f"output {name} = %{v}")
    if m.loss:
        lines.append(f"loss %{m.loss}")
    for name, v in m.eval_outputs.items():
        lines.append(f"eval output {name} = %{v}")
    if m.eval_loss:
        lines.append(f"eval loss %{m.eval_loss}")
    for p, v in m.grads.items():
        lines.append(f"grad %{p} = %{v}")
    if m.optimizer:
        lines.append(f"optimizer {m.optimizer[0]}{fmt_attrs(m.optimizer[1])}")
    for p in m.frozen:
        lines.append(f"freeze %{p}")
    if m.train:
        lines.append(f"train{fmt_attrs(m.train)}")
    for root, (rule, members) in m.groups.items():
        lines.append(f"group %{root}[rule={fmt_value(rule)}] = " + ", ".join(f"%{v}" for v in members))
    return "\n".join(lines) + "\n"


_parser = Lark(Path(__file__).with_name("ir.lark").read_text(), parser="lalr", propagate_positions=True)


@v_args(inline=True)
class _ToItems(Transformer):
    def number(self, tok):
        s = str(tok)
        return float(s) if any(c in s for c in ".eE") else int(s)

    def string(self, tok):
        return _json_string(tok)

    def word(self, tok):
        return {"true": True, "false": False, "null": None}.get(str(tok), str(tok))

    def special(self, tok):
        return float(str(tok))

    def list(self, *items):
        return [] if items == (None,) else list(items)

    def attr(self, k, v):
        return (str(k), v)

    def attrs(self, *items):
        return {} if items == (None,) else dict(items)

    def dim(self, tok):
        return int(tok) if tok.type == "INT" else str(tok)

    def type(self, dtype, *dims):
        return TensorType(str(dtype), () if dims == (None,) else tuple(dims))

    def loc(self, f, line, col):
        return Loc(_json_string(f) if f.type == "ESCAPED_STRING" else str(f), int(line), int(col))


def _json_string(tok) -> str:
    """A quoted string of the IR text (JSON: no raw control characters inside)."""
    try:
        return json.loads(tok)
    except ValueError:
        raise DlcError(f"invalid string literal {json.dumps(str(tok))[1:-1]} (a JSON string: escapes "
                       "\\\\ \\\" \\n \\t \\uXXXX, no raw control characters)")


def _val(tok) -> str:
    return str(tok)[1:]


def parse_ir(text: str, file: str = "<ir>") -> Graph:
    """Build a graph from IR text; every error names the line."""
    try:
        tree = _ToItems().transform(_parser.parse(text if text.endswith("\n") else text + "\n"))
    except UnexpectedInput as e:
        raise DlcError(f"IR syntax error: unexpected {_what(e)}", Loc(file, e.line, e.column), text)
    except VisitError as e:  # a bad value inside a well-formed line, e.g. an unknown dtype
        if not isinstance(e.orig_exc, DlcError):
            raise
        meta = getattr(e.obj, "meta", None)
        line, col = (meta.line, meta.column) if meta is not None and not meta.empty else (1, 1)
        raise DlcError(e.orig_exc.message, Loc(file, line, col), text)
    except (LarkError, ValueError) as e:
        raise DlcError(f"IR syntax error: {e}", Loc(file, 1, 1), text)
    header, *items = tree.children
    g = Graph(str(header.children[0]))
    g.meta.stage = str(header.children[1])
    if len(header.children) > 2:  # precision=..., written only when it is not fp32
        tok = header.children[2]
        precision = str(tok)
        if precision not in PRECISIONS:
            raise DlcError(f"unknown precision '{precision}' (known: {', '.join(PRECISIONS)})",
                           Loc(file, tok.line, tok.column), text)
        g.meta.precision = precision
    for it in items:
        c = it.children
        here = Loc(file, it.meta.line, it.meta.column) if not it.meta.empty else None
        try:
            if it.data == "node":
                name, typ, opname = _val(c[0]), c[1], str(c[2])
                rest = c[3:]
                attrs = rest.pop(0) if rest and isinstance(rest[0], dict) else {}
                loc = rest.pop() if rest and isinstance(rest[-1], Loc) else None
                operands = [_val(t) for t in rest if t is not None]
                if name in g:
                    raise DlcError(f"%{name} is defined twice")
                got = g.add(opname, operands, attrs, name=name, loc=loc, type=typ)
                from .ops import OPS, infer_type
                if OPS[opname].family != "source":
                    want = infer_type(opname, [g.type(o) for o in operands], g.attrs(got))
                    if want != typ:
                        raise DlcError(f"%{name} is declared {typ} but {opname} gives {want}")
            elif it.data == "output":
                g.meta.outputs[str(c[0])] = _ref(g, c[1])
            elif it.data == "loss":
                g.meta.loss = _ref(g, c[0])
            elif it.data == "eval_output":
                g.meta.eval_outputs[str(c[0])] = _ref(g, c[1])
            elif it.data == "eval_loss":
                g.meta.eval_loss = _ref(g, c[0])
            elif it.data == "grad":
                g.meta.grads[_ref(g, c[0])] = _ref(g, c[1])
            elif it.data == "optimizer":
                g.meta.optimizer = (str(c[0]), c[1] if len(c) > 1 and c[1] else {})
            elif it.data == "freeze":
                g.meta.frozen.append(_ref(g, c[0]))
            elif it.data == "train":
                g.meta.train = c[0]
            elif it.data == "group":
                root, attrs, members = _ref(g, c[0]), c[1], [_ref(g, t) for t in c[2:]]
                if set(attrs) != {"rule"}:
                    raise DlcError("a group line reads: group %ROOT[rule=...] = %member, ...")
                g.meta.groups[root] = (attrs["rule"], members)
        except DlcError as e:
            e.loc = here
            e.source = text
            raise
    return g


def _ref(g: Graph, tok) -> str:
    n = _val(tok)
    if n not in g:
        raise DlcError(f"use of undefined value %{n}")
    return n


def _what(e: UnexpectedInput) -> str:
    tok = getattr(e, "token", None)
    if tok is not None:
        return "end of input" if tok.type == "$END" else f"'{tok}'"
    ch = getattr(e, "char", None)
    return f"character {ch!r}" if ch else "input"
