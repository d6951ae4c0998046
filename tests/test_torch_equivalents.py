"""The PyTorch versions of the examples (benchmarks/torch_models.py, used by the GPU speed table)
compute what the .dln files compute: same initial weights (dlc's, copied in), same outputs,
same loss, and the same params after optimizer steps, on the CPU against dlc's interpreter.

PyTorch is not a dependency of dlc, but of its tests where the CPU wheel exists (the test extra in
pyproject.toml: CPython 3.11 on x86_64 Linux, as in CI). There a missing torch fails these tests;
elsewhere they are skipped with the reason (tests/conftest.py import_torch)."""

import numpy as np
import pytest

import dlc
from dlc.runtime.diff import synth_feeds
from conftest import ROOT, TRAINING_EXAMPLES, import_torch_models

STEPS = 3


def close(got, want, what, rtol=2e-4, atol=2e-6):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(1.0, float(np.abs(want).max(initial=0)))
    err = np.abs(got - want)
    assert np.all(err <= atol * scale + rtol * np.abs(want)), \
        f"{what}: max abs err {err.max():.3e} (max |ref| {np.abs(want).max():.3e})"


def twins():
    """torch, and benchmarks/torch_models.py (the twins, which import torch); without torch the
    calling test fails or is skipped (import_torch)."""
    return import_torch_models()


@pytest.fixture(autouse=True)
def _torch_settings():
    try:
        import torch
    except ImportError:  # the test itself fails or is skipped on it, in twins()
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("name", [p.stem for p in TRAINING_EXAMPLES])  # each has a twin: the next test
def test_same_loss_and_params_after_steps(name, batch):
    torch, tm = twins()
    m = dlc.compile(ROOT / "examples" / f"{name}.dln", backend="interp", seed=3)
    net = tm.build(name)
    tm.load_dlc_params(net, m.params)
    for k, v in tm.dlc_params(net).items():  # the copy round-trips exactly
        np.testing.assert_array_equal(v, m.params[k], err_msg=k)
    f = tm.loss_fn(name, net)
    opt = tm.optimizer(net, m.graph.meta.optimizer)
    out_name = next(iter(m.graph.meta.outputs))
    for step in range(STEPS):
        feeds = synth_feeds(m.graph, batch, seed=10 * batch + step)
        x, y = tm.torch_batch(name, feeds)
        net.eval()   # m.forward runs in evaluation mode (batch norm: running statistics)
        with torch.no_grad():
            close(net(x).numpy(), m.forward(x=feeds["x"])[out_name], f"{name} step {step}: {out_name}")
        net.train()
        want = m.step(**feeds)
        opt.zero_grad()
        loss = f(x, y)
        loss.backward()
        opt.step()
        close(loss.item(), want, f"{name} step {step}: loss")
        got = tm.dlc_params(net)
        for k, v in m.params.items():
            close(got[k], v, f"{name} after step {step}: {k}")
        buffers = tm.dlc_buffers(net)   # model buffers (running statistics), updated by the step
        assert sorted(buffers) == sorted(m.buffers)
        for k, v in m.buffers.items():
            close(buffers[k], v, f"{name} after step {step}: {k}")


def test_every_training_example_has_a_twin():
    _, tm = twins()
    trained = sorted(p.stem for p in (ROOT / "examples").glob("*.dln")
                     if "minimize" in p.read_text())
    assert sorted(tm.EXAMPLES) == trained
