"""Watching the jobs in flight: one scheduler query per poll for all of them, backing off.

Each poll asks the scheduler for the state of every job in flight at once, records the
scheduler's accounting of those that ended (one more query), marks attempts running, and hands
each finished attempt to the caller's ``on_finished`` (the loop ingests it). A per-poll check of
the running attempts' progress records belongs in :meth:`Poller.poll`, beside the states.
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
        self._exit_paths: dict[int, Path] = {}  # attempt id -> its job's exit record
        self._exit_seen: dict[int, float] = {}  # attempt id -> mtime of the exit record already acted on

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
        self.record_usage({a: j for a, j in self.active.items() if states.get(j, JobState.UNKNOWN).finished})
        for attempt_id, job_id in list(self.active.items()):
            state = states.get(job_id, JobState.UNKNOWN)
            attempt = self.store.attempt(attempt_id)
            if state is JobState.RUNNING and attempt.status != "running":
                self.store.set_attempt_status(attempt_id, "running")
            if not state.finished:
                continue
            del self.active[attempt_id]
            on_finished(attempt, state)
        return states

    def ended_on_disk(self, settle_s: float = 1.0) -> bool:
        """Whether a job in flight wrote its exit record at least ``settle_s`` ago (one stat per attempt,
        no scheduler call): the steady pipeline polls the scheduler then, instead of waiting for its
        backed-off interval, and the scheduler has had time to see the job leave."""
        now, found = time.time(), False
        for attempt_id in list(self.active):
            path = self._exit_paths.get(attempt_id)
            if path is None:
                path = self._exit_paths[attempt_id] = AttemptFiles(self.exp.root / self.store.attempt(attempt_id).dir).job_exit
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            if now - mtime >= settle_s and self._exit_seen.get(attempt_id) != mtime:
                self._exit_seen[attempt_id] = mtime  # once per record: a requeued job's old one is not news
                found = True
        for attempt_id in [a for a in self._exit_paths if a not in self.active]:
            del self._exit_paths[attempt_id]
            self._exit_seen.pop(attempt_id, None)
        return found

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
