"""Progress output: one line per event, and a live status line while jobs run.

On a terminal the status line is redrawn in place; in a log file (sbatch, CI) it is
printed as a plain line at most every ``quiet_s`` seconds, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Console:
    def __init__(self, stream: TextIO | None = None, *, quiet_s: float = 15.0, verbose: bool = True):
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.quiet_s = quiet_s
        self.verbose = verbose
        self.t0 = time.time()
        self._status_shown = False
        self._last_status = 0.0
        self._last_text = ""

    def _stamp(self) -> str:
        s = int(time.time() - self.t0)
        return f"[{s // 60:02d}:{s % 60:02d}]"

    def line(self, text: str) -> None:
        if not self.verbose:
            return
        self._clear()
        for i, part in enumerate(text.splitlines() or [""]):
            prefix = self._stamp() if i == 0 else " " * 7
            self.stream.write(f"{prefix} {part}\n")
        self.stream.flush()

    def status(self, text: str) -> None:
        """A transient line: where things stand right now."""
        if not self.verbose:
            return
        now = time.time()
        if self.tty:
            width = 118
            self.stream.write("\r" + f"{self._stamp()} {text}"[:width].ljust(width))
            self.stream.flush()
            self._status_shown = True
        elif now - self._last_status >= self.quiet_s and text != self._last_text:
            self.stream.write(f"{self._stamp()} {text}\n")
            self.stream.flush()
            self._last_status, self._last_text = now, text

    def _clear(self) -> None:
        if self._status_shown:
            self.stream.write("\r" + " " * 118 + "\r")
            self._status_shown = False
