"""The NumPy interpreter: the reference backend that every other backend must agree with.

It runs any IR graph. For a set of wanted nodes it builds, once, a program: the needed nodes
in topological order, each as a NumPy function with its operand slots and attributes bound.
Running a program is then one Python call per node. Assignments (the optimizer update, model
buffers) are applied after the whole program has run, so every read in a step sees the old values.

A run is in training or evaluation mode (`training=`): an op that declares the TRAINING effect
gets the mode, one that declares RANDOM gets `rng=(seed, step)`, one that declares COMMUNICATES
gets the run's communicator `comm` (None in a process of its own; runtime/collectives.py), and
its value, which comes from outside the graph, is cast to the interpreter's float type. The
evaluation form's values computed from stored values alone (`Graph.eval_constants`: batch norm
folded into the weights) are kept from one run to the next until a commit or `set_state` changes
the state.

At `Graph.meta.precision` tf32 or bf16 (ir/precision.py, docs/precision.md) a matrix product or
convolution (a family marked `product` in the registry) reads its first two operands rounded as
the tensor cores read them, and at bf16 its result is rounded to BF16 too (autocast's BF16 GEMM
output, rounded before any fused epilogue). Everything else runs in the interpreter's float type.
"""
from __future__ import annotations

import numpy as np

from ..ir.errors import DlcError
from ..ir.graph import Graph
from ..ir.ops import COMMUNICATES, OPS, RANDOM, STORED, TRAINING, UPDATES_STATE
from ..ir.precision import product_precision, round_operand
from ..ir.registry import PRODUCT_FAMILIES
from .numerics import nonfinite, numerics_error
from .runner import Fetched, bind_dims, input_shapes


class Interpreter:
    name = "interp"
    check_numerics = False  # stop at the first node whose value is NaN or infinite
    comm = None             # the run's communicator (runtime/collectives.py), for ops that communicate

    @staticmethod
    def keeps(n: str) -> bool:
        """The interpreter can hand out every value."""
        return True

    def __init__(self, graph: Graph, float_dtype=np.float32):
        self.graph = graph
        self.dtype = np.dtype(float_dtype)
        self.values: dict[str, np.ndarray] = {}  # params and state, by node name
        self._programs: dict = {}
        self._input_shapes = None  # [(input, declared shape)], for binding symbolic dims
        # the evaluation form's values computed from stored values alone (batch norm folded into
        # the weights), kept with the state's version (commits and set_state change it)
        self._constants = graph.eval_constants()
        self._kept: dict[str, tuple] = {}
        self._version = 0

    # -- state ------------------------------------------------------------------------------
    def set_state(self, values: dict[str, np.ndarray]) -> None:
        self._version += 1  # values computed from the state are stale
        for k, v in values.items():
            self.values[k] = np.array(v, dtype=self.dtype)

    def get_state(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.values.items()}

    # -- running ----------------------------------------------------------------------------
    def _program(self, roots: tuple[str, ...]):
        g = self.graph
        need = g.upstream(roots)
        steps, assigns = [], []
        for n in g.order():
            if n not in need:
                continue
            d = OPS[g.op(n)]
            args = tuple(g.operands(n))
            if d.family == "source":
                continue
            if d.family == "const":
                steps.append((n, _const(np.asarray(g.attrs(n)["value"], self.dtype)), (), {}))
            elif d.has(UPDATES_STATE):  # the target takes the value once the whole step has run
                assigns.append((args[0], args[1], n))
                steps.append((n, _identity, args[1:], {}))
            else:
                attrs = dict(g.attrs(n))
                if d.needs_dims:
                    attrs["dims"] = None      # filled in per run
                if d.has(TRAINING):
                    attrs["training"] = None  # filled in per run
                if d.has(RANDOM):
                    attrs["rng"] = None       # filled in per run
                if d.has(COMMUNICATES):
                    attrs["comm"] = None      # filled in per run
                ref = d.ref
                at = product_precision(g, n) if d.family in PRODUCT_FAMILIES else "fp32"
                if at != "fp32":
                    ref = _at_precision(ref, at)
                steps.append((n, ref, args, attrs))
        return steps, assigns

    @np.errstate(all="ignore")
    def run(self, roots, feeds: dict[str, np.ndarray], commit: bool = False, dims=None, training: bool = False,
            rng: tuple[int, int] | None = None, fetch=None, defer: bool = False, given: dict | None = None):
        """Evaluate `roots` from `feeds` (inputs by name); with `commit`, apply the assignments.
        `given`: values to take for some nodes (other than the roots) instead of computing them
        (another backend's values: `dlc diff` asks what the reference computes from them).
        `training` chooses the mode; in training, random ops (dropout) draw from `rng=(seed, step)`.
        Returns {root: array} for every root in `fetch` (default: all); with `defer`, the same in
        a `Fetched` (computed already: the interpreter has no device to wait for). Overflow, 0/0
        and the like give IEEE infinities and NaNs silently, as the kernels do (NumPy warns of
        none of them: a `where` computes both branches, and one may overflow where it is not
        taken); --check-numerics is the way to stop at the first one."""
        roots = tuple(roots)
        prog = self._programs.get(roots)
        if prog is None:
            prog = self._programs[roots] = self._program(roots)
        steps, assigns = prog
        env = dict(self.values)
        for k, v in feeds.items():
            env[k] = v if v.dtype.kind != "f" or v.dtype == self.dtype else v.astype(self.dtype)
        for n, fn, args, attrs in steps:
            if given is not None and n in given and n not in roots:
                env[n] = given[n]
                continue
            if n in self._constants:
                kept = self._kept.get(n)
                if kept is not None and kept[0] == self._version:
                    env[n] = kept[1]
                    continue
            if "dims" in attrs:
                if dims is None:
                    dims = self._dims(feeds)  # once per run, when a step first needs them
                attrs = dict(attrs, dims=dims)
            if "training" in attrs:
                attrs = dict(attrs, training=training)
            if "rng" in attrs:
                attrs = dict(attrs, rng=rng)
            if "comm" in attrs:
                attrs = dict(attrs, comm=self.comm)
            try:
                env[n] = fn(*[env[a] for a in args], **attrs)
                if "comm" in attrs:  # a value from the other ranks: in the interpreter's float type
                    env[n] = np.asarray(env[n], self.dtype)
            except DlcError as e:
                raise e.located(self.graph.loc(n), self.graph.sources.get(getattr(self.graph.loc(n), "file", ""), None))
            if self.check_numerics:  # in execution order: the first one found produced it
                what = nonfinite(env[n])
                if what:
                    for a in args:  # a param or state that was not finite to begin with
                        if OPS[self.graph.op(a)].holds in STORED and nonfinite(env[a]):
                            raise numerics_error(self.graph, n, nonfinite(env[a]), env[a], source=a)
                    raise numerics_error(self.graph, n, what, env[n])
            if n in self._constants:
                self._kept[n] = (self._version, env[n])
        out = {r: env[r] for r in (roots if fetch is None else fetch)}
        if commit:
            for target, value, n in assigns:
                self.values[target] = np.asarray(env[value], self.dtype)
            self._version += 1
        return Fetched(values=out) if defer else out

    def _dims(self, feeds) -> dict[str, int]:
        if self._input_shapes is None:  # graph.inputs sorts the whole graph: do it once
            self._input_shapes = input_shapes(self.graph)
        return bind_dims(self._input_shapes, feeds)


def _at_precision(ref, precision: str):
    """A product's reference at `precision`: operands 0 and 1 rounded as the tensor cores read
    them, the rest (a shape carrier) as given; at bf16 the result rounded to BF16 as well."""
    def product(a, b, *rest, **attrs):
        out = ref(round_operand(a, precision), round_operand(b, precision), *rest, **attrs)
        return round_operand(np.asarray(out, a.dtype), "bf16") if precision == "bf16" else out
    return product


def _identity(x):
    return x


def _const(v):
    return lambda: v
