"""Products on the tensor cores (precision tf32 / bf16): matmul_mma.cu.j2 and the emulation of
mma.sync in cuda_emu.h, run on the CPU by the emu backend, against a NumPy/PyTorch reference
built from ir/precision.py: operands rounded as the hardware conversions round them, products
summed in float64, the result rounded to float32 (and, at bf16, to BF16).

- the fragment layout: products by a permutation matrix, whose every output is one input element
  (times 1): exact equality, so a wrong fragment index shows as a wrong element;
- the rounding helpers (dlc_round_tf32, dlc_round_bf16) on ties, negatives, infinities, NaN,
  through a product by [[1]];
- every gemm() call site (matmul nn/nt/tn/tt, batched, a shared matrix, the batch folded into the
  rows, split-K, conv, conv_grad_x, conv_grad_w, groups), at -O0 and at -O2 with fused epilogues;
- NVRTC compiles the kernels of every example and test model (and random graphs) at every
  precision for sm_80 and sm_90, and each product kernel's PTX holds the warp-level product of
  its precision;
- the cuda backend refuses a tensor-core precision on a GPU older than sm_80 (CuPy stand-in).
"""
import ctypes
import re
import sys
import types
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dlc
from dlc.codegen import generate
from dlc.ir.errors import DlcError
from dlc.ir.ops import OPS
from dlc.ir.registry import PRODUCT_FAMILIES
from dlc.ir.precision import product_precision, round_bf16, round_operand, round_tf32
from dlc.runtime.cuda import CudaBackend, cuda_available
from dlc.runtime.emu import EmuBackend
from conftest import EXAMPLE_FILES, IMAGENET_FILES, import_torch, needs_emu
from test_codegen import MODELS, build_random_graph, recipes

PRECISIONS = ("tf32", "bf16")
MMA = {"tf32": "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
       "bf16": "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"}


ORDERS = {"forward": (0, 0), "reverse": (1, 0), "shuffled": (2, 2024)}   # cuda_emu.h's thread orders


GPU_OK, GPU_WHY = cuda_available()
BACKENDS = ["emu", pytest.param("cuda", marks=pytest.mark.skipif(not GPU_OK, reason=f"no GPU: {GPU_WHY}"))]


def run_emu(text, precision, feeds, fetch, opt_level=2, state=None, order="forward", backend="emu"):
    """Build `text` at `precision`, run it on emu with `feeds` (inputs) and `state` (params), the
    threads of each block in `order` (a race between warps shows in some order): {name: value}
    for each name in `fetch` (an output, or a param's gradient as "d.<param>"). With `backend`
    "cuda", the same on the GPU (the hardware's mma.sync; `order` does not apply)."""
    b = dlc.build(text, opt_level=opt_level, precision=precision)
    g = b.graph
    runner = EmuBackend(g) if backend == "emu" else CudaBackend(g)
    if state:
        runner.set_state({k: np.asarray(v, np.float32) for k, v in state.items()})
    names = {**g.meta.outputs, **{f"d.{p}": d for p, d in g.meta.grads.items()}}
    if backend == "cuda":
        got = runner.run([names[f] for f in fetch], feeds)
        return {f: np.asarray(got[names[f]]) for f in fetch}
    assert runner.lib.dlc_emu_set_order(ctypes.c_int(ORDERS[order][0]), ctypes.c_ulonglong(ORDERS[order][1])) == 0
    try:
        got = runner.run([names[f] for f in fetch], feeds)
    finally:
        runner.lib.dlc_emu_set_order(ctypes.c_int(0), ctypes.c_ulonglong(0))
    return {f: got[names[f]] for f in fetch}


def rounded(x, precision):
    """An operand as the tensor cores read it, in float64 (every such value is exact there)."""
    return round_operand(np.asarray(x, np.float32), precision).astype(np.float64)


def finish(v, precision):
    """The product's float64 value as the kernel stores it: float32, then BF16 at bf16."""
    v = np.asarray(v, np.float64).astype(np.float32)
    return round_bf16(v) if precision == "bf16" else v


def assert_product(got, exact, mag, depth, precision, what, epilogue=False, hardware=False):
    """got (the kernel's float32) against `exact`: the product of the rounded operands in float64,
    where `mag` is the same product of their magnitudes. With `epilogue`, `exact` is the fused
    epilogue (relu(p + bias)) of the reference's own stored product p.

    Tolerance: the kernel adds `depth` exact products in fp32 (in another order than the
    reference, which adds in float64), so each sum is within depth * 2^-24 * mag of the exact
    one (for depth <= 1024, below 1e-4 of mag); the store rounds to float32 (2^-24 of the value),
    an epilogue's fp32 add once more. At bf16 a product is stored rounded to BF16: within half a
    BF16 ulp (2^-8 of the value) of the sum, and exactly a BF16 value (checked: its low 16 bits
    are zero); an epilogue starts from that rounding and the reference's, which may be neighbours
    (one BF16 ulp, at most 2^-7 of |p| <= mag) when the two sums straddle a rounding boundary.
    A product of unrounded operands (a missing conversion) would be off by about 2^-11 (TF32)
    or 2^-8 (BF16) of mag, outside these bounds. On the GPU (`hardware`) each of the tensor
    cores' internal additions is allowed a whole fp32 ulp (2^-23) instead of half: their
    rounding mode is not documented."""
    got, exact, mag = (np.asarray(x, np.float64) for x in (got, exact, mag))
    assert got.shape == exact.shape, f"{what}: shape {got.shape} != {exact.shape}"
    unit = 2.0 ** -23 if hardware else 2.0 ** -24
    assert hardware or depth * unit <= 1e-4   # on emu, within 1e-4 of the magnitudes (depth <= 1024 here)
    tol = depth * unit * mag + 2 * 2.0 ** -24 * np.abs(exact)
    if precision == "bf16" and epilogue:
        tol += 2.0 ** -7 * mag
    elif precision == "bf16":
        tol += 2.0 ** -8 * np.abs(exact)
        low = np.asarray(got, np.float32).view(np.uint32) & 0xffff
        assert not low.any(), f"{what}: not rounded to BF16 at {np.argwhere(low)[0]}"
    err = np.abs(got - exact)
    bad = err > tol
    if bad.any():
        at = tuple(np.argwhere(bad)[0])
        raise AssertionError(f"{what}: NOT OK, maxdiff {err.max():.3g}, at {at}: got {got[at]!r}, want {exact[at]!r}")


# -- the fragment layout ---------------------------------------------------------------------------

LAYOUT = """model layout {{
    input a  : f32[{M}, {K}]
    input at : f32[{K}, {M}]
    input p  : f32[{K}, {K}]
    input b  : f32[{K}, {M}]
    input bt : f32[{M}, {K}]
    ap  = a @ p
    atp = matmul(at, p, ta = true)
    pb  = p @ b
    pbt = matmul(p, bt, tb = true)
    output ap, atp, pb, pbt
}}"""


@needs_emu
@pytest.mark.parametrize("backend, order", [("emu", o) for o in sorted(ORDERS)] + [
    pytest.param("cuda", "forward", marks=pytest.mark.skipif(not GPU_OK, reason=f"no GPU: {GPU_WHY}"))])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("M, K", [(40, 24), (70, 40)], ids=["short-tile", "64x64-tile"])
def test_fragment_layout_by_permutations(precision, M, K, backend, order):
    """A @ P and P @ B for a permutation P: out[i, j] = A[i, perm[j]], (P @ B)[perm[k]] = B[k],
    one product by 1 each, so the result is exact: the rounded input element, at the place the
    permutation puts it. Every output depends on a distinct input element (A's and B's values
    are distinct), so an element read from a wrong lane or register of a fragment shows as a
    wrong value. In every thread order: a slice staged into a buffer that another warp still
    reads (a missing barrier of the double buffering) shows in some order. On a GPU (backend
    cuda) the hardware's fragments must agree: the same exact results."""
    rng = np.random.default_rng(24)
    perm = rng.permutation(K)
    P = np.zeros((K, K), np.float32)
    P[perm, np.arange(K)] = 1.0            # (A @ P)[:, j] = A[:, perm[j]]
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, M)).astype(np.float32)
    assert len(np.unique(A)) == A.size and len(np.unique(B)) == B.size
    got = run_emu(LAYOUT.format(M=M, K=K), precision, {"a": A, "at": A.T.copy(), "p": P, "b": B, "bt": B.T.copy()},
                  ["ap", "atp", "pb", "pbt"], order=order, backend=backend)
    ra, rb = round_operand(A, precision), round_operand(B, precision)
    pb = np.empty_like(rb)
    pb[perm] = rb                          # (P @ B)[perm[k], :] = B[k, :]
    for name, want in (("ap", ra[:, perm]), ("atp", ra[:, perm]), ("pb", pb), ("pbt", pb)):
        np.testing.assert_array_equal(got[name], want, err_msg=f"{name} ({precision}, {M}x{K})")
    # the operands were rounded: the result is not the fp32 input (a check that could fail)
    assert not np.array_equal(got["ap"], A[:, perm])


# -- the rounding helpers --------------------------------------------------------------------------

SPECIAL = np.array([
    0x3f801000, 0xbf801000,   # 1 + 2^-11, negated: a TF32 tie (away from zero: 1 + 2^-10)
    0x3f803000, 0x3f800fff,   # a TF32 tie above an odd last bit; just below a tie
    0x3f808000, 0xbf808000,   # 1 + 2^-8: a BF16 tie, to even (1)
    0x3f818000, 0x3f817fff,   # a BF16 tie above an odd last bit (to even, up); just below one
    0x7f7fffff, 0xff7fffff,   # the largest finite values: both round past it, to infinity
    0x7f800000, 0xff800000,   # infinities pass through
    0x7fc00000, 0x00000000,   # a NaN; zero
    0x00001000, 0x00008000,   # subnormal ties
    0x40490fdb, 0xc02df854,   # pi, -e
], dtype=np.uint32).view(np.float32)

ROUNDING = """model rounding {{
    input x   : f32[{n}, 1]
    input one : f32[1, 1]
    y = x @ one
    output y
}}"""


@needs_emu
@pytest.mark.parametrize("precision", PRECISIONS)
def test_rounding_helpers_match_ir_precision(precision):
    """x @ [[1]]: each output is the rounded operand (times 1, plus nothing): dlc_round_tf32 /
    dlc_round_bf16 in the kernel, compared bit for bit with ir/precision.py (and, for BF16, with
    PyTorch's conversion, which rounds to nearest even too)."""
    x = np.concatenate([SPECIAL, np.random.default_rng(1).standard_normal(45).astype(np.float32)])
    got = run_emu(ROUNDING.format(n=x.size), precision, {"x": x[:, None], "one": np.ones((1, 1), np.float32)},
                  ["y"])["y"][:, 0]
    want = round_tf32(x) if precision == "tf32" else round_bf16(x)
    nan = np.isnan(want)
    assert (np.isnan(got) == nan).all()
    np.testing.assert_array_equal(got[~nan], want[~nan])     # (+0 and -0 compare equal: 0 + -0 is +0)
    assert np.isinf(got[8:12]).all()
    if precision == "tf32":
        assert got[0] == np.float32(1 + 2 ** -10) and got[1] == -np.float32(1 + 2 ** -10)
    if precision == "bf16":
        torch = import_torch()
        oracle = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
        np.testing.assert_array_equal(got[~nan], oracle[~nan])
        assert got[4] == 1.0 and got[6] == np.float32(1 + 2 ** -6)


# -- every gemm() call site against the rounded reference -------------------------------------------

def _matmuls(rng, precision):
    """matmul nn/nt/tn/tt, with a fused epilogue at -O2 (relu(a @ b + bias))."""
    M, K, N = 37, 29, 21
    a, b = rng.standard_normal((M, K)), rng.standard_normal((K, N))
    bias = rng.standard_normal(N)
    text = f"""model mm {{
        input a : f32[{M}, {K}]
        input at : f32[{K}, {M}]
        input b : f32[{K}, {N}]
        input bt : f32[{N}, {K}]
        input bias : f32[{N}]
        nn = relu(a @ b + bias)
        nt = matmul(a, bt, tb = true)
        tn = matmul(at, b, ta = true)
        tt = matmul(at, bt, ta = true, tb = true)
        output nn, nt, tn, tt
    }}"""
    feeds = {"a": a, "at": a.T, "b": b, "bt": b.T, "bias": bias}
    ra, rb = rounded(a, precision), rounded(b, precision)
    prod, mag = ra @ rb, np.abs(ra) @ np.abs(rb)
    relu = np.maximum(finish(prod, precision).astype(np.float64) + bias.astype(np.float32), 0)
    return text, feeds, None, {"nn": (relu, mag, K, True), "nt": (prod, mag, K), "tn": (prod, mag, K),
                               "tt": (prod, mag, K)}


def _batched(rng, precision):
    """A batch of products (blockIdx.z), a matrix shared by the batch, the batch folded into rows."""
    B, M, K, N = 3, 20, 24, 18
    x, y = rng.standard_normal((B, M, K)), rng.standard_normal((B, K, N))
    w, v = rng.standard_normal((K, N)), rng.standard_normal((M, K))
    text = f"""model bmm {{
        input x : f32[{B}, {M}, {K}]
        input y : f32[{B}, {K}, {N}]
        input w : f32[{K}, {N}]
        input v : f32[{M}, {K}]
        both = x @ y
        folded = x @ w
        shared = v @ y
        output both, folded, shared
    }}"""
    rx, ry, rw, rv = (rounded(t, precision) for t in (x, y, w, v))
    return text, {"x": x, "y": y, "w": w, "v": v}, None, {
        "both": (rx @ ry, np.abs(rx) @ np.abs(ry), K),
        "folded": (rx @ rw, np.abs(rx) @ np.abs(rw), K),
        "shared": (rv @ ry, np.abs(rv) @ np.abs(ry), K)}


def _split_k(rng, precision):
    """Short, deep products: split-K (20 parts), one with its epilogue fused into the finishing
    kernel at -O2."""
    M, K, N = 6, 640, 10
    a, b, c = rng.standard_normal((M, K)), rng.standard_normal((K, N)), rng.standard_normal((K, N))
    bias = rng.standard_normal(N)
    text = f"""model splitk {{
        input a : f32[{M}, {K}]
        input b : f32[{K}, {N}]
        input c : f32[{K}, {N}]
        input bias : f32[{N}]
        y = relu(a @ b + bias)
        z = a @ c
        output y, z
    }}"""
    ra, rb, rc = rounded(a, precision), rounded(b, precision), rounded(c, precision)
    prod, mag = ra @ rb, np.abs(ra) @ np.abs(rb)
    relu = np.maximum(finish(prod, precision).astype(np.float64) + bias.astype(np.float32), 0)
    return text, {"a": a, "b": b, "c": c, "bias": bias}, None, {
        "y": (relu, mag, K, True), "z": (ra @ rc, np.abs(ra) @ np.abs(rc), K)}


def _convolutions(rng, precision):
    """conv2d (strided, padded) and grouped (one product per group, blockIdx.z), and their
    adjoints: loss = sum(y * t) makes the gradients conv_grad_x(t, w) and conv_grad_w(h, t) of
    leaves; the ungrouped grad_w sums over 4 images x 81 pixels: split-K (10 parts)."""
    torch = import_torch()
    F = torch.nn.functional
    h, w, t = rng.standard_normal((4, 3, 18, 18)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((4, 4, 9, 9))
    h2, w2, t2 = rng.standard_normal((4, 4, 16, 16)), rng.standard_normal((6, 2, 3, 3)), rng.standard_normal((4, 6, 16, 16))
    text = """model convs {
        param h : f32[4, 3, 18, 18] = zeros
        param w : f32[4, 3, 3, 3] = zeros
        param h2 : f32[4, 4, 16, 16] = zeros
        param w2 : f32[6, 2, 3, 3] = zeros
        input t : f32[4, 4, 9, 9]
        input t2 : f32[4, 6, 16, 16]
        y = conv2d(h, w, stride = 2, padding = 1)
        y2 = conv2d(h2, w2, padding = 1, groups = 2)
        loss = sum(y * t) + sum(y2 * t2)
        output y, y2
        minimize loss with sgd(lr = 0.1)
    }"""
    T = {k: torch.from_numpy(rounded(v, precision)) for k, v in dict(h=h, w=w, t=t, h2=h2, w2=w2, t2=t2).items()}
    A = {k: v.abs() for k, v in T.items()}

    def both(f, *names):  # (f of the rounded operands, f of their magnitudes)
        return f(*(T[n] for n in names)).numpy(), f(*(A[n] for n in names)).numpy()

    def conv(g, s, p):
        return lambda x, k: F.conv2d(x, k, stride=s, padding=p, groups=g)

    def grad_x(shape, g, s, p):
        return lambda k, gy: torch.nn.grad.conv2d_input(shape, k, gy, stride=s, padding=p, groups=g)

    def grad_w(shape, g, s, p):
        return lambda x, gy: torch.nn.grad.conv2d_weight(x, shape, gy, stride=s, padding=p, groups=g)

    # the adjoint of sum(y * t) is t (exactly: 1 * t), and the products read it rounded
    return text, {"t": t, "t2": t2}, {"h": h, "w": w, "h2": h2, "w2": w2}, {
        "y": (*both(conv(1, 2, 1), "h", "w"), 3 * 9),
        "y2": (*both(conv(2, 1, 1), "h2", "w2"), 2 * 9),
        "d.h": (*both(grad_x(h.shape, 1, 2, 1), "w", "t"), 4 * 9),
        "d.w": (*both(grad_w(w.shape, 1, 2, 1), "h", "t"), 4 * 81),
        "d.h2": (*both(grad_x(h2.shape, 2, 1, 1), "w2", "t2"), 3 * 9),
        "d.w2": (*both(grad_w(w2.shape, 2, 1, 1), "h2", "t2"), 4 * 256)}


CASES = {"matmul": _matmuls, "batched": _batched, "split_k": _split_k, "conv": _convolutions}


@needs_emu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opt_level", [0, 2])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("precision", PRECISIONS)
def test_products_match_rounded_reference(precision, case, opt_level, backend):
    """Each product of the case on emu (and on a GPU, where there is one) against the rounded
    reference (`assert_product`); at -O2 the relu(a @ b + bias) outputs run as the product
    kernel's fused epilogue."""
    rng = np.random.default_rng(zlib.crc32(f"{case} {precision}".encode()))
    text, feeds, state, want = CASES[case](rng, precision)
    feeds = {k: np.asarray(v, np.float32) for k, v in feeds.items()}
    got = run_emu(text, precision, feeds, sorted(want), opt_level=opt_level, state=state, backend=backend)
    for name, (exact, mag, depth, *epilogue) in want.items():
        assert_product(got[name], exact, mag, depth, precision, f"{case} {name} ({precision}, -O{opt_level})",
                       epilogue=bool(epilogue), hardware=backend == "cuda")


def _floored(rng, precision):
    """Products with a floor (`min_precision`) beside one without, in one module: y at least tf32,
    the convolution c at fp32 (the CUDA-core tile between tensor-core ones), z at the graph's
    precision; the floor carries to the adjoints d.h and d.w of y's product."""
    torch = import_torch()
    M, K, N = 20, 24, 12
    h, w, t = rng.standard_normal((M, K)), rng.standard_normal((K, N)), rng.standard_normal((M, N))
    h2, w2 = rng.standard_normal((M, K)), rng.standard_normal((K, N))
    x, k = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3))
    text = f"""model floors {{
        param h : f32[{M}, {K}] = zeros
        param w : f32[{K}, {N}] = zeros
        input t : f32[{M}, {N}]
        input h2 : f32[{M}, {K}]
        input w2 : f32[{K}, {N}]
        input x : f32[2, 3, 6, 6]
        input k : f32[4, 3, 3, 3]
        y = matmul(h, w, min_precision = "tf32")
        z = h2 @ w2
        c = conv2d(x, k, padding = 1, min_precision = "fp32")
        loss = sum(y * t)
        output y, z, c
        minimize loss with sgd(lr = 0.1)
    }}"""
    fine = "tf32" if precision == "bf16" else precision   # the finer of the graph's and tf32
    r = lambda a, p: rounded(a, p)  # noqa: E731
    F = torch.nn.functional
    conv = F.conv2d(torch.from_numpy(r(x, "fp32")), torch.from_numpy(r(k, "fp32")), padding=1).numpy()
    conv_mag = F.conv2d(torch.from_numpy(np.abs(r(x, "fp32"))), torch.from_numpy(np.abs(r(k, "fp32"))), padding=1).numpy()
    return text, {"t": t, "h2": h2, "w2": w2, "x": x, "k": k}, {"h": h, "w": w}, {
        "y": ((r(h, fine) @ r(w, fine)), np.abs(r(h, fine)) @ np.abs(r(w, fine)), K, fine),
        "z": ((r(h2, precision) @ r(w2, precision)), np.abs(r(h2, precision)) @ np.abs(r(w2, precision)), K, precision),
        "c": (conv, conv_mag, 27, "fp32"),
        "d.h": ((r(t, fine) @ r(w, fine).T), np.abs(r(t, fine)) @ np.abs(r(w, fine)).T, N, fine),
        "d.w": ((r(h, fine).T @ r(t, fine)), np.abs(r(h, fine)).T @ np.abs(r(t, fine)), M, fine)}


@needs_emu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opt_level", [0, 2])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_products_floor_sets_its_precision_in_the_kernels(precision, opt_level, backend):
    """Kernels of three precisions in one module, each product at the finer of the graph's
    precision and its `min_precision` (ir/precision.py product_precision), against the reference
    rounded at that precision: a floored product rounded at the graph's precision instead (a
    BF16 result, or BF16 operands) is outside assert_product's bounds."""
    rng = np.random.default_rng(zlib.crc32(f"floors {precision}".encode()))
    text, feeds, state, want = _floored(rng, precision)
    feeds = {k: np.asarray(v, np.float32) for k, v in feeds.items()}
    got = run_emu(text, precision, feeds, sorted(want), opt_level=opt_level, state=state, backend=backend)
    for name, (exact, mag, depth, at) in want.items():
        assert_product(got[name], exact, mag, depth, at, f"floors {name} ({precision} graph, {at}, -O{opt_level})",
                       hardware=backend == "cuda")


# -- NVRTC: every kernel at every precision, for sm_80 and sm_90 -------------------------------------

def _ptx_functions(ptx: str) -> dict[str, str]:
    """kernel name -> its PTX text (from its .entry to the next one)."""
    parts = re.split(r"(?=\.visible \.entry|\.entry\s)", ptx)
    return {m.group(1): p for p in parts for m in [re.search(r"\.entry\s+(\w+)\s*\(", p)] if m}


@pytest.mark.usefixtures("nvrtc")
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("source", list(EXAMPLE_FILES) + IMAGENET_FILES + sorted(MODELS),
                         ids=lambda s: s if isinstance(s, str) else s.stem)
def test_kernels_compile_at_every_precision(source, precision):
    """Every kernel of each example, full-size net (examples/imagenet/: 3 to 18 s each here) and test
    model (-O2) compiles for sm_80 and sm_90, and every product kernel (matmul_mma.cu.j2) issues the
    warp-level product of its own precision (the graph's, or its floor's: product_precision) and
    stages by cp.async; no other kernel does."""
    _check_kernels(MODELS.get(source, source), precision, fp32_tiles=0)


@pytest.mark.usefixtures("nvrtc")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_kernels_of_mixed_precisions_compile(precision):
    """A module with floored products (`_floored`: a tf32 floor, an fp32 one and a plain product,
    and the floored product's adjoints): each product kernel issues its own precision's mma.sync,
    and the fp32-floored convolution is the CUDA-core tile."""
    text = _floored(np.random.default_rng(0), precision)[0]
    assert set(_check_kernels(text, precision, fp32_tiles=1).values()) == {"tf32", precision}


def _check_kernels(source, precision, fp32_tiles):
    from dlc.codegen.nvrtc import ARCHS, check_module
    g = dlc.build(source, opt_level=2, precision=precision).graph
    mod = generate(g)
    products = {k.name: k.ctx["precision"] for k in mod.kernels if k.template == "matmul_mma.cu.j2"}
    assert sum(k.template == "matmul.cu.j2" for k in mod.kernels) == fp32_tiles   # the others on the tensor cores
    g = mod.graph
    for launch in mod.launches:   # the product a kernel computes: its node, or the one in its fusion group
        if launch.kernel in products:
            group = g.meta.groups.get(launch.node, (None, [launch.node]))[1]
            (prod,) = [n for n in group if OPS[g.op(n)].family in PRODUCT_FAMILIES]
            assert products[launch.kernel] == product_precision(g, prod), launch.kernel
    for arch, ptx in check_module(mod, archs=ARCHS).items():
        assert f".target {arch}" in ptx
        for name, text in _ptx_functions(ptx).items():
            for p, instruction in MMA.items():
                assert (instruction in text) == (products.get(name) == p), f"{name} ({arch}, {p})"
            assert ("cp.async" in text) == (name in products), f"{name} ({arch})"
    return products


@pytest.mark.usefixtures("nvrtc")
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipes, st.sampled_from(PRECISIONS))
def test_random_graph_kernels_compile_at_tensor_core_precisions(recipe, precision):
    """test_nvrtc's random graphs (products with symbolic rows, fused epilogues, split weight
    gradients), generated at tf32 / bf16: every kernel compiles for sm_80 and sm_90."""
    from dlc.codegen.nvrtc import ARCHS, check_module
    g = build_random_graph(recipe)
    g.meta.precision = precision   # what dlc.build(..., precision=) sets; codegen reads it
    mod = generate(g)
    check_module(mod, archs=ARCHS)


# -- the cuda backend: a GPU without tensor cores is refused -----------------------------------------

@needs_emu  # the CuPy stand-in (tests/fake_cupy.py) runs the kernels on the emulator
@pytest.mark.parametrize("capability", ["75", "80"])
def test_cuda_backend_needs_sm80_for_tensor_cores(monkeypatch, capability):
    """On a GPU of compute capability 7.5 a tf32 model is refused with a clear error (NVRTC would
    fail on the mma.sync instruction); on 8.0 it builds and its product is the rounded one."""
    from fake_cupy import fake_cupy
    cp = fake_cupy()
    device = cp.cuda.Device
    cp.cuda.Device = lambda i=0: types.SimpleNamespace(**vars(device(i)), compute_capability=capability)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    text = ROUNDING.format(n=4)
    if capability == "75":
        with pytest.raises(DlcError, match=r"compute capability 8\.0 or later; this one is 7\.5"):
            dlc.compile(text, backend="cuda", precision="tf32")
        dlc.compile(text, backend="cuda", precision="fp32")   # fp32 needs no tensor cores
        return
    model = dlc.compile(text, backend="cuda", precision="tf32")
    x = np.float32([1 + 2 ** -11, 3.0, -(1 + 2 ** -11), 0.1])[:, None]
    got = model.forward(x=x, one=np.ones((1, 1), np.float32))
    np.testing.assert_array_equal(np.asarray(next(iter(got.values()))), round_tf32(x))
