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
    level = opt_level if opt_level is not None else getattr(args, "O", 1)
    return run_pipeline(g, level, dump_after=getattr(args, "dump_ir_after", None), check=True)


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
        try:
            from .codegen import generate
        except ImportError:
            raise DlcError("CUDA code generation is not part of this build yet")
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
    if args.stats:
        print(f"{'pass':<16} {'ms':>8} {'nodes':>6}")
        for r in res.records:
            print(f"{r.name:<16} {r.seconds * 1e3:>8.2f} {r.nodes:>6}")
    return 0


# -- run --------------------------------------------------------------------------------------
def _data_path(args, g) -> Path:
    if args.data:
        return Path(args.data)
    d = g.meta.train.get("data")
    if not d:
        raise DlcError(f"no data: pass --data FILE.npz (or give `train(data = \"...\")` in the model)")
    return Path(args.file).parent / d


def _setting(args, g, key, default):
    v = getattr(args, key)
    return v if v is not None else g.meta.train.get(key, default)


def cmd_run(args) -> int:
    import dlc
    from .runtime.data import atomic_write, load_data, load_weights, save_weights
    from .runtime.train import accuracy_rule, correct, evaluate, train
    for flag in ("save", "metrics_json"):
        p = getattr(args, flag)
        if p and not Path(p).parent.exists():
            raise DlcError(f"--{flag.replace('_', '-')}: folder {Path(p).parent} does not exist")
        if p and Path(p).is_dir():
            raise DlcError(f"--{flag.replace('_', '-')}: {p} is a folder, expected a file name")
    from .runtime.backends import resolve
    from .runtime.init import initial_state
    backend = resolve(args.backend)
    if args.backend == "auto":
        print(f"backend: {backend} (auto: {'a GPU is present' if backend == 'cuda' else 'no GPU found'})")
    model = dlc.compile(args.file, backend=backend, model=args.model, opt_level=args.O, seed=args.seed or 0,
                        cuda_graph=args.cuda_graph)
    g = model.graph
    epochs = _setting(args, g, "epochs", 10)
    batch = _setting(args, g, "batch", 32)
    val_split = _setting(args, g, "val_split", 0.0)
    seed = _setting(args, g, "seed", 0)
    if seed != (args.seed or 0):
        model._backend.set_state(initial_state(g, seed))
    if epochs < 0 or batch < 1 or not 0 <= val_split < 1:
        raise DlcError("need --epochs >= 0, --batch >= 1 and 0 <= --val-split < 1")
    path = _data_path(args, g)
    feeds, n = load_data(path, g)
    if args.load:
        model.params.update(load_weights(args.load, g))
    print(f"model {g.meta.name}: {n} examples from {path}, backend {model.backend}")
    if model.trainable and epochs > 0:
        metrics = train(model, feeds, n, epochs, batch, val_split, seed, progress=not args.no_progress)
    else:
        rule = accuracy_rule(g)
        loss, acc = evaluate(model, feeds, batch, rule)
        metrics = {"epochs": 0, "backend": model.backend}
        if g.meta.loss:
            metrics["loss"] = loss
        if acc is not None:
            metrics["accuracy"] = acc
        print("  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)) or "ran inference")
    if "val_accuracy" in metrics:
        print(f"held-out accuracy {metrics['val_accuracy']:.4f} on {metrics['val_examples']} examples")
    if args.save:
        save_weights(args.save, {p: np.asarray(model.params[p]) for p in g.params})
        print(f"saved weights to {args.save}")
    if args.metrics_json:
        text = json.dumps(metrics, indent=2) + "\n"
        atomic_write(args.metrics_json, lambda f: f.write(text.encode()))
    return 0


# -- diff -------------------------------------------------------------------------------------
def cmd_diff(args) -> int:
    from .runtime.data import load_data
    from .runtime.diff import ATOL, RTOL, diff, synth_feeds
    from .runtime.init import initial_state
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    from .runtime.backends import BACKENDS
    for b in names:
        if b not in BACKENDS:
            raise DlcError(f"--backends: unknown backend '{b}' (known: {', '.join(BACKENDS)})")
    res = _build(args)
    g = res.stages["optimized"]
    if args.data:
        feeds, n = load_data(args.data, g)
        feeds = {k: v[:args.batch] for k, v in feeds.items()}
    else:
        feeds = synth_feeds(g, args.batch, args.seed)
    state = initial_state(g, args.seed)
    results = diff(g, names, state, feeds)
    print(f"model {g.meta.name}: one step at batch {len(next(iter(feeds.values())))}, "
          f"tolerance |err| <= {ATOL:g} + {RTOL:g}*|ref| against interp")
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
    print("result: " + ("DIVERGES" if worst else "agree"))
    return worst


# -- bench ------------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    import dlc
    from .runtime.diff import synth_feeds
    from .runtime.backends import resolve
    model = dlc.compile(args.file, backend=resolve(args.backend), model=args.model, opt_level=args.O,
                        cuda_graph=args.cuda_graph)
    g = model.graph
    feeds = synth_feeds(g, args.batch)
    m = g.meta
    plans = [("forward", list(m.outputs.values()), False)]
    if m.loss:
        plans.append(("forward+backward", [m.loss] + list(m.grads.values()), False))
    if model.trainable:
        plans.append(("step", model._step_roots(False), True))
    print(f"model {m.name}, backend {model.backend}, batch {args.batch}, {args.iters} iterations after warm-up")
    print(f"{'phase':<18} {'median ms':>10} {'min ms':>10}")
    for name, roots, commit in plans:
        for _ in range(3):
            model._backend.run(roots, feeds, commit=commit)
        times = []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            model._backend.run(roots, feeds, commit=commit)
            times.append(time.perf_counter() - t0)
        print(f"{name:<18} {np.median(times) * 1e3:>10.3f} {min(times) * 1e3:>10.3f}")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dlc", description="dlc: a deep-learning compiler for .dln models "
                                 "(graph IR, autodiff, NumPy reference, CUDA code generation).")
    ap.add_argument("--version", action="version", version="dlc 0.1.0")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("check", help="parse and type-check; print inputs, params (with counts) and outputs")
    _common(p)
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("compile", help="run the pipeline and write artefacts (IR, DOT, CUDA, launch plan)")
    _common(p)
    p.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    p.add_argument("--emit", default="ir", help=f"comma-separated artefacts: {','.join(EMITS)} (default: ir)")
    p.add_argument("--dump-ir-after", metavar="PASS", help="also write the IR after PASS (or all) to OUTPUT/dumps/")
    p.add_argument("-O", type=int, default=1, choices=[0, 1], help="optimisation level (default 1)")
    p.add_argument("--stats", action="store_true", help="print per-pass time and node counts")
    p.set_defaults(fn=cmd_compile)

    p = sub.add_parser("run", help="train (if the model minimises something) or run inference")
    _common(p)
    p.add_argument("--data", help="an .npz with one array per model input (default: the model's train(data=...))")
    p.add_argument("--backend", default="auto", help="auto (cuda if a GPU is present, else interp), interp, emu, cuda")
    p.add_argument("--epochs", type=int, help="passes over the training data (default: model's, else 10)")
    p.add_argument("--batch", type=int, help="mini-batch size (default: model's, else 32)")
    p.add_argument("--val-split", type=float, dest="val_split", help="held-out fraction (default: model's, else 0)")
    p.add_argument("--seed", type=int, help="seed for initial weights, split and shuffling (default 0)")
    p.add_argument("--load", metavar="W.npz", help="start from these weights")
    p.add_argument("--save", metavar="W.npz", help="save the trained weights")
    p.add_argument("--metrics-json", metavar="M.json", help="write final metrics and per-epoch history")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--cuda-graph", action="store_true", help="cuda: capture the step once, replay it as a CUDA graph")
    p.add_argument("-O", type=int, default=1, choices=[0, 1], help="optimisation level (default 1)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("diff", help="one training step on several backends; max abs/rel error per tensor")
    _common(p)
    p.add_argument("--backends", default="interp,emu,cuda", help="comma-separated (default interp,emu,cuda)")
    p.add_argument("--data", help="take the batch from this .npz (default: random data)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-O", type=int, default=1, choices=[0, 1])
    p.set_defaults(fn=cmd_diff)

    p = sub.add_parser("bench", help="time forward, forward+backward and the whole training step")
    _common(p)
    p.add_argument("--backend", default="auto")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--cuda-graph", action="store_true", help="cuda: replay each phase as a captured CUDA graph")
    p.add_argument("-O", type=int, default=1, choices=[0, 1])
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
