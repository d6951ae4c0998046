"""The `dlc` command: check, compile, run, diff, bench.

Every mistake in the user's input ends in a located one-line error on stderr and exit status 2,
with no traceback (`--debug` shows one) and no half-written output file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .ir.errors import DlcError, file_error

EMITS = ("ir", "dot", "cuda", "plan")


def _bottleneck_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insert-bottlenecks", nargs="?", const=1 / 3, type=float, metavar="R",
                   help="CHANGES THE MODEL: a 1x1 convolution reducing the channels to a fraction R "
                        "(default 1/3) before each wide 3x3-or-larger convolution; prints FLOPs and params "
                        "before and after")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the .dln model file")
    p.add_argument("--model", help="which model, when the file defines several")
    p.add_argument("--debug", action="store_true", help="show a Python traceback on errors")


def _build(args, opt_level=None):
    from .api import read_source
    from .dsl.frontend import lower
    from .passes.manager import run_pipeline
    text, file = read_source(args.file)
    g = lower(text, file, args.model)
    if getattr(args, "insert_bottlenecks", None) is not None:
        from .passes.bottleneck import insert_bottlenecks
        rewrite = insert_bottlenecks(g, args.insert_bottlenecks)
        g = rewrite.graph
        if not getattr(args, "_rewrite_shown", False):
            print("\n".join(rewrite.lines))
            args._rewrite_shown = True
    level = opt_level if opt_level is not None else getattr(args, "O", 1)
    passes = [p.strip() for p in args.passes.split(",") if p.strip()] if getattr(args, "passes", None) else None
    check = getattr(args, "verify_each", False) or bool(os.environ.get("DLC_DEBUG"))
    return run_pipeline(g, level, dump_after=getattr(args, "dump_ir_after", None), check=check, passes=passes)


# -- check ------------------------------------------------------------------------------------
def cmd_check(args) -> int:
    res = _build(args, 1)
    g = res.stages["forward"]
    m = g.meta
    print(f"model {m.name}: ok")
    print("inputs:")
    for n in g.inputs:
        print(f"  {n:<16} {g.type(n)}")
    print("params:")
    total = 0
    for p in g.params:
        k = g.type(p).numel()
        total += k
        frozen = "  (frozen)" if p in m.frozen else ""
        print(f"  {p:<16} {str(g.type(p)):<20} {k:>10,}{frozen}")
    print(f"  {'total':<16} {'':<20} {total:>10,}")
    print("outputs:")
    for k, v in m.outputs.items():
        print(f"  {k:<16} {g.type(v)}")
    _print_layers(g)
    if m.loss:
        opt = m.optimizer
        from .ir.text import fmt_value
        settings = ", ".join(f"{k}={fmt_value(v)}" for k, v in opt[1].items())
        print(f"minimize {m.loss} with {opt[0]}({settings})")
    return 0


def layers(g):
    """Forward nodes grouped by the model-level binding they belong to (`i3a.b3.conv2d` -> `i3a`):
    per group, the output type, the params it uses first, and FLOPs per example."""
    from .ir.ops import flops
    groups: dict[str, dict] = {}
    owner = {}
    for n in g.order():
        op = g.op(n)
        if op in ("input", "param", "state", "const"):
            continue
        key = n.split(".")[0]
        grp = groups.setdefault(key, {"out": None, "params": [], "flops": 0})
        grp["flops"] += flops(g, n)
        if n == key:
            grp["out"] = g.type(n)
        for a in g.operands(n):
            if g.op(a) == "param" and a not in owner:
                owner[a] = key
                grp["params"].append(a)
    return groups


def _print_layers(g) -> None:
    groups = layers(g)
    print("layers (forward, per example):")
    print(f"  {'layer':<16} {'output':<22} {'params':>10} {'FLOPs':>14}")
    total_p = total_f = 0
    for k, grp in groups.items():
        np_ = sum(g.type(p).numel() for p in grp["params"])
        total_p += np_
        total_f += grp["flops"]
        print(f"  {k:<16} {str(grp['out'] or ''):<22} {np_:>10,} {grp['flops']:>14,}")
    print(f"  {'total':<16} {'':<22} {total_p:>10,} {total_f:>14,}")


# -- compile ----------------------------------------------------------------------------------
def cmd_compile(args) -> int:
    from .ir.dot import to_dot
    from .ir.text import print_ir
    from .runtime.data import atomic_write
    emit = [e.strip() for e in args.emit.split(",") if e.strip()]
    bad = [e for e in emit if e not in EMITS]
    if bad:
        raise DlcError(f"--emit: unknown artefact '{bad[0]}' (known: {', '.join(EMITS)})")
    if args.dump_ir_after:
        from .passes.manager import PASS_NAMES
        if args.dump_ir_after not in PASS_NAMES + ["all"]:
            raise DlcError(f"--dump-ir-after: unknown pass '{args.dump_ir_after}' "
                           f"(passes: {', '.join(PASS_NAMES)}, or all)")
    res = _build(args)
    g = res.stages["optimized"]
    name = g.meta.name
    files: dict[str, str] = {}
    if "ir" in emit:
        files[f"{name}.ir"] = print_ir(g)
    if "dot" in emit:
        files[f"{name}.dot"] = to_dot(g)
    if "cuda" in emit or "plan" in emit:
        from .codegen import generate
        mod = generate(g)
        if "cuda" in emit:
            files[f"{name}.cu"] = mod.source
        if "plan" in emit:
            files[f"{name}.plan.json"] = mod.plan_json()
    for fname, text in res.dumps:
        files[f"dumps/{fname}"] = text
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise file_error(out, "exists and is not a folder")
    try:
        (out / "dumps" if res.dumps else out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise file_error(out, f"cannot create the output folder ({e.strerror})")
    for fname, text in files.items():
        atomic_write(out / fname, lambda f, t=text: f.write(t.encode()))
        print(f"wrote {out / fname}")
    if args.time_passes or args.stats:
        print(f"{'pass':<16} {'ms':>8} {'nodes':>6}")
        for r in res.records:
            print(f"{r.name:<16} {r.seconds * 1e3:>8.2f} {r.nodes:>6}")
    if args.explain_fusion:
        from .passes.fusion import report
        print("\n".join(report(g, {s: STATS_BATCH for s in _symbols(g)})))
    if args.stats:
        _print_stats(args, g)
    return 0


STATS_BATCH = 128  # what symbolic dimensions (the batch) are bound to in --stats and --explain-fusion


def _symbols(g) -> list[str]:
    return sorted({d for n in g.inputs for d in g.type(n).shape if isinstance(d, str)})


def _print_stats(args, g) -> None:
    """Kernels, launches, FLOPs, bytes moved and peak memory of one run of the plan (a training
    step), at -O0 and at the level compiled (or the chosen passes)."""
    from .codegen import generate
    dims = {s: STATS_BATCH for s in _symbols(g)}
    rows = [("-O0", generate(_build_level(args, 0)).stats(dims))]
    rows.append(("--passes" if args.passes else f"-O{args.O}", generate(g).stats(dims)))
    at = ", ".join(f"{k}={v}" for k, v in dims.items()) or "static sizes"
    print(f"per run of the plan ({'a training step' if g.meta.loss and g.meta.optimizer else 'inference'}), "
          f"at {at}:")
    print(f"{'':<9} {'kernels':>7} {'launches':>8} {'MFLOP':>10} {'MB moved':>9} {'peak MB':>8}")
    for name, s in rows:
        print(f"{name:<9} {s['kernels']:>7} {s['launches']:>8} {s['flops'] / 1e6:>10.3f} "
              f"{s['bytes_moved'] / 1e6:>9.3f} {s['peak_bytes'] / 1e6:>8.3f}")


def _build_level(args, level):
    """The optimized graph at `level`, whatever --passes said (for the -O0 row of --stats)."""
    return _build(argparse.Namespace(**{**vars(args), "passes": None, "dump_ir_after": None}), level
                  ).stages["optimized"]


# -- run --------------------------------------------------------------------------------------
RUN_DEFAULTS = {"epochs": 10, "batch": 32, "val_split": 0.0, "seed": 0}
OUTPUT_FLAGS = ("save", "metrics_json", "predict")
PREDICT_FORMATS = (".npz", ".csv")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _data_path(args, g) -> Path:
    if args.data:
        return Path(args.data)
    d = g.meta.train.get("data")
    if not d:
        raise DlcError("no data: pass --data FILE.npz (or give `train(data = \"...\")` in the model)")
    return Path(args.file).parent / d


def _data_flags(p: argparse.ArgumentParser) -> None:
    """The flags that say how data files become the model's inputs (`run`, `eval`)."""
    from .runtime.data import CSV_HEADER, NORMALIZE
    p.add_argument("--data", metavar="FILE|INPUT=FILE,...",
                   help="the data: an .npz with one array per input; an IDX (MNIST: *-idx3-ubyte, .gz too) or "
                        "CSV file for the input the outputs read (a CSV's label column feeds the labels); or one "
                        "file per input, x=FILE,y=FILE (default: the model's train(data=...))")
    p.add_argument("--labels", metavar="FILE", help="the labels for --data FILE (IDX, CSV, or .npz)")
    p.add_argument("--normalize", default="none", choices=NORMALIZE,
                   help="float feature inputs: scale (integers / the largest value of their type: 255 for uint8), "
                        "standardize (per feature, over the file's examples) or none (the default)")
    p.add_argument("--label-column", metavar="COL", help="CSV: the labels' column, a 0-based index (negative from "
                   "the end) or a header name, or none (default: the last column)")
    p.add_argument("--label-offset", type=int, default=0, metavar="K",
                   help="subtract K from integer labels (1 for classes numbered from 1)")
    p.add_argument("--header", default="auto", choices=CSV_HEADER,
                   help="CSV: whether the first line names the columns (default auto: when a field is not a number)")


def _read_data(args, g):
    """(feeds, N, what was read): the data of --data (else the model's train(data=...)) as the data
    flags say."""
    from .runtime.data import DataOptions, load_data
    spec = args.data if args.data else _data_path(args, g)
    opts = DataOptions(labels=args.labels, normalize=args.normalize, label_column=args.label_column,
                       label_offset=args.label_offset, header=args.header)
    feeds, n = load_data(spec, g, opts)
    return feeds, n, f"{spec} and {args.labels}" if args.labels else str(spec)


def _check_flags(args) -> None:
    """Every flag of `run` that can be checked before compiling; each error names its flag."""
    from .runtime.data import check_output
    from .runtime.train import setting_problem
    for key in RUN_DEFAULTS:
        v = getattr(args, key)
        if v is not None and setting_problem(key, v):
            raise DlcError(f"{_flag(key)}: {setting_problem(key, v)}, found {v!r}")
    if args.predict and Path(args.predict).suffix.lower() not in PREDICT_FORMATS:
        raise DlcError(f"--predict: expected a file name ending in .npz or .csv, found {args.predict}")
    if getattr(args, "plot", None):
        if Path(args.plot).suffix.lower() != ".png":
            raise DlcError(f"--plot: expected a file name ending in .png, found {args.plot}")
        _matplotlib()  # a missing matplotlib is an error before anything trains
        _check_output("--plot", args.plot)
    for key in OUTPUT_FLAGS:
        if getattr(args, key):
            try:
                check_output(getattr(args, key))
            except DlcError as e:
                raise DlcError(f"{_flag(key)}: {e.loc}: {e.message}")


def _check_output(flag: str, path) -> None:
    """An output file's path can become a file (not a folder, no file in the way); else an error naming the flag."""
    from .runtime.data import check_output
    try:
        check_output(path)
    except DlcError as e:
        raise DlcError(f"{flag}: {e.loc}: {e.message}")


def _settings(args, g) -> dict:
    """epochs, batch, val_split, seed: from the flags, else the model's `train(...)`, else defaults.
    A bad value in `train(...)` is an error that says it came from there."""
    from .runtime.train import setting_problem
    out = {}
    for key, default in RUN_DEFAULTS.items():
        v = getattr(args, key)
        if v is None:
            v = g.meta.train.get(key, default)
            if setting_problem(key, v):
                raise file_error(args.file, f"train({key} = {v!r}) in model {g.meta.name}: {key} "
                                 f"{setting_problem(key, v)} ({_flag(key)} overrides it)")
        out[key] = v
    return out


def _check_training_flags(args) -> None:
    """--load, --load-partial, --resume and --checkpoint: which go together, and folders that are files."""
    starts = [f for f, v in (("--load", args.load), ("--load-partial", args.load_partial),
                             ("--resume", args.resume)) if v]
    if len(starts) > 1:
        raise DlcError(f"{starts[1]}: cannot be combined with {starts[0]}: a run starts from one of --load "
                       "(strict), --load-partial (by name) or --resume (a checkpoint)")
    if args.checkpoint:
        from .runtime.data import CHECKPOINT_FILE, check_output
        if Path(args.checkpoint).exists() and not Path(args.checkpoint).is_dir():
            raise DlcError(f"--checkpoint: {args.checkpoint} is a file; expected a folder (created if missing)")
        try:
            check_output(Path(args.checkpoint) / CHECKPOINT_FILE)
        except DlcError as e:
            raise DlcError(f"--checkpoint: {e.loc}: {e.message}")


def _start_from(args, model, feeds, n, s) -> tuple[dict | None, list[str]]:
    """Weights for the run from --load, --load-partial or --resume; returns (the checkpoint's
    metadata when resuming, lines to print). Resuming takes the checkpoint's seed, batch and
    val_split (a flag that disagrees is an error) and checks the data is the same."""
    from .runtime.data import (CHECKPOINT_FILE, load_checkpoint, load_state, load_weights, partial_report,
                               read_npz)
    from .runtime.train import data_digest
    g = model.graph
    notes = []
    if args.freeze:
        notes.append(f"frozen (no gradient, no update): {', '.join(g.meta.frozen)}")
    if args.load:
        arrays = read_npz(args.load)
        params = load_weights(args.load, g, arrays)
        state, why = load_state(args.load, g, arrays)
        model.params.update(params)
        if state:
            model._backend.set_state(state)
        notes.append(f"loaded {len(params)} params from {args.load}"
                     + (" and the optimizer state" if state else
                        "" if not g.nodes_of("state") else f" (optimizer state starts fresh: {why})"))
    elif args.load_partial:
        notes.append(f"{args.load_partial}: {partial_report(model.load_partial(args.load_partial))}")
    elif args.resume:
        where = Path(args.resume)
        params, state, meta = load_checkpoint(where, g)
        file = where / CHECKPOINT_FILE if where.is_dir() else where
        for key in ("seed", "batch", "val_split"):
            flag = getattr(args, key)
            if flag is not None and flag != meta[key]:
                raise DlcError(f"{_flag(key)}: {flag} differs from the checkpoint's {key} = {meta[key]} ({file}); "
                               "--resume continues that run: leave the flag out")
            s[key] = meta[key]
        if meta["examples"] != n or meta["data"] != data_digest(feeds):
            raise file_error(file, f"the checkpoint was trained on other data ({meta['examples']} examples, "
                             f"not these {n}, or different values): --resume needs the same --data")
        model.params.update(params)
        model._backend.set_state(state)
        model.seed = meta["seed"]
        notes.append(f"resumed from {file}: epoch {meta['epoch']} done, {meta['steps']} steps"
                     + ("" if meta["epoch"] < s["epochs"] else
                        f"; nothing left to train up to epoch {s['epochs']} (raise --epochs)"))
    return (meta if args.resume else None), notes


def cmd_run(args) -> int:
    import dlc
    from .runtime.backends import resolve
    from .runtime.data import atomic_write, save_weights
    from .runtime.init import initial_state
    from .runtime.train import accuracy_rule, evaluate, per_example_problem, predict, train
    _check_flags(args)
    _check_training_flags(args)
    backend = resolve(args.backend, "--backend")
    if args.cuda_graph and backend != "cuda":
        raise DlcError(f"--cuda-graph needs the cuda backend, not {backend}")
    try:
        model = dlc.compile(args.file, backend=backend, model=args.model, opt_level=args.O, seed=args.seed or 0,
                            insert_bottlenecks=args.insert_bottlenecks,
                            cuda_graph=args.cuda_graph, freeze=args.freeze)
    except DlcError as e:
        if args.freeze and e.message.startswith("freeze: "):
            raise DlcError("--" + e.message)
        raise
    g = model.graph
    if model.rewrite:
        print("\n".join(model.rewrite))
    if args.predict and per_example_problem(g):
        raise DlcError(f"--predict: {per_example_problem(g)}")
    s = _settings(args, g)
    epochs, batch, val_split, seed = s["epochs"], s["batch"], s["val_split"], s["seed"]
    if seed != (args.seed or 0):  # the model's train(seed = ...)
        model._backend.set_state(initial_state(g, seed))
        model.seed = seed
    if args.plot and not (model.trainable and epochs > 0):
        raise DlcError("--plot: nothing to plot: it draws the training epochs, and this run trains none "
                       + ("(--epochs 0)" if model.trainable else f"(model {g.meta.name} minimises nothing)"))
    feeds, n, path = _read_data(args, g)
    resume, notes = _start_from(args, model, feeds, n, s)
    epochs, batch, val_split, seed = s["epochs"], s["batch"], s["val_split"], s["seed"]
    how = f" (auto: {'a GPU is present' if backend == 'cuda' else 'no GPU found'})" if args.backend == "auto" else ""
    print(f"model {g.meta.name}: {n} examples from {path}, backend {model.backend}{how}")
    for note in notes:
        print(note)
    model.check_numerics = bool(args.check_numerics)
    if model.trainable and epochs > 0:
        metrics = train(model, feeds, n, epochs, batch, val_split, seed, progress=not args.no_progress,
                        checkpoint=args.checkpoint, resume=resume)
        if args.checkpoint and metrics["history"]:
            print(f"checkpoint: {Path(args.checkpoint) / 'checkpoint.npz'} (epoch {metrics['history'][-1]['epoch']})")
    else:
        rule = accuracy_rule(g, feeds)
        try:
            loss, acc = evaluate(model, feeds, batch, rule)
        except DlcError as e:
            from .runtime.train import with_context
            raise with_context(e, "while evaluating")
        metrics = {"epochs": 0, "backend": model.backend, "examples": n}
        if g.meta.loss:
            metrics["loss"] = loss
        if acc is not None:
            metrics["accuracy"] = acc
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        print(f"{shown or 'ran inference'} on {n} examples")
    if "val_accuracy" in metrics:
        print(f"held-out accuracy {metrics['val_accuracy']:.4f} on {metrics['val_examples']} examples")
    elif "val_loss" in metrics:  # a model with no accuracy (a regression): its held-out loss
        print(f"held-out loss {metrics['val_loss']:.4f} on {metrics['val_examples']} examples")
    if args.predict:
        _write_predictions(args.predict, predict(model, feeds, batch), accuracy_rule(g, feeds))
        print(f"wrote predictions for {n} examples to {args.predict}")
    if args.save:
        params, state = model.split_state()
        save_weights(args.save, params, parents=True, state=state)
        print(f"saved weights to {args.save}" + (" (with the optimizer state)" if state else ""))
    if args.metrics_json:
        text = json.dumps(metrics, indent=2) + "\n"
        atomic_write(args.metrics_json, lambda f: f.write(text.encode()), parents=True)
    if args.plot:
        write_plot(args.plot, metrics["history"], f"model {g.meta.name}")
        print(f"wrote the training curves to {args.plot}")
    return 0


PLOT_SIZE = (10, 4)  # inches, at PLOT_DPI: a --plot PNG is 1000 x 400 pixels
PLOT_DPI = 100


def _matplotlib():
    """matplotlib's Agg figure and canvas (no pyplot, no display), or a DlcError naming the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise DlcError(f"--plot needs matplotlib, which is not installed ({e}): pip install 'dlc[plot]'")
    return Figure, FigureCanvasAgg


def write_plot(path, history: list[dict], title: str) -> None:
    """Loss and accuracy per epoch, training and held-out, as a PNG (1000 x 400 pixels), written
    atomically. The accuracy panel is left out when the model reports no accuracy."""
    from .runtime.data import atomic_write
    Figure, Canvas = _matplotlib()
    from matplotlib.ticker import MaxNLocator
    epochs = [h["epoch"] for h in history]
    panels = [("loss", "loss")] + ([("accuracy", "accuracy")] if any("accuracy" in h for h in history) else [])
    fig = Figure(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    Canvas(fig)
    for i, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for k, style, name in ((key, "-o", "training"), (f"val_{key}", "--s", "held-out")):
            pts = [(e, h[k]) for e, h in zip(epochs, history) if k in h]
            if pts:
                ax.plot(*zip(*pts), style, markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(f"{title}: {label}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=PLOT_DPI), parents=True)


def _write_predictions(path, outputs: dict, rule) -> None:
    """`.npz`: one array per output, named as in the model. `.csv`: a header and one row per
    example: for a classifier (integer labels against an [N, C] output) first `class`, the arg-max
    of that output, then every output's values flattened per example (`logits_0`, `logits_1`, ...)."""
    from .runtime.data import atomic_write
    if Path(path).suffix.lower() == ".npz":
        atomic_write(path, lambda f: np.savez(f, **outputs), parents=True)
        return
    cols, names, fmt = [], [], []
    if rule and rule[2] == "argmax":
        cols.append(np.argmax(outputs[rule[0]], axis=1)[:, None])
        names.append("class")
        fmt.append("%d")
    for k, v in outputs.items():
        v = v.reshape(len(v), -1)
        cols.append(v)
        names += [k] if v.shape[1] == 1 else [f"{k}_{i}" for i in range(v.shape[1])]
        fmt += ["%.9g"] * v.shape[1]  # 9 digits: a float32 reads back exactly
    rows = np.concatenate([c.astype(np.float64) for c in cols], axis=1)
    atomic_write(path, lambda f: np.savetxt(f, rows, fmt=fmt, delimiter=",", header=",".join(names),
                                            comments=""), parents=True)


# -- eval -------------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    import dlc
    from .runtime.backends import resolve
    from .runtime.data import atomic_write
    from .runtime.evaluate import evaluate_classes, report_lines
    from .runtime.train import setting_problem
    if args.batch is not None and setting_problem("batch", args.batch):
        raise DlcError(f"--batch: {setting_problem('batch', args.batch)}, found {args.batch!r}")
    if args.metrics_json:
        _check_output("--metrics-json", args.metrics_json)
    backend = resolve(args.backend, "--backend")
    model = dlc.compile(args.file, backend=backend, model=args.model, opt_level=args.O)
    g = model.graph
    batch = args.batch
    if batch is None:
        batch = g.meta.train.get("batch", RUN_DEFAULTS["batch"])
        if setting_problem("batch", batch):
            raise file_error(args.file, f"train(batch = {batch!r}) in model {g.meta.name}: batch "
                             f"{setting_problem('batch', batch)} (--batch overrides it)")
    model.load(args.load)
    feeds, n, what = _read_data(args, g)
    print(f"model {g.meta.name}: weights {args.load}, {n} examples from {what}, backend {model.backend}")
    metrics = evaluate_classes(model, feeds, batch)
    print("\n".join(report_lines(metrics)))
    if args.metrics_json:
        metrics = {**metrics, "backend": model.backend, "weights": str(args.load), "data": what}
        text = json.dumps(metrics, indent=2) + "\n"
        atomic_write(args.metrics_json, lambda f: f.write(text.encode()), parents=True)
    return 0


# -- export -----------------------------------------------------------------------------------
from .runtime.onnx_export import OPSET as ONNX_OPSET  # noqa: E402  (no onnx import: only numpy and ir)


def cmd_export(args) -> int:
    import dlc
    from .runtime.data import atomic_write
    from .runtime.onnx_export import export_onnx, require_onnx
    from .runtime.train import setting_problem
    require_onnx()  # before compiling: a missing package is the first thing said
    if setting_problem("seed", args.seed):
        raise DlcError(f"--seed: {setting_problem('seed', args.seed)}, found {args.seed!r}")
    _check_output("-o", args.output)
    model = dlc.compile(args.file, backend="interp", model=args.model, seed=args.seed)
    if args.load:
        model.load(args.load)
    proto, summary = export_onnx(model.stages["forward"], {p: np.asarray(v) for p, v in model.params.items()})
    data = proto.SerializeToString()
    atomic_write(args.output, lambda f: f.write(data), parents=True)
    print(f"wrote {args.output}: {summary}")
    return 0


# -- diff -------------------------------------------------------------------------------------
def cmd_diff(args) -> int:
    from .runtime.data import load_data
    from .runtime.diff import ATOL, RTOL, compared, diff, random_nodes, synth_feeds
    from .runtime.init import initial_state
    names = list(dict.fromkeys(b.strip() for b in args.backends.split(",") if b.strip()))
    from .runtime.backends import BACKENDS
    for b in names:
        if b not in BACKENDS:
            raise DlcError(f"--backends: unknown backend '{b}' (known: {', '.join(BACKENDS)})")
    if not [b for b in names if b != "interp"]:
        raise DlcError(f"--backends {args.backends}: nothing to compare: interp is the reference every "
                       "other backend is compared with; name at least one of emu, cuda")
    res = _build(args)
    g = res.stages["optimized"]
    if args.data:
        feeds, n = load_data(args.data, g)
        feeds = {k: v[:args.batch] for k, v in feeds.items()}
    else:
        feeds = synth_feeds(g, args.batch, args.seed)
    state = initial_state(g, args.seed)
    rng = (args.seed, 0)  # training mode, the same dropout masks on every backend
    results = diff(g, names, state, feeds, rng=rng)
    print(f"model {g.meta.name}: one step at batch {len(next(iter(feeds.values())))}, "
          f"tolerance |err| <= {ATOL:g} + {RTOL:g}*|ref| against interp")
    if random_nodes(g):
        print(f"training mode: dropout draws its masks from seed {rng[0]}, step {rng[1]} on every backend")
    worst = 0
    for name, r in results.items():
        if r[0] == "skipped":
            print(f"{name}: skipped ({r[1]})")
            continue
        rows, first = r
        print(f"{name}:")
        print(f"  {'kind':<7} {'tensor':<28} {'max abs err':>12} {'max rel err':>12}  ok")
        for row in rows:
            print(f"  {row.kind:<7} {row.name:<28} {row.abs_err:>12.3e} {row.rel_err:>12.3e}  "
                  f"{'ok' if row.ok else 'DIVERGES'}")
        if first or not all(row.ok for row in rows):
            worst = 1
            if first:
                loc = g.loc(first)
                line = g.source_line(loc)
                print(f"  first divergence in execution order: %{first} ({g.op(first)})"
                      + (f" from {loc}: {line}" if loc else ""))
    done, skipped = compared(results)
    print(f"compared: {', '.join(done) + ' against interp' if done else 'nothing'}"
          + (f"; skipped: {', '.join(f'{k} ({why})' for k, why in skipped)}" if skipped else ""))
    if not done:
        raise DlcError("nothing to compare: every backend besides interp was skipped "
                       f"({'; '.join(f'{k}: {why}' for k, why in skipped)})")
    print("result: " + ("DIVERGES" if worst else "agree"))
    return worst


# -- bench ------------------------------------------------------------------------------------
# Iteration times of one phase whose 90th percentile is more than SPREAD_LIMIT times the 10th
# scatter too much for the figure to mean anything (another process took the cores, or the BLAS
# threads fought over them): the command says so under the table.
SPREAD_LIMIT = 1.5
# The variables benchmarks/_timing.py sets: BLAS and OpenMP read them once, when they load.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def time_stats(times) -> dict[str, float]:
    """Of one phase's iteration times (seconds): min, median, p10, p90 and spread = p90 / p10."""
    t = np.asarray(times, dtype=np.float64)
    p10, median, p90 = (float(v) for v in np.percentile(t, [10, 50, 90]))
    return {"min": float(t.min()), "median": median, "p10": p10, "p90": p90,
            "spread": p90 / p10 if p10 > 0 else float("inf")}


def unreliable(stats: dict, limit: float = SPREAD_LIMIT) -> bool:
    """Whether the times behind `stats` (from `time_stats`) spread too much to be a figure."""
    return not stats["spread"] <= limit


def _bench_child(args) -> int:
    """`dlc bench` again in a child process whose BLAS and OpenMP use `--threads` threads: in this
    process NumPy's BLAS has loaded already and keeps the thread count it started with."""
    import subprocess
    argv = ["bench", args.file, "--backend", args.backend, "--batch", str(args.batch), "--iters",
            str(args.iters), "--threads", str(args.threads), "-O", str(args.O)]
    argv += (["--model", args.model] if args.model else []) + (["--cuda-graph"] if args.cuda_graph else []) \
        + (["--debug"] if args.debug else [])
    env = dict(os.environ, **{v: str(args.threads) for v in THREAD_VARS})
    sys.stdout.flush()
    return subprocess.call([sys.executable, "-m", "dlc.cli", *argv], env=env)


def cmd_bench(args) -> int:
    import dlc
    from .runtime.diff import synth_feeds
    from .runtime.backends import resolve
    from .runtime.train import SYNC_EVERY
    for flag, v, least in (("--iters", args.iters, 1), ("--batch", args.batch, 1), ("--threads", args.threads, 0)):
        if v < least:
            raise DlcError(f"{flag}: must be at least {least}, found {v}")
    if args.threads and any(os.environ.get(v) != str(args.threads) for v in THREAD_VARS):
        return _bench_child(args)
    model = dlc.compile(args.file, backend=resolve(args.backend), model=args.model, opt_level=args.O,
                        cuda_graph=args.cuda_graph)
    g = model.graph
    feeds = synth_feeds(g, args.batch)
    m = g.meta
    training = model._training()  # dropout draws its masks, as in a training step
    plans = [("forward", list(m.outputs.values()), False, {})]
    if m.loss:
        plans.append(("forward+backward", [m.loss] + list(m.grads.values()), False, training))
    if model.trainable:  # as Model.step runs it: the whole step, the loss alone handed back
        plans.append(("step", model._step_roots(False), True, dict(training, fetch=[m.loss])))
        # as `dlc run` trains: SYNC_EVERY steps queued, then their losses read with one wait
        plans.append(("step-deferred", model._step_roots(False), True,
                      dict(training, fetch=[m.loss], defer=True)))
    threads = ", ".join(f"{v}={os.environ.get(v, 'unset')}" for v in THREAD_VARS[:3])  # as this process has them
    threads = f"{args.threads} ({threads})" if args.threads else f"the libraries' defaults ({threads})"
    print(f"model {m.name}, backend {model.backend}, batch {args.batch}, {args.iters} iterations after warm-up, "
          f"threads: {threads}")
    print(f"{'phase':<18} {'min ms':>10} {'median ms':>10} {'p10 ms':>10} {'p90 ms':>10} {'p90/p10':>8}")
    warnings = []
    for name, roots, commit, opts in plans:
        group = SYNC_EVERY if opts.get("defer") else 1  # a deferred step's time: its group's over its size

        def steps():
            for _ in range(group):
                res = model._backend.run(roots, feeds, commit=commit, **opts)
            if group > 1:
                res.result()
        for _ in range(3):
            steps()
        times = []
        for _ in range(max(3, args.iters // group) if group > 1 else args.iters):
            t0 = time.perf_counter()
            steps()
            times.append((time.perf_counter() - t0) / group)
        st = time_stats(times)
        print(f"{name:<18} {st['min'] * 1e3:>10.4g} {st['median'] * 1e3:>10.4g} {st['p10'] * 1e3:>10.4g} "
              f"{st['p90'] * 1e3:>10.4g} {st['spread']:>8.2f}")
        counters = getattr(model._backend, "counters", None)
        if counters is not None and commit:  # the generated-code backends count what a step asks of the host
            before = dict(counters)
            steps()
            per = {k: counters[k] - before[k] for k in counters}
            print(f"{'':<18} per {f'{group} steps' if group > 1 else 'step'}: {per['syncs']} host sync{'s' * (per['syncs'] != 1)}, "
                  f"{per['d2h_bytes']} bytes device-to-host, {per['h2d_copies']} key upload(s) besides the inputs")
        if unreliable(st):
            warnings.append(f"warning: {name}: unreliable, p90/p10 = {st['spread']:.2f} > {SPREAD_LIMIT} (the times "
                            "scatter: a busy machine?); quote the min, or run again on a quiet machine")
    for w in warnings:
        print(w)
    return 0


def parser() -> argparse.ArgumentParser:
    from .api import OPT_LEVELS  # every level the pass manager has
    ap = argparse.ArgumentParser(prog="dlc", description="dlc: a deep-learning compiler for .dln models "
                                 "(graph IR, autodiff, NumPy reference, CUDA code generation).")
    ap.add_argument("--version", action="version", version="dlc 0.1.0")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("check", help="parse and type-check; print inputs, params (with counts) and outputs")
    _common(p)
    _bottleneck_flag(p)
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("compile", help="run the pipeline and write artefacts (IR, DOT, CUDA, launch plan)")
    _common(p)
    _bottleneck_flag(p)
    p.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    p.add_argument("--emit", default="ir", help=f"comma-separated artefacts: {','.join(EMITS)} (default: ir)")
    p.add_argument("--dump-ir-after", metavar="PASS", help="also write the IR after PASS (or all) to OUTPUT/dumps/")
    p.add_argument("-O", type=int, default=1, choices=OPT_LEVELS, help="optimisation level (default 1)")
    p.add_argument("--passes", metavar="A,B,C", help="after autodiff and the optimizer, run these passes in "
                   "this order instead of an -O level")
    p.add_argument("--time-passes", action="store_true", help="print each pass's time and node count")
    p.add_argument("--verify-each", action="store_true", help="run the IR verifier after every pass")
    p.add_argument("--explain-fusion", action="store_true",
                   help="print every fusion group, fused or not, with the rule or the check that failed")
    p.add_argument("--stats", action="store_true", help="print pass times, and kernels, launches, FLOPs, "
                   f"bytes moved and peak memory of one step at -O0 and at this level (batch {128})")
    p.set_defaults(fn=cmd_compile)

    p = sub.add_parser("run", help="train (if the model minimises something) or run inference")
    _common(p)
    _bottleneck_flag(p)
    _data_flags(p)
    p.add_argument("--backend", default="auto", help="auto (cuda if a GPU is present, else interp), interp, emu, cuda")
    p.add_argument("--epochs", type=int, help="passes over the training data (default: model's, else 10)")
    p.add_argument("--batch", type=int, help="mini-batch size (default: model's, else 32)")
    p.add_argument("--val-split", type=float, dest="val_split", help="held-out fraction (default: model's, else 0)")
    p.add_argument("--seed", type=int, help="seed for initial weights, split and shuffling (default 0)")
    p.add_argument("--load", metavar="W.npz", help="start from these weights (and their optimizer state, if saved)")
    p.add_argument("--load-partial", metavar="W.npz", dest="load_partial",
                   help="transfer learning: start from the params of W.npz (any model's weights) whose name and "
                        "shape match, initialise the others, and report which")
    p.add_argument("--freeze", metavar="A,B", help="keep these params fixed (no gradient, no update), besides the "
                   "model's own `freeze`")
    p.add_argument("--save", metavar="W.npz", help="save the trained weights and the optimizer state "
                   "(missing folders are created)")
    p.add_argument("--checkpoint", metavar="DIR", help="after every epoch, write DIR/checkpoint.npz (params, optimizer "
                   "state, epoch, step count, the shuffling generator) atomically")
    p.add_argument("--resume", metavar="DIR", help="continue the run checkpointed in DIR up to --epochs, exactly as if "
                   "it had not stopped")
    p.add_argument("--check-numerics", action="store_true", dest="check_numerics",
                   help="stop at the first NaN or infinity, naming the op (on emu/cuda: the kernel) and its .dln line")
    p.add_argument("--metrics-json", metavar="M.json", help="write final metrics and per-epoch history")
    p.add_argument("--predict", metavar="OUT.npz|OUT.csv",
                   help="write the outputs over the whole data (after training): .npz, or .csv one row per example")
    p.add_argument("--plot", metavar="FILE.png", help="draw loss and accuracy per epoch, training and held-out "
                   "(needs matplotlib: pip install 'dlc[plot]')")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--cuda-graph", action="store_true", help="cuda: capture the step once, replay it as a CUDA graph")
    p.add_argument("-O", type=int, default=1, choices=OPT_LEVELS, help="optimisation level (default 1)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("eval", help="evaluate weights on data: loss, accuracy, per-class precision/recall, "
                       "confusion matrix",
                       description="Run the model in inference mode over a whole data file and print the loss, the "
                       "accuracy, each class's precision, recall, F1 and support, and the confusion matrix (rows: "
                       "the true class, columns: the predicted class).")
    _common(p)
    p.add_argument("--load", metavar="W.npz", required=True, help="the weights to evaluate (as run --save writes)")
    _data_flags(p)
    p.add_argument("--backend", default="auto", help="auto (cuda if a GPU is present, else interp), interp, emu, cuda")
    p.add_argument("--batch", type=int, help="examples per forward pass (default: model's train(batch=...), else 32)")
    p.add_argument("--metrics-json", metavar="M.json", help="write the metrics, per-class figures and confusion "
                   "matrix as JSON")
    p.add_argument("-O", type=int, default=1, choices=OPT_LEVELS, help="optimisation level (default 1)")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("export", help="write the inference graph as an ONNX model",
                       description="Write the model's inference graph (its outputs from its inputs: no loss, no "
                       f"training nodes) as an ONNX model, opset {ONNX_OPSET}, with the weights as initializers. "
                       "Needs the onnx package: pip install 'dlc[onnx]'.")
    _common(p)
    p.add_argument("-o", "--output", required=True, metavar="MODEL.onnx", help="the ONNX file to write")
    p.add_argument("--load", metavar="W.npz", help="the weights (default: the initial weights drawn from --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights, without --load (default 0)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("diff", help="one training step on several backends; max abs/rel error per tensor",
                       description="One training step (dropout in training mode, the same masks everywhere) on "
                       "each backend from the same weights and batch; max abs/rel error per tensor against interp. "
                       "Exit status: 0 every compared backend agrees, 1 one diverges, 2 nothing was compared "
                       "(only interp named, or every other backend skipped) or another error.")
    _common(p)
    p.add_argument("--backends", default="interp,emu,cuda", help="comma-separated (default interp,emu,cuda)")
    p.add_argument("--data", help="take the batch from this .npz (default: random data)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-O", type=int, default=1, choices=OPT_LEVELS, help="optimisation level (default 1)")
    p.set_defaults(fn=cmd_diff)

    p = sub.add_parser("bench", help="time forward, forward+backward and the whole training step",
                       description="Time forward, forward+backward and the whole training step: min, median, "
                       f"p10 and p90 per phase, and a warning for a phase whose p90/p10 exceeds {SPREAD_LIMIT}.")
    _common(p)
    p.add_argument("--backend", default="auto", help="auto (cuda if a GPU is present, else interp), interp, emu, cuda")
    p.add_argument("--batch", type=int, default=128, help="batch size of the random data (default 128)")
    p.add_argument("--iters", type=int, default=50, help="timed iterations per phase, after 3 untimed (default 50)")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS/OpenMP threads (default 1: steady figures on a shared machine; 0: the libraries' "
                        "defaults); sets OMP/OPENBLAS/MKL_NUM_THREADS and times in a child process")
    p.add_argument("--cuda-graph", action="store_true", help="cuda: replay each phase as a captured CUDA graph")
    p.add_argument("-O", type=int, default=1, choices=OPT_LEVELS, help="optimisation level (default 1)")
    p.set_defaults(fn=cmd_bench)
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if not getattr(args, "command", None):
        ap.print_help()
        return 2
    debug = getattr(args, "debug", False) or os.environ.get("DLC_DEBUG")
    try:
        return args.fn(args)
    except DlcError as e:
        if debug:
            raise
        print(str(e), file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
