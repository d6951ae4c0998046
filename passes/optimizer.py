"""The optimizer update, as IR ops with state.

For each trainable param `p` with gradient `g`, build the new value from elementwise ops and
`assign` it (together with any new state). Every assignment takes effect at the end of the step,
so all reads in a step see the old values. Conventions follow torch.optim:

    sgd       p -= lr * g
    momentum  v = mu * v + g;  p -= lr * v                 (nesterov: p -= lr * (g + mu * v))
    rmsprop   s = a * s + (1 - a) * g^2;  p -= lr * g / (sqrt(s) + eps)
    adam      m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  with b1^t, b2^t kept as state,
              p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
"""
from __future__ import annotations

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
    if name == "adam":  # running powers of beta1 and beta2, one pair for the whole model
        loc = g.loc(g.meta.loss)
        b = Builder(g, "adam", loc)
        for k in ("beta1", "beta2"):
            old = _state(g, f"adam.{k}_t", scalar(), "ones", loc)
            shared[k] = b.mul(old, b.const(s[k]))
            g.add("assign", [old, shared[k]], name=f"adam.{k}_t.assign", loc=loc)
    for p in g.trainable:
        gr = g.meta.grads[p]
        loc = g.loc(p)
        b = Builder(g, f"{p}.new", loc)
        lr = b.const(s["lr"])
        if name == "sgd":
            if s["nesterov"] and s["momentum"] <= 0:
                raise DlcError("sgd: nesterov needs a momentum greater than 0")
            if s["momentum"]:
                v = _state(g, f"{p}.velocity", p, "zeros", loc)
                mu = b.const(s["momentum"])
                v_new = b.add(b.mul(mu, v), gr)
                g.add("assign", [v, v_new], name=f"{v}.assign", loc=loc)
                step = b.add(gr, b.mul(mu, v_new)) if s["nesterov"] else v_new
            else:
                step = gr
            new = b.sub(p, b.mul(lr, step))
        elif name == "rmsprop":
            sq = _state(g, f"{p}.square_avg", p, "zeros", loc)
            a = s["alpha"]
            sq_new = b.add(b.mul(b.const(a), sq), b.mul(b.const(1 - a), b.mul(gr, gr)))
            g.add("assign", [sq, sq_new], name=f"{sq}.assign", loc=loc)
            new = b.sub(p, b.div(b.mul(lr, gr), b.add(b.sqrt(sq_new), b.const(s["eps"]))))
        elif name == "adam":
            m = _state(g, f"{p}.m", p, "zeros", loc)
            v = _state(g, f"{p}.v", p, "zeros", loc)
            b1, b2 = s["beta1"], s["beta2"]
            m_new = b.add(b.mul(b.const(b1), m), b.mul(b.const(1 - b1), gr))
            v_new = b.add(b.mul(b.const(b2), v), b.mul(b.const(1 - b2), b.mul(gr, gr)))
            g.add("assign", [m, m_new], name=f"{m}.assign", loc=loc)
            g.add("assign", [v, v_new], name=f"{v}.assign", loc=loc)
            one = b.const(1.0)
            m_hat = b.div(m_new, b.sub(one, shared["beta1"]))
            v_hat = b.div(v_new, b.sub(one, shared["beta2"]))
            new = b.sub(p, b.div(b.mul(lr, m_hat), b.add(b.sqrt(v_hat), b.const(s["eps"]))))
        else:  # the front end only lets known optimizers through
            raise DlcError(f"unknown optimizer '{name}'")
        g.add("assign", [p, new], name=f"{p}.assign", loc=loc)
    return g
