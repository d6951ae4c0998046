"""The PyTorch versions of the examples (benchmarks/torch_models.py, used by the GPU speed table)
compute what the .dln files compute: same initial weights (dlc's, copied in), same outputs,
same loss, and the same params after optimizer steps, on the CPU against dlc's interpreter.

PyTorch is not a dependency of dlc: without it these tests are skipped (CI has no torch)."""
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed (not a dlc dependency; the PyTorch twins of the "
                    "examples in benchmarks/torch_models.py are checked only where it is)")

import dlc  # noqa: E402
from dlc.runtime.diff import synth_feeds  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import torch_models as tm  # noqa: E402

STEPS = 3


def close(got, want, what, rtol=2e-4, atol=2e-6):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(1.0, float(np.abs(want).max(initial=0)))
    err = np.abs(got - want)
    assert np.all(err <= atol * scale + rtol * np.abs(want)), \
        f"{what}: max abs err {err.max():.3e} (max |ref| {np.abs(want).max():.3e})"


@pytest.fixture(autouse=True)
def _torch_settings():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("name", tm.EXAMPLES)
def test_same_loss_and_params_after_steps(name, batch):
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
        with torch.no_grad():
            close(net(x).numpy(), m.forward(x=feeds["x"])[out_name], f"{name} step {step}: {out_name}")
        want = m.step(**feeds)
        opt.zero_grad()
        loss = f(x, y)
        loss.backward()
        opt.step()
        close(loss.item(), want, f"{name} step {step}: loss")
        got = tm.dlc_params(net)
        for k, v in m.params.items():
            close(got[k], v, f"{name} after step {step}: {k}")


def test_every_training_example_has_a_twin():
    trained = sorted(p.stem for p in (ROOT / "examples").glob("*.dln")
                     if "minimize" in p.read_text())
    assert sorted(tm.EXAMPLES) == trained
