"""The `dlc` command: check, compile, run, eval, export, import, diff, bench, sample.

It parses the arguments, calls the API (`dlc.api`, the one front door) and prints; it imports no
stage of the compiler. Every mistake in the user's input ends in a located one-line error on
stderr and exit status 2, with no traceback (`--debug` shows one) and no half-written output
file; an error about an API argument names the flag it came from (`--epochs: ...`).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from pathlib import Path

from . import api
from .ir.errors import DlcError, file_error

OUTPUT_FLAGS = ("save", "metrics_json", "predict")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _check_output(flag: str, path) -> None:
    """An output file's path can become a file (not a folder, no file in the way); else an error naming the flag."""
    try:
        api.check_output(path)
    except DlcError as e:
        raise DlcError(f"{flag}: {e.loc}: {e.message}")


def _options(args, **over) -> api.Options:
    """The build options of a command's flags (those it has)."""
    kw = dict(model=args.model, opt_level=getattr(args, "O", 1), passes=getattr(args, "passes", None),
              freeze=getattr(args, "freeze", None), insert_bottlenecks=getattr(args, "insert_bottlenecks", None),
              check=getattr(args, "verify_each", False), dump_after=getattr(args, "dump_ir_after", None),
              lr=getattr(args, "lr", None), data_parallel=getattr(args, "data_parallel", False),
              precision=getattr(args, "precision", "fp32"))
    return api.Options(**{**kw, **over})


def _show_rewrite(lines) -> None:
    if lines:
        print("\n".join(lines))


# -- check ------------------------------------------------------------------------------------
def cmd_check(args) -> int:
    b = api.build(args.file, _options(args, opt_level=1))
    _show_rewrite(b.rewrite)
    g = b.forward
    m = g.meta
    print(f"model {m.name}: ok")
    print(f"precision: {m.precision}")
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
    if g.buffers:
        print("model buffers (running statistics, saved with the weights):")
        for n in g.buffers:
            print(f"  {n:<16} {str(g.type(n)):<20} {g.type(n).numel():>10,}")
    print("outputs:")
    for k, v in m.outputs.items():
        print(f"  {k:<16} {g.type(v)}")
    _print_layers(b)
    if m.loss:
        opt = m.optimizer
        settings = ", ".join(f"{k}={api.fmt_value(v)}" for k, v in opt[1].items())
        print(f"minimize {m.loss} with {opt[0]}({settings})")
    return 0


def _print_layers(b) -> None:
    g = b.forward
    layers = b.layers()
    once = any(grp["batch_flops"] for grp in layers.values())  # a weight penalty: once per batch
    print("layers (forward, per example):" if not once else
          "layers (forward; FLOPs per example, and once per batch whatever its size):")
    print(f"  {'layer':<16} {'output':<22} {'params':>10} {'FLOPs':>14}" + (f" {'per batch':>14}" if once else ""))
    total_p = total_f = total_b = 0
    for k, grp in layers.items():
        np_ = sum(g.type(p).numel() for p in grp["params"])
        total_p += np_
        total_f += grp["flops"]
        total_b += grp["batch_flops"]
        print(f"  {k:<16} {str(grp['out'] or ''):<22} {np_:>10,} {grp['flops']:>14,}"
              + (f" {grp['batch_flops']:>14,}" if once else ""))
    print(f"  {'total':<16} {'':<22} {total_p:>10,} {total_f:>14,}" + (f" {total_b:>14,}" if once else ""))


# -- compile ----------------------------------------------------------------------------------
def cmd_compile(args) -> int:
    bad = [e for e in (e.strip() for e in args.emit.split(",")) if e and e not in api.EMITS]
    if bad:  # before compiling: a flag mistake is the first thing said
        raise DlcError(f"--emit: unknown artefact '{bad[0]}' (known: {', '.join(api.EMITS)})")
    opts = _options(args).checked()
    b = api.build(args.file, opts)
    _show_rewrite(b.rewrite)
    files = b.artefacts(args.emit)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise file_error(out, "exists and is not a folder")
    try:
        (out / "dumps" if b.dumps else out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise file_error(out, f"cannot create the output folder ({e.strerror})")
    for fname, text in files.items():
        api.atomic_write(out / fname, lambda f, t=text: f.write(t.encode()))
        print(f"wrote {out / fname}")
    if args.time_passes or args.stats:
        print(f"{'pass':<16} {'ms':>8} {'nodes':>6}")
        for r in b.records:
            print(f"{r.name:<16} {r.seconds * 1e3:>8.2f} {r.nodes:>6}")
    if args.explain_fusion:
        print("\n".join(b.explain_fusion()))
    if args.stats:
        base = api.build(args.file, _options(args, opt_level=0, passes=None, dump_after=None))
        rows = [("-O0", base.stats()), ("--passes" if args.passes else f"-O{args.O}", b.stats())]
        at = ", ".join(f"{k}={api.STATS_BATCH}" for k in b.symbols()) or "static sizes"
        print(f"per run of the plan ({'a training step; eval: an evaluation run' if b.trains else 'inference'}), "
              f"at {at}:")
        print(f"{'':<9} {'kernels':>7} {'launches':>8} {'MFLOP':>10} {'MB moved':>9} {'peak MB':>8}")
        if b.trains:  # and what an evaluation run (held-out scoring, forward, predict) costs
            rows += [(f"eval {name}", x.stats(run="evaluation")) for name, x in (("-O0", base), (rows[1][0], b))]
        for name, s in rows:
            print(f"{name:<9} {s['kernels']:>7} {s['launches']:>8} {s['flops'] / 1e6:>10.3f} "
                  f"{s['bytes_moved'] / 1e6:>9.3f} {s['peak_bytes'] / 1e6:>8.3f}")
    return 0


# -- run --------------------------------------------------------------------------------------
def _data_flags(p: argparse.ArgumentParser) -> None:
    """The flags that say how data files become the model's inputs (`run`, `eval`)."""
    p.add_argument("--data", metavar="FILE|INPUT=FILE,...",
                   help="the data: an .npz with one array per input; an IDX (MNIST: *-idx3-ubyte, .gz too) or "
                        "CSV file for the input the outputs read (a CSV's label column feeds the labels); or one "
                        "file per input, x=FILE,y=FILE (default: the model's train(data=...))")
    p.add_argument("--labels", metavar="FILE", help="the labels for --data FILE (IDX, CSV, or .npz)")
    p.add_argument("--normalize", default="none", choices=api.NORMALIZE,
                   help="float feature inputs: scale (integers / the largest value of their type: 255 for uint8), "
                        "standardize (per feature, over the file's examples) or none (the default)")
    p.add_argument("--label-column", metavar="COL", help="CSV: the labels' column, a 0-based index (negative from "
                   "the end) or a header name, or none (default: the last column)")
    p.add_argument("--label-offset", type=int, default=0, metavar="K",
                   help="subtract K from integer labels (1 for classes numbered from 1)")
    p.add_argument("--header", default="auto", choices=api.CSV_HEADER,
                   help="CSV: whether the first line names the columns (default auto: when a field is not a number)")


def _read_data(args, model, warn: bool = True):
    data = model.read_data(args.data, labels=args.labels, normalize=args.normalize, label_column=args.label_column,
                           label_offset=args.label_offset, header=args.header)
    for w in data.warnings if warn else []:
        print(f"warning: {w}", file=sys.stderr)
    return data


def _check_run_flags(args) -> None:
    """Every flag of `run` that can be checked before compiling; each error names its flag."""
    api.check_settings(epochs=args.epochs, batch=args.batch, val_split=args.val_split, seed=args.seed,
                       patience=args.patience, monitor=args.monitor, test_split=args.test_split)
    if args.predict and Path(args.predict).suffix.lower() not in api.PREDICT_FORMATS:
        raise DlcError(f"--predict: expected a file name ending in .npz or .csv, found {args.predict}")
    if args.plot:
        if Path(args.plot).suffix.lower() != ".png":
            raise DlcError(f"--plot: expected a file name ending in .png, found {args.plot}")
        api.require_matplotlib()  # a missing matplotlib is an error before anything trains
        _check_output("--plot", args.plot)
    for key in OUTPUT_FLAGS:
        if getattr(args, key):
            _check_output(_flag(key), getattr(args, key))
    starts = [f for f, v in (("--load", args.load), ("--load-partial", args.load_partial),
                             ("--resume", args.resume)) if v]
    if len(starts) > 1:
        raise DlcError(f"{starts[1]}: cannot be combined with {starts[0]}: a run starts from one of --load "
                       "(strict), --load-partial (by name) or --resume (a checkpoint)")
    if args.checkpoint:
        if Path(args.checkpoint).exists() and not Path(args.checkpoint).is_dir():
            raise DlcError(f"--checkpoint: {args.checkpoint} is a file; expected a folder (created if missing)")
        _check_output("--checkpoint", Path(args.checkpoint) / api.CHECKPOINT_FILE)


def _without_ranks(argv: list[str]) -> list[str]:
    """The command line less its --ranks flag (what each rank of `--ranks K` runs)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--ranks":
            skip = True
        elif not a.startswith("--ranks="):
            out.append(a)
    return out


def _run_ranks(args) -> int:
    """`dlc run --ranks K`: mistakes in the flags and the model are said once, here; then mpiexec
    starts K ranks of the same command on this machine (docs/runtime.md)."""
    if args.ranks < 1:
        raise DlcError(f"--ranks: must be at least 1, found {args.ranks}")
    if api.launched_ranks() > 1:
        raise DlcError(f"--ranks: this process is already one of {api.launched_ranks()} ranks started by an MPI "
                       f"launcher: give the rank count to the launcher or to --ranks, not both")
    api.require_mpi()
    _check_run_flags(args)
    api.build(args.file, _options(args))
    return api.run_ranks(args.ranks, _without_ranks(args.argv))


def cmd_run(args) -> int:
    if args.ranks is not None:
        return _run_ranks(args)
    _check_run_flags(args)
    backend = api.resolve(args.backend, "--backend")
    if api.launched_ranks() > 1 and args.backend == "auto":
        backend = "interp"  # data parallel: cuda (NCCL) only when --backend cuda asks for it
    model = api.compile(args.file, lr=args.lr, backend=backend, model=args.model, opt_level=args.O, seed=args.seed,
                        insert_bottlenecks=args.insert_bottlenecks, cuda_graph=args.cuda_graph, freeze=args.freeze,
                        precision=args.precision)
    if model.rank != 0:  # a rank of a data-parallel run: rank 0 alone prints and writes files
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            return _run(args, model, backend)
    return _run(args, model, backend)


def _run(args, model, backend) -> int:
    lead = model.rank == 0  # writes the files (every rank of a data-parallel run computes the same)
    _show_rewrite(model.rewrite)
    if args.predict and model.prediction_problem():
        raise DlcError(f"--predict: {model.prediction_problem()}")
    s = model.settings(epochs=args.epochs, batch=args.batch, val_split=args.val_split, patience=args.patience,
                       monitor=args.monitor, test_split=args.test_split)
    if args.plot and not (model.trainable and s.epochs > 0):
        raise DlcError("--plot: nothing to plot: it draws the training epochs, and this run trains none "
                       + ("(--epochs 0)" if model.trainable else f"(model {model.name} minimises nothing)"))
    data = _read_data(args, model, warn=lead)
    notes, resume = [], None
    if args.freeze:
        notes.append(f"frozen (no gradient, no update): {', '.join(model.graph.meta.frozen)}")
    if args.load:
        notes.append(model.restore(args.load))
    elif args.load_partial:
        notes.append(f"{args.load_partial}: {api.partial_report(model.load_partial(args.load_partial))}")
    elif args.resume:
        resume, s, note = model.resume(args.resume, data, s, seed=args.seed, batch=args.batch,
                                       val_split=args.val_split, test_split=args.test_split)
        notes.append(note)
    how = f" (auto: {'a GPU is present' if backend == 'cuda' else 'no GPU found'})" if args.backend == "auto" else ""
    if model.comm and args.backend == "auto":
        how = " (auto: data parallel runs on interp)"
    ranks = f", data parallel over {model.ranks} ranks" if model.comm else ""
    prec = model.graph.meta.precision
    ranks += f", precision {prec}" if prec != "fp32" else ""
    print(f"model {model.name}: {data.n} examples from {data.what}, backend {model.backend}{how}{ranks}")
    for note in notes:
        print(note)
    model.check_numerics = bool(args.check_numerics)
    if model.trainable and s.epochs > 0:
        metrics = model.fit(data, s, progress=not args.no_progress, checkpoint=args.checkpoint, resume=resume)
        if args.checkpoint and metrics["history"]:
            print(f"checkpoint: {Path(args.checkpoint) / api.CHECKPOINT_FILE} (epoch {metrics['history'][-1]['epoch']})")
    else:
        metrics = model.score(data, s.batch, s.test_split)
        shown = "  ".join(f"{k} {metrics[k]:.4f}" for k in ("loss", "accuracy") if k in metrics)
        print(f"{shown} on {metrics['scored_on']}" if shown else f"ran inference on {data.n} examples")
    best = f" (epoch {metrics['best_epoch']}, the best)" if metrics.get("best_epoch") else ""
    if "val_accuracy" in metrics:
        print(f"held-out accuracy {metrics['val_accuracy']:.4f} on {metrics['val_examples']} examples{best}")
    elif "val_loss" in metrics:  # a model with no accuracy (a regression): its held-out loss
        print(f"held-out loss {metrics['val_loss']:.4f} on {metrics['val_examples']} examples{best}")
    if "test_loss" in metrics:
        what = "accuracy" if "test_accuracy" in metrics else "loss"
        print(f"test {what} {metrics['test_' + what]:.4f} on {metrics['test_examples']} examples "
              f"(held out from training and validation)")
    if args.predict and lead:
        api.write_predictions(args.predict, model.predict(data, s.batch), model.accuracy_rule(data))
        print(f"wrote predictions for {data.n} examples to {args.predict}")
    if args.save and lead:
        model.save(args.save, state=True)
        print(f"saved weights to {args.save}" + (" (with the optimizer state)" if model.graph.optimizer_state else ""))
    if args.metrics_json and lead:
        api.write_json(args.metrics_json, metrics)
    if args.plot and lead:
        api.write_plot(args.plot, metrics["history"], f"model {model.name}")
        print(f"wrote the training curves to {args.plot}")
    return 0


# -- eval -------------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    api.check_settings(batch=args.batch)
    if args.metrics_json:
        _check_output("--metrics-json", args.metrics_json)
    model = api.compile(args.file, lr=args.lr, backend=api.resolve(args.backend, "--backend"), model=args.model,
                        opt_level=args.O, freeze=args.freeze, insert_bottlenecks=args.insert_bottlenecks,
                        precision=args.precision, data_parallel=False)  # evaluation: nothing to all-reduce, even under mpiexec
    _show_rewrite(model.rewrite)
    s = model.settings(batch=args.batch)
    model.load(args.load)
    data = _read_data(args, model)
    print(f"model {model.name}: weights {args.load}, {data.n} examples from {data.what}, backend {model.backend}")
    part, what = model.scored_on(data, s.test_split)
    metrics = model.evaluate_classes(part, s.batch)
    print("\n".join(api.report_lines(metrics, what)))
    if args.metrics_json:
        api.write_json(args.metrics_json, {**metrics, "backend": model.backend, "weights": str(args.load),
                                           "data": data.what, "scored_on": what})
    return 0


# -- export -----------------------------------------------------------------------------------
def cmd_export(args) -> int:
    api.require_onnx()  # before compiling: a missing package is the first thing said
    api.check_settings(seed=args.seed)
    _check_output("-o", args.output)
    api.check_onnx_name(args.output)
    model = api.compile(args.file, lr=args.lr, backend="interp", model=args.model, seed=args.seed, freeze=args.freeze,
                        insert_bottlenecks=args.insert_bottlenecks, data_parallel=False)
    _show_rewrite(model.rewrite)
    if args.load:
        model.load(args.load)
    summary = model.export_onnx(args.output)
    print(f"wrote {args.output}: {summary}")
    return 0


# -- sample -----------------------------------------------------------------------------------
def cmd_sample(args) -> int:
    model = api.compile(args.file, backend=api.resolve(args.backend, "--backend"), model=args.model, opt_level=args.O,
                        precision=args.precision)
    model.sampling_plan(args.output)  # a model that cannot be sampled is said before its weights are read
    model.load(args.load)
    text = model.sample(args.prime, length=args.length, temperature=args.temperature, seed=args.seed,
                        vocab=Path(args.vocab) if args.vocab else None, output=args.output)
    print(args.prime + text)
    return 0


# -- import -----------------------------------------------------------------------------------
def cmd_import(args) -> int:
    for line in api.write_import(args.file, args.output, args.weights, train=args.train):
        print(line)
    return 0


# -- diff -------------------------------------------------------------------------------------
def cmd_diff(args) -> int:
    d = api.diff(args.file, args.backends, batch=args.batch, seed=args.seed, data=args.data, options=_options(args))
    _show_rewrite(d.rewrite)
    g = d.graph
    atol, rtol = d.tolerance
    prec = f", precision {g.meta.precision}" if g.meta.precision != "fp32" else ""
    print(f"model {g.meta.name}: one step at batch {d.batch}{prec}, tolerance |err| <= {atol:g} + {rtol:g}*|ref| "
          "against interp")
    if d.flips:
        ulp, share = d.flips
        print(f"{g.meta.precision}: rounding flips forgiven in up to {share:g} of a tensor's elements (at least one), "
              f"each within {ulp:g} of the element's or the tensor's largest magnitude")
    if d.random:
        print(f"training mode: dropout draws its masks from seed {d.rng[0]}, step {d.rng[1]} on every backend")
    for name, r in d.results.items():
        if r[0] == "skipped":
            print(f"{name}: skipped ({r[1]})")
            continue
        rows, first = r
        print(f"{name}:")
        print(f"  {'kind':<7} {'tensor':<28} {'max abs err':>12} {'max rel err':>12}  ok")
        for row in rows:
            print(f"  {row.kind:<7} {row.name:<28} {row.abs_err:>12.3e} {row.rel_err:>12.3e}  "
                  f"{'ok' if row.ok else 'inherited' if row.inherited else 'DIVERGES'}")
        if any(row.inherited for row in rows):
            print("  inherited: beyond the tolerance of interp's value, but within it of what interp computes from "
                  f"{name}'s own values (the difference comes from earlier in the step: rounding, carried on)")
        if first:
            loc = g.loc(first)
            line = g.source_line(loc)
            print(f"  first divergence in execution order: %{first} ({g.op(first)})"
                  + (f" from {loc}: {line}" if loc else ""))
    print(f"compared: {', '.join(d.done) + ' against interp' if d.done else 'nothing'}"
          + (f"; skipped: {', '.join(f'{k} ({why})' for k, why in d.skipped)}" if d.skipped else ""))
    if not d.done:
        raise DlcError("nothing to compare: every backend besides interp was skipped "
                       f"({'; '.join(f'{k}: {why}' for k, why in d.skipped)})")
    print("result: " + ("agree" if d.agree else "DIVERGES"))
    return 0 if d.agree else 1


# -- bench ------------------------------------------------------------------------------------
def _bench_child(args) -> int:
    """`dlc bench` again in a child process whose BLAS and OpenMP use `--threads` threads: in this
    process NumPy's BLAS has loaded already and keeps the thread count it started with."""
    argv = ["bench", args.file, "--backend", args.backend, "--batch", str(args.batch), "--iters",
            str(args.iters), "--threads", str(args.threads), "-O", str(args.O), "--precision", args.precision]
    argv += (["--model", args.model] if args.model else []) + (["--cuda-graph"] if args.cuda_graph else []) \
        + (["--freeze", args.freeze] if args.freeze else []) + (["--debug"] if args.debug else []) \
        + ([f"--insert-bottlenecks={args.insert_bottlenecks}"] if args.insert_bottlenecks is not None else [])
    env = dict(os.environ, **{v: str(args.threads) for v in api.THREAD_VARS})
    sys.stdout.flush()
    return subprocess.call([sys.executable, "-m", "dlc.cli", *argv], env=env)


def cmd_bench(args) -> int:
    for flag, v, least in (("--iters", args.iters, 1), ("--batch", args.batch, 1), ("--threads", args.threads, 0)):
        if v < least:
            raise DlcError(f"{flag}: must be at least {least}, found {v}")
    if args.threads and any(os.environ.get(v) != str(args.threads) for v in api.THREAD_VARS):
        return _bench_child(args)
    model = api.compile(args.file, lr=args.lr, backend=api.resolve(args.backend, "--backend"), model=args.model,
                        opt_level=args.O, cuda_graph=args.cuda_graph, freeze=args.freeze,
                        insert_bottlenecks=args.insert_bottlenecks, precision=args.precision, data_parallel=False)
    _show_rewrite(model.rewrite)
    threads = ", ".join(f"{v}={os.environ.get(v, 'unset')}" for v in api.THREAD_VARS[:3])  # as this process has them
    threads = f"{args.threads} ({threads})" if args.threads else f"the libraries' defaults ({threads})"
    prec = f", precision {args.precision}" if args.precision != "fp32" else ""
    print(f"model {model.name}, backend {model.backend}{prec}, batch {args.batch}, {args.iters} iterations after "
          f"warm-up, threads: {threads}")
    print(f"{'phase':<18} {'min ms':>10} {'median ms':>10} {'p10 ms':>10} {'p90 ms':>10} {'p90/p10':>8}")
    warnings = []
    for name, st, host in api.bench(model, args.batch, args.iters):
        print(f"{name:<18} {st['min'] * 1e3:>10.4g} {st['median'] * 1e3:>10.4g} {st['p10'] * 1e3:>10.4g} "
              f"{st['p90'] * 1e3:>10.4g} {st['spread']:>8.2f}")
        if host is not None:  # the generated-code backends count what a step asks of the host
            group = host["group"]
            print(f"{'':<18} per {f'{group} steps' if group > 1 else 'step'}: {host['syncs']} host sync"
                  f"{'s' * (host['syncs'] != 1)}, {host['d2h_bytes']} bytes device-to-host, {host['h2d_copies']} "
                  "key upload(s) besides the inputs")
        if api.unreliable(st):
            warnings.append(f"warning: {name}: unreliable, p90/p10 = {st['spread']:.2f} > {api.SPREAD_LIMIT} (the times "
                            "scatter: a busy machine?); quote the min, or run again on a quiet machine")
    for w in warnings:
        print(w)
    return 0


# -- the parser: each flag declared once --------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    """What every command takes: the file, the model in it, how it is built, --debug."""
    p.add_argument("file", help="the .dln model file")
    p.add_argument("--model", help="which model, when the file defines several")
    p.add_argument("--freeze", metavar="A,B", help="keep these params fixed (no gradient, no update), besides the "
                   "model's own `freeze`")
    p.add_argument("--insert-bottlenecks", nargs="?", const=1 / 3, type=float, metavar="R",
                   help="CHANGES THE MODEL: a 1x1 convolution reducing the channels to a fraction R "
                        "(default 1/3) before each wide 3x3-or-larger convolution; prints FLOPs and params "
                        "before and after")
    p.add_argument("--lr", type=float, metavar="LR", help="the optimizer's learning rate instead of the model's "
                   "(for sweeps)")
    p.add_argument("--debug", action="store_true", help="show a Python traceback on errors")


def _build_flags(p: argparse.ArgumentParser) -> None:
    """How the model is built: the optimisation level and the precision of its matrix products."""
    p.add_argument("-O", type=int, default=1, choices=api.OPT_LEVELS, help="optimisation level (default 1)")
    p.add_argument("--precision", default="fp32", choices=api.PRECISIONS,
                   help="matrix products and convolutions: fp32 (default), tf32 (TF32 operands, fp32 "
                        "accumulation) or bf16 (BF16 operands and product results, fp32 accumulation; "
                        "everything else fp32); docs/precision.md")


def _backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", help="auto (cuda if a GPU is present, else interp), interp, emu, cuda")


class _Parser(argparse.ArgumentParser):
    """argparse, except that a mistake is one line (not the usage first) that says where the
    options are listed, with exit status 2 like every other bad input."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="dlc", description="dlc: a deep-learning compiler for .dln models "
                 "(graph IR, autodiff, NumPy reference, CUDA code generation).")
    ap.add_argument("--version", action="version", version=f"dlc {api.__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    ap.commands = sub.choices   # command name -> its parser

    p = sub.add_parser("check", help="parse and type-check; print inputs, params (with counts) and outputs")
    _common(p)
    p.add_argument("--precision", default="fp32", choices=api.PRECISIONS,
                   help="the precision of the matrix products to report (default fp32; docs/precision.md)")
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("compile", help="run the pipeline and write artefacts (IR, DOT, CUDA, launch plan)")
    _common(p)
    p.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    p.add_argument("--emit", default="ir", help=f"comma-separated artefacts: {','.join(api.EMITS)} (default: ir)")
    p.add_argument("--dump-ir-after", metavar="PASS", help="also write the IR after PASS (or all) to OUTPUT/dumps/")
    _build_flags(p)
    p.add_argument("--passes", metavar="A,B,C", help="after autodiff and the optimizer, run these passes in "
                   "this order instead of an -O level")
    p.add_argument("--time-passes", action="store_true", help="print each pass's time and node count")
    p.add_argument("--verify-each", action="store_true", help="run the IR verifier after every pass")
    p.add_argument("--explain-fusion", action="store_true",
                   help="print every fusion group, fused or not, with the rule or the check that failed")
    p.add_argument("--stats", action="store_true", help="print pass times, and kernels, launches, FLOPs, "
                   f"bytes moved and peak memory of one step at -O0 and at this level (batch {api.STATS_BATCH})")
    p.add_argument("--data-parallel", action="store_true", dest="data_parallel",
                   help="the step of a data-parallel run: gradients all-reduced over the ranks before the update")
    p.set_defaults(fn=cmd_compile)

    p = sub.add_parser("run", help="train (if the model minimises something) or run inference")
    _common(p)
    _data_flags(p)
    _backend(p)
    p.add_argument("--epochs", type=int, help="passes over the training data (default: model's, else 10)")
    p.add_argument("--batch", type=int, help="mini-batch size (default: model's, else 32)")
    p.add_argument("--val-split", type=float, dest="val_split", help="held-out fraction (default: model's, else 0)")
    p.add_argument("--seed", type=int, help="seed for initial weights, split and shuffling (default: model's, else 0)")
    p.add_argument("--test-split", type=float, dest="test_split", metavar="F",
                   help="fraction held out from training and validation, scored once at the end; the same examples "
                        "whatever the seed (default: model's, else 0)")
    p.add_argument("--patience", type=int, metavar="P",
                   help="early stopping: stop after P epochs without improvement of the monitored held-out metric "
                        "and keep the best epoch's weights (default: model's, else 0: off)")
    p.add_argument("--monitor", metavar="METRIC",
                   help="what early stopping watches: val_loss or val_accuracy (default: model's, else val_loss)")
    p.add_argument("--load", metavar="W.npz", help="start from these weights (and their optimizer state, if saved)")
    p.add_argument("--load-partial", metavar="W.npz", dest="load_partial",
                   help="transfer learning: start from the params of W.npz (any model's weights) whose name and "
                        "shape match, initialise the others, and report which")
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar (training) and no compile progress")
    p.add_argument("--cuda-graph", action="store_true", help="cuda: capture the step once, replay it as a CUDA graph")
    p.add_argument("--ranks", type=int, metavar="K", help="train data-parallel on K processes of this machine, "
                   "started with mpiexec (needs MPI: pip install 'dlc[mpi]'); --batch stays the global batch. "
                   "`mpiexec -n K dlc run ...` does the same with any MPI launcher")
    _build_flags(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("eval", help="evaluate weights on data: loss, accuracy, per-class precision/recall, "
                       "confusion matrix",
                       description="Run the model in evaluation mode over a whole data file and print the loss, the "
                       "accuracy, each class's precision, recall, F1 and support, and the confusion matrix (rows: "
                       "the true class, columns: the predicted class).")
    _common(p)
    p.add_argument("--load", metavar="W.npz", required=True, help="the weights to evaluate (as run --save writes)")
    _data_flags(p)
    _backend(p)
    p.add_argument("--batch", type=int, help="examples per forward pass (default: model's train(batch=...), else 32)")
    p.add_argument("--metrics-json", metavar="M.json", help="write the metrics, per-class figures and confusion "
                   "matrix as JSON")
    _build_flags(p)
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("export", help="write the evaluation graph as an ONNX model",
                       description="Write the model's evaluation graph (its outputs from its inputs: no loss, no "
                       f"training nodes) as an ONNX model, opset {api.OPSET}, with the weights as initializers. "
                       "Needs the onnx package: pip install 'dlc[onnx]'.")
    _common(p)
    p.add_argument("-o", "--output", required=True, metavar="MODEL.onnx", help="the ONNX file to write")
    p.add_argument("--load", metavar="W.npz", help="the weights (default: the initial weights drawn from --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights, without --load (default 0)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("sample", help="generate text from a trained character-level model",
                       description="Continue the text --prime with --length characters drawn one at a time from "
                       "the model's scores for the next character (a model with ids i32[N, T] in and scores "
                       "f32[N, T, V] out, such as examples/charlm.dln), and print the prime and what was drawn. "
                       "The vocabulary is the array 'vocab' of the model's train(data = ...) file, or of --vocab.")
    _common(p)
    p.add_argument("--load", metavar="W.npz", required=True, help="the trained weights (as run --save writes)")
    p.add_argument("--prime", required=True, metavar="TEXT", help="the text to continue (characters of the "
                   "vocabulary)")
    p.add_argument("--length", type=int, default=200, help="characters to draw (default 200)")
    p.add_argument("--temperature", type=float, default=1.0, help="scores are divided by it before the softmax: "
                   "below 1 plainer, above 1 wilder text; 0 always takes the likeliest character (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw: the same seed gives the same text "
                   "(default 0)")
    p.add_argument("--vocab", metavar="D.npz", help="the .npz whose array 'vocab' lists the characters, id i the "
                   "i-th (default: the model's train(data = ...) file)")
    p.add_argument("--output", metavar="NAME", help="the output that gives the scores (default: the first)")
    _backend(p)
    _build_flags(p)
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("import", help="read an ONNX model: write it as a .dln and its weights as an .npz",
                       description="Translate an ONNX model (opsets 7 to 21) into a readable .dln, one line per "
                       "ONNX node (or per source line) with a comment naming the nodes, and its weights into an .npz that --load reads. "
                       "Constant shape arithmetic is folded; an op dlc cannot express is an error listing every "
                       "such op, and nothing is written. Needs the onnx package: pip install 'dlc[onnx]'. "
                       "See docs/import.md.")
    p.add_argument("file", metavar="MODEL.onnx", help="the ONNX model to read")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.dln", help="the .dln file to write")
    p.add_argument("--weights", metavar="W.npz", help="where the weights go (default: MODEL.npz beside the .dln)")
    p.add_argument("--train", action="store_true", help="also write labels (input y), a softmax cross-entropy loss "
                   "of the model's one output and an optimizer, to evaluate or fine-tune it")
    p.add_argument("--debug", action="store_true", help="show a Python traceback on errors")
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("diff", help="one training step on several backends; max abs/rel error per tensor",
                       description="One training step (training mode, the same dropout masks everywhere) on "
                       "each backend from the same weights and batch; max abs/rel error per tensor against interp. "
                       "Exit status: 0 every compared backend agrees, 1 one diverges, 2 nothing was compared "
                       "(only interp named, or every other backend skipped) or another error.")
    _common(p)
    p.add_argument("--backends", default="interp,emu,cuda", help="comma-separated (default interp,emu,cuda)")
    p.add_argument("--data", help="take the batch from this .npz (default: random data)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--seed", type=int, default=0)
    _build_flags(p)
    p.set_defaults(fn=cmd_diff)

    p = sub.add_parser("bench", help="time forward, forward+backward and the whole training step",
                       description="Time forward, forward+backward and the whole training step: min, median, "
                       f"p10 and p90 per phase, and a warning for a phase whose p90/p10 exceeds {api.SPREAD_LIMIT}.")
    _common(p)
    _backend(p)
    p.add_argument("--batch", type=int, default=128, help="batch size of the random data (default 128)")
    p.add_argument("--iters", type=int, default=50, help="timed iterations per phase, after 3 untimed (default 50)")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS/OpenMP threads (default 1: steady figures on a shared machine; 0: the libraries' "
                        "defaults); sets OMP/OPENBLAS/MKL_NUM_THREADS and times in a child process")
    p.add_argument("--cuda-graph", action="store_true", help="cuda: replay each phase as a captured CUDA graph")
    _build_flags(p)
    p.set_defaults(fn=cmd_bench)
    return ap


# API arguments whose flag is not their name with dashes
FLAG_OF = {"opt_level": "-O", "dump_after": "--dump-ir-after", "check": "--verify-each", "data": "--data"}


def _flag_names(args) -> dict:
    """API argument -> the flag of this command that gives it, for errors (`epochs` -> `--epochs`)."""
    names = {k: _flag(k) for k in vars(args) if k not in ("fn", "command", "file", "argv")}
    names.update(FLAG_OF)
    return names


def main(argv=None) -> int:
    ap = parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = ap.parse_known_args(argv)
    args.argv = argv  # as given: what each rank of `run --ranks K` runs
    if not getattr(args, "command", None):
        ap.print_help()
        return 2
    if extra:  # the command's own parser says so, naming the command (not dlc's top-level usage)
        ap.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    debug = getattr(args, "debug", False) or os.environ.get("DLC_DEBUG")
    try:
        with api.argument_names(_flag_names(args)), \
                (api.quiet() if getattr(args, "no_progress", False) else contextlib.nullcontext()):
            return args.fn(args)
    except DlcError as e:
        if debug:
            raise
        world = api.started()
        if world is not None and world.size > 1:  # one rank of a data-parallel run
            if getattr(e, "everywhere", False):  # every rank found it: rank 0 says it, all end
                if world.rank == 0:
                    print(str(e), file=sys.stderr)
                return 2
            world.abort(2, f"rank {world.rank} of {world.size}: {e}")  # the others would wait for this one
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
