"""How the analysis renderers paint text: ANSI styles when a palette is enabled, none otherwise.

Whether a stream wants colour is the front end's question (:func:`asiarch.cli.color.palette_for`);
a renderer takes a :class:`Palette` and defaults to :data:`PLAIN`. Text is padded before it is
painted, so columns line up with or without escape codes.
"""

from __future__ import annotations

_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34", "magenta": "35",
          "cyan": "36"}

# How each candidate or attempt status is painted.
STATUS_STYLE = {"done": ("green",), "ok": ("green",), "failed": ("red",), "diverged": ("red",),
                "rejected": ("yellow",), "timeout": ("yellow",), "preempted": ("yellow",), "lost": ("yellow",),
                "cancelled": ("yellow",), "running": ("cyan",), "queued": ("blue",), "submitted": ("blue",),
                "pending": ("blue",), "checked": ("dim",), "proposed": ("dim",), "stopped": ("magenta",)}


class Palette:
    """Paints text with ANSI styles when enabled; returns it unchanged otherwise."""

    def __init__(self, enabled: bool = False):
        self.enabled = enabled

    def paint(self, text: str, *styles: str) -> str:
        if not self.enabled or not styles or not text:
            return text
        codes = ";".join(_CODES[s] for s in styles)
        return f"\033[{codes}m{text}\033[0m"

    def status(self, text: str, status: str) -> str:
        """``text`` (usually the status itself, padded) in the colour of ``status``."""
        return self.paint(text, *STATUS_STYLE.get(status, ()))


PLAIN = Palette(False)
