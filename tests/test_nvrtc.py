"""Every generated kernel compiles to PTX for sm_80 and sm_90 through NVRTC, no GPU needed.

Needs `pip install cuda-bindings nvidia-cuda-nvrtc` (the test extra installs both on Linux): a
missing one fails these tests there, and skips them elsewhere (conftest.py `need`).
"""

import pytest
from hypothesis import HealthCheck, given, settings

import dlc
from dlc.codegen import generate
from dlc.ir.errors import DlcError
from test_codegen import MODELS, build_random_graph, recipes
from conftest import EXAMPLE_FILES, IMAGENET_FILES

from dlc.codegen.nvrtc import ARCHS, check_module, compile_ptx, nvrtc_available

pytestmark = pytest.mark.usefixtures("nvrtc")  # cuda-bindings: fails where the test extra installs it


def assert_kernels_compile(mod) -> dict:
    """NVRTC compiles the module for every arch, and each PTX defines exactly the module's
    kernels; {arch: PTX}. The other test files' NVRTC checks use it too."""
    from dlc.codegen.nvrtc import check_module, ptx_entries
    ptx = check_module(mod)
    for text in ptx.values():
        assert set(ptx_entries(text)) == set(mod.kernel_names)
    return ptx


def test_nvrtc_loads():
    ok, why = nvrtc_available()
    assert ok, why


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_kernels_compile_for_every_arch(name):
    mod = generate(dlc.compile(MODELS[name], backend="interp").graph)
    ptx = assert_kernels_compile(mod)
    assert set(ptx) == set(ARCHS) == {"sm_80", "sm_90"}
    for arch, text in ptx.items():
        assert f".target {arch}" in text


@pytest.mark.parametrize("path", EXAMPLE_FILES + IMAGENET_FILES, ids=lambda p: p.stem)
def test_example_kernels_compile_for_every_arch(path):
    """Every example's kernels, and the full-size nets' (examples/imagenet/), at fp32 (the tensor-core
    precisions: test_tensor_cores.py)."""
    check_module(generate(dlc.compile(path, backend="interp").graph))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipes)
def test_random_graph_kernels_compile(recipe):
    check_module(generate(build_random_graph(recipe)), archs=("sm_80",))


def test_compile_errors_carry_nvrtc_log():
    with pytest.raises(DlcError, match=r'identifier "undefined_thing" is undefined'):
        compile_ptx('extern "C" __global__ void k(float* x) { x[0] = undefined_thing; }', "sm_90")


def test_compiling_leaves_python_intact():
    """NVRTC writes its (empty) log into the buffer it is given: a shared 1-byte b" " corrupted
    the interpreter, so that " ".encode() gave b"\\x00" and Jinja rendered " " as NUL."""
    compile_ptx('extern "C" __global__ void k(float* x) { x[0] = 1.0f; }', "sm_80")
    assert " ".encode("ascii") == b" " and b" " * 1 == bytes([32])
