"""Differential testing: one training step on several backends from the same weights and batch,
every tensor compared with the interpreter's.

The step runs in training mode on every backend with the same `rng=(seed, step)`, so random ops
(dropout) draw the same mask everywhere and their outputs are compared like any other tensor.
`dlc diff` exits 0 when every compared backend agrees, 1 when one diverges, and 2 (an error, with
a message) when nothing was compared: only `interp` named, or every other backend skipped."""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from ..ir.graph import Graph
from ..ir.ops import OPS, PARAM, RANDOM, label_operands
from ..ir.optim import OPTIMIZERS
from ..ir.precision import round_bf16
from .backends import available, make_backend

# float32 kernels against the float32 NumPy reference: summation order differs (tiled matmul,
# tree reductions), so values agree to a few ulps per accumulated term, not bit for bit.
ATOL, RTOL = 1e-4, 1e-3
# At tf32 and bf16 a value next to a rounding boundary can round to either neighbour when the fp32
# sums before it differ by an ulp: a product's operand moves by one TF32 or BF16 ulp, or (bf16) its
# result does, and what is computed from it moves by as much. Such flips are rare (an fp32 ulp is
# 2^-13 of a TF32 ulp, 2^-16 of a BF16 one), so the fp32 tolerance still holds for all but a few
# elements of a tensor: at most FLIP_SHARE of them (at least one) may be off by up to FLIP (one ulp
# of the format) of their own or the tensor's largest magnitude. At tf32 one flipped operand moves a
# row or column of its product, hence the larger share. A product that skipped its rounding is off
# in far more of its elements (a tenth to a half at tf32, more at bf16): the comparison stays tight.
# (Measured, with the interpreter in float64 standing in for another summation order: at most 1.3%
# of a tensor's elements beyond the fp32 tolerance at tf32, none at bf16. Measured on emu: at bf16,
# adding_lstm's recurrence carries flips from step to step, 12 of 2,048 elements (0.6%) of a product
# at step 21, each within one BF16 ulp of the tensor's largest magnitude; so bf16 takes tf32's share.)
FLIP = {"fp32": 0.0, "tf32": 2.0 ** -10, "bf16": 2.0 ** -7}
FLIP_SHARE = {"fp32": 0.0, "tf32": 2.0 ** -5, "bf16": 2.0 ** -5}
# A normalising optimizer's first step (the one step diff runs, from fresh moments) is
# lr * g / (|g| + eps) for Adam and AdamW (bias-corrected), lr * g / (sqrt(1 - alpha) |g| + eps)
# for RMSprop: about lr * sign(g) whatever |g| is. Where |g| is within ILL_EPS * eps, the step turns
# on the gradient's last bits: two gradients that agree to 1e-9 (charlm at tf32: -2.66e-8 and
# -2.87e-8, eps 1e-8) step 1.5e-4 apart. Such param elements are compared to within the step's
# bound (STEP_BOUND(settings) * lr) instead; their gradient rows have already been compared at the
# fp32 tolerance. Above ILL_EPS * eps the step's error is under 1/ILL_EPS of the gradient's relative error.
ILL_EPS = 1e3
STEP_BOUND = {"adam": lambda s: 1.0, "adamw": lambda s: 1.0,
              "rmsprop": lambda s: 1.0 / np.sqrt(1.0 - s.get("alpha", 0.99))}


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
    inherited: bool = False   # not ok, but what interp computes from the backend's own operands (`Local`)

    @property
    def agrees(self) -> bool:
        return self.ok or self.inherited


class Local:
    """What the interpreter computes for a node from a backend's own values: the step run again on
    interp, every value the backend handed out taken as it is (`Interpreter.run(given=)`), the node
    itself and what the backend did not hand out (fused, at -O2) computed. A value that differs
    from the reference's but agrees with this is *inherited*: the backend computes it right from
    what it had, and the difference comes from earlier in the step (rounding differences carried
    on and amplified: a BF16 rounding flip through batch norm at a small batch). A wrong kernel
    differs from this too, at the first value it (or a group fused with it) computes."""

    def __init__(self, g: Graph, state: dict, feeds: dict, rng, vals: dict, half: set):
        self.g, self.state, self.feeds, self.rng, self.vals, self.half = g, state, feeds, rng, vals, half
        self.interp = None
        self.values: dict[str, np.ndarray] = {}   # node -> its value so computed (a row may ask again)

    def value(self, n: str) -> np.ndarray:
        if n not in self.values:
            if self.interp is None:  # (a run without commit leaves its state as set here)
                self.interp = make_backend("interp", self.g)
                self.interp.set_state(self.state)
            v = self.interp.run([n], self.feeds, training=self.rng is not None, rng=self.rng, given=self.vals)[n]
            self.values[n] = as_stored(n, v, self.half)
        return self.values[n]

    def agrees(self, n: str, got: np.ndarray, precision: str, loose=None) -> bool:
        return compare(got, self.value(n), precision, loose)[2]


def as_stored(n: str, v: np.ndarray, half: set) -> np.ndarray:
    """Node `n`'s value `v` as the generated code stores it: rounded to BF16 where `n` lives in a
    16-bit buffer (`half`, codegen/storage.py), else as it is."""
    return round_bf16(np.asarray(v, np.float32)) if n in half else v


def compare(a: np.ndarray, ref: np.ndarray, precision: str = "fp32", loose=None) -> tuple[float, float, bool]:
    """(max abs error, max relative error, agrees): every element within ATOL + RTOL * |ref|, but
    for the rare rounding flips of a lower precision (FLIP, FLIP_SHARE). `loose`: (mask, bound):
    elements where mask holds need only be within bound (an ill-conditioned optimizer step)."""
    a = np.asarray(a, np.float64)
    ref = np.asarray(ref, np.float64)
    if a.shape != ref.shape:
        return float("inf"), float("inf"), False
    if a.size == 0:
        return 0.0, 0.0, True
    d = np.abs(a - ref)
    abs_err = float(d.max())
    rel_err = float((d / np.maximum(np.abs(ref), 1e-12)).max())
    finite = bool(np.isfinite(a).all() == np.isfinite(ref).all())
    far = ~(d <= ATOL + RTOL * np.abs(ref))
    if loose is not None:
        mask, bound = loose
        far &= ~(mask & (d <= bound))
    if far.any() and FLIP[precision]:   # a few flips, each within one ulp of the element or the tensor
        within = d[far] <= FLIP[precision] * np.maximum(np.abs(ref[far]), np.abs(ref).max(initial=0.0))
        return abs_err, rel_err, finite and bool(within.all()) and far.sum() <= max(1, FLIP_SHARE[precision] * far.size)
    return abs_err, rel_err, finite and not far.any()


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
    # the optimizer update's values: everything computed from a gradient (clipping, moments, steps)
    update = set().union(*(nx.descendants(g.nx, v) for v in m.grads.values())) - set(m.grads.values())
    finals = set(m.outputs.values()) | {m.loss}
    for name in names:
        if name == "interp":
            continue
        ok, why = available(name)
        if not ok:
            results[name] = ("skipped", why)
            continue
        backend = make_backend(name, g, reuse=False)   # every value the kernels store kept in its own buffer
        vals, new_state = run_step(backend, g, state, feeds, rng)
        # a value the generated code stores in 16 bits (codegen/storage.py) comes back as the BF16
        # number it stores: the interpreter's value rounded so (every reader rounds it so too)
        half = getattr(getattr(backend, "module", None), "half", set())
        ref = {n: as_stored(n, v, half) for n, v in ref_vals.items()}
        local = Local(g, state, feeds, rng, vals, half)

        def row(kind, label, n, got, want, loose=None, node=None):
            """A compared tensor; one that differs is checked against what interp computes from
            the backend's own operands (`node`: the value that computes it, for a param or state)."""
            r = Row(kind, label, n, *compare(got, want, m.precision, loose))
            if not r.ok:
                r.inherited = local.agrees(node or n, got, m.precision, loose)
            return r

        first = None
        for n in ref:
            if n in update and n not in finals:
                continue  # the update's inner values: judged by the params and state they make (_ill_step)
            if n in vals and not compare(vals[n], ref[n], m.precision)[2] and not local.agrees(n, vals[n], m.precision):
                first = n
                break
        rows = []
        for k, v in m.outputs.items():
            rows.append(row("output", k, v, vals[v], ref[v]))
        if m.loss:
            rows.append(row("loss", "loss", m.loss, vals[m.loss], ref[m.loss]))
        for n in (n for n in random_nodes(g) if n in vals):
            rows.append(row(g.op(n), n, n, vals[n], ref[n]))
        for p, v in m.grads.items():
            rows.append(row("grad", f"d{p}", v, vals[v], ref[v]))
        assigned = {g.operands(a)[0]: g.operands(a)[1] for a in g.nx if OPS[g.op(a)].family == "assign"}
        for k in ref_state:
            kind = "param" if OPS[g.op(k)].holds == PARAM else "state"
            rows.append(row(kind, k, k, new_state[k], ref_state[k], _ill_step(g, k, ref_vals), node=assigned.get(k)))
        results[name] = (rows, first)
    return results


def _ill_step(g: Graph, param: str, ref_vals: dict):
    """(mask, bound) for `compare`: the elements of a param whose normalising-optimizer step is
    ill-conditioned (its reference gradient within ILL_EPS * eps), and the step's bound; or None."""
    m = g.meta
    grad = m.grads.get(param)
    if grad is None or not m.optimizer or m.optimizer[0] not in STEP_BOUND or grad not in ref_vals:
        return None
    name, settings = m.optimizer
    eps = float(settings.get("eps", OPTIMIZERS[name]["eps"]))
    lr = float(settings.get("lr", OPTIMIZERS[name]["lr"]))
    mask = np.abs(np.asarray(ref_vals[grad], np.float64)) <= ILL_EPS * eps
    return mask, STEP_BOUND[name](settings) * lr
