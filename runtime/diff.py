"""Differential testing: one training step on several backends from the same weights and batch,
every tensor compared with the interpreter's.

The step runs in training mode on every backend with the same `rng=(seed, step)`, so random ops
(dropout) draw the same mask everywhere and their outputs are compared like any other tensor.
`dlc diff` exits 0 when every compared backend agrees, 1 when one diverges, and 2 (an error, with
a message) when nothing was compared: only `interp` named, or every other backend skipped."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.graph import Graph
from ..ir.ops import OPS, PARAM, RANDOM, label_operands
from .backends import available, make_backend

# float32 kernels against the float32 NumPy reference: summation order differs (tiled matmul,
# tree reductions), so values agree to a few ulps per accumulated term, not bit for bit.
ATOL, RTOL = 1e-4, 1e-3
# At bf16 both sides round each product's result to BF16 (ir/precision.py); where their fp32
# accumulations differ by a few ulps, a value near a rounding boundary can land one BF16 ulp apart
# (a relative step of 2^-8 to 2^-7), and what is computed from it moves by as much. tf32 leaves the
# product's result in fp32: the fp32 tolerance holds.
TOLERANCES = {"fp32": (ATOL, RTOL), "tf32": (ATOL, RTOL), "bf16": (ATOL, 2.0 ** -7)}


def synth_feeds(g: Graph, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A random batch for every input: normal floats; labels within the class count of the op
    that reads them as class indices (softmax_xent; 2 classes where nothing says)."""
    rng = np.random.default_rng(seed)
    classes = {}
    for labels, count, _ in label_operands(g):
        classes.setdefault(labels, count)
    out = {}
    for n in g.inputs:
        t = g.type(n)
        shape = tuple(batch if isinstance(d, str) else d for d in t.shape)
        if t.dtype == "i32":
            c = classes.get(n, 2)
            out[n] = rng.integers(0, c if isinstance(c, int) else 2, shape).astype(np.int32)
        else:
            out[n] = rng.standard_normal(shape).astype(np.float32)
    return out


@dataclass
class Row:
    kind: str      # output, loss, grad, param, state, or a random op's name (dropout)
    name: str
    node: str
    abs_err: float
    rel_err: float
    ok: bool


def compare(a: np.ndarray, ref: np.ndarray, tol: tuple[float, float] = (ATOL, RTOL)) -> tuple[float, float, bool]:
    atol, rtol = tol
    a = np.asarray(a, np.float64)
    ref = np.asarray(ref, np.float64)
    if a.shape != ref.shape:
        return float("inf"), float("inf"), False
    if a.size == 0:
        return 0.0, 0.0, True
    d = np.abs(a - ref)
    abs_err = float(d.max())
    rel_err = float((d / np.maximum(np.abs(ref), 1e-12)).max())
    ok = bool(np.all(d <= atol + rtol * np.abs(ref))) and bool(np.isfinite(a).all() == np.isfinite(ref).all())
    return abs_err, rel_err, ok


def run_step(backend, g: Graph, state: dict, feeds: dict, rng: tuple[int, int] | None = (0, 0)):
    """Every computed value of one training step, then the state after it. `rng=(seed, step)`
    is training mode (dropout draws its mask from it), as in `Model.step`; None is evaluation."""
    backend.set_state(state)
    # every value the backend keeps (at -O2 not a fused group's inner values, nor reused buffers)
    nodes = [n for n in g.order() if OPS[g.op(n)].family != "source" and backend.keeps(n)]
    commit = bool(g.meta.loss and g.meta.optimizer)
    vals = backend.run(nodes, feeds, commit=commit, training=rng is not None, rng=rng)
    return vals, backend.get_state()


def random_nodes(g: Graph) -> list[str]:
    """The nodes whose op draws random numbers (dropout), in execution order."""
    return [n for n in g.order() if OPS[g.op(n)].has(RANDOM)]


def compared(results: dict) -> tuple[list[str], list[tuple[str, str]]]:
    """([backends compared], [(backend skipped, why)]) of a `diff` result."""
    done = [k for k, r in results.items() if r[0] != "skipped"]
    skipped = [(k, r[1]) for k, r in results.items() if r[0] == "skipped"]
    return done, skipped


def diff(g: Graph, names: list[str], state: dict, feeds: dict, rng: tuple[int, int] | None = (0, 0)):
    """Results per backend: ('skipped', why) or (rows, first diverging node or None). Every
    backend runs the step with the same `rng`, so dropout masks must agree too."""
    ref_vals, ref_state = run_step(make_backend("interp", g), g, state, feeds, rng)
    results = {}
    m = g.meta
    tol = TOLERANCES[m.precision]
    for name in names:
        if name == "interp":
            continue
        ok, why = available(name)
        if not ok:
            results[name] = ("skipped", why)
            continue
        vals, new_state = run_step(make_backend(name, g), g, state, feeds, rng)
        first = None
        for n in ref_vals:
            if n in vals and not compare(vals[n], ref_vals[n], tol)[2]:
                first = n
                break
        rows = []
        for k, v in m.outputs.items():
            rows.append(Row("output", k, v, *compare(vals[v], ref_vals[v], tol)))
        if m.loss:
            rows.append(Row("loss", "loss", m.loss, *compare(vals[m.loss], ref_vals[m.loss], tol)))
        for n in (n for n in random_nodes(g) if n in vals):
            rows.append(Row(g.op(n), n, n, *compare(vals[n], ref_vals[n], tol)))
        for p, v in m.grads.items():
            rows.append(Row("grad", f"d{p}", v, *compare(vals[v], ref_vals[v], tol)))
        for k in ref_state:
            kind = "param" if OPS[g.op(k)].holds == PARAM else "state"
            rows.append(Row(kind, k, k, *compare(new_state[k], ref_state[k], tol)))
        results[name] = (rows, first)
    return results
