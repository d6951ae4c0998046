"""The NumPy interpreter: the reference backend that every other backend must agree with.

It runs any IR graph. For a set of wanted nodes it builds, once, a program: the needed nodes
in topological order, each as a NumPy function with its operand slots and attributes bound.
Running a program is then one Python call per node. Assignments (the optimizer update) are
applied after the whole program has run, so every read in a step sees the old values.
"""
from __future__ import annotations

import networkx as nx
import numpy as np

from ..ir.errors import DlcError
from ..ir.graph import Graph
from ..ir.ops import OPS
from .backends import Fetched, bind_dims, input_shapes


class NumericsError(DlcError):
    """--check-numerics: a node or kernel produced NaN or infinity (the training loop adds when)."""


def nonfinite(v) -> str | None:
    """'nan', 'inf' or '-inf' (what a float array holds that is not finite, NaN first), or None."""
    v = np.asarray(v)
    if v.dtype.kind != "f" or np.isfinite(v).all():
        return None
    if np.isnan(v).any():
        return "nan"
    return "inf" if (v == np.inf).any() else "-inf"


def numerics_error(graph, n: str, what: str, v, kernel: str | None = None, source: str | None = None
                   ) -> NumericsError:
    """The located error for node `n` (or the kernel that computes it) producing `what`; with
    `source`, a param or state that held `what` already (`v`) when `n` read it."""
    v = np.asarray(v)
    if source is not None:
        loc = graph.loc(source)
        return NumericsError(f"--check-numerics: {graph.op(source)} {source} holds {what} already, before "
                             f"{graph.op(n)} (node %{n}) reads it (the step that made it ran without the check)",
                             loc, graph.sources.get(getattr(loc, "file", ""), None))
    bad = int((~np.isfinite(v)).sum())
    count = f" ({bad} of {v.size} values)" if v.size > 1 else ""
    by = f"kernel {kernel} (op {graph.op(n)}, node %{n})" if kernel else f"{graph.op(n)} (node %{n})"
    loc = graph.loc(n)
    members = graph.meta.groups.get(n, (None, [n]))[1] if kernel else [n]
    if len(members) > 1:  # a fused kernel (-O2): name its nodes; locate at the first, where the chain starts
        ops = ", ".join(f"{graph.op(m)} %{m}" for m in members)
        by = f"kernel {kernel} (fused group %{n}: {ops})"
        loc = next((graph.loc(m) for m in members if graph.loc(m)), loc)
    return NumericsError(f"--check-numerics: {by} produced {what}{count}", loc,
                         graph.sources.get(getattr(loc, "file", ""), None))


class Interpreter:
    name = "interp"
    check_numerics = False  # stop at the first node whose value is NaN or infinite

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

    # -- state ------------------------------------------------------------------------------
    def set_state(self, values: dict[str, np.ndarray]) -> None:
        for k, v in values.items():
            self.values[k] = np.array(v, dtype=self.dtype)

    def get_state(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.values.items()}

    # -- running ----------------------------------------------------------------------------
    def _program(self, roots: tuple[str, ...]):
        g = self.graph
        need = set(roots)
        for r in roots:
            need |= nx.ancestors(g.nx, r)
        steps, assigns = [], []
        for n in g.order():
            if n not in need:
                continue
            op = g.op(n)
            d = OPS[op]
            args = tuple(g.operands(n))
            if op in ("input", "param", "state"):
                continue
            if op == "const":
                steps.append((n, _const(np.asarray(g.attrs(n)["value"], self.dtype)), (), {}))
            elif op == "assign":
                assigns.append((args[0], args[1], n))
                steps.append((n, _identity, args[1:], {}))
            else:
                attrs = dict(g.attrs(n))
                if d.needs_dims:
                    attrs["dims"] = None  # filled in per run
                if d.needs_rng:
                    attrs["rng"] = None   # filled in per run
                steps.append((n, d.ref, args, attrs))
        return steps, assigns

    def run(self, roots, feeds: dict[str, np.ndarray], commit: bool = False, dims=None,
            rng: tuple[int, int] | None = None, fetch=None, defer: bool = False):
        """Evaluate `roots` from `feeds` (inputs by name); with `commit`, apply the assignments.
        `rng=(seed, step)` runs in training mode (dropout draws its mask); None is inference.
        Returns {root: array} for every root in `fetch` (default: all); with `defer`, the same in
        a `Fetched` (computed already: the interpreter has no device to wait for)."""
        roots = tuple(roots)
        prog = self._programs.get(roots)
        if prog is None:
            prog = self._programs[roots] = self._program(roots)
        steps, assigns = prog
        env = dict(self.values)
        for k, v in feeds.items():
            env[k] = v if v.dtype.kind != "f" or v.dtype == self.dtype else v.astype(self.dtype)
        for n, fn, args, attrs in steps:
            if "dims" in attrs:
                if dims is None:
                    dims = self._dims(feeds)  # once per run, when a step first needs them
                attrs = dict(attrs, dims=dims)
            if "rng" in attrs:
                attrs = dict(attrs, rng=rng)
            try:
                env[n] = fn(*[env[a] for a in args], **attrs)
            except DlcError as e:
                raise e.located(self.graph.loc(n), self.graph.sources.get(getattr(self.graph.loc(n), "file", ""), None))
            if self.check_numerics:  # in execution order: the first one found produced it
                what = nonfinite(env[n])
                if what:
                    for a in args:  # a param or state that was not finite to begin with
                        if self.graph.op(a) in ("param", "state") and nonfinite(env[a]):
                            raise numerics_error(self.graph, n, nonfinite(env[a]), env[a], source=a)
                    raise numerics_error(self.graph, n, what, env[n])
        out = {r: env[r] for r in (roots if fetch is None else fetch)}
        if commit:
            for target, value, n in assigns:
                self.values[target] = np.asarray(env[value], self.dtype)
        return Fetched(values=out) if defer else out

    def _dims(self, feeds) -> dict[str, int]:
        if self._input_shapes is None:  # graph.inputs sorts the whole graph: do it once
            self._input_shapes = input_shapes(self.graph)
        return bind_dims(self._input_shapes, feeds)

def _identity(x):
    return x


def _const(v):
    return lambda: v
