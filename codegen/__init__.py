"""Code generation: one CUDA C module and a launch plan per compiled model.

    from dlc.codegen import generate
    mod = generate(graph)       # graph: the optimized IR
    mod.source, mod.plan, mod.plan_json(), mod.plan_text(), mod.emu_source()
"""
from .generate import generate
from .plan import EMU_HEADER, Buffer, Launch, Module
from .sizes import evaluate

__all__ = ["generate", "Module", "Buffer", "Launch", "evaluate", "EMU_HEADER"]
