"""Timing helpers shared by the benchmark scripts: thread settings, block timing, the report header.

`set_threads` must run before NumPy (and its BLAS) is imported, so this module imports NumPy only
inside the functions that need it; a script calls `set_threads(n)` first and imports NumPy after.
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def set_threads(n: int) -> None:
    """BLAS / OpenMP threads for everything imported after this call."""
    for var in THREAD_VARS:
        os.environ[var] = str(n)


def time_blocks(fns: dict, steps: int, blocks: int, warmup: int) -> dict:
    """Per implementation: (median seconds per step, [seconds per step of each block]).

    Each block is `steps` consecutive calls of one implementation. The blocks of the
    implementations take turns (a block of each, then again), so that a slow spell of the
    machine (another process) falls on all of them alike rather than on one.
    """
    import numpy as np
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    per = {k: [] for k in fns}
    for _ in range(blocks):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            per[k].append((time.perf_counter() - t0) / steps)
    return {k: (float(np.median(v)), v) for k, v in per.items()}


def paired(p, q) -> float:
    """Median over rounds of the ratio of two implementations' blocks timed back to back."""
    import numpy as np
    return float(np.median([a / b for a, b in zip(p[1], q[1])]))


def scattered(res, limit: float = 1.2) -> bool:
    """Whether the block times of one result of `time_blocks` spread by more than `limit`."""
    return max(res[1]) > limit * min(res[1])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(threads, torch_ok) -> list[str]:
    """The report's header: date, CPU, Python, NumPy (with its BLAS), PyTorch and dlc versions."""
    import numpy as np

    import dlc
    blas = "unknown"
    try:
        cfg = np.show_config(mode="dicts")
        b = cfg["Build Dependencies"]["blas"]
        blas = f"{b.get('name')} {b.get('version')}"
    except Exception:
        pass
    lines = [f"date       {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
             f"cpu        {cpu_name()} ({os.cpu_count()} logical cores visible)",
             f"python     {platform.python_version()}",
             f"numpy      {np.__version__} (BLAS: {blas}; OPENBLAS/OMP/MKL_NUM_THREADS={threads})"]
    if torch_ok:
        import torch
        lines.append(f"torch      {torch.__version__} (intra-op threads {torch.get_num_threads()}, "
                     f"interop {torch.get_num_interop_threads()})")
    else:
        lines.append("torch      not available (pip install torch to compare)")
    lines.append(f"dlc        {getattr(dlc, '__version__', '?')} backend interp, -O1")
    return lines


def import_torch(threads: int, skip: bool = False) -> bool:
    """Import PyTorch with `threads` intra-op threads; False if skipped or not installed."""
    if skip:
        return False
    try:
        import torch
    except ImportError:
        return False
    torch.set_num_threads(threads)
    return True


def save_report(lines: list[str], out: str | None, stem: str) -> Path:
    """Write the report, headed by the command, to `out` or benchmarks/results/STEM-DATE.txt."""
    path = Path(out) if out else Path(__file__).parent / "results" / \
        f"{stem}-{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    path.write_text(f"$ {cmd}\n" + "\n".join(lines) + "\n")
    return path
