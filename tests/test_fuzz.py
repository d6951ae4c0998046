"""Fuzzing the front end: random and mutated `.dln` texts thrown at `dlc.dsl.frontend.lower`.

Every input must end in one of two ways:
  * a `DlcError` with a non-empty message whose location (when it has one) is inside the text
    (or inside the prelude, for errors found in a prelude function), and whose printed form
    (with the caret line) can be produced and shows the line the location names; or
  * a graph that passes `dlc.ir.verify.verify` and whose IR text parses back to the same text.
Anything else (an `IndexError`, a Lark exception, a `TypeError`, ...) is a failure; the offending
inputs are collected and printed, shortest first.

The section at the bottom keeps, as plain regression tests, one minimal reproduction of each
class of crash this fuzzer found when it was written (all fixed since).
"""
from __future__ import annotations

import random
import re
import sys
import traceback
from pathlib import Path

import pytest

import dlc
from dlc.dsl.frontend import PRELUDE_FILE, lower
from dlc.ir.errors import DlcError, _window
from dlc.ir.text import parse_ir, print_ir
from dlc.ir.verify import verify
from conftest import EXAMPLE_FILES, GOLDEN

PKG = Path(dlc.__file__).resolve().parent  # frames inside it say where a crash happened
FILE = "fuzz.dln"
N_RANDOM = 3000
SEED = 20251121

SEEDS = [p.read_text() for p in sorted((GOLDEN / "models").glob("*.dln"))]
SEEDS += [p.read_text() for p in EXAMPLE_FILES]
SEEDS += [
    "model m { input x : f32[N, 3] output x }",
    "def f(a: [B, K], n = 2) {\n    param w : f32[K, n] = normal(0, 0.1)\n    return a @ w\n}\n"
    "model m {\n    input x : f32[N, 3]\n    y = f(x) + f(x, n = 2)\n    output y\n}\n",
    "model m {\n  input x : f32[2, 3]\n  param w : f32[3] = uniform(-1, 1)\n"
    "  l = mean(sum(x * w, axis = 1, keepdims = true)) - l1(w) * 2 / 3\n"
    "  freeze w\n  minimize l with rmsprop(lr = 0.1)\n}\n",
    "model m {\n  input x : f32[N, 1, 6, 6]\n  y = maxpool2d(relu(conv(x, 2, 3, padding = 1)), 2)\n"
    "  z = concat(dropout(y, 0.5), avgpool2d(y, 1), axis = 1)\n  output z\n}\n",
]

KEYWORDS = ["model", "def", "input", "param", "output", "minimize", "with", "freeze", "return", "train"]
PUNCT = ["{", "}", "(", ")", "[", "]", ",", ":", "=", "+", "-", "*", "/", "@", ".", "#", "\n"]
NAMES = ["x", "y", "w", "b", "h", "N", "B", "K", "loss", "f32", "i32", "f64", "true", "false",
         "relu", "tanh", "sigmoid", "exp", "log", "sqrt", "abs", "sign", "neg", "matmul", "transpose",
         "reshape", "sum", "mean", "softmax", "log_softmax", "softmax_xent", "mse", "l1", "l2",
         "conv2d", "maxpool2d", "avgpool2d", "concat", "dropout", "dense", "linear", "conv", "flatten",
         "inception", "size", "const", "assign", "broadcast_like", "relu_grad", "input", "sgd", "adam",
         "rmsprop", "lr", "momentum", "nesterov", "axis", "keepdims", "perm", "shape", "ta", "tb",
         "stride", "padding", "dilation", "kernel", "p", "salt", "he", "xavier", "zeros", "ones",
         "normal", "uniform", "constant", "epochs", "batch", "data", "seed", "val_split", "h1.w", "a.b.c"]
NUMBERS = ["0", "1", "2", "3", "-1", "64", "0.5", "1e-4", "2.5e3", "1e400", "-1e400", "1e-400",
           "99999999999999999999", "4294967296", "2147483648", "0.0", "00", "1.", ".5"]
STRINGS = ['""', '"a"', '"data.npz"', '"true"', '"x y"']
UNICODE = ["é", "λ", "Ω", "\u00a0", "\u2028", "\u2029", "\ufeff", "\x00", "\x85", "\x0b", "\x0c", "\r",
           "\t", "𝑥", "🙂", "\u200b", "ｘ", "\x1e", "\\"]
VOCAB = KEYWORDS + PUNCT + NAMES + NUMBERS + STRINGS

_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:\\.|[^"\\\n])*"|\d+\.?\d*(?:[eE][+-]?\d+)?|[A-Za-z_]\w*|.', re.S)


# -- generating inputs ------------------------------------------------------------------------

def _tokens(text):
    return _TOKEN.findall(text)


def _solid(toks):
    return [i for i, t in enumerate(toks) if not t.isspace()]


def m_delete_token(r, text):
    t = _tokens(text)
    s = _solid(t)
    if s:
        del t[r.choice(s)]
    return "".join(t)


def m_duplicate_token(r, text):
    t = _tokens(text)
    s = _solid(t)
    if s:
        i = r.choice(s)
        t.insert(i, t[i] + r.choice(["", " "]))
    return "".join(t)


def m_swap_tokens(r, text):
    t = _tokens(text)
    s = _solid(t)
    if len(s) > 1:
        i, j = r.sample(s, 2)
        t[i], t[j] = t[j], t[i]
    return "".join(t)


def m_replace_token(r, text):
    t = _tokens(text)
    s = _solid(t)
    if s:
        t[r.choice(s)] = r.choice(VOCAB)
    return "".join(t)


def m_insert_token(r, text):
    t = _tokens(text)
    t.insert(r.randrange(len(t) + 1), r.choice([" ", ""]) + r.choice(VOCAB) + r.choice([" ", ""]))
    return "".join(t)


def m_delete_char(r, text):
    if not text:
        return text
    i = r.randrange(len(text))
    return text[:i] + text[i + 1:]


def m_duplicate_char(r, text):
    if not text:
        return text
    i = r.randrange(len(text))
    return text[:i] + text[i] * r.randint(2, 5) + text[i + 1:]


def m_swap_chars(r, text):
    if len(text) < 2:
        return text
    i = r.randrange(len(text) - 1)
    return text[:i] + text[i + 1] + text[i] + text[i + 2:]


def m_random_byte(r, text):
    i = r.randrange(len(text) + 1)
    return text[:i] + chr(r.randrange(256)) + text[i:]


def m_unicode(r, text):
    i = r.randrange(len(text) + 1)
    return text[:i] + r.choice(UNICODE) + text[i:]


def m_huge_number(r, text):
    big = r.choice(["9" * r.randint(20, 5000), "1e" + "9" * r.randint(3, 30), "0." + "0" * 400 + "1",
                    "1" + "0" * r.randint(10, 400), "123456789012345678901234567890.5"])
    nums = [m.span() for m in re.finditer(r"\d+(\.\d*)?([eE][+-]?\d+)?", text)]
    if not nums:
        return text + big
    a, b = r.choice(nums)
    return text[:a] + big + text[b:]


def m_deep_nesting(r, text):
    k = r.choice([10, 100, 500, 1000, 3000])
    kind = r.randrange(4)
    if kind == 0:
        expr = "(" * k + "x" + ")" * k
    elif kind == 1:
        expr = "-" * k + "x"
    elif kind == 2:
        expr = "tanh(" * k + "x" + ")" * k
    else:
        expr = " + ".join(["x"] * k)
    binds = [m.span() for m in re.finditer(r"(?m)^\s*[A-Za-z_][\w.]*\s*=\s*", text)]
    if binds and r.random() < 0.7:
        a, b = r.choice(binds)
        return text[:b] + expr + " + " + text[b:]
    return f"model m {{ input x : f32[2, 3]\n y = {expr}\n output y }}"


def m_truncate(r, text):
    return text[:r.randrange(len(text) + 1)]


def m_splice(r, text):
    other = r.choice(SEEDS)
    return text[:r.randrange(len(text) + 1)] + other[r.randrange(len(other) + 1):]


def m_unclosed(r, text):
    return text + r.choice(['"', "(", "[", "{", "# comment", "def", "model m {", "\\"])


WEIRD_VALUES = ["1.5", '"a"', "true", "[0, \"a\"]", "[]", "[[0]]", "-1", "N", "x", "1e400", "[1, 0]", "0",
                "[0, 0]", "[-1]", "[N, -1]", "3", "[true]", "2.0", "-0.5", "[1.5]", "h1.w"]
SETTINGS = ["axis", "keepdims", "perm", "shape", "ta", "tb", "stride", "padding", "dilation", "kernel",
            "p", "salt", "lr", "momentum", "nesterov", "alpha", "eps", "beta1", "beta2", "epochs", "n"]


def m_weird_setting(r, text):
    """Add or change a setting of a call: `f(a, b)` becomes `f(a, b, axis = 1.5)`."""
    calls = [m.end() - 1 for m in re.finditer(r"[A-Za-z_]\w*\([^()]*\)", text)]
    if not calls:
        return text
    i = r.choice(calls)
    arg = r.choice(WEIRD_VALUES)
    if r.random() < 0.6:
        arg = f"{r.choice(SETTINGS)} = {arg}"
    return text[:i] + ", " + arg + text[i:]


def m_weird_call(r, text):
    """Bind a new value to a call of a random op with weird settings."""
    fn = r.choice(NAMES[14:56])
    args = ", ".join(r.choice(["x", "x", "w", "1", r.choice(WEIRD_VALUES),
                               f"{r.choice(SETTINGS)} = {r.choice(WEIRD_VALUES)}"])
                     for _ in range(r.randint(0, 4)))
    stmt = f"\n    zz = {fn}({args})\n"
    ends = [m.start() for m in re.finditer(r"\n\s*output", text)]
    if not ends:
        return f"model m {{\n    input x : f32[2, 3]\n    param w : f32[3, 2]{stmt}    output zz\n}}\n"
    i = r.choice(ends)
    return text[:i] + stmt + text[i:]


def m_same_kind(r, text):
    """Replace a name by a name, or a number by a number: the text still parses, the meaning not."""
    t = _tokens(text)
    names = [i for i, x in enumerate(t) if re.match(r"[A-Za-z_]\w*\Z", x) and x not in KEYWORDS]
    nums = [i for i, x in enumerate(t) if re.match(r"\d", x)]
    for _ in range(r.randint(1, 3)):
        if nums and (not names or r.random() < 0.4):
            t[r.choice(nums)] = r.choice(NUMBERS[:12] + ["7", "16", "0.25"])
        elif names:
            t[r.choice(names)] = r.choice(NAMES)
    return "".join(t)


MUTATORS = [m_same_kind, m_same_kind, m_same_kind, m_weird_setting, m_weird_setting, m_weird_call, m_weird_call,
            m_delete_token, m_duplicate_token, m_swap_tokens, m_replace_token, m_insert_token,
            m_delete_char, m_duplicate_char, m_swap_chars, m_random_byte, m_unicode, m_huge_number,
            m_deep_nesting, m_truncate, m_splice, m_unclosed]


def token_soup(r):
    n = r.randint(0, 60)
    seps = [" ", " ", " ", "\n", "", "\t"]
    out = "".join(r.choice(VOCAB) + r.choice(seps) for _ in range(n))
    return out if r.random() < 0.5 else "model m { " + out + " }"


def random_bytes(r):
    return bytes(r.randrange(256) for _ in range(r.randint(0, 200))).decode("latin-1")


def generate(r: random.Random) -> str:
    k = r.random()
    if k < 0.08:
        return token_soup(r)
    if k < 0.11:
        return random_bytes(r)
    text = r.choice(SEEDS)
    for _ in range(r.choice([1, 1, 1, 2, 3, 5])):
        text = r.choice(MUTATORS)(r, text)
    return text


# -- judging outcomes ---------------------------------------------------------------------------

def judge(text: str):
    """None when the input ended well; otherwise (kind, detail)."""
    try:
        g = lower(text, FILE)
    except DlcError as e:
        if not (e.message and e.message.strip()):
            return "empty-message", repr(e)
        try:
            shown = str(e)
        except Exception as inner:  # noqa: BLE001
            return "str-crash", f"{type(inner).__name__}: {inner}"
        loc = e.loc
        if loc is None:
            return None
        if loc.file == FILE:
            lines = text.split("\n")
            if not (1 <= loc.line <= len(lines)) or loc.col < 1 or loc.col > len(lines[loc.line - 1]) + 1:
                return "location-outside", f"{loc} for a text of {len(lines)} lines: {e.message}"
            # the line (cut around the caret when it is long: errors._window) and the caret under loc.col
            want, col = _window(lines[loc.line - 1].rstrip("\r").expandtabs(1), loc.col)
            if e.source is not None and want.strip() and f"\n    {want}\n    {' ' * (col - 1)}^" not in shown:
                return "caret-line", f"{loc}: shows\n{shown}\nexpected the line {want!r} with the caret at {col}"
        elif loc.file == "prelude.dln":
            if not 1 <= loc.line <= PRELUDE_FILE.read_text().count("\n") + 1:
                return "location-outside", f"{loc} in the prelude"
        else:
            return "location-file", f"{loc}: {e.message}"
        return None
    except Exception as exc:  # noqa: BLE001 - what the fuzzer is for
        where = [f.name for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve().is_relative_to(PKG)]
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:300] + f"  (in {' > '.join(where[-3:])})"
        return f"crash:{type(exc).__name__}", detail
    try:
        verify(g)
    except Exception as exc:  # noqa: BLE001
        return "verify", f"{type(exc).__name__}: {exc}"
    try:
        ir = print_ir(g)
        again = print_ir(parse_ir(ir))
    except Exception as exc:  # noqa: BLE001
        return "ir-round-trip", f"{type(exc).__name__}: {exc}"
    if again != ir:
        return "ir-round-trip", "print(parse(print(g))) != print(g)"
    return None


def _report(problems):
    by_kind: dict[str, list] = {}
    for kind, detail, text in problems:
        by_kind.setdefault(kind, []).append((len(text), text, detail))
    out = []
    for kind, items in sorted(by_kind.items()):
        items.sort()
        out.append(f"== {kind}: {len(items)} inputs; the shortest five:")
        for _, text, detail in items[:5]:
            out.append(f"   input {text!r}\n   -> {detail}")
    return "\n".join(out)


def _run(texts):
    problems = []
    for text in texts:
        res = judge(text)
        if res is not None:
            problems.append((res[0], res[1], text))
    return problems


# -- the tests -------------------------------------------------------------------------------------

def test_seeds_are_valid_models():
    assert len(SEEDS) >= 8
    for s in SEEDS:
        assert judge(s) is None
        verify(lower(s, FILE))


def test_fuzz_lower_fixed_seed():
    r = random.Random(SEED)
    texts = [generate(r) for _ in range(N_RANDOM)]
    old = sys.getrecursionlimit()
    problems = _run(texts)
    assert sys.getrecursionlimit() == old
    # the generator must reach both outcomes, or it is not testing much
    errors = sum(1 for t in texts[:300] if _lowers(t) is False)
    assert 30 < errors < 300, f"{errors} of 300 inputs failed to lower"
    assert not problems, f"{len(problems)} of {len(texts)} inputs ended badly:\n{_report(problems)}"


IR_WORDS = ["%x", "%w", "%y.1", "@", ":", "=", "(", ")", "[", "]", ",", "f32", "i32", "model", "stage",
            "output", "loss", "grad", "optimizer", "freeze", "train", "1", "-1", "2.5", "1e400", "inf",
            "-nan", "null", "true", '"a b"', "N", "add", "matmul", "const", "assign", "state", "param",
            "input", "\n", "#", "prelude.dln:1:1", "%"]


def mutate_ir(r, text):
    k = r.randrange(6)
    if k < 3:
        toks = _tokens(text)
        s = _solid(toks)
        i, j = r.sample(s, 2)
        if k == 0:
            del toks[i]
        elif k == 1:
            toks.insert(i, " " + r.choice(IR_WORDS) + " ")
        else:
            toks[i], toks[j] = toks[j], toks[i]
        return "".join(toks)
    lines = text.split("\n")
    i, j = r.randrange(len(lines)), r.randrange(len(lines))
    if k == 3:
        lines[i], lines[j] = lines[j], lines[i]
    elif k == 4:
        del lines[i]
    else:
        return m_random_byte(r, text)
    return "\n".join(lines)


def test_fuzz_parse_ir_fixed_seed():
    """The IR parser gets the same treatment: mutated IR texts of every stage of the seed models
    end in a located DlcError (a line inside the text) or a graph; if that graph does not verify,
    the verifier says so with a DlcError."""
    texts = []
    for s in SEEDS[:10]:
        m = dlc.compile(s, backend="interp")
        texts += [m.ir(stage) for stage in m.stages]
    texts = [t for t in texts if len(t) < 6000]  # the big ones only cost time
    assert len(texts) >= 10
    r = random.Random(SEED)
    bad = []
    for _ in range(1000):
        text = r.choice(texts)
        for _ in range(r.choice([1, 1, 2, 3])):
            text = mutate_ir(r, text)
        try:
            g = parse_ir(text, "f.ir")
            try:
                verify(g)
            except DlcError:
                pass
        except DlcError as e:
            if not e.message.strip() or e.loc is None or not 1 <= e.loc.line <= text.count("\n") + 1:
                bad.append((text, f"badly located: {e.loc} {e.message}"))
            str(e)
        except Exception as exc:  # noqa: BLE001
            bad.append((text, f"{type(exc).__name__}: {exc}"))
    bad.sort(key=lambda b: len(b[0]))
    assert not bad, f"{len(bad)} IR texts ended badly; the shortest:\n" + "\n".join(
        f"{t!r}\n -> {d}" for t, d in bad[:3])


def _lowers(text):
    try:
        lower(text, FILE)
        return True
    except DlcError:
        return False
    except Exception:  # noqa: BLE001
        return None


# hypothesis: the same property on inputs hypothesis draws and shrinks
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402  (a test requirement)

_settings = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _check(text):
    res = judge(text)
    if res is not None:
        raise AssertionError(f"{res[0]}: {res[1]}\ninput: {text!r}")


@_settings
@given(st.lists(st.sampled_from(VOCAB), max_size=40).map(" ".join))
def test_hypothesis_token_soup(text):
    _check(text)
    _check("model m { " + text + " }")


@_settings
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.sampled_from(MUTATORS), st.integers(0, 2**32 - 1)),
                                        min_size=1, max_size=4))
def test_hypothesis_mutated_models(seed_text, steps):
    text = seed_text
    for mutate, s in steps:
        text = mutate(random.Random(s), text)
    _check(text)


@_settings
@given(st.text(max_size=80))
def test_hypothesis_any_text(text):
    _check(text)
    _check("model m {\n input x : f32[2, 3]\n y = " + text + "\n output y\n}\n")


# -- regressions: each input class below crashed the front end when this fuzzer first ran ------------
# Each now ends in a located DlcError (line 3 of _M) that says what is wrong, or lowers; which of
# the two is asserted, so that a regression either way fails.

_M = "model m {{\n    input x : f32[2, 3]\n    {}\n    output x\n}}\n"


def _rejected(body, message):
    """`body` in a model is a DlcError matching `message`, located on its line and printable."""
    with pytest.raises(DlcError, match=message) as e:
        lower(_M.format(body), FILE)
    loc = e.value.loc
    assert loc is not None and loc.file == FILE and loc.line == 3, loc
    shown, _ = _window("    " + body.split("\n")[0].expandtabs(1), loc.col)  # the line, cut around the caret
    assert "\n    " + shown + "\n" in str(e.value)  # the caret shows that line
    return e.value


# Was a bug: dsl/ast.py ToAst.string: json.loads on the ESCAPED_STRING token raises for escapes
# JSON does not know (\q) and for raw control characters (a tab) inside quotes; it escaped as a
# Lark VisitError instead of a located DlcError
def test_regression_unknown_string_escape():
    _rejected('y = "\\q"', r"invalid string literal")


# docs/language.md: a string has JSON escapes, and JSON has no raw control characters inside
# quotes (a tab is written \t). Was a bug: the front end accepted a raw tab (json.loads with
# strict=False in dsl/ast.py ToAst.string).
def test_regression_raw_tab_in_a_string_is_rejected():
    _rejected('y = "a\tb"', r"string")


def test_escaped_tab_in_a_string_is_accepted():
    g = lower(_M.format('y = "a\\tb"'), FILE)  # the two characters \ t: a JSON escape
    verify(g)


_BIG = "9" * 400


# Was a bug: dsl/ast.py ToAst.number + dsl/frontend.py: integer literals are unbounded. Over 4300
# digits int() raises ValueError (escaping as a Lark VisitError); a 400-digit literal crashes
# float() in _Lowerer.tensor / init / settings (OverflowError); and a tensor type built from such
# dims crashes formatting its element count in the error message (ValueError from str(int))
@pytest.mark.parametrize("body", [
    "y = " + "9" * 5000,
    f"y = x * {_BIG}",
    f"param v : f32[3] = normal(0, {_BIG})",
    f"minimize sum(x) with adam(lr = {_BIG})",
    "param v : f32[" + ", ".join(["9" * 1000] * 5) + "]",
], ids=["5000-digit literal", "tensor constant", "initialiser", "optimizer setting", "type"])
def test_regression_huge_integer_literals(body):
    _rejected(body, r"integer 9+\.\.\. is too large")


# Was a bug: ir/ops.py _transpose_rule: a perm that is not a list of ints (perm = 3, [0, "a"],
# [1, 0.0]) raises TypeError from tuple()/sorted()/shape indexing instead of a DlcError
@pytest.mark.parametrize("body", ["y = transpose(x, perm = 3)", 'y = transpose(x, [0, "a"])',
                                  "y = transpose(x, [1, 0.0])"])
def test_regression_transpose_perm_type(body):
    _rejected(body, r"transpose perm must be a list of axes")


# Was a bug: ir/types.py normalize_axes: an axis that is neither an int nor a list (axis = 1.5) is
# iterated and raises TypeError instead of a DlcError
@pytest.mark.parametrize("body", ["y = sum(x, axis = 1.5)", "y = softmax(x, axis = 0.5)"])
def test_regression_axis_type(body):
    _rejected(body, r"axis must be an integer or a list of integers, found [01]\.5")


# Was a bug: ir/errors.py DlcError.__str__ (and Graph.source_line) pick the caret line with
# str.splitlines(), which also breaks at \r, \x0c, \x85, \u2028...; Lark counts only \n, so
# the message shows a different line than the one its location names
@pytest.mark.parametrize("sep", ["\u2028", "\x0c", "\r"])
def test_regression_caret_line_with_other_line_breaks(sep):
    text = f"model m {{ # a{sep}b\n    input x : f32[2, 3]\n    y = q\n    output x\n}}\n"
    with pytest.raises(DlcError) as e:
        lower(text, FILE)
    assert e.value.loc.line == 3
    assert "\n        y = q\n" in str(e.value) + "\n", str(e.value)


# Was a bug: dsl/frontend.py settings(): a setting whose default is REQUIRED (sgd's lr) skips the
# type check, so sgd(lr = "a") and sgd(lr = 10**400) lower, and dlc.compile then crashes in
# passes/optimizer.py (ValueError: could not convert string to float / OverflowError)
@pytest.mark.parametrize("lr", ['"a"', "1" + "0" * 400])
def test_regression_optimizer_setting_type(lr):
    src = ('model m {\n    input x : f32[2, 3]\n    param w : f32[3]\n'
           f'    minimize sum(x * w) with sgd(lr = {lr})\n}}\n')
    with pytest.raises(DlcError):
        dlc.compile(src, backend="interp")


# Was a bug: ir/ops.py _axis_rule (softmax, log_softmax): normalize_axes accepts a list of axes,
# so softmax(x, axis = [0, 1]) type-checks, and the NumPy reference then raises TypeError at run
# time
def test_regression_softmax_axis_list():
    src = "model m {\n    input x : f32[2, 3]\n    y = softmax(x, axis = [0, 1])\n    output y\n}\n"
    with pytest.raises(DlcError, match=r"softmax takes one axis, found \[0, 1\]") as e:
        dlc.compile(src, backend="interp")
    assert e.value.loc is not None and e.value.loc.line == 3


# -- regressions: each was a bug found by this file, now fixed --

@pytest.mark.parametrize("body", ['y = sum(x, keepdims = "yes")', "y = matmul(x, x, tb = 1)",
                                  "y = dropout(x, 0.5, salt = 1.5)"])
def test_op_setting_types_are_checked(body):
    with pytest.raises(DlcError):
        lower(_M.format(body), FILE)
