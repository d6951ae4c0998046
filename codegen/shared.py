"""Static shared memory: how many bytes of `__shared__` arrays one block of a kernel uses.

Read from the kernel's rendered C, not declared beside it: a template's arrays and their sizes
are its own business, and what the plan records (`Launch.shared`) is what ptxas would count,
so a template that changes its arrays cannot leave the plan behind. The runtimes refuse a launch
over 48 KiB (runtime/runner.py, check_launch); tests/test_kernel_stats.py checks the count
against ptxas.
"""
from __future__ import annotations

import ast
import functools
import re

from ..ir.errors import DlcError
from .plan import TEMPLATES

SHARED_TYPE_BYTES = {"float": 4, "dlc_bf16": 2, "int": 4, "unsigned": 4, "unsigned int": 4, "float4": 16, "double": 8}
_SHARED_DECL = re.compile(r"(?:__align__\((\d+)\)\s*)?__shared__\s+(?:__align__\((\d+)\)\s*)?"
                          r"((?:(?:volatile|const|unsigned)\s+)*\w+)\s+(\w+)\s*((?:\[[^\]]*\]\s*)*);")
_HELPER = re.compile(r"^static __device__[^(]*?\b(\w+)\(", re.M)
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def shared_bytes(body: str) -> int:
    """The static shared memory one block of a kernel uses, in bytes, as ptxas counts it: the
    `__shared__` arrays its rendered body declares (constant sizes, each placed at its alignment
    after the previous one) plus those of module.cu.j2's helpers it calls (`block_sum` and
    `block_max` each have their own `partial[32]`). check_launch (runtime/runner.py) refuses a
    launch over 48 KiB, what every GPU since Volta gives static shared memory; the figure is
    checked against ptxas in tests/test_kernel_stats.py. dlc emits no dynamic shared memory
    (`extern __shared__`): a plan has no place for its size, so a body declaring it is an error."""
    code = _COMMENT.sub("", body)
    called = [decls for name, decls in _helper_shared().items() if re.search(rf"\b{name}\s*\(", code)]
    return _declared_shared("\n".join([code, *called]), "a kernel")


@functools.lru_cache(maxsize=None)
def _helper_shared() -> dict[str, str]:
    """The `__shared__` declarations (C text) of each `static __device__` helper of module.cu.j2
    that has some. A helper calling another that has shared memory is not followed: none does."""
    text = _COMMENT.sub("", (TEMPLATES / "module.cu.j2").read_text())
    starts = [m.start() for m in _HELPER.finditer(text)] + [len(text)]
    out = {}
    for a, b in zip(starts, starts[1:]):
        decls = [m.group(0) for m in _SHARED_DECL.finditer(text[a:b])]
        if decls:
            out[_HELPER.match(text, a).group(1)] = "\n".join(decls)
    return out


def _declared_shared(code: str, what: str) -> int:
    """Bytes of the `__shared__` declarations in C code (comments ignored), in order, each
    aligned to its `__align__` or its element size."""
    code = _COMMENT.sub("", code)
    if re.search(r"\bextern\s+__shared__|__shared__[^;]*\[\s*\]", code):
        raise DlcError(f"codegen: {what} declares dynamic shared memory (extern __shared__), which the launch "
                       "plan cannot size: declare a static __shared__ array")
    decls = list(_SHARED_DECL.finditer(code))
    if len(decls) != code.count("__shared__"):
        raise DlcError(f"codegen: cannot read the __shared__ declarations of {what} (one array a declaration, "
                       f"constant sizes): {re.findall(r'[^;{}]*__shared__[^;]*;?', code)}")
    total = 0
    for m in decls:
        ctype = re.sub(r"\b(volatile|const)\s+", "", m.group(3)).strip()
        if ctype not in SHARED_TYPE_BYTES:
            raise DlcError(f"codegen: __shared__ array {m.group(4)} of {what} has type {ctype!r}, of unknown size "
                           f"(known: {', '.join(SHARED_TYPE_BYTES)})")
        n = SHARED_TYPE_BYTES[ctype]
        for d in re.findall(r"\[([^\]]*)\]", m.group(5)):
            n *= _const_int(d, f"__shared__ array {m.group(4)} of {what}")
        align = int(m.group(1) or m.group(2) or SHARED_TYPE_BYTES[ctype])
        total = -(-total // align) * align + n
    return total


def _const_int(expr: str, what: str) -> int:
    """An array dimension written as a constant C expression of ints (+ - * / % and parentheses)."""
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a // b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b}

    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](ev(node.left), ev(node.right))
        raise DlcError(f"codegen: {what} has a size that is not a constant: [{expr}]")
    try:
        return ev(ast.parse(expr.strip(), mode="eval").body)
    except SyntaxError:
        raise DlcError(f"codegen: {what} has a size that is not a constant: [{expr}]") from None
