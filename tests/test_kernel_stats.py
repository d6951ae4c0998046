"""The generated GEMM read as the hardware will (no GPU needed): compiled by nvcc for sm_90, no
kernel spills, and the GEMM's main loop issues at least 4 FMAs per shared-memory load (the
16x16-tile kernel it replaced had 0.5). Skipped, with the reason, where nvcc or cuobjdump is
missing (the CUDA toolkit's nvcc; pip's nvidia-cuda-cuobjdump)."""
from __future__ import annotations

import sys

import pytest

from conftest import EXAMPLE_NAMES, ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import kernel_stats  # noqa: E402

NVCC, CUOBJDUMP = kernel_stats.tool("nvcc"), kernel_stats.tool("cuobjdump")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed (CUDA toolkit)")
@pytest.mark.parametrize("example", ["mlp", "lenet"])
def test_no_kernel_spills_and_the_gemm_is_register_blocked(example):
    rows = kernel_stats.stats(example, 2, "sm_90", NVCC, CUOBJDUMP)
    assert rows and all("registers" in r for r in rows), rows
    assert all(r["spill_stores"] == r["spill_loads"] == 0 for r in rows), [r for r in rows if r["spill_stores"]]
    gemms = [r for r in rows if r["template"] == "matmul.cu.j2"]
    assert len(gemms) >= 4  # forward (2 epilogues) and the backward products
    if example == "lenet":  # convolutions are implicit GEMMs: forward (fused), both adjoints, split-K
        names = [r["kernel"] for r in gemms]
        assert "fused_c1" in names and "conv_grad_x_d_p1" in names and "conv_grad_w_d_c1_w" in names, names
        assert not [r for r in rows if r["template"].startswith("conv")]
    if CUOBJDUMP is None:
        pytest.skip("cuobjdump is not installed (pip install nvidia-cuda-cuobjdump): SASS not read")
    for r in gemms:
        assert r["ffma"] >= 4 * r["lds"] > 0, r


def test_ptxas_log_parsing():
    log = """ptxas info    : Compiling entry function 'k1' for 'sm_90'
ptxas info    : Function properties for k1
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 8704 bytes smem
ptxas info    : Compiling entry function 'k2' for 'sm_90'
ptxas info    : Function properties for k2
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers"""
    info = kernel_stats.ptxas_info(log)
    assert info == {"k1": {"registers": 40, "spill_stores": 4, "spill_loads": 12, "smem": 8704},
                    "k2": {"registers": 8, "spill_stores": 0, "spill_loads": 0, "smem": 0}}


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed (CUDA toolkit)")
@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_the_plans_shared_memory_is_what_ptxas_allocates(example, level):
    """The static shared memory the plan gives each kernel (`Launch.shared`, which check_launch
    holds to 48 KiB), computed in Python from the kernel's __shared__ declarations and the helpers
    it calls, is the `smem` ptxas reports for sm_90, for every kernel of every example."""
    import dlc
    from dlc.codegen import generate
    mod = generate(dlc.compile(kernel_stats.ROOT / "examples" / f"{example}.dln", backend="interp",
                               opt_level=level).graph)
    smem = {r["kernel"]: r["smem"] for r in kernel_stats.stats(example, level, "sm_90", NVCC, None)}
    assert smem.keys() == {k.name for k in mod.kernels}
    wrong = {k.name: (k.launch.shared, smem[k.name]) for k in mod.kernels if k.launch.shared != smem[k.name]}
    assert not wrong, f"plan vs ptxas bytes: {wrong}"
    assert any(k.launch.shared for k in mod.kernels)  # the comparison covers some shared memory


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed (CUDA toolkit)")
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("example", ["mlp", "lenet"])
def test_tensor_core_products_issue_hmma_without_spills(example, precision):
    """At tf32/bf16 every product kernel is the tensor-core one (matmul_mma.cu.j2, none left on
    the CUDA cores), nothing spills, the plan's shared memory is what ptxas allocates, and the
    SASS of every product kernel holds HMMA instructions."""
    import dlc
    from dlc.codegen import generate
    mod = generate(dlc.build(kernel_stats.ROOT / "examples" / f"{example}.dln", opt_level=2,
                             precision=precision).graph)
    rows = kernel_stats.stats(example, 2, "sm_90", NVCC, CUOBJDUMP, precision)
    assert all(r["spill_stores"] == r["spill_loads"] == 0 for r in rows), [r for r in rows if r["spill_stores"]]
    smem = {r["kernel"]: r["smem"] for r in rows}
    assert {k.name: k.launch.shared for k in mod.kernels} == smem
    products = [r for r in rows if r["template"] == "matmul_mma.cu.j2"]
    assert len(products) >= 4 and not [r for r in rows if r["template"] == "matmul.cu.j2"]
    if CUOBJDUMP is None:
        pytest.skip("cuobjdump is not installed (pip install nvidia-cuda-cuobjdump): SASS not read")
    for r in products:
        assert r["hmma"] > 0, r   # (FFMA may remain: a fused epilogue's, e.g. weight decay's a * w + g)
