"""Pooling: `pool` (maxpool2d, avgpool2d: one thread per output) and `pool_grad` (their adjoints:
one thread per element of the input). NCHW; the op's entry names its template, and the window's
geometry is handed to it as C constants (geometry.cu.j2).
"""
from __future__ import annotations

from ..ir.ops import OPS
from .core import Emission, Generator
from .pointwise import ELEMENTWISE_BLOCK
from .sizes import Size, ceil_div, pair


def emit_pool(gen: Generator, n: str, em: Emission) -> None:
    """(x) -> y, one thread per output."""
    _pool(gen, n, gen.g.operands(n)[0], gen.g.type(n).shape)


def emit_pool_grad(gen: Generator, n: str, em: Emission) -> None:
    """(g, x, ...) -> dx, one thread per element of x."""
    gy, x = gen.g.operands(n)[:2]
    _pool(gen, n, x, gen.g.type(gy).shape)


def _pool(gen: Generator, n: str, x: str, y_shape) -> None:
    a = gen.g.attrs(n)
    consts = _geometry(gen.g.type(x).shape, y_shape, a, pair(a["kernel"]))
    _per_element(gen, n, OPS[gen.g.op(n)].kernel["template"], consts)


def _geometry(x_shape, out_shape, attrs, kernel):
    """C constants of the pooling templates (geometry.cu.j2): sizes, kernel, stride, the padding
    before (PH, PW) and after (PB, PR) each axis, and for average pooling whether the padding
    counts in a window's divisor (CIP)."""
    n, c, h, w = (Size.of([d]).c() for d in x_shape)
    _, o, ho, wo = (Size.of([d]).c() for d in out_shape)
    stride = attrs.get("stride")
    sh, sw = pair(kernel if stride is None else stride)
    pad = attrs.get("padding", 0)
    pad = list(pad) if isinstance(pad, (list, tuple)) else [pad]
    ph, pw, pb, pr = pad * 4 if len(pad) == 1 else pad + pad if len(pad) == 2 else pad
    kh, kw = kernel
    consts = [("N", n), ("C", c), ("H", h), ("W", w), ("O", o), ("Ho", ho), ("Wo", wo), ("KH", kh), ("KW", kw),
              ("SH", sh), ("SW", sw), ("PH", ph), ("PW", pw), ("PB", pb), ("PR", pr)]
    if "count_include_pad" in attrs:
        consts.append(("CIP", int(attrs["count_include_pad"])))
    return consts


def _per_element(gen: Generator, n: str, template: str, consts: list) -> None:
    size = Size.of(gen.g.type(n).shape)
    gen.add(n, template, dict(consts=consts, size=size.c()), gen.temp(n), gen.ins(n),
            [ceil_div(size, ELEMENTWISE_BLOCK), 1, 1], [ELEMENTWISE_BLOCK, 1, 1])
