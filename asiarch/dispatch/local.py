"""Local backend: submitit's local executor, with a limit on jobs in flight.

Each job is the rendered job script run by :func:`asiarch.dispatch.payload.run_job_script`
in a submitit controller process on this machine. submitit starts every submitted job
at once, so this backend keeps a queue and starts a job only when fewer than
``max_in_flight`` run; :meth:`states` advances the queue. Job ids are this backend's own
(``local-<epoch>-<n>``), stable from submission, whether or not the job has started yet.

Jobs outlive a killed head (they are not in its process group's way unless the whole group
is signalled). A restarted head adopts a running job from the marker the job wrote into its
attempt directory (:meth:`adopt`): it is then watched by pid (with the pid's start time, so a
reused pid is not mistaken for it) and its end read from the job's exit record. A head killed with
its process group takes the job's own processes with it but not torchrun's ranks (each in a
session of its own): when the restarted head gives such an attempt up, :meth:`reap` ends them.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import submitit

from asiarch.dispatch.base import JobRequest, JobState, Scheduler, secrets_hidden
from asiarch.dispatch.payload import end_attempt_processes, process_start_time, run_job_script
from asiarch.dispatch.registry import register
from asiarch.job.contract import AttemptFiles, read_job_file

if TYPE_CHECKING:
    from asiarch.config import Config
    from asiarch.layout import ExperimentDir


@register("local")
class LocalScheduler(Scheduler):
    """Jobs on this machine, ``max_in_flight`` at a time (submitit's local executor)."""

    name = "local"

    max_poll_s = 0.0  # states are answered in-process: polls never back off

    def __init__(self, folder: Path, *, max_in_flight: int = 1, timeout_min: float = 30.0,
                 secret_env: tuple[str, ...] = (), python: str | None = None):
        self.folder = Path(folder)
        self.max_in_flight = max_in_flight
        self.timeout_min = timeout_min
        self.secret_env = secret_env
        self.python = python
        self._ids = itertools.count(1)
        self._queue: deque[tuple[str, JobRequest]] = deque()
        self._jobs: dict[str, submitit.Job] = {}
        self._cancelled: set[str] = set()
        self._final: dict[str, JobState] = {}
        self._adopted: dict[str, tuple[int, str, Path]] = {}  # job id -> (pid, pid start, attempt dir)
        self._epoch = f"{int(time.time()):x}"  # ids stay unique across head restarts

    @classmethod
    def from_config(cls, exp: ExperimentDir, cfg: Config) -> LocalScheduler:
        """[cluster]'s max_in_flight, timeout_min and python; the LLM key is kept from every job."""
        return cls(exp.jobs, max_in_flight=cfg.cluster.max_in_flight, timeout_min=cfg.cluster.timeout_min,
                   secret_env=(cfg.llm.api_key_env,), python=cfg.cluster.python or None)

    # ------------------------------------------------------------------ interface
    def submit(self, requests: list[JobRequest]) -> list[str]:
        ids = []
        for req in requests:
            job_id = f"local-{self._epoch}-{next(self._ids)}"
            self._queue.append((job_id, req))
            ids.append(job_id)
        self._pump()
        return ids

    def states(self, job_ids: list[str]) -> dict[str, JobState]:
        self._pump()
        queued = {jid for jid, _ in self._queue}
        out = {}
        for jid in job_ids:
            if jid in self._final:
                out[jid] = self._final[jid]
            elif jid in queued:
                out[jid] = JobState.PENDING
            elif jid in self._jobs:
                out[jid] = self._state(jid)
            elif jid in self._adopted:
                out[jid] = self._adopted_state(jid)
            else:
                out[jid] = JobState.UNKNOWN
        return out

    def cancel(self, job_ids: list[str]) -> None:
        wanted = set(job_ids)
        self._cancelled |= wanted
        kept = deque((jid, r) for jid, r in self._queue if jid not in wanted)
        for jid, _ in self._queue:
            if jid in wanted:
                self._final[jid] = JobState.CANCELLED
        self._queue = kept
        for jid in wanted & set(self._jobs):
            job = self._jobs[jid]
            job.cancel(check=False)  # SIGINT to submitit's controller
            if self._state(jid) is JobState.RUNNING:
                # a head started in the background (`nohup asiarch run ... &`) passes SIGINT on ignored,
                # so the controller would not hear it: TERM, which it forwards to the job, always works
                os.kill(int(job.job_id), signal.SIGTERM)
        for jid in wanted & set(self._adopted):
            pid, start, _ = self._adopted[jid]
            if process_start_time(pid) == start:
                os.kill(pid, signal.SIGTERM)  # the payload passes TERM on to the job

    def adopt(self, marker: dict, attempt_dir: Path) -> str | None:
        """A job id to watch the still-running job that wrote ``marker`` (see
        :func:`asiarch.dispatch.payload.claim_attempt`), or None when it is not running here."""
        pid, start = marker.get("pid"), marker.get("pid_start")
        if marker.get("host") != socket.gethostname() or not isinstance(pid, int) or not start:
            return None
        if process_start_time(pid) != start:
            return None
        jid = f"local-pid-{pid}-{start}"
        self._adopted[jid] = (pid, start, Path(attempt_dir))
        return jid

    def reap(self, marker: dict | None, attempt_dir: Path) -> int:
        """SIGKILL the processes left on this machine of the job that wrote ``marker`` into
        ``attempt_dir`` (those whose environment names the attempt, see
        :data:`asiarch.dispatch.payload.ATTEMPT_ENV`), unless the job's own process still runs (it
        is adopted then, or ends by itself) or ran on another machine. Returns how many were killed."""
        marker = marker if isinstance(marker, dict) else {}
        if marker.get("host", socket.gethostname()) != socket.gethostname():
            return 0
        pid, start = marker.get("pid"), marker.get("pid_start")
        if isinstance(pid, int) and start and process_start_time(pid) == start:
            return 0
        return end_attempt_processes(attempt_dir)

    # ------------------------------------------------------------------ internals
    def _running(self) -> int:
        return sum(1 for jid in self._jobs if jid not in self._final and self._state(jid) is JobState.RUNNING)

    def _pump(self) -> None:
        """Start queued jobs while slots are free."""
        free = self.max_in_flight - self._running()
        while free > 0 and self._queue:
            jid, req = self._queue.popleft()
            executor = submitit.LocalExecutor(folder=str(self.folder / "%j"), python=self.python)
            executor.update_parameters(timeout_min=self.timeout_min, tasks_per_node=1, gpus_per_node=req.gpus)
            with secrets_hidden(self.secret_env):
                self._jobs[jid] = executor.submit(run_job_script, str(req.script), str(req.log), self.secret_env)
            free -= 1

    def _adopted_state(self, jid: str) -> JobState:
        pid, start, attempt_dir = self._adopted[jid]
        if process_start_time(pid) == start:
            return JobState.RUNNING
        try:
            code = json.loads(read_job_file(AttemptFiles(attempt_dir).job_exit)).get("code")
        except (OSError, ValueError, AttributeError):
            code = None
        # no exit record: the job was killed (machine, OOM killer, a signal to the group)
        state = (JobState.NODE_FAIL if code is None else JobState.COMPLETED if code == 0
                 else JobState.CANCELLED if jid in self._cancelled else JobState.FAILED)
        self._final[jid] = state
        return state

    def _state(self, jid: str) -> JobState:
        if jid in self._final:
            return self._final[jid]
        job = self._jobs[jid]
        raw = job.state
        if raw == "RUNNING":
            return JobState.RUNNING
        if raw == "FINISHED":
            try:
                job.result()
                state = JobState.COMPLETED
            except Exception:
                state = JobState.CANCELLED if jid in self._cancelled else JobState.FAILED
        elif raw == "INTERRUPTED":
            state = JobState.CANCELLED if jid in self._cancelled else JobState.TIMEOUT
        else:
            state = JobState.UNKNOWN
        if state.finished:
            self._final[jid] = state
        return state
