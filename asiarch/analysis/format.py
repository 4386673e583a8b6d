"""How numbers and candidates are written in every text asiarch shows: one formatter for all views.

Pure functions, no I/O: the console, the views, the report and the prompts all call these, so a
missing value, an interval or a candidate's label reads the same everywhere.
"""

from __future__ import annotations

import math

#: Characters of a candidate's name in one-line listings (the console, status): long LLM-chosen
#: names are cut so the columns after them line up.
NAME_WIDTH = 34


def number(x, spec: str = ".4f", missing: str = "-") -> str:
    """``x`` formatted with ``spec``; ``missing`` for None and for NaN or infinite floats (a
    figure that was never measured, or that diverged, is not a number to compare)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return missing
    return format(x, spec)


def difference(a, b, spec: str = "+.4f", missing: str = "n/a") -> str:
    """``a - b`` formatted with ``spec``, or ``missing`` when either side is."""
    if a is None or b is None:
        return missing
    return format(a - b, spec)


def candidate_label(candidate_id: int, name: str) -> str:
    """``#12   delta_relu_conv2 ...``: id and name padded to fixed columns for one-line listings."""
    return f"#{candidate_id:<4d} {name[:NAME_WIDTH]:<{NAME_WIDTH}s}"


def plus_minus(iv: dict | None, spec: str) -> str:
    """'mean ± half-width' of a t interval (just the mean with one seed)."""
    if not iv or iv["mean"] is None:
        return "-"
    if iv["low"] is None:
        return format(iv["mean"], spec)
    return f"{format(iv['mean'], spec)}±{format((iv['high'] - iv['low']) / 2, spec)}"


def interval(iv: dict | None, spec: str) -> str:
    """'mean [low, high]' of a paired difference ('[n<2]' when there are too few seeds)."""
    if not iv or iv["mean"] is None:
        return "-"
    if iv["low"] is None:
        return format(iv["mean"], spec) + " [n<2]"
    return f"{format(iv['mean'], spec)} [{format(iv['low'], spec)}, {format(iv['high'], spec)}]"
