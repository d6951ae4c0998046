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
    from .api import read_source
    from .dsl.frontend import lower
    from .passes.manager import run_pipeline
    text, file = read_source(args.file)
    return run_pipeline(lower(text, file, args.model), level).stages["optimized"]


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
        raise DlcError(f"no data: pass --data FILE.npz (or give `train(data = \"...\")` in the model)")
    return Path(args.file).parent / d


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
    for key in OUTPUT_FLAGS:
        if getattr(args, key):
            try:
                check_output(getattr(args, key))
            except DlcError as e:
                raise DlcError(f"{_flag(key)}: {e.loc}: {e.message}")


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


def cmd_run(args) -> int:
    import dlc
    from .runtime.backends import resolve
    from .runtime.data import atomic_write, load_data, load_weights, save_weights
    from .runtime.init import initial_state
    from .runtime.train import accuracy_rule, evaluate, per_example_problem, predict, train
    _check_flags(args)
    backend = resolve(args.backend, "--backend")
    if args.cuda_graph and backend != "cuda":
        raise DlcError(f"--cuda-graph needs the cuda backend, not {backend}")
    model = dlc.compile(args.file, backend=backend, model=args.model, opt_level=args.O, seed=args.seed or 0,
                        cuda_graph=args.cuda_graph)
    g = model.graph
    if args.predict and per_example_problem(g):
        raise DlcError(f"--predict: {per_example_problem(g)}")
    s = _settings(args, g)
    epochs, batch, val_split, seed = s["epochs"], s["batch"], s["val_split"], s["seed"]
    if seed != (args.seed or 0):  # the model's train(seed = ...)
        model._backend.set_state(initial_state(g, seed))
        model.seed = seed
    path = _data_path(args, g)
    feeds, n = load_data(path, g)
    if args.load:
        model.params.update(load_weights(args.load, g))
    how = f" (auto: {'a GPU is present' if backend == 'cuda' else 'no GPU found'})" if args.backend == "auto" else ""
    print(f"model {g.meta.name}: {n} examples from {path}, backend {model.backend}{how}")
    if model.trainable and epochs > 0:
        metrics = train(model, feeds, n, epochs, batch, val_split, seed, progress=not args.no_progress)
    else:
        rule = accuracy_rule(g)
        loss, acc = evaluate(model, feeds, batch, rule)
        metrics = {"epochs": 0, "backend": model.backend, "examples": n}
        if g.meta.loss:
            metrics["loss"] = loss
        if acc is not None:
            metrics["accuracy"] = acc
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        print(f"{shown or 'ran inference'} on {n} examples")
    if "val_accuracy" in metrics:
        print(f"held-out accuracy {metrics['val_accuracy']:.4f} on {metrics['val_examples']} examples")
    if args.predict:
        _write_predictions(args.predict, predict(model, feeds, batch), accuracy_rule(g))
        print(f"wrote predictions for {n} examples to {args.predict}")
    if args.save:
        save_weights(args.save, {p: np.asarray(model.params[p]) for p in g.params}, parents=True)
        print(f"saved weights to {args.save}")
    if args.metrics_json:
        text = json.dumps(metrics, indent=2) + "\n"
        atomic_write(args.metrics_json, lambda f: f.write(text.encode()), parents=True)
    return 0


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
    if model.trainable:
        plans.append(("step", model._step_roots(False), True, training))
    threads = ", ".join(f"{v}={os.environ.get(v, 'unset')}" for v in THREAD_VARS[:3])  # as this process has them
    threads = f"{args.threads} ({threads})" if args.threads else f"the libraries' defaults ({threads})"
    print(f"model {m.name}, backend {model.backend}, batch {args.batch}, {args.iters} iterations after warm-up, "
          f"threads: {threads}")
    print(f"{'phase':<18} {'min ms':>10} {'median ms':>10} {'p10 ms':>10} {'p90 ms':>10} {'p90/p10':>8}")
    warnings = []
    for name, roots, commit, opts in plans:
        for _ in range(3):
            model._backend.run(roots, feeds, commit=commit, **opts)
        times = []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            model._backend.run(roots, feeds, commit=commit, **opts)
            times.append(time.perf_counter() - t0)
        st = time_stats(times)
        print(f"{name:<18} {st['min'] * 1e3:>10.4g} {st['median'] * 1e3:>10.4g} {st['p10'] * 1e3:>10.4g} "
              f"{st['p90'] * 1e3:>10.4g} {st['spread']:>8.2f}")
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
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("compile", help="run the pipeline and write artefacts (IR, DOT, CUDA, launch plan)")
    _common(p)
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
    p.add_argument("--data", help="an .npz with one array per model input (default: the model's train(data=...))")
    p.add_argument("--backend", default="auto", help="auto (cuda if a GPU is present, else interp), interp, emu, cuda")
    p.add_argument("--epochs", type=int, help="passes over the training data (default: model's, else 10)")
    p.add_argument("--batch", type=int, help="mini-batch size (default: model's, else 32)")
    p.add_argument("--val-split", type=float, dest="val_split", help="held-out fraction (default: model's, else 0)")
    p.add_argument("--seed", type=int, help="seed for initial weights, split and shuffling (default 0)")
    p.add_argument("--load", metavar="W.npz", help="start from these weights")
    p.add_argument("--save", metavar="W.npz", help="save the trained weights (missing folders are created)")
    p.add_argument("--metrics-json", metavar="M.json", help="write final metrics and per-epoch history")
    p.add_argument("--predict", metavar="OUT.npz|OUT.csv",
                   help="write the outputs over the whole data (after training): .npz, or .csv one row per example")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--cuda-graph", action="store_true", help="cuda: capture the step once, replay it as a CUDA graph")
    p.add_argument("-O", type=int, default=1, choices=OPT_LEVELS, help="optimisation level (default 1)")
    p.set_defaults(fn=cmd_run)

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
