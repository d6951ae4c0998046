"""`dlc run --plot FILE.png`: loss and accuracy per epoch, training and held-out, drawn with
matplotlib's Agg backend; a valid PNG of 1000 x 400 pixels. Without matplotlib: a clear error
naming the extra, before training starts."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import LOGREG, dlc_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
needs_matplotlib = pytest.mark.usefixtures("matplotlib_installed")  # fails where the test extra installs it


def check_png(path: Path):
    from matplotlib import image
    raw = path.read_bytes()
    assert raw[:8] == PNG_MAGIC
    pixels = image.imread(str(path))
    assert pixels.shape[:2] == (400, 1000)  # PLOT_SIZE 10 x 4 inches at 100 dpi
    assert pixels.std() > 0  # something is drawn
    from PIL import Image
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1000, 400)


@needs_matplotlib
def test_plot_after_training(tmp_path):
    out = tmp_path / "plots" / "curves.png"
    r = dlc_cli("run", LOGREG, "--epochs", "3", "--val-split", "0.2", "--no-progress", "--plot", out,
                "--backend", "interp")
    assert r.returncode == 0, r.stderr
    assert f"wrote the training curves to {out}" in r.stdout
    check_png(out)
    assert not [p.name for p in out.parent.iterdir() if p.name != "curves.png"]  # no temporary left


@needs_matplotlib
def test_plot_without_held_out_data_or_accuracy(tmp_path):
    from dlc.runtime.writers import write_plot
    out = tmp_path / "loss.png"
    write_plot(out, [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0}], "model m")
    check_png(out)


@needs_matplotlib
def test_plot_errors(tmp_path):
    r = dlc_cli("run", LOGREG, "--plot", tmp_path / "c.jpg")
    assert r.returncode == 2 and r.stderr.strip() == f"error: --plot: expected a file name ending in .png, found " \
                                                      f"{tmp_path / 'c.jpg'}"
    r = dlc_cli("run", LOGREG, "--epochs", "0", "--plot", tmp_path / "c.png", "--backend", "interp")
    assert r.returncode == 2 and "--plot: nothing to plot" in r.stderr and "--epochs 0" in r.stderr
    assert not (tmp_path / "c.png").exists()
    (tmp_path / "dir.png").mkdir()
    r = dlc_cli("run", LOGREG, "--plot", tmp_path / "dir.png")
    assert r.returncode == 2 and r.stderr.startswith("error: --plot: ") and "is a folder" in r.stderr


def test_missing_matplotlib_is_a_clear_error_before_training(tmp_path):
    """A matplotlib that cannot be imported: exit 2, the extra named, nothing trained or written."""
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('No module named matplotlib (test)')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "c.png"
    r = dlc_cli("run", LOGREG, "--epochs", "1", "--plot", out, "--save", tmp_path / "w.npz", "--no-progress",
                env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: --plot needs matplotlib") and "pip install 'dlc[plot]'" in r.stderr
    assert r.stdout == ""  # before the model compiled or trained
    assert not out.exists() and not (tmp_path / "w.npz").exists()
