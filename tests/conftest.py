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


def pytest_collection_modifyitems(session, config, items):
    """The repository root is the package `dlc` itself (it has an __init__.py), so pytest makes it a
    Package node and, before the first test, imports its __init__.py to look for a setup_module.
    It imports it under the checkout folder's name (`main` -> a second copy of dlc as `main`), or,
    where that name is no Python identifier (`wt-tests`, `dlc-fork`), as a top-level `__init__`
    whose relative imports fail: every test then errors at setup. dlc's __init__.py has no
    setup_module or teardown_module, so that import is skipped."""
    for node in {n for item in items for n in item.listchain()}:
        if isinstance(node, pytest.Package) and node.path.resolve() == ROOT:
            node.setup = lambda: None
