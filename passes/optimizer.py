"""The optimizer update, as IR ops with state.

For each trainable param `p` with gradient `g`, build the new value from elementwise ops and
`assign` it (together with any new state). Every assignment takes effect at the end of the step,
so all reads in a step see the old values. Conventions follow torch.optim:

    sgd       p -= lr * g
    momentum  v = mu * v + g;  p -= lr * v                 (nesterov: p -= lr * (g + mu * v))
    rmsprop   s = a * s + (1 - a) * g^2;  p -= lr * g / (sqrt(s) + eps)
    adam      m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  with b1^t, b2^t kept as state,
              p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    adamw     adam's step from p' = p * (1 - lr * wd) (decoupled weight decay, torch.optim.AdamW)

`weight_decay = wd` on sgd, rmsprop and adam is torch's coupled form: g += wd * p first (after
clipping, before momentum or moments). The lr in adamw's decay is the scheduled lr_t.

Schedules (`schedule = ...`, `warmup`, `momentum_start`/`momentum_warmup`) are IR too, on one
scalar step counter `schedule.t` (state, from 0, incremented by every step), so every backend
computes the same rates. With K = warmup and u = max(0, t - K) (steps since the warm-up ended):

    lr_t = lr * min(1, (t + 1) / K) * f(u)          (no warm-up: the middle factor is 1)
    constant     f = 1
    step         f = gamma ^ floor(u / step_size)    (exp(k ln gamma); k from a phase counter)
    exponential  f = gamma ^ u                       (exp(u ln gamma))
    cosine       lr * f = lr_min + (lr - lr_min) * sin(pi/2 * max(0, T' - u) / T')^2,  T' = total - K
                 (= lr_min + (lr - lr_min) * (1 + cos(pi * min(u, T') / T')) / 2; sin by its Taylor
                 polynomial to z^13, within 7e-10 of sin on [0, pi/2])
    momentum_t = momentum - (momentum - momentum_start) * max(0, 1 - t / momentum_warmup)

Clipping (`clip = c`) scales every trainable param's gradient by one factor before the update,
as torch.nn.utils.clip_grad_norm_ does: with n = sqrt(sum over params of sum(g^2)),

    g <- g * min(1, c / (n + 1e-6))      (min(r, 1) = s r + (1 - s) with s = [r < 1]: exact)

`Model.grad` still returns the gradients before clipping; the factor is the node %clip.scale.

There is no floor, min, max or cos op: min(x, 1) = x - relu(x - 1), [t >= K] = relu(sign(t - K + 0.5))
on whole numbers, and floor(u / step_size) comes from a phase counter; all exact in float32.
"""
from __future__ import annotations

import math

from ..ir.errors import DlcError
from ..ir.graph import Graph
from ..ir.ops import Builder
from ..ir.types import scalar


def _state(g: Graph, name: str, like, init: str, loc) -> str:
    t = g.type(like) if isinstance(like, str) else like
    return g.add("state", [], {"init": init}, name=name, loc=loc, type=t)


def optimizer_update(g: Graph) -> Graph:
    if not g.meta.loss or not g.meta.optimizer:
        return g
    g = g.copy()
    g.meta.stage = "train"
    name, s = g.meta.optimizer
    shared = {}
    if name in ("adam", "adamw"):  # the bias corrections 1 - beta^t, one pair for the whole model
        loc = g.loc(g.meta.loss)
        b = Builder(g, name, loc)
        for k in ("beta1", "beta2"):
            # kept as 1 - beta^t itself, by c_t = beta c_(t-1) + (1 - beta) from c_0 = 0: the same
            # constant 1 - beta that scales the moment's new term, so that the first step's m_hat and
            # v_hat are g and g^2 as in torch (1 - beta^t from a float32 beta = 0.99900001 would be
            # 1.3e-5 short of 1 - 0.999, every first step 6.6e-6 too short)
            old = _state(g, f"{name}.one_minus_{k}_t", scalar(), "zeros", loc)
            shared[k] = b.add(b.mul(b.const(s[k]), old), b.const(1 - s[k]))
            g.add("assign", [old, shared[k]], name=f"{name}.one_minus_{k}_t.assign", loc=loc)
    lr_t, mu_t = schedule(g, s)
    scale = clip_scale(g, s["clip"]) if s.get("clip") else None
    for p in g.trainable:
        gr = g.meta.grads[p]
        loc = g.loc(p)
        b = Builder(g, f"{p}.new", loc)
        if scale:
            gr = b.mul(gr, scale)
        lr = lr_t or b.const(s["lr"])
        wd = s.get("weight_decay") or 0.0
        if wd and name != "adamw":  # coupled: the decay joins the gradient
            gr = b.add(gr, b.mul(b.const(wd), p))
        base = p
        if wd and name == "adamw":  # decoupled: the param shrinks by lr_t * wd before the step
            base = b.mul(p, b.sub(b.const(1.0), b.mul(lr, b.const(wd))))
        if name == "sgd":
            if s["nesterov"] and s["momentum"] <= 0:
                raise DlcError("sgd: nesterov needs a momentum greater than 0")
            if s["momentum"]:
                v = _state(g, f"{p}.velocity", p, "zeros", loc)
                mu = mu_t or b.const(s["momentum"])
                v_new = b.add(b.mul(mu, v), gr)
                g.add("assign", [v, v_new], name=f"{v}.assign", loc=loc)
                step = b.add(gr, b.mul(mu, v_new)) if s["nesterov"] else v_new
            else:
                step = gr
            new = b.sub(base, b.mul(lr, step))
        elif name == "rmsprop":
            sq = _state(g, f"{p}.square_avg", p, "zeros", loc)
            a = s["alpha"]
            sq_new = b.add(b.mul(b.const(a), sq), b.mul(b.const(1 - a), b.mul(gr, gr)))
            g.add("assign", [sq, sq_new], name=f"{sq}.assign", loc=loc)
            new = b.sub(base, b.div(b.mul(lr, gr), b.add(b.sqrt(sq_new), b.const(s["eps"]))))
        elif name in ("adam", "adamw"):
            m = _state(g, f"{p}.m", p, "zeros", loc)
            v = _state(g, f"{p}.v", p, "zeros", loc)
            b1, b2 = s["beta1"], s["beta2"]
            m_new = b.add(b.mul(b.const(b1), m), b.mul(b.const(1 - b1), gr))
            v_new = b.add(b.mul(b.const(b2), v), b.mul(b.const(1 - b2), b.mul(gr, gr)))
            g.add("assign", [m, m_new], name=f"{m}.assign", loc=loc)
            g.add("assign", [v, v_new], name=f"{v}.assign", loc=loc)
            m_hat = b.div(m_new, shared["beta1"])
            v_hat = b.div(v_new, shared["beta2"])
            new = b.sub(base, b.div(b.mul(lr, m_hat), b.add(b.sqrt(v_hat), b.const(s["eps"]))))
        else:  # the front end only lets known optimizers through
            raise DlcError(f"unknown optimizer '{name}'")
        g.add("assign", [p, new], name=f"{p}.assign", loc=loc)
    return g


def clip_scale(g: Graph, clip: float) -> str:
    """The factor min(1, clip / (global norm + 1e-6)) that clipping applies to every gradient."""
    b = Builder(g, "clip", g.loc(g.meta.loss))
    total = None
    for p in g.trainable:
        sq = b.l2(g.meta.grads[p])
        total = sq if total is None else b.add(total, sq)
    norm = _name(g, b.sqrt(total), "clip.norm")
    ratio = b.div(b.const(clip), b.add(norm, b.const(1e-6)))
    below = b.relu(b.sign(b.sub(b.const(1.0), ratio)))  # 1.0 where ratio < 1, else 0.0
    return _name(g, b.add(b.mul(below, ratio), b.sub(b.const(1.0), below)), "clip.scale")


# sin(z) = z (1 + z^2 (c3 + z^2 (c5 + ...))), Taylor to z^13: within 7e-10 of sin on [0, pi/2]
_SIN = [-1 / 6, 1 / 120, -1 / 5040, 1 / 362880, -1 / 39916800, 1 / 6227020800]


def schedule(g: Graph, s: dict) -> tuple[str | None, str | None]:
    """The scheduled learning rate and momentum of this step, as scalar nodes (None where the
    setting is a constant), computed from the step counter `schedule.t`."""
    kind, warm = s.get("schedule", "constant"), s.get("warmup", 0)
    ramp = s.get("momentum_warmup", 0)
    if kind == "constant" and not warm and not ramp:
        return None, None
    loc = g.loc(g.meta.loss)
    b = Builder(g, "schedule", loc)
    one = b.const(1.0)
    t = _state(g, "schedule.t", scalar(), "zeros", loc)
    g.add("assign", [t, b.add(t, one)], name="schedule.t.assign", loc=loc)

    def min1(x):  # min(x, 1), exact: x - 0 below 1, x - (x - 1) = 1 above
        return b.sub(x, b.relu(b.sub(x, one)))

    def at_least(x, k):  # 1.0 where the whole number x >= k, else 0.0
        return b.relu(b.sign(b.sub(x, b.const(k - 0.5))))

    lr_t = mu_t = None
    if kind != "constant" or warm:
        u = b.relu(b.sub(t, b.const(warm))) if warm else t  # steps since the warm-up ended
        lr = b.const(s["lr"])
        if kind == "step":
            size = s["step_size"]
            phase = _state(g, "schedule.phase", scalar(), "zeros", loc)  # u mod step_size
            nxt = b.add(phase, at_least(t, warm)) if warm else b.add(phase, one)
            wrap = at_least(nxt, size)
            g.add("assign", [phase, b.sub(nxt, b.mul(wrap, b.const(size)))], name="schedule.phase.assign", loc=loc)
            k = b.div(b.sub(u, phase), b.const(size))  # floor(u / step_size), exactly
            lr = b.mul(lr, b.exp(b.mul(k, b.const(math.log(s["gamma"])))))
        elif kind == "exponential":
            lr = b.mul(lr, b.exp(b.mul(u, b.const(math.log(s["gamma"])))))
        elif kind == "cosine":
            span = s["total"] - warm
            left = b.relu(b.sub(b.const(span), u))  # steps left in the decay, 0 after it
            z = b.mul(b.div(left, b.const(span)), b.const(math.pi / 2))
            z2 = b.mul(z, z)
            acc = b.const(_SIN[-1])
            for c in reversed(_SIN[:-1]):
                acc = b.add(b.const(c), b.mul(z2, acc))
            sin = b.mul(z, b.add(one, b.mul(z2, acc)))
            lo = s["lr_min"]
            lr = b.add(b.const(lo), b.mul(b.const(s["lr"] - lo), b.mul(sin, sin)))
        if warm:
            lr = b.mul(lr, min1(b.div(b.add(t, one), b.const(warm))))
        lr_t = _name(g, lr, "schedule.lr")
    if ramp:
        mu, mu0 = s["momentum"], s["momentum_start"]
        left = b.relu(b.sub(one, b.div(t, b.const(ramp))))  # 1 at the first step, 0 from step `ramp` on
        mu_t = b.sub(b.const(mu), b.mul(b.const(mu - mu0), left))
        mu_t = _name(g, mu_t, "schedule.momentum")
    return lr_t, mu_t


def _name(g: Graph, n: str, name: str) -> str:
    """Rename node `n` to (a fresh variant of) `name`, for reading the IR: %schedule.lr."""
    new = g.fresh(name)
    g.rename(n, new)
    return new
