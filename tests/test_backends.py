"""Choosing a backend: auto, names, and options that only one backend has."""
import pytest

import dlc
from dlc.cli import main
from dlc.runtime import backends
from dlc.runtime.backends import resolve


@pytest.mark.parametrize("gpu", [True, False])
def test_auto_picks_cuda_only_where_it_can_run(monkeypatch, gpu):
    asked = []

    def fake_available(name):
        asked.append(name)
        return (gpu, "stand-in") if name == "cuda" else (True, "")
    monkeypatch.setattr(backends, "available", fake_available)
    assert resolve("auto") == ("cuda" if gpu else "interp")
    assert asked == ["cuda"]
    assert resolve("emu") == "emu" and resolve("interp") == "interp"  # a name is taken as given


def test_unknown_backend_is_an_error():
    with pytest.raises(dlc.DlcError, match="unknown backend 'tpu'"):
        resolve("tpu")


@pytest.mark.parametrize("backend", ["interp", "emu"])
def test_cuda_graph_needs_the_cuda_backend(backend, capsys, examples_dir):
    rc = main(["run", str(examples_dir / "mlp.dln"), "--backend", backend, "--cuda-graph", "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"--cuda-graph: needs backend 'cuda', not '{backend}'" in err  # the API's rule, named by its flag
    assert "Traceback" not in err
