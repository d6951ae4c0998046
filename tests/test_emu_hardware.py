"""The emulator refuses what a GPU would, and catches missing barriers.

Limits: a launch whose static shared memory is over 48 KiB is refused like a grid or a block a
GPU would not run (`runtime/backends.check_launch`), and the plan's figure for each kernel is
the one ptxas reports (tests/test_kernel_stats.py).

Barriers: the emulator runs the threads of a block one at a time between barriers, in an order
chosen at run time (`dlc_emu_set_order(mode, seed)`, exported by every emu library: 0 forward,
1 reverse, 2 shuffled by the seed; the blocks of a launch follow the same order). A thread that
reads what another wrote with no barrier between them sees the write in one order and not in
the other, so a missing `__syncthreads` or `__syncwarp` changes the result; a race-free kernel
gives the same bits in every order. Hand-written racy kernels show that the check catches each
kind, and their fixed versions that it does not cry wolf; then every kernel of a training step
of every example, at -O0 and -O2, and of the codegen test models, must give bit-identical
results in the three orders.
"""
from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dlc
from dlc.codegen.plan import Launch
from dlc.codegen.shared import shared_bytes
from dlc.ir.errors import DlcError
from dlc.runtime.runner import MAX_STATIC_SHARED, check_launch
from dlc.runtime.diff import synth_feeds
from dlc.runtime.emu import EmuBackend, build_library
from dlc.runtime.init import initial_state
from test_codegen import MODELS
from conftest import EXAMPLES, XOR, dlc_cli, needs_emu

pytestmark = needs_emu

ORDERS = {"forward": (0, 0), "reverse": (1, 0), "shuffled": (2, 12345)}


def set_order(lib, name: str) -> None:
    mode, seed = ORDERS[name]
    assert lib.dlc_emu_set_order(ctypes.c_int(mode), ctypes.c_ulonglong(seed)) == 0
    assert lib.dlc_emu_order() == mode


# -- the shared-memory limit ------------------------------------------------------------------

def test_a_launch_over_48_kib_of_static_shared_memory_is_refused():
    check_launch("k", [1, 1, 1], [64, 1, 1], MAX_STATIC_SHARED)  # exactly 48 KiB runs
    launch = Launch("big_tile", "n", "matmul", "step", ["n"], [], [1, 1, 1], [64, 1, 1], True,
                    shared=MAX_STATIC_SHARED + 4)
    with pytest.raises(DlcError, match=r"kernel big_tile: 49156 bytes of static shared memory .* \(49152 bytes"):
        check_launch(launch.kernel, launch.grid, launch.block, launch.shared)


def test_the_emulator_refuses_a_kernel_whose_shared_memory_a_gpu_would_not_give():
    m = dlc.compile(EXAMPLES / "mlp.dln", backend="emu")
    launch = max(m.engine.module.launches, key=lambda l: l.shared)  # a GEMM: two staged tiles
    assert 0 < launch.shared <= MAX_STATIC_SHARED
    launch.shared = 64 * 1024  # as if its tiles were deeper
    with pytest.raises(DlcError, match=rf"kernel {launch.kernel}: 65536 bytes of static shared memory"):
        m.step(**synth_feeds(m.graph, 2))


def test_shared_bytes_reads_declarations_and_the_helpers_a_body_calls():
    assert shared_bytes("    const int t = threadIdx.x;\n") == 0
    assert shared_bytes("__align__(16) __shared__ float As[16][64 + 4];\n__shared__ int n[3];\n") == 16 * 68 * 4 + 12
    # alignment: a float4 array after 3 ints starts at byte 16
    assert shared_bytes("__shared__ int n[3];\n__shared__ float4 v[2];\n") == 16 + 32
    # block_sum and block_max of module.cu.j2 each have a partial[32]; a comment is no call
    assert shared_bytes("float s = block_sum(v);\n") == 128
    assert shared_bytes("float m = block_max(v);\nfloat s = block_sum(v);\n") == 256
    assert shared_bytes("// block_sum(v) would need 128 bytes\n") == 0
    with pytest.raises(DlcError, match="dynamic shared memory"):
        shared_bytes("extern __shared__ float dyn[];\n")
    with pytest.raises(DlcError, match="not a constant"):
        shared_bytes("__shared__ float t[dim_N];\n")


def test_the_plan_shows_each_launchs_shared_memory():
    from dlc.codegen import generate
    mod = generate(dlc.compile(EXAMPLES / "mlp.dln", backend="interp", opt_level=2).graph)
    launches = mod.plan["launches"] + mod.plan["commits"]
    assert [l["shared"] for l in launches] == [l.shared for l in mod.launches if l.phase == "step"] + [
        l.shared for l in mod.launches if l.phase == "commit"]
    assert len({l["shared"] for l in launches}) >= 3  # none (pointwise), a reduction's, a GEMM's
    lines = [line for line in mod.plan_text().splitlines() if "<<<" in line]
    for l, line in zip([l for p in ("step", "commit") for l in mod.launches if l.phase == p], lines):
        assert line.startswith(l.kernel + "<<<")
        assert line.endswith(f"# {l.shared} B static shared") if l.shared else "#" not in line


# -- hand-written kernels: what the order check catches ----------------------------------------

RACES = r"""
#include "cuda_emu.h"

// Each thread publishes a value and reads the one of the thread 32 places on: a thread of
// another warp. kSync 0: no barrier; 1: __syncwarp, which orders a warp only; 2: __syncthreads.
template <int kSync>
__global__ void neighbour(float* out) {
    __shared__ float buf[128];
    const int t = threadIdx.x, n = blockDim.x;
    buf[t] = (float)(1000 * blockIdx.x + t);
    if (kSync == 1) __syncwarp();
    if (kSync == 2) __syncthreads();
    out[blockIdx.x * n + t] = buf[(t + 32) % n];
}

// A handoff inside one warp: lane l reads what lane l ^ 1 wrote; __syncwarp is what orders it.
template <bool kSync>
__global__ void pairs(float* out) {
    __shared__ float buf[64];
    const int t = threadIdx.x;
    buf[t] = (float)(1000 * blockIdx.x + t);
    if (kSync) __syncwarp();
    out[blockIdx.x * blockDim.x + t] = buf[t ^ 1];
}

// A warp-synchronous tree sum in shared memory (one warp): without __syncwarp between reading
// a partner and overwriting its own slot, it is right only if the lanes run in lockstep.
template <bool kSync>
__global__ void warp_tree(float* out) {
    __shared__ float s[64];
    const int t = threadIdx.x;
    s[t] = (float)(t + 1);
    s[t + 32] = 0.0f;
    __syncwarp();
    for (int o = 16; o > 0; o >>= 1) {
        const float v = s[t] + s[t + o];
        if (kSync) __syncwarp();
        s[t] = v;
        if (kSync) __syncwarp();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

// Warp shuffles need no shared memory and no __syncthreads; warps go on independently.
__global__ void shuffles(float* out) {
    float v = (float)threadIdx.x;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

#define LAUNCHER(name, call) \
    extern "C" void name(float* out, int blocks, int threads) { \
        dlc_emu::launch(dim3(blocks), dim3(threads), true, [&] { call(out); }); \
    }
LAUNCHER(neighbour_racy, neighbour<0>)
LAUNCHER(neighbour_syncwarp, neighbour<1>)
LAUNCHER(neighbour_fixed, neighbour<2>)
LAUNCHER(pairs_racy, pairs<false>)
LAUNCHER(pairs_fixed, pairs<true>)
LAUNCHER(warp_tree_racy, warp_tree<false>)
LAUNCHER(warp_tree_fixed, warp_tree<true>)
LAUNCHER(shuffles_fixed, shuffles)

// Lanes 0-15 of warp 0 wait at __syncwarp for lanes 16-31, which wait at __syncthreads.
__global__ void divergent() {
    if (threadIdx.x < 16) __syncwarp();
    else __syncthreads();
}
extern "C" void deadlock() { dlc_emu::launch(dim3(1), dim3(64), true, [&] { divergent(); }); }
"""

BLOCKS = 3
SHAPES = {"neighbour": 128, "pairs": 64, "warp_tree": 32, "shuffles": 96}  # threads per block


def expected(kernel: str) -> np.ndarray:
    """What each fixed kernel computes, per block and thread."""
    n = SHAPES[kernel]
    b, t = np.meshgrid(np.arange(BLOCKS), np.arange(n), indexing="ij")
    if kernel == "neighbour":
        return (1000 * b + (t + 32) % n).ravel()
    if kernel == "pairs":
        return (1000 * b + (t ^ 1)).ravel()
    if kernel == "warp_tree":
        return np.full(BLOCKS, 32 * 33 / 2)
    return (((t >> 5) * 32) * 32 + 31 * 16 + np.zeros_like(b)).ravel()  # sum of the warp's thread ids


@pytest.fixture(scope="module")
def races(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLC_CACHE_DIR", str(tmp_path_factory.mktemp("emu-cache")))
        return ctypes.CDLL(str(build_library(RACES)))


def run_kernel(lib, name: str, order: str) -> np.ndarray:
    kernel = name.rsplit("_", 1)[0]
    n = SHAPES[kernel]
    out = np.full(BLOCKS * n if kernel != "warp_tree" else BLOCKS, -1.0, np.float32)
    set_order(lib, order)
    try:
        getattr(lib, name)(out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int(BLOCKS), ctypes.c_int(n))
    finally:
        set_order(lib, "forward")
    return out


@pytest.mark.parametrize("kernel", ["neighbour", "pairs", "warp_tree", "shuffles"])
def test_race_free_kernels_give_the_same_bits_in_every_order(races, kernel):
    for order in ORDERS:
        np.testing.assert_array_equal(run_kernel(races, f"{kernel}_fixed", order), expected(kernel),
                                      err_msg=f"{kernel}, {order} order")


@pytest.mark.parametrize("racy", ["neighbour_racy", "neighbour_syncwarp", "pairs_racy", "warp_tree_racy"])
def test_a_missing_barrier_changes_the_result_with_the_order(races, racy):
    """Missing __syncthreads (neighbour_racy), a __syncwarp where the reader is in another warp
    (neighbour_syncwarp: a warp barrier is not a block barrier here), missing __syncwarp in a
    handoff between lanes (pairs_racy) and code that relies on lanes running in lockstep
    (warp_tree_racy): each gives a result in forward order that reverse order does not, and at
    least one order gets it wrong."""
    got = {order: run_kernel(races, racy, order) for order in ORDERS}
    assert not np.array_equal(got["forward"], got["reverse"]), got
    want = expected(racy.rsplit("_", 1)[0])
    assert any(not np.array_equal(v, want) for v in got.values())


def _in_subprocess(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=60)


def test_barriers_no_gpu_could_pass_stop_the_emulator(races):
    """Half a warp at __syncwarp, the other half at __syncthreads: a GPU hangs; the emulator
    names the waiting threads and aborts (in a child process, since it aborts)."""
    r = _in_subprocess(f"import ctypes; ctypes.CDLL({races._name!r}).deadlock()")
    assert r.returncode != 0
    assert "can never go on" in r.stderr and "thread 0 waits at __syncwarp" in r.stderr, r.stderr


def test_the_order_can_be_set_by_environment_variable(races):
    code = f"import ctypes; print(ctypes.CDLL({races._name!r}).dlc_emu_order())"
    for value, mode in [("reverse", 1), ("shuffle:7", 2), ("forward", 0), ("", 0)]:
        r = _in_subprocess(code, {"DLC_EMU_ORDER": value})
        assert r.returncode == 0 and r.stdout.strip() == str(mode), (value, r.stderr)
    r = _in_subprocess(code, {"DLC_EMU_ORDER": "backwards"})
    assert r.returncode != 0 and "expected forward, reverse or shuffle" in r.stderr
    assert races.dlc_emu_set_order(ctypes.c_int(3), ctypes.c_ulonglong(0)) == -1  # unknown: unchanged
    assert races.dlc_emu_order() == 0


def test_a_bad_order_setting_is_a_user_error_not_an_abort():
    """The library aborts on a DLC_EMU_ORDER it cannot read; the backend says so first (exit 2)."""
    r = dlc_cli("run", XOR, "--backend", "emu", "--epochs", "1", "--no-progress", env={"DLC_EMU_ORDER": "sideways"})
    assert r.returncode == 2, r.stderr
    assert "DLC_EMU_ORDER=sideways: expected forward, reverse or shuffle" in r.stderr and "Traceback" not in r.stderr


# -- every generated kernel: the same bits in every order ------------------------------------

def step_in_orders(g, batch: int = 3) -> dict[str, dict[str, np.ndarray]]:
    """One training step (loss, gradients, outputs, assignments, then the updated state) from
    the same state and batch in each order."""
    m = g.meta
    roots = [m.loss] + list(m.grads.values()) + list(m.outputs.values()) + g.nodes_of("assign")
    roots = list(dict.fromkeys(r for r in roots if r))
    emu = EmuBackend(g)
    state, feeds = initial_state(g, 0), synth_feeds(g, batch, 0)
    out = {}
    try:
        for order in ORDERS:
            set_order(emu.lib, order)
            emu.set_state(state)
            got = emu.run(roots, feeds, commit=True, training=True, rng=(0, 1))
            got.update({f"updated {k}": v for k, v in emu.get_state().items()})
            out[order] = got
    finally:
        set_order(emu.lib, "forward")
    return out


def assert_same_bits(results: dict, what: str) -> None:
    first = results["forward"]
    for order, got in results.items():
        assert got.keys() == first.keys()
        differ = [k for k in first if np.asarray(got[k]).tobytes() != np.asarray(first[k]).tobytes()]
        assert not differ, f"{what}: {order} order changes {differ}"


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.dln")), ids=lambda p: p.stem)
def test_every_example_kernel_gives_the_same_bits_in_every_order(path, level):
    g = dlc.compile(path, backend="interp", opt_level=level).graph
    batch = 1 if path.stem == "bottleneck" else 3  # 5x5 convolutions of 192 28x28 maps: 2 s an image
    assert_same_bits(step_in_orders(g, batch), f"{path.stem} -O{level}")


# Rows of the examples' softmaxes and cross-entropies are at most 32 long: one warp a block. Here
# they take 200 and 100 (blocks of 256 and 128 threads), so the barriers between the warps of
# block_sum and block_max, which every thread reads the result of, are exercised too.
WIDE = """
model wide {
    input  x : f32[N, 100]
    input  y : i32[N]
    param  w : f32[100, 200] = xavier
    logits = x @ w
    s      = softmax(logits, axis = 1)
    l      = log_softmax(x, axis = 1)
    loss   = softmax_xent(logits, y) + mean(s * logits) + 0.1 * mean(l * x)
    output s
    minimize loss with sgd(lr = 0.1)
}
"""


@pytest.mark.parametrize("name", sorted(MODELS) + ["wide"])
def test_every_test_model_kernel_gives_the_same_bits_in_every_order(name):
    g = dlc.compile(MODELS.get(name, WIDE), backend="interp").graph
    assert_same_bits(step_in_orders(g, batch=7), name)
