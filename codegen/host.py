"""Family `host`: ops with no kernel (the all-reduce of data parallelism, ir/ops_comm.py).

The plan gets a step of its own, a `Launch` with `host=True` and no kernel: the runner computes
the op between the kernels before and after it, by the op's NumPy reference on the host (its
operands brought down, its value sent back into its buffer), handing it the run's communicator.
The launch names the buffers it writes (first) and reads, as a kernel's does, so memory planning
and the statistics see it like any other step of the plan.
"""
from __future__ import annotations

from .core import Emission, Generator
from .plan import Launch


def emit_host(gen: Generator, n: str, em: Emission) -> None:
    out = gen.temp(n)
    gen.launches.append(Launch(f"host_{gen.g.op(n)}", n, gen.g.op(n), "step", [out] + gen.ins(n), [],
                               [1, 1, 1], [1, 1, 1], False, host=True))
