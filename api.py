"""The Python API: `dlc.compile(...)`, `dlc.load(...)` and the compiled `Model`
(reference: docs/api.md).

    m = dlc.compile("mlp.dln", backend="interp")
    m.params                      # name -> numpy array (read/write)
    m.forward(x=x)                # output name -> array
    loss, grads = m.grad(x=x, y=y)
    m.step(x=x, y=y)              # one optimizer step; returns the loss
    m.ir(stage="optimized")       # IR text: forward, backward, train or optimized
    m.save("w.npz"); m.load("w.npz")
"""
from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path

import networkx as nx
import numpy as np

from .dsl.frontend import lower
from .ir.errors import DlcError, file_error
from .ir.text import print_ir
from .ir.types import fmt_shape
from .passes.manager import PIPELINE, run_pipeline
from .runtime.backends import make_backend, resolve
from .runtime.data import check_feeds, load_weights, save_weights
from .runtime.init import initial_state
from .runtime.train import setting_problem

FLOAT_DTYPES = ("float32", "float64")
OPT_LEVELS = sorted({level for _, _, level in PIPELINE} | {0})


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


def compile(source, backend: str = "auto", model: str | None = None, opt_level: int = 1, seed: int = 0,
            float_dtype="float32", check: bool = False, cuda_graph: bool = False,
            insert_bottlenecks: float | None = None, freeze=None) -> "Model":
    """Compile a `.dln` file (a path) or `.dln` text into a runnable `Model`.

    `backend`: "auto" (cuda where a GPU is present, else interp), "interp", "emu" or "cuda".
    `model`: which model, when the source defines several. `opt_level`: a level of the pass manager (as `-O`). `seed`: initial
    weights (an integer >= 0). `float_dtype`: "float32" or "float64". `check`: run the IR verifier
    after every pass. `cuda_graph` (cuda backend only): replay each kind of step as one captured
    CUDA graph. `insert_bottlenecks=R` CHANGES THE MODEL: 1x1 reductions to a fraction R of the
    channels before wide convolutions (passes/bottleneck.py; the report is `Model.rewrite`).
    `freeze`: names of params to keep fixed besides the model's own `freeze` statement (a list,
    or a comma-separated string, as `dlc run --freeze a,b`): they get no gradient and no update.
    Every mistake, in the source or in an argument, raises `DlcError`."""
    if not isinstance(source, (str, Path)):
        raise DlcError(f"source: expected a .dln path or .dln text, found {type(source).__name__}")
    if model is not None and not isinstance(model, str):
        raise DlcError(f"model: expected a model name or None, found {model!r}")
    if not isinstance(opt_level, (int, np.integer)) or isinstance(opt_level, bool) or opt_level not in OPT_LEVELS:
        raise DlcError(f"opt_level: must be one of {', '.join(map(str, OPT_LEVELS))}, found {opt_level!r}")
    if setting_problem("seed", seed):
        raise DlcError(f"seed: {setting_problem('seed', seed)}, found {seed!r}")
    dtype = _float_dtype(float_dtype)
    for name, flag in (("check", check), ("cuda_graph", cuda_graph)):
        if not isinstance(flag, (bool, np.bool_)):
            raise DlcError(f"{name}: must be True or False, found {flag!r}")
    backend = resolve(backend, "backend")
    if cuda_graph and backend != "cuda":
        raise DlcError(f"cuda_graph: needs backend 'cuda', not {backend!r}")
    text, file = read_source(source)
    g = lower(text, file, model)
    if freeze is not None:
        _freeze(g, freeze)
    rewrite = None
    if insert_bottlenecks is not None:
        from .passes.bottleneck import insert_bottlenecks as rewrite_model
        rewrite = rewrite_model(g, insert_bottlenecks)
        g = rewrite.graph
    res = run_pipeline(g, opt_level, check=bool(check))
    m = Model(res, backend, int(seed), dtype, path=None if file == "<string>" else file,
              cuda_graph=bool(cuda_graph))
    m.rewrite = rewrite.lines if rewrite else None
    return m


def _freeze(g, names) -> None:
    """Add params to the graph's frozen list (as the `freeze` statement does), checking the names."""
    import difflib
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise DlcError(f"freeze: expected param names (a list, or 'a,b'), found {names!r}")
    params = g.params
    for n in names:
        if n not in params:
            close = difflib.get_close_matches(n, params, n=1)
            raise DlcError(f"freeze: '{n}' is not a param of model {g.meta.name}"
                           + (f" (did you mean '{close[0]}'?)" if close else "") + f" (params: {', '.join(params)})")
        if n not in g.meta.frozen:
            g.meta.frozen.append(n)


def load(source, weights, **options) -> "Model":
    """`compile(source, **options)` and then `Model.load(weights)`: a model with saved weights."""
    return compile(source, **options).load(weights)


def _float_dtype(value) -> np.dtype:
    try:
        dtype = None if value is None else np.dtype(value)  # np.dtype(None) would be float64
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.name not in FLOAT_DTYPES:
        raise DlcError(f"float_dtype: must be float32 or float64, found {value!r}")
    return dtype


class Params(MutableMapping):
    """The model's params as a dict; assigning checks the shape and updates the backend."""

    def __init__(self, model: "Model"):
        self._m = model

    def _names(self):
        return self._m._params  # graph.params sorts the whole graph; the list is fixed after compile

    def __getitem__(self, k):
        if k not in self._names():
            raise KeyError(k)
        return self._m._backend.get_value(k) if self._m.backend != "interp" else self._m._backend.values[k]

    def __setitem__(self, k, v):
        if k not in self._names():
            raise DlcError(f"'{k}' is not a param of model {self._m.name} (params: {', '.join(self._names())})")
        v = np.asarray(v)
        want = self._m.graph.type(k)
        if tuple(v.shape) != want.shape:
            raise DlcError(f"param '{k}' should be {want}, found shape {list(v.shape)}")
        self._m._backend.set_state({k: v})

    def __delitem__(self, k):
        raise DlcError("params cannot be removed from a compiled model")

    def __iter__(self):
        return iter(self._names())

    def __len__(self):
        return len(self._names())

    def __repr__(self):
        return "{" + ", ".join(f"{k}: {self._m.graph.type(k)}" for k in self) + "}"


class Model:
    """A compiled model, made by `dlc.compile`: its params live on its backend.

    Attributes: `name`, `backend` ("interp", "emu" or "cuda"), `path` (the .dln file, or None
    for text), `float_dtype`, `outputs` (output names), `trainable` (it minimises a loss with an
    optimizer), `graph` (the optimized IR graph), `stages` (stage name -> graph), `records`
    (per-pass timings), `seed`, `steps` (optimizer steps taken), `params`, `state`."""

    def __init__(self, result, backend: str, seed: int, float_dtype, path=None, cuda_graph: bool = False):
        self.stages = result.stages
        self.records = result.records
        self.graph = result.stages["optimized"]
        self.name = self.graph.meta.name
        self.backend = backend
        self.path = path
        self.float_dtype = np.dtype(float_dtype)
        self._backend = make_backend(backend, self.graph, float_dtype, cuda_graph=cuda_graph)
        self._backend.set_state(initial_state(self.graph, seed))
        m = self.graph.meta
        self.outputs = list(m.outputs)
        self.trainable = m.loss is not None and m.optimizer is not None
        self._inputs = self.graph.inputs
        self._params = self.graph.params
        self._assigns = self.graph.nodes_of("assign")
        self._needs: dict = {}
        self._views: dict = {}  # tuple of input names -> a graph view for check_feeds
        # random ops (dropout) draw from (seed, step); the step counts optimizer steps taken
        from .ir.ops import OPS
        self._random = any(OPS[self.graph.op(n)].needs_rng for n in self.graph.nx)
        self.seed, self.steps = seed, 0

    def __repr__(self) -> str:
        g = self.graph
        count = sum(g.type(p).numel() for p in self._params)
        inputs = ", ".join(f"{n}: {g.type(n)}" for n in self._inputs)
        outputs = ", ".join(f"{k}: {g.type(v)}" for k, v in g.meta.outputs.items())
        kind = f"trainable ({g.meta.optimizer[0]})" if self.trainable else "inference only"
        return (f"<dlc.Model {self.name}: backend {self.backend}; inputs {inputs}; "
                f"{count:,} params in {len(self._params)} arrays; outputs {outputs}; {kind}>")

    @property
    def params(self) -> Params:
        """The params as a dict-like view, name -> array; assigning `m.params[k] = v` checks the
        shape and writes through to the backend."""
        return Params(self)

    @property
    def state(self) -> dict[str, np.ndarray]:
        """A copy of the params and the optimizer state (momentum buffers, ...), name -> array."""
        return self._backend.get_state()

    def split_state(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(params, optimizer state): copies, name -> array; the state is every `state` node of the
        graph (velocities, moments, Adam's beta powers, the schedule's step counter)."""
        everything = self._backend.get_state()
        return ({p: everything[p] for p in self._params},
                {n: everything[n] for n in self.graph.nodes_of("state")})

    @property
    def check_numerics(self) -> bool:
        """When true, every run stops at the first NaN or infinity a node (interp) or a kernel (emu,
        cuda) produces, with a `DlcError` naming the op, the node and its `.dln` line. Slower."""
        return bool(getattr(self._backend, "check_numerics", False))

    @check_numerics.setter
    def check_numerics(self, on: bool) -> None:
        if not isinstance(on, (bool, np.bool_)):
            raise DlcError(f"check_numerics: must be True or False, found {on!r}")
        self._backend.check_numerics = bool(on)

    def save(self, path, state: bool = False) -> None:
        """Write the params to an .npz file, one array per param name, atomically, creating missing
        folders. `state=True` adds the optimizer state as `state/NAME` arrays, as `dlc run --save`
        writes it."""
        params, opt = self.split_state()
        save_weights(path, params, parents=True, state=opt if state else None)

    def load(self, path) -> "Model":
        """Read params from an .npz (as `save` writes); every name and shape is checked before
        any param changes. When the file holds the model's whole optimizer state (`state/NAME`
        arrays) that is restored too; otherwise the state is left as it is. Returns the model."""
        from .runtime.data import load_state, read_npz
        arrays = read_npz(path)
        params = load_weights(path, self.graph, arrays)
        state, _ = load_state(path, self.graph, arrays)
        self.params.update(params)
        if state:
            self._backend.set_state(state)
        return self

    def load_partial(self, path) -> dict:
        """Transfer learning: load every param whose name and shape match an array of `path` (the
        weights of any model) and leave the others as they are; the optimizer state is not read.
        Returns the report: `loaded`, `not_in_file`, `not_in_model`, `misshaped` ((name, file shape,
        model shape)). A file that matches no param raises `DlcError`."""
        from .runtime.data import load_weights_by_name
        params, report = load_weights_by_name(path, self.graph)
        self.params.update(params)
        return report

    def ir(self, stage: str = "optimized") -> str:
        """The IR text at a stage: "forward", "backward", "train" or "optimized"."""
        if stage not in self.stages:
            raise DlcError(f"no IR stage '{stage}' (stages: {', '.join(self.stages)})")
        return print_ir(self.stages[stage])

    def _feeds(self, inputs: dict, needed) -> dict:
        g = self.graph
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
        feeds, dims = check_feeds(view, sub, where="inputs: ", float_dtype=self.float_dtype)
        empty = [n for n, a in feeds.items() if a.size == 0]
        if empty:
            raise DlcError(f"inputs: '{empty[0]}' holds no examples (shape {fmt_shape(feeds[empty[0]].shape)}); "
                           f"a batch needs at least one")
        return feeds

    def _need(self, roots) -> list[str]:
        """The inputs a computation reads (forward needs no labels); cached per set of roots."""
        key = tuple(roots)
        if key not in self._needs:
            g = self.graph
            anc = set(roots).union(*(nx.ancestors(g.nx, r) for r in roots))
            self._needs[key] = [n for n in self._inputs if n in anc]
        return self._needs[key]

    def forward(self, **inputs) -> dict[str, np.ndarray]:
        """The outputs, output name -> array, for inputs given by name (labels are not needed);
        inference mode (no dropout), nothing changes."""
        roots = list(self.graph.meta.outputs.values())
        feeds = self._feeds(inputs, self._need(roots))
        res = self._backend.run(roots, feeds)
        return {k: np.asarray(res[v]) for k, v in self.graph.meta.outputs.items()}

    def grad(self, **inputs) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, {param: gradient}) for one batch, for the trainable (not frozen) params; the
        params do not change."""
        m = self.graph.meta
        if not m.loss:
            raise DlcError(f"model {self.name} has no loss to differentiate (add `minimize LOSS with ...`)")
        roots = [m.loss] + list(m.grads.values())
        feeds = self._feeds(inputs, self._need(roots))
        res = self._backend.run(roots, feeds, **self._training())
        return float(res[m.loss]), {p: np.asarray(res[v]) for p, v in m.grads.items()}

    def step(self, **inputs) -> float:
        """One optimizer step on one batch; returns the loss before the update."""
        return self.train_step(inputs)[0]

    def train_step(self, inputs: dict, fetch_outputs: bool = False, checked: bool = False, wait: bool = True):
        """One optimizer step on `inputs` (a dict): (loss, outputs or None). `fetch_outputs` also
        returns the outputs; `checked` skips checking the arrays (the training loop checked them).
        `wait=False` returns at once, without waiting for the device, a `PendingStep` whose
        `result()` gives (loss, outputs or None); the first `result()` brings down every pending
        step's values with one wait (the training loop reads them once per logging interval)."""
        g = self.graph
        m = g.meta
        if not self.trainable:
            raise DlcError(f"model {self.name} minimises nothing, so it cannot be trained")
        if not isinstance(wait, (bool, np.bool_)):
            raise DlcError(f"wait: must be True or False, found {wait!r}")
        roots = self._step_roots(fetch_outputs)
        feeds = inputs if checked else self._feeds(inputs, self._need(roots))
        # computes the whole step; hands back only the loss (and the outputs asked for): params
        # and optimizer state stay where the backend keeps them until read (`params`, `save`)
        fetch = [m.loss] + ([v for v in m.outputs.values() if v != m.loss] if fetch_outputs else [])
        res = self._backend.run(roots, feeds, commit=True, fetch=fetch, defer=not wait, **self._training())
        self.steps += 1
        step = PendingStep(res, m, fetch_outputs)
        return step.result() if wait else step

    def evaluate(self, inputs: dict, checked: bool = False):
        """(loss or None, outputs) for `inputs` (a dict), in inference mode, without changing
        anything; `checked` as for `train_step`."""
        m = self.graph.meta
        roots = ([m.loss] if m.loss else []) + list(m.outputs.values())
        feeds = inputs if checked else self._feeds(inputs, self._need(roots))
        res = self._backend.run(roots, feeds)
        return (float(res[m.loss]) if m.loss else None), {k: res[v] for k, v in m.outputs.items()}

    def _training(self) -> dict:
        """Run options for training mode: dropout draws its mask for this step."""
        return {"rng": (self.seed, self.steps)} if self._random else {}

    def _step_roots(self, fetch_outputs: bool):
        m = self.graph.meta
        roots = [m.loss] + self._assigns
        if fetch_outputs:
            roots += [v for v in m.outputs.values() if v not in roots]
        return roots


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


def _only_inputs(g, names):
    """A view of `g` restricted to some inputs, for checking a partial set of feeds."""
    class _View:
        inputs = names
        meta = g.meta

        @staticmethod
        def type(n):
            return g.type(n)
    return _View()
