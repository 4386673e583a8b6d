"""What a restarted head does with the attempts the last one left in flight.

Each attempt recorded as pending, submitted or running is, by what the scheduler and the attempt's
files say: watched again (the scheduler knows its job), ingested (its job outlived the head and
wrote a result), adopted (the scheduler does not know the recorded id, but the job's marker names
a job that still runs), or abandoned and tried again as a new attempt (within search.max_attempts;
a lost attempt does not use one up). What is left on this machine of the job of an attempt that is
ingested or abandoned, once the job's own process is gone (torchrun's ranks outlive a kill of the
head's process group), is ended (:meth:`Scheduler.reap <asiarch.dispatch.base.Scheduler.reap>`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from asiarch.dispatch.base import JobState, Scheduler
from asiarch.job.contract import AttemptFiles, read_job_file
from asiarch.layout import ExperimentDir
from asiarch.search.errors import SearchError
from asiarch.search.messages import Sink
from asiarch.search.submission import ACTIVE, InFlight, Submitter
from asiarch.store import Attempt, Store


class Recovery:
    """Re-attaches to, ingests, adopts or abandons the attempts a previous head left in flight."""

    def __init__(self, exp: ExperimentDir, store: Store, scheduler: Scheduler, submitter: Submitter,
                 active: InFlight, console: Sink):
        self.exp = exp
        self.store = store
        self.scheduler = scheduler
        self.submitter = submitter
        self.active = active
        self.console = console

    def recover(self, ingest: Callable[[Attempt, JobState], None]) -> None:
        """Re-attach to attempts a previous head left in flight, and retry those the scheduler lost.
        ``ingest`` records an attempt whose job finished while no head watched it."""
        stale = self.store.attempts(statuses=ACTIVE)
        if not stale:
            return
        states = self.scheduler.states([a.job_id for a in stale if a.job_id])
        if self.scheduler.unanswered:
            # an unanswered query says nothing of a job: deciding now would give up queued jobs
            raise SearchError(f"the {self.scheduler.name} scheduler did not answer while the head re-attached "
                              f"to its jobs ({getattr(self.scheduler, 'last_problem', '') or 'no answer'}); "
                              "nothing was changed: run again once it answers")
        for a in stale:
            state = states.get(a.job_id, JobState.UNKNOWN) if a.job_id else JobState.UNKNOWN
            if state in (JobState.PENDING, JobState.RUNNING):
                self.active[a.id] = a.job_id
                continue
            if state.finished:
                self.active[a.id] = a.job_id  # ingested by the next wait()
                continue
            if AttemptFiles(self.exp.root / a.dir).result.exists():
                # the job outlived its head and finished: ingest its result instead of training again
                self.reap(a, _marker(AttemptFiles(self.exp.root / a.dir)))
                ingest(a, JobState.COMPLETED)
                continue
            job_id = self.adopt(a)
            if job_id:
                continue
            self.store.set_attempt_status(a.id, "lost", "the scheduler no longer knows this job (head restarted)")
            self.console.line(f"#{a.candidate_id}: attempt {a.n} was lost with the previous head; trying again")
            self.submitter.retry_or_fail(a, "lost with the previous head")

    def adopt(self, a: Attempt) -> str | None:
        """Watch the job of an attempt the scheduler does not know by its recorded id (the head died
        before recording it, or the local jobs' ids died with it), when the job left a marker and
        still runs; otherwise abandon the attempt, so that a job of it that starts later does not
        train the candidate a second time. Returns the adopted job id, or None."""
        files = AttemptFiles(self.exp.root / a.dir)
        attempt_dir, tombstone = files.dir, files.abandoned
        attempt_dir.mkdir(parents=True, exist_ok=True)
        # the tombstone before the marker is read; the job writes its marker before reading the tombstone
        tombstone.write_text(f"abandoned by the head (pid {os.getpid()}) at {time.time():.0f}; "
                             f"attempt {a.n} of candidate {a.candidate_id} is retried as a new attempt\n")
        marker = _marker(files)
        job_id = self.scheduler.adopt(marker, attempt_dir) if marker else None
        if not job_id:
            # not adopted, now or later (a job that reads its marker's pid as dead stays dead): what
            # is left of it would train the candidate beside its retry
            self.reap(a, marker)
            return None
        tombstone.unlink(missing_ok=True)  # a requeued run of the adopted job may run again
        self.store.mark_submitted(a.id, self.scheduler.name, job_id)
        self.store.log_event("adopted", f"attempt {a.n}: re-attached to running job {job_id} from its marker",
                             a.candidate_id, a.id)
        self.console.line(f"#{a.candidate_id}: attempt {a.n} still runs as job {job_id}; watching it again")
        self.active[a.id] = job_id
        return job_id

    def reap(self, a: Attempt, marker: dict | None) -> int:
        """End what is left of attempt ``a``'s job now that no head watches it (see
        :meth:`Scheduler.reap <asiarch.dispatch.base.Scheduler.reap>`); recorded when anything was."""
        n = self.scheduler.reap(marker, self.exp.root / a.dir)
        if n:
            self.store.log_event("reaped", f"attempt {a.n}: ended {n} process(es) its job left running "
                                           "after its own process died", a.candidate_id, a.id)
            self.console.line(f"#{a.candidate_id}: attempt {a.n}: ended {n} process(es) its job left running")
        return n


def _marker(files: AttemptFiles) -> dict | None:
    """The marker the attempt's job wrote when it started, or None (none yet, or unreadable)."""
    try:
        marker = json.loads(read_job_file(files.job_marker))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None
