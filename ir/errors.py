"""Errors that point at the user's input.

Every mistake a user can make (in a `.dln` file, a data file, a weights file, a command-line
flag) is raised as a `DlcError`; the CLI prints it as one located line plus, when the source
text is known, the offending line with a caret, and exits with status 2.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A place in a source file: 1-based line and column."""
    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}" if self.line else self.file


def file_error(path, message: str) -> "DlcError":
    """An error about a whole file (a data, weights or model file): printed `PATH: error: ...`."""
    return DlcError(message, Loc(str(path), 0, 0))


SHOWN = 100  # the most characters of a source line an error shows; a longer line is cut around the caret


def _window(text: str, col: int) -> tuple[str, int]:
    """The line as shown under an error, and the caret's column in it: a line longer than SHOWN
    is cut to SHOWN characters around the caret, with "..." where text was left out."""
    if len(text) <= SHOWN:
        return text, col
    start = min(max(col - 1 - SHOWN // 2, 0), len(text) - SHOWN)
    shown = text[start:start + SHOWN]
    lead = "..." if start > 0 else ""
    tail = "..." if start + SHOWN < len(text) else ""
    return lead + shown + tail, col - start + len(lead)


class DlcError(Exception):
    """A user-facing error with an optional source location."""

    def __init__(self, message: str, loc: Loc | None = None, source: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.source = source  # full text of loc.file, for drawing the caret

    def located(self, loc: Loc | None, source: str | None = None) -> "DlcError":
        """Attach a location if the error does not have one yet."""
        if self.loc is None and loc is not None:
            self.loc = loc
        if self.source is None:
            self.source = source
        return self

    def __str__(self) -> str:
        head = f"{self.loc}: error: {self.message}" if self.loc else f"error: {self.message}"
        if self.loc and self.source:
            lines = self.source.split("\n")  # Lark counts lines by \n only
            if 1 <= self.loc.line <= len(lines):
                text, col = _window(lines[self.loc.line - 1].rstrip("\r").expandtabs(1), self.loc.col)
                head += f"\n    {text}\n    {' ' * (col - 1)}^"
        return head
