"""From `.dln` text to the graph IR: parse, resolve names, check shapes, lower.

Values during lowering are either tensors (`Tensor`, an IR node) or compile-time values
(ints, floats, bools, strings, lists, and symbolic dimensions `Sym`). Arithmetic on
compile-time values happens here (shape arithmetic such as `k / 2` or `c * h * w`);
arithmetic on tensors becomes IR ops, so every op's shape rule runs as the model is lowered
and a mismatch is reported at the `.dln` expression that caused it.
"""
from __future__ import annotations

import difflib
import re
import sys
from contextlib import contextmanager
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from ..ir.errors import DlcError, Loc
from ..ir.graph import Graph
from ..ir.progress import stage
from ..ir.ops import OPS, PARAM, RANDOM, REQUIRED, VARIADIC
from ..ir.optim import (INITIALISERS, MONITORS, OPTIMIZERS, OPTIONAL, SCHEDULE_SETTINGS, SCHEDULES, TRAIN_SETTINGS,
                        schedule_problem)
from ..ir.types import DTYPES, TensorType
from ..ir.verify import verify
from . import ast as A

MAX_CALL_DEPTH = 64
MAX_NESTING = 1000   # expression levels (calls, operators, lists) inside one expression; docs/language.md
_FRAMES_PER_LEVEL = 24  # Python frames the parse-tree transform and lowering take per level (measured: < 12)
PRELUDE_FILE = Path(__file__).with_name("prelude.dln")


@dataclass(frozen=True)
class Tensor:
    node: str


@dataclass(frozen=True)
class Sym:
    """A symbolic dimension, such as the batch size N."""
    name: str


# Token names as a user would read them in "expected ..." lists.
_TOKEN_NAMES = {
    "NAME": "a name", "NUMBER": "a number", "INT": "an integer", "ESCAPED_STRING": "a string",
    "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'",
    "CMPOP": "a comparison ('<', '<=', '>', '>=', '==' or '!=')", "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "ADDOP": "'+' or '-'", "MULOP": "'*', '/' or '@'",
    "MINUS": "'-'", "DOT": "'.'", "$END": "end of file",
}


def _describe_expected(names) -> str:
    out = sorted({_TOKEN_NAMES.get(n, f"'{n.lower()}'" if n.isupper() else n) for n in names})
    return out[0] if len(out) == 1 else ", ".join(out[:-1]) + " or " + out[-1]


def _misspelt_keyword(text: str, e: UnexpectedToken):
    """(word, its column, the keyword) when the unexpected token follows a lone first word of its
    line that is close to a keyword of the grammar (`inptu x`, `parm w`), else None."""
    if e.line < 1 or e.column < 1:
        return None
    before = text.splitlines()[e.line - 1][:e.column - 1]
    m = re.fullmatch(r"(\s*)([A-Za-z_]\w*)\s+", before)
    if not m:
        return None
    keywords = sorted(t.pattern.value for t in A.parser.terminals
                      if t.pattern.type == "str" and t.pattern.value.isalpha())
    close = difflib.get_close_matches(m.group(2), keywords, n=1, cutoff=0.6)
    return (m.group(2), len(m.group(1)) + 1, close[0]) if close else None


@contextmanager
def _deep_enough():
    """Room on Python's stack for MAX_NESTING levels: the tree transform and the lowering recurse
    once per level (the default limit of 1000 frames ended near 300 levels)."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, _FRAMES_PER_LEVEL * MAX_NESTING + 2000))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


_NESTING = {"call", "binop", "neg", "list"}  # the parse-tree nodes that are one expression level


def _check_nesting(tree, file: str, text: str) -> None:
    """A located error where an expression first nests more than MAX_NESTING levels (one walk,
    no recursion: it must not fail the way it guards against)."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if node.data in _NESTING:
            depth += 1
            if depth > MAX_NESTING:
                raise DlcError(f"expression nested more than {MAX_NESTING} levels deep (dlc's limit on calls "
                               f"and operators inside one another): name some inner results (`h = ...`) "
                               f"and use the names", Loc(file, node.meta.line, node.meta.column), text)
        stack.extend((c, depth) for c in node.children if hasattr(c, "data"))


def parse(text: str, file: str) -> list:
    """Parse `.dln` text into a list of `Model` and `Func` nodes."""
    try:
        tree = A.parser.parse(text)
        _check_nesting(tree, file, text)
        with _deep_enough():
            return A.ToAst(file).transform(tree)
    except VisitError as e:
        if isinstance(e.orig_exc, DlcError):
            raise e.orig_exc.located(None, text)
        raise
    except UnexpectedToken as e:
        found = "end of file" if e.token.type == "$END" else f"'{e.token}'"
        line = e.line if e.line > 0 else text.count("\n") + 1
        if e.token.type == "CMPOP" and "ADDOP" in e.expected:  # a second comparison after a complete one
            raise DlcError(f"syntax error: comparisons do not chain: `a < b < c` is written "
                           f"`(a < b) * (b < c)`; found a second comparison '{e.token}'",
                           Loc(file, line, max(e.column, 1)), text)
        typo = _misspelt_keyword(text, e) if e.token.type != "$END" else None
        if typo:  # `inptu x : ...`: point at the word a keyword was meant to be
            word, column, keyword = typo
            raise DlcError(f"syntax error: '{word}' is not a keyword: did you mean `{keyword}`? (a statement "
                           f"starts with a keyword or `NAME =`)", Loc(file, line, column), text)
        raise DlcError(f"syntax error: unexpected {found}; expected {_describe_expected(e.expected)}",
                       Loc(file, line, max(e.column, 1)), text)
    except UnexpectedCharacters as e:
        allowed = f"; expected {_describe_expected(e.allowed)}" if e.allowed else ""
        raise DlcError(f"syntax error: unexpected character {text[e.pos_in_stream]!r}{allowed}",
                       Loc(file, e.line, e.column), text)
    except UnexpectedEOF:
        lines = text.splitlines() or [""]
        raise DlcError("syntax error: unexpected end of file", Loc(file, len(lines), len(lines[-1]) + 1), text)
    except UnexpectedInput as e:  # pragma: no cover - the three above are all Lark raises
        raise DlcError(f"syntax error: {e}", Loc(file, getattr(e, "line", 1), getattr(e, "column", 1)), text)


_prelude_cache: dict | None = None


def prelude() -> dict:
    global _prelude_cache
    if _prelude_cache is None:
        items = parse(PRELUDE_FILE.read_text(), "prelude.dln")
        _prelude_cache = {f.name: f for f in items if isinstance(f, A.Func)}
    return _prelude_cache


def lower(text: str, file: str = "<string>", model: str | None = None) -> Graph:
    """Lower `.dln` text to a verified forward graph (stage `forward`)."""
    try:
        items = parse(text, file)
        funcs = dict(prelude())
        for it in items:
            if isinstance(it, A.Func):
                if it.name in OPS and OPS[it.name].dsl or it.name in _SPECIAL:
                    raise DlcError(f"cannot define '{it.name}': it is a built-in op", it.loc)
                if it.name in funcs and funcs[it.name].loc.file == file:
                    raise DlcError(f"function '{it.name}' is defined twice "
                                   f"(first at line {funcs[it.name].loc.line})", it.loc)
                funcs[it.name] = it
        models = [it for it in items if isinstance(it, A.Model)]
        if not models:
            raise DlcError("no model in this file (expected `model NAME { ... }`)", Loc(file, 1, 1))
        if model is None:
            if len(models) > 1:
                names = ", ".join(m.name for m in models)
                raise DlcError(f"this file defines several models ({names}); choose one with --model",
                               models[1].loc)
            chosen = models[0]
        else:
            found = [m for m in models if m.name == model]
            if not found:
                raise DlcError(f"no model named '{model}' (this file has "
                               f"{', '.join(m.name for m in models)})", Loc(file, 1, 1))
            chosen = found[0]
        with _deep_enough():
            g = _Lowerer(file, text, funcs).model(chosen)
        return verify(g)
    except DlcError as e:
        if e.source is None and e.loc is not None:
            e.source = text if e.loc.file == file else (PRELUDE_FILE.read_text() if e.loc.file == "prelude.dln" else None)
        raise
    except RecursionError:  # not reached within MAX_NESTING (tests/test_bad_input.py); said plainly if it is
        raise DlcError(f"this model nests too deeply for dlc's lowering (more than it allows within "
                       f"{MAX_NESTING} expression levels): name some inner results", Loc(file, 1, 1))


# the operators of .dln expressions and the ops they lower to (comparisons give f32 0/1)
_BINARY_OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "@": "matmul",
               ">": "gt", "<": "lt", ">=": "ge", "<=": "le", "==": "eq", "!=": "ne"}
_COMPARISONS = {">", "<", ">=", "<=", "==", "!="}
_SPECIAL = {"l1", "l2", "scan"}  # l1, l2 variadic over tensors: l2(w1, w2) = l2(w1) + l2(w2); scan: below
_UNIT_RANGE = {"momentum", "alpha", "beta1", "beta2", "val_split", "test_split"}  # settings that must lie in [0, 1)


class _Scope:
    def __init__(self, prefix: str, in_func: str | None):
        self.vars: dict[str, object] = {}
        self.where: dict[str, Loc] = {}
        self.prefix = prefix          # names of params and values made here start with this
        self.in_func = in_func
        self.returned = None

    def qual(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name


class _Lowerer:
    def __init__(self, file: str, text: str, funcs: dict):
        self.file, self.text, self.funcs = file, text, funcs
        self.depth = 0
        self.steps: list[tuple[str, str]] = []  # scans being unrolled: (step prefix, scan prefix)
        self.shared: set[str] = set()           # params made by a scan's cell, shared by its steps

    # -- model ------------------------------------------------------------------------------
    def model(self, m: A.Model) -> Graph:
        g = self.g = Graph(m.name)
        g.sources[self.file] = self.text
        g.sources["prelude.dln"] = PRELUDE_FILE.read_text()
        scope = _Scope("", None)
        self.name_counts = _name_counts(m.body)  # how often each plain name is written in the model
        for i, s in enumerate(m.body, 1):
            if i % 256 == 0:
                stage(f"lowering statement {i:,} of {len(m.body):,} (line {s.loc.line})", detail=True)
            self.stmt(s, scope)
        if not g.meta.outputs and not g.meta.loss:
            raise DlcError(f"model '{m.name}' has no `output` and nothing to `minimize`", m.loc)
        return g

    def stmt(self, s, scope: _Scope):
        g = self.g
        if scope.returned is not None:
            raise DlcError("statement after `return`", s.loc)
        if isinstance(s, A.Input):
            if scope.in_func:
                raise DlcError("`input` is only allowed in a model, not in a function", s.loc)
            known = [k for k, v in scope.vars.items()  # what a new symbol could be a misspelling of
                     if isinstance(v, Sym) or isinstance(v, (int, float)) and not isinstance(v, bool)]
            t = self.type(s.type, scope, symbolic=True, known=known)
            self.define(scope, s.name, Tensor(g.add("input", [], name=s.name, loc=s.loc, type=t)), s.loc)
        elif isinstance(s, A.Param):
            t = self.type(s.type, scope, symbolic=False)
            if not t.is_float:
                raise DlcError(f"{s.op} {s.name} must be f32, found {t}", s.type.loc)
            init = self.init(s.init, scope) if s.init is not None else "zeros"
            name = scope.qual(s.name)
            for step, base in self.steps:  # inside a scan: every step's cell shares one set of params
                if name.startswith(step + "."):
                    name = base + name[len(step):]
            if name in self.shared and self.steps:
                if g.type(name) != t or g.attrs(name)["init"] != init:  # pragma: no cover - same text each step
                    raise DlcError(f"{s.op} {name} differs between the steps of a scan", s.loc)
                self.define(scope, s.name, Tensor(name), s.loc)
                return
            if name in g:
                raise DlcError(f"'{name}' is already defined", s.loc)
            if self.steps:
                self.shared.add(name)
            self.define(scope, s.name, Tensor(g.add(s.op, [], {"init": init}, name=name, loc=s.loc, type=t)),
                        s.loc)
        elif isinstance(s, A.Bind):
            self.define(scope, s.name, None, s.loc)  # reject redefinition before evaluating
            ncalls = _count_calls(s.expr, self.funcs)
            ctx = _Stmt(scope.qual(s.name), ncalls)
            v = self.expr(s.expr, scope, ctx, name=scope.qual(s.name))
            scope.vars[s.name] = v
        elif isinstance(s, A.Output):
            if scope.in_func:
                raise DlcError("`output` is only allowed in a model", s.loc)
            for n in s.names:
                v = self.lookup(n, scope, s.loc)
                if not isinstance(v, Tensor):
                    raise DlcError(f"output {n} is not a tensor", s.loc)
                if n in g.meta.outputs:
                    raise DlcError(f"output {n} is listed twice", s.loc)
                g.meta.outputs[n] = v.node
        elif isinstance(s, A.Minimize):
            if scope.in_func:
                raise DlcError("`minimize` is only allowed in a model", s.loc)
            if g.meta.loss:
                raise DlcError("a model minimises one loss; `minimize` appears twice", s.loc)
            v = self.tensor(self.expr(s.expr, scope, _Stmt("loss", _count_calls(s.expr, self.funcs)), name="loss"),
                            s.expr.loc)
            if g.type(v).shape != () or not g.type(v).is_float:
                raise DlcError(f"the loss must be an f32 scalar, found {g.type(v)}", s.expr.loc)
            g.meta.loss = v
            g.meta.optimizer = (s.optimizer, self.settings(s, OPTIMIZERS, f"optimizer {s.optimizer}", scope))
        elif isinstance(s, A.Freeze):
            if scope.in_func:
                raise DlcError("`freeze` is only allowed in a model", s.loc)
            for n in s.names:
                v = self.lookup(n.name, scope, n.loc)
                if not isinstance(v, Tensor) or OPS[g.op(v.node)].holds != PARAM:
                    raise DlcError(f"only params can be frozen; {n.name} is not a param", n.loc)
                if v.node not in g.meta.frozen:
                    g.meta.frozen.append(v.node)
        elif isinstance(s, A.Train):
            if scope.in_func:
                raise DlcError("`train` is only allowed in a model", s.loc)
            vals = self.settings(s, {k: None for k in TRAIN_SETTINGS}, "train", scope, positional=False)
            for k, v in vals.items():
                want = TRAIN_SETTINGS[k]
                ok = isinstance(v, want) and not isinstance(v, bool) or (want is float and isinstance(v, int)
                                                                        and not isinstance(v, bool))
                if v is not None and not ok:
                    raise DlcError(f"train: {k} must be {want.__name__}, found {v!r}", s.loc)
                if k == "monitor" and v is not None and v not in MONITORS:
                    raise DlcError(f"train: monitor must be one of {', '.join(MONITORS)}, found {v!r}"
                                   f"{_suggest(v, MONITORS)}", self.setting_loc(k, s.kwargs[k], s.loc))
            g.meta.train = {k: v for k, v in vals.items() if v is not None}
            g.meta.train_loc = s.loc
        elif isinstance(s, A.Return):
            if not scope.in_func:
                raise DlcError("`return` is only allowed in a function", s.loc)
            scope.returned = s
        else:  # pragma: no cover
            raise DlcError(f"unexpected statement {type(s).__name__}", s.loc)

    def setting_loc(self, name: str, value, fallback):
        """Where `name = value` is written: the last `name` before the value on its line (the AST
        keeps the value's place, not the name's), else `fallback`."""
        loc = getattr(value, "loc", None)
        text = self.g.sources.get(loc.file) if loc else None
        if not text or loc.line < 1:
            return fallback
        before = text.split("\n")[loc.line - 1][:loc.col - 1]
        at = [m.start() for m in re.finditer(rf"\b{re.escape(name)}\b", before)]
        return Loc(loc.file, loc.line, at[-1] + 1) if at else loc

    def settings(self, s, table: dict, what: str, scope, positional=True) -> dict:
        if s.args and not positional:
            raise DlcError(f"{what}: give settings by name, e.g. epochs = 10", s.loc)
        if isinstance(s, A.Minimize) and s.optimizer not in OPTIMIZERS:
            raise DlcError(f"unknown optimizer '{s.optimizer}'{_suggest(s.optimizer, OPTIMIZERS)} "
                           f"(known: {', '.join(OPTIMIZERS)})", s.loc)
        table = OPTIMIZERS[s.optimizer] if isinstance(s, A.Minimize) else table
        names = list(table)
        if len(s.args) > len(names):
            raise DlcError(f"{what} takes at most {len(names)} settings, found {len(s.args)}", s.loc)
        given = dict(zip(names, s.args))
        extra = SCHEDULE_SETTINGS if isinstance(s, A.Minimize) else {}  # by name only
        for k, v in s.kwargs.items():
            if k not in table and k not in extra:
                known = names + list(extra)
                raise DlcError(f"{what} has no setting '{k}'{_suggest(k, known)} (settings: {', '.join(known)})",
                               self.setting_loc(k, v, s.loc))
            if k in given:
                raise DlcError(f"{what}: '{k}' given twice", s.loc)
            given[k] = v
        out = {}
        for k, default in table.items():
            if k in given:
                if k == "monitor" and isinstance(given[k], A.Name):
                    v = given[k].name  # a bare name: monitor = val_accuracy
                else:
                    v = self.expr(given[k], scope, _Stmt("setting", 0))
                if isinstance(v, (Tensor, Sym, list)):
                    raise DlcError(f"{what}: {k} must be a constant", given[k].loc)
                if (default is REQUIRED or default is OPTIONAL and isinstance(s, A.Minimize)) and \
                   (isinstance(v, (bool, str)) or not isinstance(v, (int, float))):
                    raise DlcError(f"{what}: {k} must be a number, found {_show(v)}", given[k].loc)
                if default is not None and default is not REQUIRED:
                    if isinstance(default, bool) and not isinstance(v, bool) or \
                       isinstance(default, float) and (isinstance(v, bool) or not isinstance(v, (int, float))) \
                       or isinstance(v, str):
                        raise DlcError(f"{what}: {k} must be {type(default).__name__}, found {v!r}", given[k].loc)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
                    raise DlcError(f"{what}: {k} must not be negative, found {v}", given[k].loc)
                if k in _UNIT_RANGE and (isinstance(v, (bool, str)) or not 0 <= v < 1):
                    raise DlcError(f"{what}: {k} must be in [0, 1), found {_show(v)}", given[k].loc)
                out[k] = float(v) if isinstance(default, float) or k == "weight_decay" else v
            elif default is REQUIRED:
                raise DlcError(f"{what} needs the setting '{k}'", s.loc)
            elif default is not None:
                out[k] = default
        if isinstance(s, A.Minimize) and out.get("nesterov") and not out.get("momentum"):
            raise DlcError(f"{what}: nesterov needs a momentum greater than 0", s.loc)
        if extra:
            self.schedule_settings(s, given, out, what, scope)
        return out

    def schedule_settings(self, s, given: dict, out: dict, what: str, scope) -> None:
        """The learning-rate and momentum schedule settings given (`schedule = cosine, total = 1000`),
        checked, into `out` with the chosen schedule's defaults (ir/optim.py)."""
        for k in SCHEDULE_SETTINGS:
            if k not in given:
                continue
            node = given[k]
            if k == "schedule" and isinstance(node, A.Name):
                v = node.name  # a bare name: schedule = cosine
                if v not in SCHEDULES:
                    raise DlcError(f"{what}: schedule must be one of {', '.join(SCHEDULES)}, found '{v}'"
                                   f"{_suggest(v, SCHEDULES)}", node.loc)
            else:
                v = self.expr(node, scope, _Stmt("setting", 0))
            if isinstance(v, (Tensor, Sym, list)):
                raise DlcError(f"{what}: {k} must be a constant", node.loc)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
                raise DlcError(f"{what}: {k} must not be negative, found {v}", node.loc)
            out[k] = float(v) if SCHEDULE_SETTINGS[k] is float and isinstance(v, int) and not isinstance(v, bool) \
                else v
        bad = schedule_problem(s.optimizer, out)
        if bad:
            k, msg = bad
            raise DlcError(f"{what}: {k} {msg}" if not msg.startswith("schedule =") else f"{what}: {msg}",
                           given[k].loc if k in given else s.loc)

    def define(self, scope: _Scope, name: str, value, loc: Loc):
        if isinstance(scope.vars.get(name), Sym) and not scope.in_func:
            raise DlcError(f"'{name}' is already defined as a symbolic dimension (line {scope.where[name].line}); "
                           f"names are bound once (a constant used in an input's type is bound before the input)",
                           loc)
        if name in scope.vars:
            raise DlcError(f"'{name}' is already defined (line {scope.where[name].line}); "
                           f"names are bound once", loc)
        scope.vars[name] = value
        scope.where[name] = loc

    def lookup(self, name: str, scope: _Scope, loc: Loc):
        if name in scope.vars and scope.vars[name] is not None:
            return scope.vars[name]
        if name in scope.vars:
            raise DlcError(f"'{name}' is used in its own definition", loc)
        if name in ("true", "false"):
            return name == "true"
        if not scope.in_func and name in self.g and OPS[self.g.op(name)].holds == PARAM:
            return Tensor(name)  # a param made by a function call, e.g. h1.w
        if "." in name and not scope.in_func:
            raise DlcError(f"unknown name '{name}'{self._param_hint(name)}", loc)
        raise DlcError(f"unknown name '{name}'{_suggest(name, scope.vars)}", loc)

    def _param_hint(self, name: str) -> str:
        """For a dotted name that names no param: the closest param made so far, or the params made
        under its first part, or how params are named (docs/language.md, "Params are named by the
        call site")."""
        params = [n for n in self.g.nodes_of("param")]
        close = difflib.get_close_matches(name, params, n=1, cutoff=0.6)
        if close:
            return f" (did you mean '{close[0]}'?)"
        head = name.split(".")[0]
        under = [p for p in params if p.split(".")[0] == head]
        if under:
            shown = ", ".join(under[:8]) + (", ..." if len(under) > 8 else "")
            return f": no param of that name; the params of '{head}' are {shown}"
        return (f": no param of that name{' made so far' if params else ''} (a call's params are named "
                f"after its binding, e.g. `h1 = dense(x, 8)` makes h1.w and h1.b; `dlc check` lists them)")

    # -- types and initialisers ----------------------------------------------------------------
    def type(self, t: A.TypeExpr, scope: _Scope, symbolic: bool, known=()) -> TensorType:
        """A tensor type. With `symbolic` (an input's type), an unbound plain name is a new
        symbolic dimension, unless it is written nowhere else in the model and looks like a
        misspelling of a name in `known` (a symbol or constant bound before the input)."""
        if t.dtype not in DTYPES:
            raise DlcError(f"unknown dtype '{t.dtype}' (expected {' or '.join(DTYPES)})", t.loc)
        dims = []
        for d in t.dims:
            if symbolic and isinstance(d, A.Name) and d.name not in scope.vars and "." not in d.name \
                    and d.name not in A.RESERVED:
                near = _near_miss(d.name, known) if self.name_counts[d.name] == 1 else None
                if near is not None:
                    raise DlcError(f"unknown dimension '{d.name}' (did you mean '{near}'?): '{d.name}' is "
                                   f"written nowhere else in the model, so it would be a new symbolic "
                                   f"dimension", d.loc)
                dims.append(d.name)  # a new symbolic dimension such as N, usable by name from here on
                scope.vars[d.name] = Sym(d.name)
                scope.where[d.name] = d.loc
                continue
            v = self.expr(d, scope, _Stmt("dim", 0))
            if isinstance(v, Sym):
                if not symbolic:
                    raise DlcError(f"a param's or buffer's shape must be known: {v.name} is symbolic", d.loc)
                dims.append(v.name)
            elif isinstance(v, int) and not isinstance(v, bool) and v > 0:
                dims.append(v)
            else:
                raise DlcError(f"a dimension must be a positive integer, found {_show(v)}", d.loc)
        try:
            tt = TensorType(t.dtype, tuple(dims))
            n = tt.numel()
            if n is not None and n > 2**31 - 1:
                raise DlcError(f"{tt} has {n} elements, more than a tensor may hold")
            return tt
        except DlcError as e:
            raise e.located(t.loc)

    def init(self, e, scope) -> str:
        if isinstance(e, A.Name):
            name, args = e.name, []
        elif isinstance(e, A.Call) and not e.kwargs:
            name, args = e.fn, e.args
        else:
            raise DlcError("an initialiser is a name (he, xavier, zeros, ones) or a call such as "
                           "normal(0, 0.01)", e.loc)
        if name not in INITIALISERS:
            raise DlcError(f"unknown initialiser '{name}'{_suggest(name, INITIALISERS)} "
                           f"(known: {', '.join(INITIALISERS)})", e.loc)
        want = INITIALISERS[name]
        if len(args) != len(want):
            raise DlcError(f"initialiser {name} takes {len(want)} argument{'s' * (len(want) != 1)}"
                           f"{' (' + ', '.join(want) + ')' if want else ''}, found {len(args)}", e.loc)
        vals = []
        for a in args:
            v = self.expr(a, scope, _Stmt("init", 0))
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise DlcError(f"initialiser {name}: arguments must be numbers, found {_show(v)}", a.loc)
            vals.append(float(v))
        if name == "normal" and vals[1] < 0 or name == "uniform" and vals[0] > vals[1]:
            raise DlcError(f"initialiser {name}{tuple(vals)} is empty or negative in spread", e.loc)
        return f"{name}({', '.join(repr(v) for v in vals)})" if want else name

    # -- expressions ---------------------------------------------------------------------------
    def tensor(self, v, loc) -> str:
        """A value as an IR node: numbers become f32 constants."""
        if isinstance(v, Tensor):
            return v.node
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return self.g.add("const", [], {"value": float(v)}, name="c", loc=loc)
        raise DlcError(f"expected a tensor or a number, found {_show(v)}", loc)

    def expr(self, e, scope: _Scope, ctx: "_Stmt", name: str | None = None):
        g = self.g
        if isinstance(e, A.Num):
            return e.value
        if isinstance(e, A.Str):
            return e.value
        if isinstance(e, A.Name):
            v = self.lookup(e.name, scope, e.loc)
            return v
        if isinstance(e, A.List):
            return [self.expr(x, scope, ctx) for x in e.items]
        if isinstance(e, A.Neg):
            v = self.expr(e.a, scope, ctx)
            if isinstance(v, Tensor):
                return Tensor(g.add("neg", [v.node], name=name or ctx.temp("neg"), loc=e.loc))
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return -v
            raise DlcError(f"cannot negate {_show(v)}", e.loc)
        if isinstance(e, A.BinOp):
            a = self.expr(e.a, scope, ctx)
            b = self.expr(e.b, scope, ctx)
            if isinstance(a, Tensor) or isinstance(b, Tensor):
                opname = _BINARY_OPS[e.op]
                args = [self.tensor(a, e.a.loc), self.tensor(b, e.b.loc)]
                return Tensor(g.add(opname, args, name=name or ctx.temp(opname), loc=e.loc))
            return _const_arith(e.op, a, b, e.loc)
        if isinstance(e, A.Call):
            return self.call(e, scope, ctx, name)
        raise DlcError(f"unexpected expression {type(e).__name__}", e.loc)  # pragma: no cover

    def call(self, e: A.Call, scope: _Scope, ctx: "_Stmt", name: str | None):
        g = self.g
        if e.fn == "scan":
            return self.scan(e, scope, ctx, name)
        if e.fn in _SPECIAL:
            if e.kwargs or not e.args:
                raise DlcError(f"{e.fn}() takes one or more tensors, e.g. {e.fn}(w1, w2)", e.loc)
            parts = [g.add(e.fn, [self.tensor(self.expr(a, scope, ctx), a.loc)], loc=a.loc,
                           name=(name if len(e.args) == 1 else None) or ctx.temp(e.fn)) for a in e.args]
            total = parts[0]
            for i, p in enumerate(parts[1:]):
                last = i == len(parts) - 2
                total = g.add("add", [total, p], loc=e.loc, name=(name if last else None) or ctx.temp("add"))
            return Tensor(total)
        if e.fn in OPS and OPS[e.fn].dsl and OPS[e.fn].arity == VARIADIC:
            d = OPS[e.fn]
            if not e.args:
                raise DlcError(f"{e.fn}() takes one or more tensors", e.loc)
            operands = [self.tensor(self.expr(a, scope, ctx), a.loc) for a in e.args]
            attrs = {}
            for k, a in e.kwargs.items():
                if k not in d.attrs:
                    raise DlcError(f"{e.fn}() has no setting '{k}' (settings: {', '.join(d.attrs)})", a.loc)
                attrs[k] = _attr_value(self.expr(a, scope, ctx), a.loc)
            return Tensor(g.add(e.fn, operands, attrs, name=name or ctx.temp(e.fn), loc=e.loc))
        if e.fn in OPS and OPS[e.fn].dsl:
            d = OPS[e.fn]
            if len(e.args) < d.arity:
                raise DlcError(f"{e.fn}() takes {d.arity} tensor operand{'s' * (d.arity != 1)}, "
                               f"found {len(e.args)}", e.loc)
            attr_names = list(d.attrs)
            if len(e.args) > d.arity + len(attr_names):
                extra = f" and {len(attr_names)} setting{'s' * (len(attr_names) != 1)} ({', '.join(attr_names)})" \
                    if attr_names else ""
                raise DlcError(f"{e.fn}() takes {d.arity} tensor operand{'s' * (d.arity != 1)}{extra}, "
                               f"found {len(e.args)} arguments", e.loc)
            operands = [self.tensor(self.expr(a, scope, ctx), a.loc) for a in e.args[:d.arity]]
            attrs = {}
            for k, a in list(zip(attr_names, e.args[d.arity:])) + list(e.kwargs.items()):
                if k in attrs:
                    raise DlcError(f"{e.fn}(): '{k}' given twice", e.loc)
                if k not in d.attrs:
                    raise DlcError(f"{e.fn}() has no setting '{k}'" +
                                   (f" (settings: {', '.join(attr_names)})" if attr_names else ""), a.loc)
                attrs[k] = _attr_value(self.expr(a, scope, ctx), a.loc)
            if d.has(RANDOM) and "salt" not in attrs:  # each random op draws its own stream
                attrs["salt"] = len(g.nodes_of(e.fn))
            return Tensor(g.add(e.fn, operands, attrs, name=name or ctx.temp(e.fn), loc=e.loc))
        if e.fn in self.funcs:
            return self.call_func(self.funcs[e.fn], e, scope, ctx, name)
        known = [k for k, d in OPS.items() if d.dsl] + list(self.funcs) + list(_SPECIAL)
        raise DlcError(f"unknown function or op '{e.fn}'{_suggest(e.fn, known)}", e.loc)

    def scan(self, e: A.Call, scope: _Scope, ctx: "_Stmt", name: str | None):
        """`scan(cell, xs, init, args...)`: the function `cell` applied along axis 1 (time) of
        `xs` [B, T, ...], unrolled at compile time: state = cell(xs[:, t], state, args...) for t
        in 0..T-1, starting from `init`. The value is every step's state, stacked along axis 1:
        [B, T, ...state]. The cell's params are made once and shared by all steps (named after
        the binding, like any call's); its other values are named BINDING.tK.NAME for step K."""
        g = self.g
        usage = "scan(cell, xs, init, ...) takes a function name, a sequence [B, T, ...] and an initial state"
        if len(e.args) < 3 or not isinstance(e.args[0], A.Name):
            raise DlcError(usage, e.loc)
        fname = e.args[0].name
        if fname not in self.funcs:
            known = list(self.funcs)
            builtin = " (it is a built-in op; a cell is a function written with `def`)" if fname in OPS else ""
            raise DlcError(f"scan: '{fname}' is not a function{builtin or _suggest(fname, known)}", e.args[0].loc)
        f = self.funcs[fname]
        if len(f.params) < 2:
            raise DlcError(f"scan: the cell {fname}() must take the input of a step and the state", e.args[0].loc)
        xs = self.tensor(self.expr(e.args[1], scope, ctx), e.args[1].loc)
        state = self.tensor(self.expr(e.args[2], scope, ctx), e.args[2].loc)
        xt_type, st_type = g.type(xs), g.type(state)
        if xt_type.rank < 2:
            raise DlcError(f"scan: the sequence must be [B, T, ...] with time on axis 1, found {xt_type}", e.args[1].loc)
        steps = xt_type.shape[1]
        if not isinstance(steps, int):
            raise DlcError(f"scan: the sequence length must be known when compiling, found {xt_type} "
                           f"(write it as a number in the input's type)", e.args[1].loc)
        base = name or ctx.temp("scan")
        step_shape = [d for i, d in enumerate(xt_type.shape) if i != 1]
        # the remaining arguments reach the cell as written, evaluated in the caller's scope;
        # the step's input and state are passed under names no .dln text can spell
        argscope = _Scope(scope.prefix, scope.in_func)
        argscope.vars, argscope.where = dict(scope.vars), dict(scope.where)
        call = A.Call(e.loc, fname, [A.Name(e.args[1].loc, " x"), A.Name(e.args[2].loc, " state"), *e.args[3:]],
                      dict(e.kwargs))
        states = []
        for t in range(steps):
            prefix = f"{base}.t{t}"
            xt = g.add("slice", [xs], {"axis": 1, "start": t, "stop": t + 1}, name=f"{prefix}.x", loc=e.loc)
            xt = g.add("reshape", [xt], {"shape": step_shape}, name=f"{prefix}.x", loc=e.loc)
            argscope.vars[" x"], argscope.vars[" state"] = Tensor(xt), Tensor(state)
            self.steps.append((prefix, base))
            try:
                out = self.call_func(f, call, argscope, _Stmt(prefix, 1), None)
            finally:
                self.steps.pop()
            out = self.tensor(out, e.loc)
            if g.type(out) != st_type:
                raise DlcError(f"scan: the cell {fname}() returns {g.type(out)}, but the state is {st_type} "
                               f"(a cell returns the next state, of the initial state's type)", e.loc)
            state = out
            states.append(g.add("reshape", [out], {"shape": [st_type.shape[0], 1, *st_type.shape[1:]]},
                                name=f"{prefix}.stack", loc=e.loc))
        if len(states) == 1:
            return Tensor(g.add("reshape", states, {"shape": list(g.type(states[0]).shape)}, name=base, loc=e.loc))
        return Tensor(g.add("concat", states, {"axis": 1}, name=base, loc=e.loc))

    def call_func(self, f: A.Func, e: A.Call, scope: _Scope, ctx: "_Stmt", name: str | None):
        if self.depth >= MAX_CALL_DEPTH:
            raise DlcError(f"calls nested more than {MAX_CALL_DEPTH} deep (is '{f.name}' recursive?)", e.loc)
        if len(e.args) > len(f.params):
            raise DlcError(f"{f.name}() takes {len(f.params)} argument{'s' * (len(f.params) != 1)}, "
                           f"found {len(e.args)}", e.loc)
        pnames = [p.name for p in f.params]
        given = dict(zip(pnames, e.args))
        for k, a in e.kwargs.items():
            if k not in pnames:
                raise DlcError(f"{f.name}() has no argument '{k}' (arguments: {', '.join(pnames)})", e.loc)
            if k in given:
                raise DlcError(f"{f.name}(): argument '{k}' given twice", e.loc)
            given[k] = a
        for p in f.params:
            if p.name not in given and p.default is not None:
                given[p.name] = p.default  # evaluated below like any argument (a constant)
        missing = [p for p in pnames if p not in given]
        if missing:
            raise DlcError(f"{f.name}() is missing the argument '{missing[0]}'", e.loc)
        inner = _Scope(ctx.call_prefix(f.name), f.name)
        if e.loc is not None and e.loc.file == self.file:
            self.g.meta.calls.setdefault(inner.prefix, e.loc)
        for p in f.params:
            a = given[p.name]
            v = self.expr(a, _Scope(inner.prefix, f.name) if a is p.default else scope, ctx)
            if p.pattern is not None:
                self.match(f, p, v, inner, given[p.name].loc)
            inner.vars[p.name] = v
            inner.where[p.name] = p.loc
        self.depth += 1
        try:
            for s in f.body:
                self.stmt(s, inner)
            if inner.returned is None:
                raise DlcError(f"function '{f.name}' has no `return`", f.loc)
            ret = inner.returned.expr
            # calls in the return expression are named like those of a binding with several
            # calls (PREFIX.FUNCTION), so their params never clash with the function's own
            return self.expr(ret, inner, _Stmt(inner.prefix, max(2, _count_calls(ret, self.funcs))),
                             name=name or (inner.prefix if inner.prefix != ctx.base else ctx.temp(f.name)))
        except DlcError as err:
            # a mistake inside the body points into the function; say which call led there
            if err.loc is not None and err.loc != e.loc and not getattr(err, "call_noted", False):
                err.message += f" (in {f.name}() called at {e.loc})"
                err.args = (err.message,)
                err.call_noted = self.depth == 1  # the outermost call is the one in the user's code
            raise
        finally:
            self.depth -= 1

    def match(self, f, p: A.FParam, v, inner: _Scope, loc):
        """Bind the shape variables of a parameter pattern such as `x: [B, K]` from the argument."""
        want = f"{p.dtype or ''}[{', '.join(str(d) for d in p.pattern)}]"
        if not isinstance(v, Tensor):
            raise DlcError(f"{f.name}() expects a tensor {p.name}: {want}, found {_show(v)}", loc)
        t = self.g.type(v.node)
        if len(t.shape) != len(p.pattern) or (p.dtype and p.dtype != t.dtype):
            raise DlcError(f"shape mismatch: {f.name}() expects {p.name}: {want}, found {t}", loc)
        for pd, d in zip(p.pattern, t.shape):
            actual = Sym(d) if isinstance(d, str) else d
            if isinstance(pd, int):
                if pd != d:
                    raise DlcError(f"shape mismatch: {f.name}() expects {p.name}: {want}, found {t}", loc)
            elif pd in inner.vars and inner.vars[pd] != actual:
                raise DlcError(f"shape mismatch: {f.name}() expects {p.name}: {want}, found {t} "
                               f"({pd} is already {_show(inner.vars[pd])})", loc)
            else:
                inner.vars[pd] = actual
                inner.where[pd] = p.loc


class _Stmt:
    """Naming within one statement: temporaries are `NAME.op`; user-function calls get prefixes."""

    def __init__(self, base: str, ncalls: int):
        self.base, self.ncalls, self.seen = base, ncalls, {}

    def temp(self, opname: str) -> str:
        return f"{self.base}.{opname}"

    def call_prefix(self, fname: str) -> str:
        if self.ncalls <= 1:
            return self.base
        k = self.seen.get(fname, 0)
        self.seen[fname] = k + 1
        return f"{self.base}.{fname}" + (f"{k}" if k else "")


def _subnodes(x):
    """Every AST node in `x` (a node, or a list or dict of them), `x` first, depth first."""
    stack = [x]
    while stack:
        v = stack.pop()
        if isinstance(v, A.Node):
            yield v
            stack.extend(reversed([getattr(v, f.name) for f in fields(v)]))
        elif isinstance(v, (list, tuple)):
            stack.extend(reversed(v))
        elif isinstance(v, dict):
            stack.extend(reversed(list(v.values())))


def _user_call(e, funcs) -> bool:
    return isinstance(e, A.Call) and e.fn in funcs and not (e.fn in OPS and OPS[e.fn].dsl)


def _makes_state(fname: str, funcs, seen=frozenset()) -> bool:
    """Whether calling function `fname` creates params or buffers: it declares one, or calls a
    function that does. (`flatten`, `last` create none, so they never take part in naming.)"""
    if fname in seen:
        return False  # a cycle is reported when the call is lowered (calls nest at most MAX_CALL_DEPTH)
    for n in _subnodes(funcs[fname].body):
        if isinstance(n, A.Param) or _user_call(n, funcs) and _makes_state(n.fn, funcs, seen | {fname}):
            return True
    return False


def _count_calls(e, funcs) -> int:
    """The calls in expression `e` of user functions that create params or buffers: one such call
    takes the binding's name as its prefix, several take NAME.FUNCTION (docs/language.md)."""
    return sum(1 for n in _subnodes(e) if _user_call(n, funcs) and _makes_state(n.fn, funcs))


def _const_arith(op: str, a, b, loc):
    def num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if isinstance(a, Sym) or isinstance(b, Sym):
        raise DlcError(f"arithmetic on the symbolic dimension {(a if isinstance(a, Sym) else b).name} "
                       f"is not supported", loc)
    if not (num(a) and num(b)):
        raise DlcError(f"operator {op} needs numbers or tensors, found {_show(a)} and {_show(b)}", loc)
    if op == "@":
        raise DlcError("operator @ needs tensors, found numbers", loc)
    if op in _COMPARISONS:
        raise DlcError(f"operator {op} compares tensors (its value is a tensor of 0 and 1), found two numbers "
                       f"{_show(a)} and {_show(b)}", loc)
    if op == "/":
        if b == 0:
            raise DlcError("division by zero", loc)
        if isinstance(a, int) and isinstance(b, int) and a % b == 0:
            return a // b
        return a / b
    r = {"+": a + b, "-": a - b, "*": a * b}[op]
    if isinstance(r, int) and abs(r) > 2**62:
        raise DlcError("integer too large", loc)
    return r


def _attr_value(v, loc):
    if isinstance(v, Tensor):
        raise DlcError("this setting must be a constant, not a tensor", loc)
    if isinstance(v, Sym):
        return v.name
    if isinstance(v, list):
        return [_attr_value(x, loc) for x in v]
    return v


def _show(v) -> str:
    if isinstance(v, Tensor):
        return "a tensor"
    if isinstance(v, Sym):
        return f"the symbolic dimension {v.name}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'the string "{v}"'
    if isinstance(v, list):
        return "a list"
    return repr(v)


def _name_counts(body) -> Counter:
    """How many times each plain name is written in a model's statements (as a value, in a type,
    in `output`), for telling a new symbolic dimension from a misspelt one."""
    counts: Counter = Counter()

    def walk(x):
        if isinstance(x, A.Name):
            counts[x.name] += 1
        elif isinstance(x, A.Output):
            counts.update(x.names)
        if isinstance(x, A.Node):
            for f in fields(x):
                walk(getattr(x, f.name))
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
    walk(body)
    return counts


# QWERTY rows, each shifted right of the one above: letter -> (row, index in the row)
_KEYS = {c: (r, i) for r, row in enumerate(("qwertyuiop", "asdfghjkl", "zxcvbnm")) for i, c in enumerate(row)}


def _next_keys(a: str, b: str) -> bool:
    """Whether two letters are neighbouring keys on a QWERTY keyboard (n: b, h, j, m)."""
    if a.lower() not in _KEYS or b.lower() not in _KEYS:
        return False
    (ra, ia), (rb, ib) = _KEYS[a.lower()], _KEYS[b.lower()]
    if ra == rb:
        return abs(ia - ib) == 1
    if abs(ra - rb) != 1:
        return False
    upper, lower = (ia, ib) if ra < rb else (ib, ia)   # key indices in the upper and lower row
    return upper - lower in (0, 1)


def _near_miss(name: str, known) -> str | None:
    """A name in `known` that `name` is likely a misspelling of: close by difflib's measure, the
    same ignoring case, or, for one-letter names, a neighbouring key (M for N)."""
    known = [k for k in known if k != name]
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return close[0]
    for k in known:
        if k.lower() == name.lower() or len(k) == len(name) == 1 and _next_keys(k, name):
            return k
    return None


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
