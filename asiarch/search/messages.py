"""What the search tells its user, and where it goes.

The loop and its pieces write through a :class:`Sink`: one line per event (``line``) and a
transient line for where things stand (``status``). The command line passes its
``asiarch.cli.console.Console``; a library caller or a test passes its own, or gets
:class:`Silent`. The longer lines, composed from data (an attempt's outcome, the progress of the
jobs in flight), are pure functions here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from asiarch.analysis import format as fmt

if TYPE_CHECKING:
    from asiarch.search.ingest import Outcome


class Sink(Protocol):
    """Where the search's text goes (asiarch.cli.console.Console is one)."""

    def line(self, text: str) -> None:
        """One line (or several) for an event: kept in the log."""

    def status(self, text: str) -> None:
        """Where things stand right now: may be redrawn in place or shown only now and then."""


class Silent:
    """A sink that shows nothing."""

    def line(self, text: str) -> None:
        pass

    def status(self, text: str) -> None:
        pass


def _first_line(text: str) -> str:
    return (text.splitlines() or [""])[0]


def outcome_line(out: Outcome) -> str:
    """The console line of an ingested attempt: its candidate, the attempt's status, the stage's seed
    when the stage has several (or is not exploration), then the figures or what went wrong."""
    label = fmt.candidate_label(out.candidate_id, out.name)
    status = out.attempt_status.upper()
    if not out.has_result:  # the job left no readable result: why, in one line
        return f"{label} {status:9s} {_first_line(out.message)}"
    seed = f" {out.stage} seed {out.seed + 1}/{out.seeds}" if out.seeds > 1 or out.stage != "explore" else ""
    if out.candidate_status == "stale":
        return f"{label} {status:9s}{seed} (kept; the candidate has moved on: its code was repaired or it is settled)"
    if out.attempt_status != "ok":
        return f"{label} {status:9s}{seed} {_first_line(out.message)}"[:160]
    rate = f"({fmt.number(out.tokens_per_s, ',.0f')} tok/s, {fmt.number(out.wall_s, '.0f')} s)"
    if out.candidate_status != "done":  # one seed's figures; the candidate's come with its last seed
        return f"{label} {'OK':9s}{seed} loss {fmt.number(out.loss)} acc {fmt.number(out.acc, '.3f')}  {rate}"
    acc = f"acc {fmt.number(out.acc, '.3f')}" if out.acc is not None else ""
    mean = f" (mean of {out.averaged} seeds)" if out.averaged > 1 else ""
    return (f"{label} {'OK':9s} loss {fmt.number(out.loss)} {acc}  fitness {fmt.number(out.fitness, '.3f')}{mean}"
            f"  {rate}")


def progress_line(*, trained: int, budget: int, running: int, queued: int, verifying: int = 0,
                  progress: Sequence[tuple[int, dict]] = ()) -> str:
    """'trained 3/8 | 1 running, 2 queued | #5 step 120/300 loss 1.234': the status while jobs run.
    ``progress`` is (candidate id, progress record) of a few running attempts."""
    parts = [f"{running} running, {queued} queued"]
    for cid, p in progress:
        parts.append(f"#{cid} step {p.get('step')}/{p.get('steps')} loss {p.get('loss', 0):.3f}")
    stage = f"verification: {verifying} job(s) left | " if verifying else ""
    return f"trained {trained}/{budget} | {stage}" + " | ".join(parts)


def pipeline_line(*, trained: int, budget: int, slots: int, busy: int, running: int, outbox: int = 0,
                  proposing: int = 0, checking: int = 0, ready: int = 0, analysing: int = 0,
                  repairing: int = 0) -> str:
    """'trained 3/48 | slots 7/8 busy (6 running) | proposing 2, checking 1, ready 3': the steady
    pipeline's status line (the same figures `asiarch status` shows from the store)."""
    parts = [f"trained {trained}/{budget}", f"slots {busy}/{slots} busy ({running} running)"
             + (f", {outbox} to submit" if outbox else "")]
    queue = f"proposing {proposing}, checking {checking}, ready {ready}"
    extra = [f"{n} {what}" for n, what in ((analysing, "analysing"), (repairing, "repairing")) if n]
    parts.append(queue + ("; " + ", ".join(extra) if extra else ""))
    return " | ".join(parts)
