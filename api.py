"""The Python API, and the one front door: `dlc.compile`, `dlc.load`, `dlc.build` and the compiled
`Model` (reference: docs/api.md). Every `dlc` command calls this module and nothing else; it wires
the stages together (dsl -> passes -> codegen -> runtime) and is the only place that does.

    m = dlc.compile("mlp.dln", backend="interp")
    m.params                      # name -> numpy array (read/write)
    m.forward(x=x)                # output name -> array, in evaluation mode
    loss, grads = m.grad(x=x, y=y)
    m.step(x=x, y=y)              # one optimizer step (training mode); returns the loss
    m.fit(m.read_data())          # train as `dlc run` does, with the model's train(...) settings
    m.ir(stage="optimized")       # IR text: forward, backward, train or optimized
    m.save("w.npz"); m.load("w.npz")

Errors about an argument name it as the caller knows it: `epochs: must be >= 0` from Python,
`--epochs: must be >= 0` from the command line (`argument_names`).
"""
from __future__ import annotations

import contextlib
import contextvars
import difflib
import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .codegen import generate
from .dsl.frontend import lower
from .ir.dot import to_dot
from .ir.errors import DlcError, file_error
from .ir.graph import Graph
from .ir.precision import PRECISIONS
from .ir.progress import compiling, quiet, stage
from .ir.ops import COMMUNICATES, MODEL, OPS, OPTIMIZER, PARAM, STORED, UPDATES_STATE
from .ir.summary import layers as _layers
from .ir.text import fmt_value, print_ir
from .ir.types import fmt_shape
from .ir.verify import verify
from .passes.fusion import report as fusion_report
from .passes.manager import LEVELS, PASS_NAMES, run_pipeline
from .runtime.backends import BACKENDS, make_backend, option_problem, resolve
from .runtime.collectives import INSTALL as MPI_INSTALL
from .runtime.collectives import launched_ranks, require_mpi, run_ranks, started, world
from .runtime.bench import SPREAD_LIMIT, THREAD_VARS, bench, unreliable
from .runtime.datafiles import CSV_HEADER, NORMALIZE, DataOptions, Dataset, data_targets, load_data
from .runtime.diff import ATOL, FLIP, FLIP_SHARE, RTOL, compared, random_nodes, synth_feeds
from .runtime.diff import diff as _diff
from .runtime.evaluate import evaluate_classes, report_lines
from .runtime.feeds import check_feeds
from .runtime.files import atomic_write, check_output, read_npz
from .runtime.init import initial_state
from .runtime.onnx_export import OPSET, export_onnx, require_onnx
from .runtime.sample import check_sampling, sample_text, sampling_plan, vocabulary
from .runtime.train import (RUN_DEFAULTS, SYNC_EVERY, accuracy_rule, data_digest, holdout_indices,
                            per_example_problem, predict, setting_problem, split_indices, with_context)
from .runtime.train import train as _train_loop
from .runtime.train import evaluate as _evaluate
from .runtime.weights import (CHECKPOINT_FILE, load_checkpoint, load_state, load_weights, load_weights_by_name,
                              partial_report, save_weights)
from .runtime.writers import PREDICT_FORMATS, require_matplotlib, write_json, write_plot, write_predictions
from .version import VERSION

__version__ = VERSION
FLOAT_DTYPES = ("float32", "float64")
OPT_LEVELS = LEVELS
EMITS = ("ir", "dot", "cuda", "plan")   # what `dlc compile --emit` writes
STATS_BATCH = 128  # what symbolic dimensions (the batch) are bound to in stats and the fusion report
RUNS = ("step", "evaluation")  # the runs `Build.stats` counts

# -- naming arguments in errors ----------------------------------------------------------------------
_NAMES: contextvars.ContextVar[dict] = contextvars.ContextVar("dlc_argument_names", default={})


@contextlib.contextmanager
def argument_names(names: dict):
    """Within the block, errors about an argument name it as `names` says (the command line maps
    `epochs` to `--epochs`, `opt_level` to `-O`); elsewhere by its keyword."""
    token = _NAMES.set(dict(names))
    try:
        yield
    finally:
        _NAMES.reset(token)


def arg(name: str) -> str:
    """How the caller knows argument `name` (see `argument_names`)."""
    return _NAMES.get().get(name, name)


def _problem(name: str, problem: str, value) -> DlcError:
    return DlcError(f"{arg(name)}: {problem}, found {value!r}")


def _switch(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise _problem(name, "must be True or False", value)
    return bool(value)


# -- DLC_DEBUG --------------------------------------------------------------------------------------

def debug_level() -> int:
    """DLC_DEBUG: 0 (unset) nothing; 1 the verifier after every pass and each pass's name, time and
    size; 2 also the IR after each pass; 3 also the generated source (on stderr, every command)."""
    try:
        return max(0, int(os.environ.get("DLC_DEBUG", "0") or 0))
    except ValueError:
        return 1  # set to something: at least verify and trace the passes


def _trace(level: int, text) -> None:
    if debug_level() >= level:
        print(text() if callable(text) else text, file=sys.stderr)


# -- building ---------------------------------------------------------------------------------------

def read_source(source) -> tuple[str, str]:
    """(text, file name) from a path or from `.dln` text."""
    if isinstance(source, Path) or (isinstance(source, str) and source.strip() and "\n" not in source
                                    and "{" not in source):
        p = Path(source)
        if not p.exists():
            raise file_error(p, "no such file")
        if p.is_dir():
            raise file_error(p, "is a directory, expected a .dln file")
        try:
            return p.read_text(), str(p)
        except UnicodeDecodeError:
            raise file_error(p, "not a text file (it is not valid UTF-8)")
        except OSError as e:
            raise file_error(p, f"cannot be read ({e.strerror})")
    return source, "<string>"


@dataclass
class Options:
    """How a model is built; `dlc.compile`, `dlc.build` and every command take these.

    `model`: which model, when the source defines several. `opt_level`: a level of the pass
    manager (as `-O`). `passes`: instead of a level, autodiff and the optimizer followed by these
    passes (a list, or "a,b"). `freeze`: params to keep fixed besides the model's own `freeze` (a
    list, or "a,b"). `insert_bottlenecks`: a ratio R in (0, 1): CHANGES THE MODEL (1x1 reductions
    before wide convolutions, passes/bottleneck.py). `check`: the IR verifier after every pass
    (also on with DLC_DEBUG). `dump_after`: a pass name or "all": the IR after it, in `Build.dumps`.
    `lr`: the optimizer's learning rate instead of the one the model gives (for sweeps; `--lr`).
    `data_parallel`: True inserts the data-parallel pass (gradients all-reduced over the ranks of
    an MPI run before the update, in buckets of 4 KiB: passes/data_parallel.py), an integer does
    so with buckets of that many bytes; the IR needs no MPI to be built. `precision`: "fp32" (the
    default), "tf32" or "bf16": the operands of matrix products and convolutions as the tensor
    cores take them (ir/precision.py; `Graph.meta.precision`)."""
    model: str | None = None
    opt_level: int = 1
    passes: list | str | None = None
    freeze: list | str | None = None
    insert_bottlenecks: float | None = None
    check: bool = False
    dump_after: str | None = None
    lr: float | None = None
    data_parallel: bool | int = False
    precision: str = "fp32"

    def checked(self) -> "Options":
        """The options with every value checked (a DlcError names the argument at fault)."""
        if self.model is not None and not isinstance(self.model, str):
            raise _problem("model", "expected a model name or None", self.model)
        lvl = self.opt_level
        if not isinstance(lvl, (int, np.integer)) or isinstance(lvl, bool) or lvl not in OPT_LEVELS:
            raise _problem("opt_level", f"must be one of {', '.join(map(str, OPT_LEVELS))}", lvl)
        _switch("check", self.check)
        dp = self.data_parallel
        if not (isinstance(dp, (bool, np.bool_)) or (isinstance(dp, (int, np.integer)) and dp >= 1)):
            raise _problem("data_parallel", "must be True, False or a gradient bucket size in bytes (>= 1)", dp)
        if self.precision not in PRECISIONS:
            raise _problem("precision", f"must be one of {', '.join(PRECISIONS)}", self.precision)
        r = self.insert_bottlenecks
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1):
            raise DlcError(f"{arg('insert_bottlenecks')}: the ratio must be between 0 and 1 (exclusive), found {r!r}")
        passes = self.passes
        if isinstance(passes, str):
            passes = [p.strip() for p in passes.split(",") if p.strip()]
        if passes is not None and (not isinstance(passes, (list, tuple)) or not all(isinstance(p, str) for p in passes)):
            raise _problem("passes", "expected pass names (a list, or 'a,b')", self.passes)
        lr = self.lr
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not np.isfinite(lr)
                               or lr <= 0):
            raise _problem("lr", "must be a number greater than 0", lr)
        if self.dump_after is not None and self.dump_after not in PASS_NAMES + ["all"]:
            raise DlcError(f"{arg('dump_after')}: unknown pass '{self.dump_after}' "
                           f"(passes: {', '.join(PASS_NAMES)}, or all)")
        return replace(self, passes=list(passes) if passes is not None else None)


class Build:
    """A model run through the pipeline (`dlc.build`): its IR at every stage and what the code
    generator makes of it. `stages` (forward, backward, train, optimized), `graph` (optimized),
    `forward` (the model as written, or as rewritten by an opt-in rewrite), `records` (per-pass
    name, seconds, nodes), `dumps` ((file name, IR text) asked for by `dump_after`), `rewrite`
    (the bottleneck rewrite's report lines, or None), `file` (the .dln file, or "<string>")."""

    def __init__(self, result, file: str):
        self.stages = result.stages
        self.records = result.records
        self.dumps = result.dumps
        self.rewrite = result.reports.get("bottleneck")
        self.parallel = result.reports.get("data-parallel")  # the data-parallel pass's report, or None
        self.graph = result.stages["optimized"]
        self.forward = result.stages["forward"]
        self.file = file
        self._module = None

    @property
    def name(self) -> str:
        return self.graph.meta.name

    def ir(self, stage: str = "optimized") -> str:
        """The IR text at a stage: "forward", "backward", "train" or "optimized"."""
        if stage not in self.stages:
            raise DlcError(f"no IR stage '{stage}' (stages: {', '.join(self.stages)})")
        return print_ir(self.stages[stage])

    def dot(self) -> str:
        """The optimized graph as Graphviz DOT."""
        return to_dot(self.graph)

    def module(self):
        """The generated CUDA module and launch plan (codegen.Module: `source`, `plan_json()`,
        `stats(dims)`, ...), made once. DLC_DEBUG=3 prints its source on stderr."""
        if self._module is None:
            self._module = generate(self.graph)
            _trace(3, lambda: f"// generated CUDA of model {self.name}\n{self._module.source}")
        return self._module

    def artefacts(self, emit) -> dict[str, str]:
        """File name -> text of what `dlc compile --emit` writes: ir, dot, cuda, plan (a list, or
        "a,b"), and the IR dumps (`dumps/NN-pass.ir`)."""
        if isinstance(emit, str):
            emit = [e.strip() for e in emit.split(",") if e.strip()]
        bad = [e for e in emit if e not in EMITS]
        if bad:
            raise DlcError(f"{arg('emit')}: unknown artefact '{bad[0]}' (known: {', '.join(EMITS)})")
        name = self.name
        files: dict[str, str] = {}
        if "ir" in emit:
            files[f"{name}.ir"] = self.ir()
        if "dot" in emit:
            files[f"{name}.dot"] = self.dot()
        if "cuda" in emit:
            files[f"{name}.cu"] = self.module().source
        if "plan" in emit:
            files[f"{name}.plan.json"] = self.module().plan_json()
        for fname, text in self.dumps:
            files[f"dumps/{fname}"] = text
        return files

    def symbols(self) -> list[str]:
        g = self.graph
        return sorted({d for n in g.inputs for d in g.type(n).shape if isinstance(d, str)})

    def stats(self, batch: int = STATS_BATCH, run: str | None = None) -> dict:
        """Kernels, launches, FLOPs, bytes moved and peak bytes of one run of the plan, symbolic
        dimensions bound to `batch`. `run`: "step" (a training step), or "evaluation" (the outputs
        and the loss in evaluation mode: by the evaluation form, when the graph has one, as
        `Model` runs them); default: "step" for a model that trains, else "evaluation"."""
        g = self.graph
        run = run or ("step" if self.trains else "evaluation")
        if run not in RUNS:
            raise DlcError(f"run: expected one of {', '.join(RUNS)}, found {run!r}")
        roots = None  # the whole plan but the evaluation form
        if run == "evaluation":
            roots = g.eval_roots() or list(g.meta.outputs.values()) + [g.meta.loss] * bool(g.meta.loss)
        return self.module().stats({s: batch for s in self.symbols()}, roots)

    def explain_fusion(self, batch: int = STATS_BATCH) -> list[str]:
        """The fusion report (`--explain-fusion`): every group and every refused edge, with why."""
        return fusion_report(self.graph, {s: batch for s in self.symbols()})

    def layers(self) -> dict:
        """Per layer of the forward graph: output type, params it uses first, FLOPs per example."""
        return _layers(self.forward)

    @property
    def trains(self) -> bool:
        m = self.graph.meta
        return m.loss is not None and m.optimizer is not None


def build(source, options: Options | None = None, **kw) -> Build:
    """Parse, check and run the pass pipeline: a `Build` (IR at every stage, the generated code).
    `source` is a `.dln` path or text, or a forward-stage IR `Graph` built in Python (or parsed
    from IR text); `options` an `Options`, or its fields by keyword."""
    if not isinstance(source, (str, Path, Graph)):
        raise DlcError(f"source: expected a .dln path or .dln text (or a forward IR graph), found {type(source).__name__}")
    opts = (replace(options, **kw) if options else Options(**kw)).checked()
    with compiling(_label(source)):
        if isinstance(source, Graph):
            if source.meta.stage != "forward":
                raise DlcError(f"source: expected a forward-stage graph, found stage {source.meta.stage!r}")
            g, file = verify(source.copy()), "<graph>"
        else:
            text, file = read_source(source)
            stage("reading the .dln and lowering it to IR")
            g = lower(text, file, opts.model)
        return _build(g, file, opts)


def _label(source) -> str:
    """How compile progress names the source: the file's name, or "the model" for text and graphs."""
    text = isinstance(source, str) and ("\n" in source or "{" in source)  # as read_source tells them apart
    return Path(source).name if isinstance(source, (str, Path)) and not text else "the model"


def _build(g: Graph, file: str, opts: Options) -> Build:
    if opts.freeze is not None:
        _freeze(g, opts.freeze)
    if opts.lr is not None:
        if not g.meta.optimizer:
            raise DlcError(f"{arg('lr')}: model {g.meta.name} minimises nothing, so it has no learning rate")
        name, settings = g.meta.optimizer
        g.meta.optimizer = (name, {**settings, "lr": float(opts.lr)})
    g.meta.precision = opts.precision
    level = debug_level()
    rewrites = {"insert_bottlenecks": opts.insert_bottlenecks} if opts.insert_bottlenecks is not None else {}
    if opts.data_parallel:  # True, or a bucket size in bytes (passes/data_parallel.py)
        dp = opts.data_parallel
        rewrites["data_parallel"] = True if isinstance(dp, (bool, np.bool_)) else int(dp)
    res = run_pipeline(g, opts.opt_level, dump_after=opts.dump_after, check=opts.check or level >= 1,
                       passes=opts.passes, options=rewrites, trace=_trace if level else None)
    return Build(res, file)


def _freeze(g, names) -> None:
    """Add params to the graph's frozen list (as the `freeze` statement does), checking the names."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise DlcError(f"{arg('freeze')}: expected param names (a list, or 'a,b'), found {names!r}")
    params = g.params
    for n in names:
        if n not in params:
            close = difflib.get_close_matches(n, params, n=1)
            raise DlcError(f"{arg('freeze')}: '{n}' is not a param of model {g.meta.name}"
                           + (f" (did you mean '{close[0]}'?)" if close else "") + f" (params: {', '.join(params)})")
        if n not in g.meta.frozen:
            g.meta.frozen.append(n)


def compile(source, backend: str = "auto", model: str | None = None, opt_level: int = 1, seed: int | None = None,
            float_dtype="float32", check: bool = False, cuda_graph: bool = False,
            insert_bottlenecks: float | None = None, freeze=None, passes=None, lr: float | None = None,
            data_parallel: bool | int | None = None, precision: str = "fp32") -> "Model":
    """Compile a `.dln` file (a path), `.dln` text or a forward IR graph into a runnable `Model`.

    `backend`: "auto" (cuda where a GPU is present, else interp), "interp", "emu" or "cuda".
    `seed`: initial weights (an integer >= 0; default: the model's `train(seed = ...)`, else 0).
    `float_dtype`: "float32" or "float64". `cuda_graph` (cuda backend only): replay each kind of
    step as one captured CUDA graph. `model`, `opt_level`, `check`, `insert_bottlenecks` (CHANGES
    THE MODEL; the report is `Model.rewrite`), `freeze`, `passes`, `lr` and `precision` are as
    `Options` describes.
    `data_parallel`: train data-parallel over the ranks of an MPI run (docs/runtime.md): the
    data-parallel pass, and the model talks to the other ranks through MPI (mpi4py: `pip install
    'dlc[mpi]'`); None (the default) turns it on when an MPI launcher started this process as one
    of several ranks (`mpiexec -n K python ...`), False never; an integer is True with gradient
    buckets of that many bytes (default 4096).
    Every mistake, in the source or in an argument, raises `DlcError`."""
    if not isinstance(source, (str, Path, Graph)):
        raise DlcError(f"source: expected a .dln path or .dln text (or a forward IR graph), found {type(source).__name__}")
    if data_parallel is None:
        data_parallel = launched_ranks() > 1
    opts = Options(model=model, opt_level=opt_level, passes=passes, freeze=freeze,
                   insert_bottlenecks=insert_bottlenecks, check=check, lr=lr, data_parallel=data_parallel,
                   precision=precision).checked()
    if seed is not None and setting_problem("seed", seed):
        raise _problem("seed", setting_problem("seed", seed), seed)
    dtype = _float_dtype(float_dtype)
    _switch("cuda_graph", cuda_graph)
    if data_parallel and backend == "auto":
        backend = "interp"  # cuda's NCCL path (docs/runtime.md) is taken only when asked for by name
    backend = resolve(backend, arg("backend"))
    if cuda_graph and option_problem(backend, "cuda_graph"):
        raise DlcError(f"{arg('cuda_graph')}: {option_problem(backend, 'cuda_graph')}")
    comm = world() if opts.data_parallel else None  # before compiling: a missing mpi4py is said first
    with compiling(_label(source)):
        b = build(source, opts)
        if seed is None:
            seed = _train_setting(b, "seed")
        stage(f"preparing the {backend} backend")
        return Model(b, backend, int(seed), dtype, cuda_graph=bool(cuda_graph), comm=comm)


def load(source, weights, **options) -> "Model":
    """`compile(source, **options)` and then `Model.load(weights)`: a model with saved weights."""
    return compile(source, **options).load(weights)


def _float_dtype(value) -> np.dtype:
    try:
        dtype = None if value is None else np.dtype(value)  # np.dtype(None) would be float64
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.name not in FLOAT_DTYPES:
        raise _problem("float_dtype", "must be float32 or float64", value)
    return dtype


def _train_setting(b: Build, key: str):
    """A run setting from the model's `train(...)`, else its default; a bad value in `train(...)`
    is an error that says it came from there."""
    v = b.graph.meta.train.get(key, RUN_DEFAULTS[key])
    if setting_problem(key, v):
        raise file_error(b.file, f"train({key} = {v!r}) in model {b.name}: {key} {setting_problem(key, v)} "
                         f"({arg(key)} overrides it)")
    return v


def check_settings(**given) -> None:
    """Check run settings given by the caller (epochs, batch, val_split, seed) before anything is
    built: each error names its argument."""
    for key, v in given.items():
        if v is not None and setting_problem(key, v):
            raise _problem(key, setting_problem(key, v), v)


@dataclass(frozen=True)
class RunSettings:
    """What a run trains with: epochs, batch, held-out fraction, seed (split and shuffling), early
    stopping (patience, 0: off; the metric it monitors) and the test fraction (runtime/train.py)."""
    epochs: int
    batch: int
    val_split: float
    seed: int
    patience: int = 0
    monitor: str = RUN_DEFAULTS["monitor"]
    test_split: float = 0.0


# -- the model ---------------------------------------------------------------------------------------

def _check_finite(values: dict, kind) -> None:
    """Refuse stored values with NaN or infinity, as a weights file with them is refused."""
    for k, v in values.items():
        a = np.asarray(v)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0]) if a.ndim else ()
            raise DlcError(f"{kind(k)} '{k}' holds NaN or infinity (at index {bad})")


class Params(MutableMapping):
    """The model's params as a dict; assigning checks the shape and updates the backend."""

    def __init__(self, model: "Model"):
        self._m = model

    def _names(self):
        return self._m._params  # graph.params sorts the whole graph; the list is fixed after compile

    def __getitem__(self, k):
        if k not in self._names():
            raise KeyError(k)
        return self._m._value(k)

    def __setitem__(self, k, v):
        if k not in self._names():
            raise DlcError(f"'{k}' is not a param of model {self._m.name} (params: {', '.join(self._names())})")
        v = np.asarray(v)
        want = self._m.graph.type(k)
        if tuple(v.shape) != want.shape:
            raise DlcError(f"param '{k}' should be {want}, found shape {list(v.shape)}")
        _check_finite({k: v}, lambda n: "param")
        self._m._backend.set_state({k: v})

    def __delitem__(self, k):
        raise DlcError("params cannot be removed from a compiled model")

    def __iter__(self):
        return iter(self._names())

    def __len__(self):
        return len(self._names())

    def __repr__(self):
        return "{" + ", ".join(f"{k}: {self._m.graph.type(k)}" for k in self) + "}"


ROOT_KINDS = ("outputs", "grads", "step")


def _model_loc(g: Graph, n: str):
    """Where node n comes from in the model's own file: its location, or, for a node a prelude
    function made (`h.batchnorm1d`), where the model calls that function (Meta.calls)."""
    parts = n.split(".")
    for k in range(len(parts), 0, -1):
        name = ".".join(parts[:k])
        if name in g.meta.calls:
            return g.meta.calls[name]
        here = g.loc(name) if name in g else None
        if here is not None and here.file != "prelude.dln":
            return here
    return g.loc(n)


class Model:
    """A compiled model, made by `dlc.compile`: its params, model buffers and optimizer state live
    on its backend.

    Attributes: `name`, `backend` ("interp", "emu" or "cuda"), `path` (the .dln file, or None
    for text), `float_dtype`, `outputs` (output names), `trainable` (it minimises a loss with an
    optimizer), `graph` (the optimized IR graph), `stages` (stage name -> graph), `records`
    (per-pass timings), `build` (the `Build`), `seed`, `steps` (optimizer steps taken), `training`
    (the mode of `forward` and `evaluate`: False, evaluation, unless `train()` was called),
    `params`, `state`; `comm` (the communicator of a data-parallel run, runtime/collectives.py,
    else None), `rank` and `ranks` (0 and 1 in a process of its own)."""

    def __init__(self, build: Build, backend: str, seed: int, float_dtype, cuda_graph: bool = False, comm=None):
        self.build = build
        self.stages = build.stages
        self.records = build.records
        self.graph = build.graph
        self.rewrite = build.rewrite
        self.name = self.graph.meta.name
        self.backend = backend
        self.path = None if build.file in ("<string>", "<graph>") else build.file
        self.float_dtype = np.dtype(float_dtype)
        self._backend = make_backend(backend, self.graph, float_dtype, cuda_graph=cuda_graph)
        self.comm = self._backend.comm = comm
        self.rank, self.ranks = (comm.rank, comm.size) if comm else (0, 1)
        self.version = VERSION  # of the dlc that compiled it (ranks of one run must agree)
        self._backend.set_state(initial_state(self.graph, seed))
        m = self.graph.meta
        self.outputs = list(m.outputs)
        self.trainable = build.trains
        self._inputs = self.graph.inputs
        self._params = self.graph.params
        self._effects = self.graph.with_effect(UPDATES_STATE)  # what a step commits (assignments)
        fwd = build.forward  # ops whose declaration refuses some training batches (registry train_check)
        self._train_checks = [(n, [fwd.type(a) for a in fwd.operands(n)], fwd.attrs(n), fwd.loc(n))
                              for n in fwd.order() if OPS[fwd.op(n)].train_check]
        self._needs: dict = {}
        self._views: dict = {}  # tuple of input names -> a graph view for check_feeds
        # an evaluation run computes each output (and the loss) by the graph's evaluation form, when
        # it has one (passes/evaluation.py): node -> its twin there
        twin = {v: m.eval_outputs[k] for k, v in m.outputs.items() if k in m.eval_outputs}
        if m.loss and m.eval_loss:
            twin[m.loss] = m.eval_loss
        self._eval_twin = twin
        self.seed, self.steps = seed, 0
        self.training = False

    def __repr__(self) -> str:
        g = self.graph
        count = sum(g.type(p).numel() for p in self._params)
        inputs = ", ".join(f"{n}: {g.type(n)}" for n in self._inputs)
        outputs = ", ".join(f"{k}: {g.type(v)}" for k, v in g.meta.outputs.items())
        kind = f"trainable ({g.meta.optimizer[0]})" if self.trainable else "inference only"
        return (f"<dlc.Model {self.name}: backend {self.backend}; inputs {inputs}; "
                f"{count:,} params in {len(self._params)} arrays; outputs {outputs}; {kind}>")

    # -- mode ------------------------------------------------------------------------------------
    def train(self) -> "Model":
        """Training mode for `forward` and `evaluate` (dropout draws masks, batch statistics);
        returns the model. `grad`, `step` and `fit` always run in training mode."""
        self.training = True
        return self

    def eval(self) -> "Model":
        """Evaluation mode for `forward` and `evaluate` (the default); returns the model."""
        self.training = False
        return self

    # -- state -----------------------------------------------------------------------------------
    @property
    def params(self) -> Params:
        """The params as a dict-like view, name -> array; assigning `m.params[k] = v` checks the
        shape and writes through to the backend."""
        return Params(self)

    def _value(self, k: str) -> np.ndarray:
        b = self._backend
        return b.get_value(k) if hasattr(b, "get_value") else b.values[k]

    @property
    def buffers(self) -> dict[str, np.ndarray]:
        """Copies of the model buffers (model state that is not learned, such as running
        statistics), name -> array: saved with the weights and exported to ONNX."""
        return {k: np.array(self._value(k)) for k in self.graph.buffers}

    @property
    def state(self) -> dict[str, np.ndarray]:
        """A copy of everything the model keeps: params, model buffers and optimizer state."""
        return self._backend.get_state()

    def set_state(self, values: dict) -> None:
        """Set params, model buffers or optimizer state by name (as `state` gives them); every name
        and shape is checked before anything changes."""
        g = self.graph
        stored = set(g.holding(*STORED))
        for k, v in values.items():
            if k not in stored:
                raise DlcError(f"'{k}' is not a param, buffer or optimizer state of model {self.name}")
            if tuple(np.shape(v)) != g.type(k).shape:
                raise DlcError(f"'{k}' should be {g.type(k)}, found shape {fmt_shape(np.shape(v))}")
        kinds = {PARAM: "param", MODEL: "model buffer", OPTIMIZER: "optimizer state"}
        _check_finite(values, lambda n: kinds[OPS[g.op(n)].holds])
        self._backend.set_state(values)

    def split_state(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(weights, optimizer state): copies, name -> array. The weights are the params and the
        model buffers (what `save` writes); the optimizer state is every optimizer `state` node
        (velocities, moments, Adam's beta powers, the schedule's step counter)."""
        everything = self._backend.get_state()
        g = self.graph
        return ({p: everything[p] for p in g.params + g.buffers},
                {n: everything[n] for n in g.optimizer_state})

    def reset(self, seed: int) -> "Model":
        """Draw every param, buffer and optimizer state afresh from `seed` (as compiling does)."""
        if setting_problem("seed", seed):
            raise _problem("seed", setting_problem("seed", seed), seed)
        self._backend.set_state(initial_state(self.graph, seed))
        self.seed, self.steps = int(seed), 0
        return self

    @property
    def check_numerics(self) -> bool:
        """When true, every run stops at the first NaN or infinity a node (interp) or a kernel (emu,
        cuda) produces, with a `DlcError` naming the op, the node and its `.dln` line. Slower."""
        return bool(getattr(self._backend, "check_numerics", False))

    @check_numerics.setter
    def check_numerics(self, on: bool) -> None:
        self._backend.check_numerics = _switch("check_numerics", on)

    @property
    def engine(self):
        """The backend object that runs the model (runtime/interp.py, emu.py or cuda.py), for tools
        that look inside it (the benchmarks time its program and its kernels one by one). Its
        methods are the runtime's own, not part of this API."""
        return self._backend

    @property
    def counters(self) -> dict | None:
        """What runs have asked of the host so far, counted by the generated-code backends:
        `runs`, `syncs` (waits for the device), `d2h_bytes`, `h2d_copies`; None on interp."""
        return getattr(self._backend, "counters", None)

    # -- weights files ---------------------------------------------------------------------------
    def save(self, path, state: bool = False) -> None:
        """Write the weights (params and model buffers) to an .npz file, one array per name,
        atomically, creating missing folders. `state=True` adds the optimizer state as
        `state/NAME` arrays, as `dlc run --save` writes it."""
        weights, opt = self.split_state()
        save_weights(path, weights, parents=True, state=opt if state else None)

    def load(self, path) -> "Model":
        """Read the weights (params and model buffers) from an .npz (as `save` writes); every name
        and shape is checked before anything changes. When the file holds the model's whole
        optimizer state (`state/NAME` arrays) that is restored too; otherwise the state is left as
        it is. Returns the model."""
        self.restore(path)
        return self

    def restore(self, path) -> str:
        """`load`, returning the line `dlc run --load` prints about what was restored."""
        arrays = read_npz(path)
        weights = load_weights(path, self.graph, arrays)
        state, why = load_state(path, self.graph, arrays)
        self._backend.set_state(weights)
        if state:
            self._backend.set_state(state)
        n = len([k for k in weights if k in self._params])
        return (f"loaded {n} params from {path}" + (" and the optimizer state" if state else
                "" if not self.graph.optimizer_state else f" (optimizer state starts fresh: {why})"))

    def load_partial(self, path) -> dict:
        """Transfer learning: load every param (and model buffer) whose name and shape match an
        array of `path` (the weights of any model) and leave the others as they are; the optimizer
        state is not read. Returns the report: `loaded`, `not_in_file`, `not_in_model`,
        `misshaped` ((name, file shape, model shape)); `partial_report(report)` is its one line.
        A file that matches no param raises `DlcError`."""
        weights, report = load_weights_by_name(path, self.graph)
        self._backend.set_state(weights)
        return report

    def ir(self, stage: str = "optimized") -> str:
        """The IR text at a stage: "forward", "backward", "train" or "optimized"."""
        return self.build.ir(stage)

    # -- running ---------------------------------------------------------------------------------
    def _feeds(self, inputs: dict, needed) -> dict:
        g = self.graph
        if not isinstance(inputs, dict):
            raise DlcError(f"inputs: expected a dict of input name -> array, found {type(inputs).__name__}")
        missing = [n for n in needed if n not in inputs]
        if missing:
            raise DlcError(f"missing input '{missing[0]}' : {g.type(missing[0])}")
        sub = {n: inputs[n] for n in self._inputs if n in inputs}
        unknown = sorted(set(inputs) - set(self._inputs))
        if unknown:
            raise DlcError(f"'{unknown[0]}' is not an input of model {self.name} (inputs: {', '.join(g.inputs)})")
        # only the inputs a computation needs must be given (forward needs no labels)
        key = tuple(sub)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = _only_inputs(g, list(sub))
        # NaN or infinity is refused as the data loader refuses it: a step on it would poison the weights
        feeds, dims = check_feeds(view, sub, where="inputs: ", float_dtype=self.float_dtype, check_finite=True)
        empty = [n for n, a in feeds.items() if a.size == 0]
        if empty:
            raise DlcError(f"inputs: '{empty[0]}' holds no examples (shape {fmt_shape(feeds[empty[0]].shape)}); "
                           f"a batch needs at least one")
        return feeds

    def _need(self, roots) -> list[str]:
        """The inputs a computation reads (forward needs no labels); cached per set of roots."""
        key = tuple(roots)
        if key not in self._needs:
            up = self.graph.upstream(roots)
            self._needs[key] = [n for n in self._inputs if n in up]
        return self._needs[key]

    def check_inputs(self, inputs: dict, roots=None) -> dict:
        """`inputs` (a dict) checked and cast as every run checks them: only the inputs that `roots`
        read (default: every input) must be there. Pass the result with `checked=True`."""
        return self._feeds(inputs, self._need(roots) if roots is not None else self._inputs)

    def roots(self, kind: str) -> list[str]:
        """The nodes a kind of run computes: "outputs" (inference), "grads" (the loss and every
        trainable param's gradient), "step" (the loss and every assignment a training step commits)."""
        m = self.graph.meta
        if kind == "outputs":
            return list(m.outputs.values())
        if kind in ("grads", "step") and not m.loss:
            raise DlcError(f"model {self.name} has no loss to differentiate (add `minimize LOSS with ...`)")
        if kind == "grads":
            return [m.loss] + list(m.grads.values())
        if kind == "step":
            if not self.trainable:
                raise DlcError(f"model {self.name} minimises nothing, so it cannot be trained")
            return [m.loss] + self._effects
        raise DlcError(f"roots: expected one of {', '.join(ROOT_KINDS)}, found {kind!r}")

    def run(self, roots, inputs: dict, *, training: bool = False, commit: bool = False, fetch=None,
            wait: bool = True, checked: bool = False, share: float | None = None):
        """Run the nodes `roots` (see `roots(kind)`) on `inputs` (a dict) in training or evaluation
        mode: {node: array} for the nodes in `fetch` (default: every root). `commit` applies the
        assignments at the end (a training step: the step count goes up). `wait=False` returns at
        once a pending result whose `result()` gives the dict (see `train_step`); `checked` skips
        checking the arrays (a caller that checked them once). In evaluation mode an output or the
        loss is computed by the graph's evaluation form, when it has one (passes/evaluation.py);
        the result is keyed by the nodes asked for. In a data-parallel run `inputs` are
        this rank's share of the batch, and `share` its fraction of the whole batch (default: its
        example count over the sum of every rank's, which asks the other ranks once); dropout
        draws from (seed, steps * ranks + rank), so no two ranks draw the same masks."""
        training, commit, wait = _switch("training", training), _switch("commit", commit), _switch("wait", wait)
        roots = list(roots)
        feeds = inputs if checked else self._feeds(inputs, self._need(roots))
        if training and self._train_checks:
            self._check_training_batch(feeds)
        rng = (self.seed, self.steps * self.ranks + self.rank) if training else None
        if self.comm is not None:
            self.comm.share = share if share is not None else self._share(feeds, roots)
        twin = None if training else self._eval_twin  # evaluation: the outputs' and loss's evaluation form
        if twin:
            asked = roots if fetch is None else list(fetch)
            roots, fetch = [twin.get(r, r) for r in roots], [twin.get(r, r) for r in asked]
        res = self._backend.run(roots, feeds, commit=commit, training=training, rng=rng, fetch=fetch, defer=not wait)
        if commit:
            self.steps += 1
        if twin:
            res = _Renamed(res, dict(zip(asked, fetch))) if not wait else {a: res[f] for a, f in zip(asked, fetch)}
        return res

    def _share(self, feeds: dict, roots) -> float:
        """This rank's fraction of a data-parallel step's batch, when the caller did not give it:
        its example count over every rank's (one small all-reduce), for a run that communicates."""
        comm, key = self.comm, ("communicates",) + tuple(roots)
        if key not in self._needs:  # whether the run reaches an op that communicates (cached per roots)
            self._needs[key] = bool(self.graph.upstream(roots) & set(self.graph.with_effect(COMMUNICATES)))
        if not self._needs[key]:
            return comm.share  # read by nothing
        n = next((len(feeds[k]) for k in self._inputs if k in feeds and np.ndim(feeds[k])), 0)
        total = comm.sum([n])[0]
        return n / total if total else 1.0 / comm.size

    def _check_training_batch(self, feeds: dict) -> None:
        """What an op refuses to run in training on this batch (its registry `train_check`), as an
        error at the op's line: batch norm on a batch with one value per channel."""
        g = self.graph
        dims = {d: a.shape[i] for n, a in feeds.items() for i, d in enumerate(g.type(n).shape) if isinstance(d, str)}
        for n, types, attrs, loc in self._train_checks:
            shapes = [[dims.get(d, 1) if isinstance(d, str) else d for d in t.shape] for t in types]
            problem = OPS[self.build.forward.op(n)].train_check(shapes, attrs)
            if problem:
                fwd = self.build.forward
                where = _model_loc(fwd, n)
                if where != loc and loc is not None:  # inside a function: say which, and where in it
                    problem += f" ({n}: {fwd.op(n)} at {loc})"
                raise DlcError(problem, where, fwd.sources.get(where.file) if where else None)

    def forward(self, **inputs) -> dict[str, np.ndarray]:
        """The outputs, output name -> array, for inputs given by name (labels are not needed), in
        the model's mode (evaluation unless `train()` was called); nothing changes."""
        res = self.run(self.roots("outputs"), inputs, training=self.training)
        return {k: np.asarray(res[v]) for k, v in self.graph.meta.outputs.items()}

    def grad(self, **inputs) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, {param: gradient}) for one batch, for the trainable (not frozen) params, in
        training mode; the params do not change."""
        m = self.graph.meta
        res = self.run(self.roots("grads"), inputs, training=True)
        return float(res[m.loss]), {p: np.asarray(res[v]) for p, v in m.grads.items()}

    def step(self, **inputs) -> float:
        """One optimizer step on one batch; returns the loss before the update."""
        return self.train_step(inputs)[0]

    def train_step(self, inputs: dict, fetch_outputs: bool = False, checked: bool = False, wait: bool = True,
                   share: float | None = None):
        """One optimizer step on `inputs` (a dict), in training mode: (loss, outputs or None).
        `fetch_outputs` also returns the outputs; `checked` skips checking the arrays (the training
        loop checked them). `wait=False` returns at once, without waiting for the device, a
        `PendingStep` whose `result()` gives (loss, outputs or None); the first `result()` brings
        down every pending step's values with one wait (the training loop reads them once per
        logging interval). `share`: in a data-parallel run, this rank's fraction of the global
        batch (see `run`)."""
        m = self.graph.meta
        roots = self.roots("step")
        _switch("wait", wait)
        if fetch_outputs:
            roots += [v for v in m.outputs.values() if v not in roots]
        # computes the whole step; hands back only the loss (and the outputs asked for): params
        # and optimizer state stay where the backend keeps them until read (`params`, `save`)
        fetch = [m.loss] + ([v for v in m.outputs.values() if v != m.loss] if fetch_outputs else [])
        res = self.run(roots, inputs, training=True, commit=True, fetch=fetch, wait=wait, checked=checked, share=share)
        step = PendingStep(res, m, fetch_outputs)
        return step.result() if wait else step

    def evaluate(self, inputs: dict, checked: bool = False):
        """(loss or None, outputs) for `inputs` (a dict), in the model's mode (evaluation unless
        `train()` was called), without changing anything; `checked` as for `train_step`."""
        m = self.graph.meta
        roots = ([m.loss] if m.loss else []) + list(m.outputs.values())
        res = self.run(roots, inputs, training=self.training, checked=checked)
        return (float(res[m.loss]) if m.loss else None), {k: res[v] for k, v in m.outputs.items()}

    # -- data and whole runs (what `dlc run` and `dlc eval` do) ---------------------------------------
    def settings(self, epochs=None, batch=None, val_split=None, patience=None, monitor=None,
                 test_split=None) -> RunSettings:
        """The run settings: each given value, else the model's `train(...)`, else the default
        (10 epochs, batch 32, no held-out split, no early stopping, monitor val_loss, no test
        split); the seed is the model's (`seed`). Early stopping needs a held-out split, and the
        two splits must leave examples to train on: else a `DlcError` naming where each came from."""
        given = {"epochs": epochs, "batch": batch, "val_split": val_split, "patience": patience,
                 "monitor": monitor, "test_split": test_split}
        check_settings(**given)
        out = {k: v if v is not None else _train_setting(self.build, k) for k, v in given.items()}

        def where(key):  # the flag or argument that gave it, else the model's train(...), located
            if given[key] is not None:
                return arg(key), None
            loc = self.graph.meta.train_loc
            return f"train({key} = {fmt_value(out[key])})", loc
        if out["patience"] and not out["val_split"]:
            what, loc = where("patience")
            raise DlcError(f"{what}: early stopping needs a held-out split to watch: give val_split in train(...) "
                           f"or {arg('val_split')}", loc, self.graph.sources.get(loc.file) if loc else None)
        if out["test_split"] + out["val_split"] >= 1:
            key = "test_split" if given["test_split"] is not None or given["val_split"] is None else "val_split"
            what, loc = where(key)
            raise DlcError(f"{what}: test_split {out['test_split']:g} + val_split {out['val_split']:g} must be "
                           f"below 1, to leave examples to train on", loc,
                           self.graph.sources.get(loc.file) if loc else None)
        return RunSettings(seed=self.seed, **out)

    def read_data(self, data=None, labels=None, normalize: str = "none", label_column=None, label_offset: int = 0,
                  header: str = "auto") -> Dataset:
        """The data for the model's inputs, checked: `data` is a path (.npz, IDX, CSV) or
        "x=FILE,y=FILE" (default: the model's `train(data = ...)`, relative to the .dln file);
        the other arguments are the data flags of `dlc run` (runtime/datafiles.py DataOptions)."""
        spec = data if data is not None else self._train_data(arg("data"))
        opts = DataOptions(labels=labels, normalize=normalize, label_column=label_column,
                           label_offset=label_offset, header=header)
        warnings = []
        feeds, n = load_data(spec, self.graph, opts, warn=warnings)
        # a model with no labels input (an imported classifier) is scored against the file's own y
        targets = data_targets(spec, labels, n) if accuracy_rule(self.graph) is None else None
        return Dataset(feeds, n, f"{spec} and {labels}" if labels else str(spec), warnings, targets)

    def _train_data(self, flag: str) -> Path:
        """The model's `train(data = ...)` file, relative to the .dln file; `flag` names the
        argument that would replace it, for the error when there is none."""
        d = self.graph.meta.train.get("data")
        if not d:
            raise DlcError(f"no data: pass {flag} FILE.npz (or give `train(data = \"...\")` in the model)")
        folder = Path(self.path).parent if self.path else Path(".")
        spec = folder / d
        if not spec.exists():   # say where the path came from and what it is relative to
            loc = self.graph.meta.train_loc
            raise DlcError(f"train(data = \"{d}\"): no such file {spec} (a path in train(...) is relative "
                           f"to the folder of the .dln file, {folder.resolve()})", loc,
                           self.graph.sources.get(loc.file) if loc else None)
        return spec

    def vocabulary(self, vocab=None) -> tuple[list[str], str]:
        """(the characters, id i the i-th; where they came from) for sampling: `vocab` is an .npz
        path holding an array `vocab`, or the characters themselves (a string or a list); default:
        the `vocab` array of the model's `train(data = ...)` file."""
        if vocab is None or isinstance(vocab, Path) or isinstance(vocab, str) and vocab.endswith(".npz"):
            path = vocab if vocab is not None else self._train_data(arg("vocab"))
            return vocabulary(read_npz(path), path), str(path)
        chars = list(vocab) if isinstance(vocab, (str, list, tuple)) else None
        if not chars or not all(isinstance(c, str) and len(c) == 1 for c in chars) or len(set(chars)) != len(chars):
            raise DlcError(f"{arg('vocab')}: expected an .npz file with an array 'vocab', or distinct single "
                           f"characters, found {vocab!r}")
        return chars, "the vocabulary given"

    def sampling_plan(self, output: str | None = None) -> tuple[str, int, str]:
        """(the input of character ids, the window length T, the output of scores) when the model can
        be sampled (`sample`); else a `DlcError` that says why."""
        return sampling_plan(self.graph, output)

    def sample(self, prime: str, length: int = 200, temperature: float = 1.0, seed: int = 0, vocab=None,
               output: str | None = None) -> str:
        """`length` characters drawn from a character-level model after the text `prime`
        (runtime/sample.py: the model, the window, the draw). `temperature` divides the scores
        before the softmax (0: always the likeliest character); `seed` makes the draw
        reproducible; `vocab` as `vocabulary` takes it; `output`: which output gives the scores
        (default: the first). Runs in evaluation mode and changes nothing."""
        x, steps, output = self.sampling_plan(output)
        chars, where = self.vocabulary(vocab)
        classes = self.graph.type(self.graph.meta.outputs[output]).shape[2]
        if classes != len(chars):
            raise DlcError(f"output '{output}' scores {classes} characters, but the vocabulary of {where} has "
                           f"{len(chars)}")
        ids = check_sampling(prime, length, temperature, seed, chars, where, arg)
        node = self.graph.meta.outputs[output]
        return sample_text(lambda a: self.run([node], {x: a})[node], ids, steps, int(length), float(temperature),
                           int(seed), chars)

    def resume(self, folder, data: Dataset, settings: RunSettings, seed=None, batch=None,
               val_split=None, test_split=None) -> tuple[dict, RunSettings, str]:
        """Continue the run checkpointed in `folder`: loads its params, buffers and optimizer state
        and returns (its metadata for `fit`, the settings it ran with, a line to print). `seed`,
        `batch`, `val_split` and `test_split` are what the caller asked for, if anything: each must
        agree with the checkpoint's; the data must be the checkpoint's. Early stopping goes on from
        the checkpoint's best epoch and count of epochs without improvement. The precision may
        differ from the checkpoint's (params and state are fp32 at every precision): the run goes on
        at this model's, and the note says so (no longer bit for bit what the first run would have done)."""
        where = Path(folder)
        params, state, meta = load_checkpoint(where, self.graph)
        file = where / CHECKPOINT_FILE if where.is_dir() else where
        if meta.get("ranks", 1) != self.ranks:  # the same steps, but the sums and dropout's draws change with K
            raise file_error(file, f"the checkpoint was made by a run on {meta.get('ranks', 1)} rank(s), this one "
                             f"has {self.ranks}: {arg('resume')} continues a run bit for bit only on as many ranks "
                             f"as it had (start it again with {meta.get('ranks', 1)})")
        for key, given in (("seed", seed), ("batch", batch), ("val_split", val_split), ("test_split", test_split)):
            if given is not None and given != meta.get(key, 0.0):
                raise DlcError(f"{arg(key)}: {given} differs from the checkpoint's {key} = {meta.get(key, 0.0)} "
                               f"({file}); "
                               f"{arg('resume')} continues that run: leave the "
                               f"{'flag' if arg(key).startswith('-') else 'argument'} out")
        if meta["examples"] != data.n or meta["data"] != data_digest(data.feeds):
            raise file_error(file, f"the checkpoint was trained on other data ({meta['examples']} examples, "
                             f"not these {data.n}, or different values): {arg('resume')} needs the same "
                             f"{arg('data')}")
        self._backend.set_state(params)
        self._backend.set_state(state)
        self.seed = meta["seed"]
        settings = replace(settings, seed=meta["seed"], batch=meta["batch"], val_split=meta["val_split"],
                           test_split=meta.get("test_split", 0.0))
        stopped = (meta.get("early") or {}).get("stopped")
        was, now = meta.get("precision", "fp32"), self.graph.meta.precision  # state is fp32 at every precision
        note = (f"resumed from {file}: epoch {meta['epoch']} done, {meta['steps']} steps"
                + (f"; it trained at precision {was}, this run goes on at {now}" if was != now else "")
                + (f"; that run stopped early at epoch {stopped}" if stopped and settings.patience else
                   "" if meta["epoch"] < settings.epochs else
                   f"; nothing left to train up to epoch {settings.epochs} (raise {arg('epochs')})"))
        return meta, settings, note

    def fit(self, data: Dataset, settings: RunSettings | None = None, progress: bool = True, checkpoint=None,
            resume: dict | None = None, out=None) -> dict:
        """Train on `data` (`read_data`) with `settings` (default `settings()`): shuffled
        mini-batches, a held-out split evaluated in evaluation mode, a line per epoch on `out`
        (stdout) and a progress bar; `checkpoint`: a folder written after every epoch; `resume`:
        the metadata `resume` returned. Returns the metrics (`loss`, `accuracy`, `val_*`, `history`, ...)."""
        s = settings or self.settings()
        if not self.trainable:
            raise DlcError(f"model {self.name} minimises nothing, so it cannot be trained")
        # steps run in training mode; the held-out data is evaluated in evaluation mode, whatever `training` says
        return self._in_eval(lambda: _train_loop(self, data.feeds, data.n, s.epochs, s.batch, s.val_split, s.seed,
                                                 progress=progress, out=out, checkpoint=checkpoint, resume=resume,
                                                 test_split=s.test_split, patience=s.patience, monitor=s.monitor))

    def accuracy_rule(self, data: Dataset | None = None):
        """(output, label input, "argmax" or "threshold") that accuracy compares, or None."""
        return accuracy_rule(self.graph, data.feeds if data else None)

    def test_part(self, data: Dataset, test_split: float) -> Dataset:
        """The examples of `data` that `test_split` holds out from training and validation (the
        same ones in every run: runtime/train.py `holdout_indices`)."""
        idx = holdout_indices(data.n, test_split)
        return Dataset({k: v[idx] for k, v in data.feeds.items()}, len(idx), data.what)

    def val_part(self, data: Dataset, settings: RunSettings | None = None) -> Dataset:
        """The examples of `data` that `fit(data, settings)` holds out for validation (its `val_*`
        metrics are theirs): drawn by `settings.seed` after the test split (runtime/train.py
        `split_indices`); none without a `val_split`."""
        s = settings or self.settings()
        idx = (split_indices(data.n, s.val_split, s.seed, s.test_split)[1] if s.val_split > 0
               else np.zeros(0, np.int64))
        return Dataset({k: v[idx] for k, v in data.feeds.items()}, len(idx), data.what)

    def scored_on(self, data: Dataset, test_split: float = 0.0) -> tuple[Dataset, str]:
        """(the examples to score, what they are, for the line that reports the score): the test
        split when `test_split` > 0, else every example of `data`."""
        if test_split > 0:
            part = self.test_part(data, test_split)
            return part, (f"the {part.n} test examples of {data.what} (test_split = {test_split:g}: held out "
                          f"from training and validation)")
        caveat = (" (this includes the examples the model trained on, unless that file was held out)"
                  if self.trainable else "")
        return data, f"all {data.n} examples of {data.what}{caveat}"

    def score(self, data: Dataset, batch: int, test_split: float = 0.0) -> dict:
        """Loss and accuracy over `data` (its test split only, with `test_split` > 0: `scored_on`),
        `batch` examples at a time, in evaluation mode, changing nothing: {"epochs": 0, "backend",
        "examples", "scored_on", "loss" (with a loss), "accuracy" (with labels)}."""
        data, what = self.scored_on(data, test_split)
        try:
            loss, acc = self._in_eval(lambda: _evaluate(self, data.feeds, batch, self.accuracy_rule(data)))
        except DlcError as e:
            raise with_context(e, "while evaluating")
        metrics = {"epochs": 0, "backend": self.backend, "examples": data.n, "scored_on": what}
        if self.graph.meta.loss:
            metrics["loss"] = loss
        if acc is not None:
            metrics["accuracy"] = acc
        return metrics

    def evaluate_classes(self, data: Dataset, batch: int) -> dict:
        """`dlc eval`'s metrics over all of `data` in evaluation mode: loss, accuracy, per-class
        precision, recall and F1, the confusion matrix (`report_lines(metrics)` prints them)."""
        return self._in_eval(lambda: evaluate_classes(self, data.feeds, batch, data.targets))

    def prediction_problem(self) -> str | None:
        """Why `predict` cannot give one row per example, or None."""
        return per_example_problem(self.graph)

    def predict(self, data: Dataset, batch: int) -> dict[str, np.ndarray]:
        """Every output over all of `data`, in evaluation mode, joined along the first axis."""
        return self._in_eval(lambda: predict(self, data.feeds, batch))

    def _in_eval(self, fn):
        saved, self.training = self.training, False
        try:
            return fn()
        finally:
            self.training = saved

    # -- ONNX ------------------------------------------------------------------------------------
    def to_onnx(self):
        """(onnx.ModelProto, summary): the evaluation graph of the model as it was written (its
        outputs from its inputs), the params and model buffers as initializers."""
        weights, _ = self.split_state()
        return export_onnx(self.stages["forward"], weights, VERSION)

    def export_onnx(self, path) -> str:
        """Write `to_onnx()` to `path` atomically (missing folders created); returns the summary.
        The name must end in .onnx (what runtimes and viewers look for)."""
        check_onnx_name(path)
        proto, summary = self.to_onnx()
        data = proto.SerializeToString()
        atomic_write(path, lambda f: f.write(data), parents=True)
        return summary


def check_onnx_name(path) -> None:
    """An ONNX model's file name ends in .onnx: `-o m.txt` would write ONNX under a name nothing
    opens as ONNX, so it is refused (before anything is compiled or written)."""
    suffix = Path(path).suffix
    if suffix.lower() != ".onnx":
        raise DlcError(f"{path}: an ONNX model is written to a file ending in .onnx, not "
                       f"{repr(suffix) if suffix else 'a name without one'}")


class PendingStep:
    """A training step that may still be running on the device: `result()` -> (loss, outputs or
    None), waiting for it (and for every step queued before it) once."""

    def __init__(self, fetched, meta, outputs: bool):
        self._fetched, self._meta, self._outputs = fetched, meta, outputs

    def result(self):
        m = self._meta
        res = self._fetched if isinstance(self._fetched, dict) else self._fetched.result()
        outs = {k: res[v] for k, v in m.outputs.items()} if self._outputs else None
        return float(res[m.loss]), outs


class _Renamed:
    """A deferred evaluation run's result, keyed by the nodes the caller asked for (`Model.run`)."""

    def __init__(self, fetched, names: dict):
        self._fetched, self._names = fetched, names

    def result(self) -> dict:
        res = self._fetched.result()
        return {a: res[f] for a, f in self._names.items()}


def _only_inputs(g, names):
    """A view of `g` restricted to some inputs, for checking a partial set of feeds."""
    class _View:
        inputs = names
        meta = g.meta

        @staticmethod
        def type(n):
            return g.type(n)
    return _View()


# -- differential testing (`dlc diff`) ----------------------------------------------------------------

@dataclass
class DiffResult:
    """One training step on each backend against interp (runtime/diff.py): `results` (backend ->
    ("skipped", why) or (rows, first diverging node)), `done` and `skipped` backends, the `graph`,
    the `batch` size, `rng` (seed, step) of the training mode, `random` (the model draws random
    numbers), `tolerance` (atol, rtol), `rewrite` (the bottleneck report, or None), `flips` (at
    tf32 and bf16: (ulp, share), the rounding flips forgiven; None at fp32)."""
    graph: object
    results: dict
    done: list
    skipped: list
    batch: int
    rng: tuple
    random: bool
    tolerance: tuple
    rewrite: list | None = None   # the bottleneck rewrite's report, when it was asked for
    flips: tuple | None = None    # tf32, bf16: (ulp, share): that share of a tensor's elements (at
                                  # least one) may be off by one ulp of the format (runtime/diff.py)

    @property
    def agree(self) -> bool:
        return all(not first and all(r.agrees for r in rows) for rows, first in
                   (v for v in self.results.values() if v[0] != "skipped"))


def diff(source, backends=("interp", "emu", "cuda"), batch: int = 16, seed: int = 0, data=None,
         options: Options | None = None, **kw) -> DiffResult:
    """One training step (training mode, the same dropout masks everywhere) on each backend from
    the same weights and batch (`data`, an .npz, else random), every tensor compared with interp's."""
    given = backends if isinstance(backends, str) else ",".join(backends)
    names = list(dict.fromkeys(b.strip() for b in given.split(",") if b.strip()))
    for b in names:
        if b not in BACKENDS:
            raise DlcError(f"{arg('backends')}: unknown backend '{b}' (known: {', '.join(BACKENDS)})")
    if not [b for b in names if b != "interp"]:
        raise DlcError(f"{arg('backends')} {given}: nothing to compare: interp is the reference every "
                       "other backend is compared with; name at least one of emu, cuda")
    b = build(source, options, **kw)
    g = b.graph
    if data is not None:
        feeds, n = load_data(data, g)
        feeds = {k: v[:batch] for k, v in feeds.items()}
    else:
        feeds = synth_feeds(g, batch, seed)
    rng = (seed, 0)
    results = _diff(g, names, initial_state(g, seed), feeds, rng=rng)
    done, skipped = compared(results)
    return DiffResult(g, results, done, skipped, len(next(iter(feeds.values()))), rng, bool(random_nodes(g)),
                      (ATOL, RTOL), b.rewrite,
                      (FLIP[g.meta.precision], FLIP_SHARE[g.meta.precision]) if g.meta.precision != "fp32" else None)


# -- ONNX import (`dlc import`) -------------------------------------------------------------------
def _imported(path, weights_name=None, train=False):
    """The importer's result (runtime/onnx_import.py) for the ONNX file `path`, its `.dln` text
    compiled by the front end and its weights checked against the params and buffers it declares:
    a failure there is a bug of the importer, said as one."""
    from .dsl.frontend import prelude
    from .runtime.onnx_import import import_model
    imp = import_model(path, reserved=set(prelude()) | set(OPS), weights_name=weights_name, train=train)
    try:
        g = lower(imp.text, f"{Path(path).stem}.dln", None)
    except DlcError as e:
        raise DlcError(f"dlc import made a model that does not compile (a bug in dlc import; please report it "
                       f"with the .onnx file): {e}")
    want = {n: g.type(n).shape for n in g.params + g.buffers}
    have = {n: tuple(a.shape) for n, a in imp.weights.items()}
    if want != have:
        raise DlcError(f"dlc import made weights that do not fit its model (a bug in dlc import): "
                       f"{sorted(set(want.items()) ^ set(have.items()))[:3]}")
    return imp


def import_onnx(path, train: bool = False) -> tuple[str, dict]:
    """(`.dln` text, weights) of the ONNX model in `path`: the weights (params and model buffers,
    name -> float32 array) are what `Model.load` and `dlc run --load` read. Needs the onnx package.
    Anything the file holds that dlc cannot express is a DlcError listing it (docs/import.md).
    `train`: add a labels input, a softmax cross-entropy loss and an optimizer (`dlc import --train`)."""
    imp = _imported(path, train=train)
    return imp.text, dict(imp.weights)


def write_import(path, output, weights=None, train: bool = False) -> list[str]:
    """`dlc import`: write the `.dln` of the ONNX model `path` to `output` (a `.dln` name) and its
    weights to `weights` (default: `output` with `.npz`), both atomically, and nothing at all when
    anything is wrong; returns the lines that say what was written."""
    out = Path(output)
    if out.suffix.lower() != ".dln":
        raise DlcError(f"{arg('output')}: {output}: the model is written to a file ending in .dln, not "
                       f"{repr(out.suffix) if out.suffix else 'a name without one'}")
    wpath = Path(weights) if weights is not None else out.with_suffix(".npz")
    if wpath.suffix.lower() != ".npz":
        raise DlcError(f"{arg('weights')}: {wpath}: weights are written to a file ending in .npz")
    for p in (out, wpath):
        check_output(p)
    imp = _imported(path, wpath.name, train)
    existed = wpath.exists()
    save_weights(wpath, imp.weights, parents=True)
    try:
        atomic_write(out, lambda f: f.write(imp.text.encode()), parents=True)
    except BaseException:
        if not existed and wpath.exists():
            wpath.unlink()
        raise
    ops = ", ".join(f"{k} {v}" for k, v in sorted(imp.ops.items(), key=lambda kv: (-kv[1], kv[0])))
    folded = sum(imp.folded.values())
    lines = [f"wrote {out}: model {imp.model}, inputs "
             + ", ".join(f"{k}" + (f" (ONNX '{v}')" if k != v else "") for k, v in imp.inputs.items())
             + "; outputs " + ", ".join(f"{k}" + (f" (ONNX '{v}')" if k != v else "") for k, v in imp.outputs.items()),
             f"wrote {wpath}: {imp.param_count:,} weights in {len(imp.params)} params"
             + (f" and {len(imp.buffers)} model buffers" if imp.buffers else ""),
             f"ONNX nodes translated: {sum(imp.ops.values())} ({ops})"
             + (f"; folded at import time: {folded} ({', '.join(f'{k} {v}' for k, v in sorted(imp.folded.items()))})"
                if folded else "")]
    if imp.prelude:
        lines.append("prelude layers used: " + ", ".join(f"{k} {v}" for k, v in sorted(imp.prelude.items())))
    return lines


# the public names: the API itself, and what the `dlc` command takes from the stages through it
__all__ = ["compile", "load", "build", "diff", "Options", "Build", "Model", "RunSettings", "DiffResult", "Dataset",
           "DataOptions", "DlcError", "__version__", "argument_names", "arg", "check_settings", "resolve",
           "read_source", "debug_level", "quiet",
           # for the command line: constants and writers of the runtime, reached through this door
           "EMITS", "OPT_LEVELS", "PRECISIONS", "STATS_BATCH", "NORMALIZE", "CSV_HEADER", "PREDICT_FORMATS", "CHECKPOINT_FILE",
           "OPSET", "SPREAD_LIMIT", "THREAD_VARS", "SYNC_EVERY", "bench", "unreliable", "report_lines",
           "partial_report", "check_output", "atomic_write", "write_json", "write_plot", "write_predictions",
           "require_matplotlib", "require_onnx", "fmt_value",
           # data parallelism (runtime/collectives.py): the launcher, the MPI check, this process's world
           "run_ranks", "require_mpi", "launched_ranks", "started", "MPI_INSTALL"]
__all__ += ["import_onnx", "write_import"]  # dlc import (docs/import.md)
