from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def examples_dir():
    return EXAMPLES


@pytest.fixture(scope="module")
def backends():
    """(.dln text, -O level) -> (optimized graph, emu backend): one build per model and level in a
    test module (the emu backend compiles the module's CUDA for the CPU once)."""
    import dlc
    from dlc.runtime.emu import EmuBackend
    cache = {}

    def get(text, level):
        if (text, level) not in cache:
            g = dlc.compile(text, backend="interp", opt_level=level).graph
            cache[text, level] = (g, EmuBackend(g))
        return cache[text, level]
    return get
