"""Watching the jobs in flight: one scheduler query per poll for all of them, backing off.

Each poll asks the scheduler for the state of every job in flight at once, records the
scheduler's accounting of those that ended (one more query), marks attempts running, and hands
each finished attempt to the caller's ``on_finished`` (the loop ingests it). The watchdog
(asiarch.search.watchdog) judges the running attempts' progress records at each poll.
"""

from __future__ import annotations

import time
from pathlib import Path
from collections.abc import Callable

from asiarch.config import Config
from asiarch.dispatch.base import JobState, Scheduler
from asiarch.job import result as rf
from asiarch.job.contract import AttemptFiles
from asiarch.layout import ExperimentDir
from asiarch.search.budget import trained_count
from asiarch.search.messages import Sink, progress_line
from asiarch.search.submission import InFlight
from asiarch.store import Attempt, Store

OnFinished = Callable[[Attempt, JobState], None]


class Poller:
    """Polls the attempts in ``active`` until none is left, ingesting each as it ends."""

    def __init__(self, exp: ExperimentDir, cfg: Config, store: Store, scheduler: Scheduler, active: InFlight,
                 console: Sink):
        self.exp = exp
        self.cfg = cfg
        self.store = store
        self.scheduler = scheduler
        self.active = active
        self.console = console
        self.watchdog = None  # asiarch.search.watchdog.Watchdog: judges the running attempts at each poll
        self._exit_paths: dict[int, Path] = {}  # attempt id -> its job's exit record
        self._exit_next: dict[int, tuple[float, float]] = {}  # attempt id -> (next look, interval after it)

    def wait(self, on_finished: OnFinished) -> None:
        """Poll every job in flight with one scheduler query per poll; ``on_finished`` each as it ends
        (which may submit more: those are waited for too).

        The interval starts at cluster.poll_interval_s and grows by half each poll up to the
        scheduler's max_poll_s (Slurm: cluster.poll_max_interval_s), so a long round costs the
        controller a few RPCs; a job's end is noticed at most that late."""
        interval = self.cfg.cluster.poll_interval_s
        cap = max(self.scheduler.max_poll_s, interval)
        while self.active:
            states = self.poll(on_finished)
            if self.active:
                self.console.status(self.progress_text(states))
                time.sleep(interval)
                interval = min(interval * 1.5, cap)

    def poll(self, on_finished: OnFinished) -> dict[str, JobState]:
        """One poll: the states of all jobs in flight (job id -> state), their accounting when they
        ended, and ``on_finished`` for each attempt whose job ended (removed from ``active`` first)."""
        states = self.scheduler.states(list(self.active.values()))
        self._settle(dict(self.active), states, on_finished)
        if self.watchdog is not None:
            self.watchdog.check(states)
        return states

    def _settle(self, jobs: dict[int, str], states: dict[str, JobState], on_finished: OnFinished) -> list[int]:
        """Mark running attempts running; record the accounting of those finished (one query) and hand
        each to ``on_finished`` (removed from ``active`` first). Returns the finished attempts."""
        finished = {a: j for a, j in jobs.items() if states.get(j, JobState.UNKNOWN).finished}
        self.record_usage(finished)
        for attempt_id, job_id in jobs.items():
            state = states.get(job_id, JobState.UNKNOWN)
            attempt = self.store.attempt(attempt_id)
            if state is JobState.RUNNING and attempt.status != "running":
                self.store.set_attempt_status(attempt_id, "running")
            if attempt_id not in finished:
                continue
            del self.active[attempt_id]
            on_finished(attempt, state)
            if self.watchdog is not None:
                self.watchdog.ended(attempt)
        return list(finished)

    def exited(self, settle_s: float = 0.5) -> list[int]:
        """Attempts in flight whose job wrote its exit record at least ``settle_s`` ago (one stat each,
        no scheduler call), each at most once per its own backing-off interval (1 s doubling to 30 s:
        a requeued job's old record is asked about now and then, not at every turn)."""
        now, out = time.time(), []
        for attempt_id in list(self.active):
            path = self._exit_paths.get(attempt_id)
            if path is None:
                path = self._exit_paths[attempt_id] = AttemptFiles(self.exp.root / self.store.attempt(attempt_id).dir).job_exit
            due, wait = self._exit_next.get(attempt_id, (0.0, 1.0))
            if now < due:
                continue
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            if now - mtime >= settle_s:
                out.append(attempt_id)
                self._exit_next[attempt_id] = (now + wait, min(2 * wait, 30.0))
        for attempt_id in [a for a in self._exit_paths if a not in self.active]:
            del self._exit_paths[attempt_id]
            self._exit_next.pop(attempt_id, None)
        return out

    def poll_exited(self, attempt_ids: list[int], on_finished: OnFinished) -> int:
        """Ask the scheduler's cheapest source (:meth:`Scheduler.ended`) about attempts whose job wrote
        its exit record, and ingest those it says finished; returns how many."""
        jobs = {a: self.active[a] for a in attempt_ids if a in self.active}
        if not jobs:
            return 0
        return len(self._settle(jobs, self.scheduler.ended(list(jobs.values())), on_finished))

    def record_usage(self, finished: dict[int, str]) -> None:
        """The scheduler's accounting (Slurm: sacct's elapsed x allocated CPUs/GPUs), one query per poll."""
        if not finished:
            return
        usage = self.scheduler.accounting(list(finished.values()))
        for attempt_id, job_id in finished.items():
            if job_id in usage:
                self.store.set_attempt_usage(attempt_id, **usage[job_id])

    def progress_text(self, states: dict[str, JobState]) -> str:
        """The status line: candidates trained of the budget, jobs running and queued, and the progress
        record (step, loss) of the first two running."""
        running = [a for a, j in self.active.items() if states.get(j) is JobState.RUNNING]
        shown = []
        for attempt_id in running[:2]:
            a = self.store.attempt(attempt_id)
            p = rf.read_progress(AttemptFiles(self.exp.root / a.dir).progress)
            if p:
                shown.append((a.candidate_id, p))
        verifying = sum(1 for a in self.active if self.store.attempt(a).stage == "verify")
        return progress_line(trained=trained_count(self.store.counts()), budget=self.cfg.budget.candidates,
                             running=len(running), queued=len(self.active) - len(running), verifying=verifying,
                             progress=shown)
