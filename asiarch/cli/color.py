"""Colour for terminal output: on when stdout is a terminal, off in pipes, files and logs.

Follows https://no-color.org: a non-empty ``NO_COLOR`` turns colour off; ``TERM=dumb`` too.
The palette itself (the styles, :class:`Palette`) is :mod:`asiarch.analysis.palette`, which the
renderers take; this module decides whether a stream gets colour, and writes text out.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from asiarch.analysis.palette import PLAIN, STATUS_STYLE, Palette

__all__ = ["PLAIN", "STATUS_STYLE", "Palette", "emit", "palette_for", "unicode_ok", "wants_color"]


def wants_color(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default stdout) is a terminal and neither NO_COLOR nor TERM=dumb says otherwise."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def palette_for(stream: TextIO | None = None) -> Palette:
    """The palette for text written to ``stream`` (default stdout): colour iff :func:`wants_color`."""
    return Palette(wants_color(stream))


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
