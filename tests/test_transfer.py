"""Transfer learning: `--load-partial` (loading by name), `freeze` / `--freeze`, and the two-stage
example examples/transfer_base.dln -> examples/transfer_finetune.dln."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import dlc
from dlc.cli import main
from dlc.codegen import generate
from dlc.ir.errors import DlcError
from conftest import DIGITS, EXAMPLES, LOGREG, ROOT

BASE, FINETUNE = EXAMPLES / "transfer_base.dln", EXAMPLES / "transfer_finetune.dln"
FROZEN = ["h1.w", "h1.b", "h2.w", "h2.b"]
# The fine-tuned held-out accuracy after 3 + 3 epochs is 0.905 at seed 0 (0.87 to 0.94 over seeds
# 0-4); 0.8 leaves room for BLAS rounding differences, and chance on 5 classes is 0.2.
THRESHOLD = 0.8


def run(*args) -> int:
    return main(["run", *map(str, args), "--backend", "interp", "--no-progress"])


def arrays(path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_the_two_stage_example_end_to_end(tmp_path, capsys):
    """Train on digits 0-4, then fine-tune the new head on 5-9 with the hidden layers loaded by name
    and frozen: the report says what was loaded, the frozen params come out bit for bit as loaded,
    and the fine-tuned net classifies 5-9 well above chance."""
    assert run(BASE, "--epochs", 3, "--save", tmp_path / "base.npz") == 0
    capsys.readouterr()
    assert run(FINETUNE, "--epochs", 3, "--load-partial", tmp_path / "base.npz", "--save", tmp_path / "ft.npz",
               "--metrics-json", tmp_path / "m.json") == 0
    out = capsys.readouterr().out
    assert (f"{tmp_path / 'base.npz'}: loaded 4 params (h1.w, h1.b, h2.w, h2.b); not in the file: head.w, head.b "
            "(initialised); in the file but not in the model: digits.b, digits.w") in out
    base, ft = arrays(tmp_path / "base.npz"), arrays(tmp_path / "ft.npz")
    for p in FROZEN:
        assert np.array_equal(base[p], ft[p]), f"frozen {p} changed"
    assert not np.array_equal(dlc.compile(FINETUNE, backend="interp").params["head.w"], ft["head.w"])
    assert not any(k.startswith(("state/h1", "state/h2")) for k in ft)  # no optimizer state for frozen params
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["val_accuracy"] > THRESHOLD, metrics
    assert metrics["val_examples"] == 179  # 20% of the 896 images of 5-9


def test_the_data_files_are_what_the_script_makes(tmp_path, monkeypatch):
    """The shipped files match examples/data/make_transfer.py run again (digits 0-4 and 5-9, labels
    remapped to 0..4)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_transfer", EXAMPLES / "data" / "make_transfer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "digits.npz").write_bytes(DIGITS.read_bytes())
    monkeypatch.setattr(mod, "HERE", tmp_path)
    mod.main()
    full = arrays(DIGITS)
    for name, lo in (("digits_0to4.npz", 0), ("digits_5to9.npz", 5)):
        shipped, again = arrays(EXAMPLES / "data" / name), arrays(tmp_path / name)
        assert all(np.array_equal(shipped[k], again[k]) for k in ("x", "y"))
        keep = (full["y"] >= lo) & (full["y"] < lo + 5)
        assert np.array_equal(shipped["x"], full["x"][keep]) and np.array_equal(shipped["y"], full["y"][keep] - lo)
        assert shipped["y"].dtype == np.int32 and set(shipped["y"]) == set(range(5))


def test_frozen_params_get_no_gradient_and_no_update_nodes():
    """The IR of the fine-tuning model: gradients and updates for head.* only. Below the head all
    params are frozen, so no adjoint of h1/h2 (activations included) is computed at all."""
    m = dlc.compile(FINETUNE, backend="interp")
    g = m.graph
    assert sorted(g.meta.frozen) == sorted(FROZEN)
    assert list(g.meta.grads) == ["head.w", "head.b"]
    names = list(g.nx)
    assert not [n for n in names if n.startswith(("d.h1", "d.h2", "d.x"))]
    assert not [n for n in names if n.startswith(("h1.", "h2.")) and g.op(n) in ("assign", "state")]
    assert sorted(n for n in g.nodes_of("assign") if not n.startswith("schedule")) == \
        ["head.b.assign", "head.b.velocity.assign", "head.w.assign", "head.w.velocity.assign"]
    # and no kernel of the generated plan computes anything for them
    launches = generate(g).launches
    assert not [l.kernel for l in launches if l.node.startswith(("d.h1", "d.h2", "h1.w.", "h2.w.", "h1.b.", "h2.b."))]
    unfrozen = dlc.compile(FINETUNE.read_text().replace("    freeze h1.w, h1.b, h2.w, h2.b", ""), backend="interp")
    assert len(unfrozen.graph.nx) > len(g.nx) + 10 and "d.h1.w" in unfrozen.graph.nx


def test_the_freeze_flag_is_the_freeze_statement(tmp_path):
    text = FINETUNE.read_text().replace("    freeze h1.w, h1.b, h2.w, h2.b", "")
    (tmp_path / "open.dln").write_text(text)
    a = dlc.compile(FINETUNE, backend="interp")
    b = dlc.compile(tmp_path / "open.dln", backend="interp", freeze="h1.w, h1.b,h2.w,h2.b")
    c = dlc.compile(tmp_path / "open.dln", backend="interp", freeze=["h1.w", "h1.b", "h2.w", "h2.b"])
    assert a.graph.meta.frozen == b.graph.meta.frozen == c.graph.meta.frozen
    assert a.ir().split("\n", 1)[1].replace(str(FINETUNE), "F") == \
        b.ir().split("\n", 1)[1].replace(str(tmp_path / "open.dln"), "F")
    with pytest.raises(DlcError, match=r"freeze: 'h1.ww' is not a param of model transfer_finetune "
                                       r"\(did you mean 'h1.w'\?\)"):
        dlc.compile(tmp_path / "open.dln", backend="interp", freeze="h1.ww")


def test_freeze_flag_on_the_command_line(tmp_path, capsys):
    data = tmp_path / "d.npz"
    with np.load(DIGITS) as z:
        np.savez(data, x=z["x"][:100], y=z["y"][:100])
    logreg = LOGREG
    w0 = dlc.compile(logreg, backend="interp").params
    name = list(w0)[0]
    assert run(logreg, "--data", data, "--epochs", 1, "--freeze", name, "--save", tmp_path / "w.npz") == 0
    assert f"frozen (no gradient, no update): {name}" in capsys.readouterr().out
    w = arrays(tmp_path / "w.npz")
    assert np.array_equal(w[name], w0[name])
    assert all(not np.array_equal(w[k], w0[k]) for k in w0 if k != name)
    assert run(logreg, "--data", data, "--epochs", 1, "--freeze", "nope") == 2
    assert "error: --freeze: 'nope' is not a param of model" in capsys.readouterr().err


def test_load_partial_reports_misshaped_and_strict_load_refuses(tmp_path, capsys):
    """A file from a model with a 10-class head: the 5-class head is misshaped (skipped, reported);
    plain --load refuses the file and points at --load-partial; nothing matching is an error."""
    ten = FINETUNE.read_text().replace("head   = linear(h2, 5)", "head   = linear(h2, 10)")
    m10 = dlc.compile(ten, backend="interp", seed=4)
    m10.save(tmp_path / "ten.npz")
    m = dlc.compile(FINETUNE, backend="interp")
    report = m.load_partial(tmp_path / "ten.npz")
    assert report["loaded"] == FROZEN
    assert report["misshaped"] == [("head.w", [64, 10], [64, 5]), ("head.b", [10], [5])]
    assert report["not_in_file"] == [] and report["not_in_model"] == []
    assert np.array_equal(np.asarray(m.params["h1.w"]), np.asarray(m10.params["h1.w"]))
    assert np.array_equal(np.asarray(m.params["head.w"]), dlc.compile(FINETUNE, backend="interp").params["head.w"])
    from dlc.runtime.weights import partial_report
    assert partial_report(report) == ("loaded 4 params (h1.w, h1.b, h2.w, h2.b); misshaped: head.w (file [64, 10], model "
                                      "[64, 5]), head.b (file [10], model [5]) (initialised)")
    with pytest.raises(DlcError, match=r"param 'head.w' should be f32\[64, 5\], found shape \[64, 10\]"):
        m.load(tmp_path / "ten.npz")
    base = dlc.compile(BASE, backend="interp")
    base.save(tmp_path / "base.npz")
    with pytest.raises(DlcError, match=r"no array for param 'head.w' .*--load-partial"):
        m.load(tmp_path / "base.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3, np.float32))
    with pytest.raises(DlcError, match="no param of model transfer_finetune matches an array of this file"):
        m.load_partial(tmp_path / "other.npz")
    assert run(FINETUNE, "--load", tmp_path / "base.npz", "--load-partial", tmp_path / "base.npz") == 2
    assert "--load-partial: cannot be combined with --load" in capsys.readouterr().err


def test_docs_record_the_example_numbers():
    """docs/runtime.md quotes the accuracies of the example, as measured; keep them in the docs."""
    text = (ROOT / "docs" / "runtime.md").read_text()
    assert "transfer_finetune.dln" in text
    assert re.search(r"held-out accuracy 0\.\d{4}", text)
