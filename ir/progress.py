"""Progress while a model compiles: the stage now running, shown once compiling has taken more
than a couple of seconds (a 10,000-layer model takes tens of seconds before its first step).

The front end, the pass manager and the backends call `stage(text)` as they go; nothing is shown
unless a `compiling(...)` block is open (`dlc.build` and `dlc.compile` open one), and then only
on a terminal, or where the environment variable DLC_PROGRESS_AFTER (seconds) asks for it (logs,
tests); `quiet()` (`--no-progress`) turns it off. A timer thread prints
the stage running when the delay is up; each later stage prints as it starts; the block's end
prints the total. Lines go to stderr, one per stage, so a log keeps them readable.
"""
from __future__ import annotations

import contextvars
import os
import sys
import threading
import time
from contextlib import contextmanager

AFTER = 2.0  # seconds of compiling before the first line
EVERY = 2.0  # at most one line this often for the steps within a stage (`statement 512 of 10,003`)

_current: contextvars.ContextVar = contextvars.ContextVar("dlc_compile_progress", default=None)


class _Reporter:
    def __init__(self, what: str, after: float, out):
        self.what, self.out, self.t0 = what, out, time.perf_counter()
        self.now, self.shown, self.lock = None, False, threading.Lock()
        self.timer = threading.Timer(after, self._show)
        self.timer.daemon = True
        self.timer.start()

    def _line(self, text: str) -> None:
        self.last = time.perf_counter()
        print(f"compiling {self.what}: {text} ({self.last - self.t0:.1f} s so far)", file=self.out, flush=True)

    def _show(self) -> None:
        with self.lock:
            self.shown = True
            if self.now is not None:
                self._line(self.now)

    def stage(self, text: str, detail: bool) -> None:
        with self.lock:
            self.now = text
            if self.shown and (not detail or time.perf_counter() - self.last >= EVERY):
                self._line(text)

    def close(self, ok: bool) -> None:
        self.timer.cancel()
        with self.lock:
            if self.shown and ok:
                print(f"compiled {self.what} in {time.perf_counter() - self.t0:.1f} s", file=self.out, flush=True)
            self.shown = False


def _delay(out) -> float | None:
    env = os.environ.get("DLC_PROGRESS_AFTER")
    if env is not None:
        try:
            return max(float(env), 0.0)
        except ValueError:
            return None
    return AFTER if getattr(out, "isatty", lambda: False)() else None


@contextmanager
def compiling(what: str, out=None):
    """Report the stages run inside the block (see the module doc). Inside another block, or inside
    `quiet()`, it shows nothing of its own."""
    out = out or sys.stderr
    delay = _delay(out)
    if delay is None or _current.get() is not None:
        yield
        return
    rep = _Reporter(what, delay, out)
    token = _current.set(rep)
    ok = False
    try:
        yield
        ok = True
    finally:
        _current.reset(token)
        rep.close(ok)


@contextmanager
def quiet():
    """No compile progress inside this block (`--no-progress`), DLC_PROGRESS_AFTER or not."""
    token = _current.set(False)
    try:
        yield
    finally:
        _current.reset(token)


def stage(text: str, detail: bool = False) -> None:
    """The stage starting now (`lowering the .dln`, `pass cse (5 of 7)`, ...), for the block open;
    `detail`: a step within a stage, shown only if EVERY seconds have passed since the last line."""
    rep = _current.get()
    if rep:
        rep.stage(text, detail)
