"""Colour for terminal output: on when stdout is a terminal, off in pipes, files and logs.

Follows https://no-color.org: a non-empty ``NO_COLOR`` turns colour off; ``TERM=dumb`` too.
Text is padded before it is painted, so columns line up with or without escape codes.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34", "magenta": "35",
          "cyan": "36"}

# How each candidate or attempt status is painted.
STATUS_STYLE = {"done": ("green",), "ok": ("green",), "failed": ("red",), "diverged": ("red",),
                "rejected": ("yellow",), "timeout": ("yellow",), "preempted": ("yellow",), "lost": ("yellow",),
                "cancelled": ("yellow",), "running": ("cyan",), "queued": ("blue",), "submitted": ("blue",),
                "pending": ("blue",), "checked": ("dim",), "proposed": ("dim",)}


def wants_color(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default stdout) is a terminal and neither NO_COLOR nor TERM=dumb says otherwise."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", None) and stream.isatty())


class Palette:
    """Paints text with ANSI styles when enabled; returns it unchanged otherwise."""

    def __init__(self, enabled: bool = False):
        self.enabled = enabled

    @classmethod
    def for_stream(cls, stream: TextIO | None = None) -> "Palette":
        return cls(wants_color(stream))

    def paint(self, text: str, *styles: str) -> str:
        if not self.enabled or not styles or not text:
            return text
        codes = ";".join(_CODES[s] for s in styles)
        return f"\033[{codes}m{text}\033[0m"

    def status(self, text: str, status: str) -> str:
        """``text`` (usually the status itself, padded) in the colour of ``status``."""
        return self.paint(text, *STATUS_STYLE.get(status, ()))


PLAIN = Palette(False)


def unicode_ok(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stdout) encodes UTF-8, so box-drawing characters print."""
    enc = getattr(stream or sys.stdout, "encoding", None) or ""
    return enc.lower().replace("-", "").replace("_", "") == "utf8"


def emit(text: str, stream: TextIO | None = None) -> None:
    """Print ``text``; a reader that went away (``asiarch lineage DIR --all | head``) is not an error."""
    stream = stream or sys.stdout
    try:
        stream.write(text + "\n")
        stream.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not complain either.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass
