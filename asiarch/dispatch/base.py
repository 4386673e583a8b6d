"""The scheduler interface the loop talks to; backends (local, slurm) implement it.

A backend takes a batch of job requests (one round: an array job on Slurm), returns
one job id per request at once, reports the states of many jobs with one query, and
cancels. Ids are strings the store keeps, so a restarted head can ask about the same
jobs again. :class:`Scheduler` declares every capability the loop uses; backends are
registered by name (:mod:`asiarch.dispatch.registry`) and built from the config.
"""

from __future__ import annotations

import abc
import enum
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from asiarch.job.contract import is_secret

if TYPE_CHECKING:
    from asiarch.config import Config
    from asiarch.layout import ExperimentDir


class SchedulerError(RuntimeError):
    """The scheduler refused a request; the message carries its own words."""


class JobState(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"  # the scheduler does not know the job (yet, or any more): not done

    @property
    def finished(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING, JobState.UNKNOWN)


@dataclass(frozen=True)
class JobRequest:
    """One attempt to run: its rendered script and where its scheduler logs go."""

    run_key: str
    script: Path        # the rendered job.sh
    log: Path           # stdout+stderr of the script
    nproc: int = 1      # ranks (CPU cores or GPUs) the job occupies
    gpus: int = 0


class Scheduler(abc.ABC):
    """A backend: where the loop's jobs run. Subclasses implement the four abstract methods and,
    to be named in ``cluster.scheduler``, :meth:`from_config` and ``@register("name")``."""

    name: str = ""          # the backend's name, as recorded with each job id in the store
    max_poll_s: float = 0.0  # the loop's polls back off up to this many seconds while nothing changes
    # states() calls in a row the scheduler gave no answer to (its controller timed out, or could not be
    # reached): states() then reports each job as last seen, never as finished; 0 once it answers
    unanswered: int = 0

    @classmethod
    def from_config(cls, exp: ExperimentDir, cfg: Config) -> Scheduler:
        """The backend for experiment ``exp`` as ``cfg`` ([cluster], [train], [llm]) asks for it."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a config; construct it and pass it "
                                  "to Search.open(..., scheduler=...)")

    def check(self) -> None:
        """Refuse early (:class:`SchedulerError`, in the scheduler's own words) when jobs could not
        run as configured; by default there is nothing to check."""

    @abc.abstractmethod
    def submit(self, requests: list[JobRequest]) -> list[str]:
        """Submit a round; returns one job id per request, in order."""

    @abc.abstractmethod
    def states(self, job_ids: list[str]) -> dict[str, JobState]:
        """Current state of each job, with one scheduler query whatever the number of ids. A job is
        finished only when the scheduler said so: without an answer it keeps its last state (see
        :attr:`unanswered`)."""

    def ended(self, job_ids: list[str]) -> dict[str, JobState]:
        """The states of jobs whose exit record says they ended, from the source that costs the
        scheduler least (Slurm: accounting, which slurmctld never sees); a job is finished only when
        that source says so (a requeued job is not). By default :meth:`states`."""
        return self.states(job_ids)

    @abc.abstractmethod
    def cancel(self, job_ids: list[str]) -> None:
        """Ask the scheduler to stop these jobs."""

    @abc.abstractmethod
    def adopt(self, marker: dict, attempt_dir: Path) -> str | None:
        """The id under which to watch the job that wrote ``marker`` into ``attempt_dir`` when it
        started (a head restarted without that job's id), or None when this scheduler has no such
        live job."""

    def reap(self, marker: dict | None, attempt_dir: Path) -> int:
        """End what is left of the job of an attempt the head no longer watches (it gave the attempt
        up, or ingested its result) once the job's own process, the one ``marker`` names, is gone:
        its children would run on unwatched. Returns how many processes were stopped. Never touches
        a job whose process still runs. By default nothing is left (the scheduler ends every
        process of a job with it, as Slurm's cgroups do): 0."""
        return 0

    def accounting(self, job_ids: list[str]) -> dict[str, dict[str, float]]:
        """What the scheduler charged finished jobs, by job id: ``elapsed_s``, ``cpu_seconds``,
        ``gpu_seconds`` (one query for all of them). By default nothing is known: ``{}``."""
        return {}


def job_environment(extra_secrets: tuple[str, ...] = (), base: dict[str, str] | None = None) -> dict[str, str]:
    """The head's environment minus every secret: what a job may inherit."""
    base = dict(os.environ if base is None else base)
    return {k: v for k, v in base.items() if not is_secret(k, extra_secrets)}


@contextmanager
def environ_without(predicate) -> Iterator[None]:
    """Remove the variables ``predicate(name)`` selects from ``os.environ`` for the duration."""
    hidden = {k: os.environ.pop(k) for k in list(os.environ) if predicate(k)}
    try:
        yield
    finally:
        os.environ.update(hidden)


@contextmanager
def secrets_hidden(extra_secrets: tuple[str, ...] = ()) -> Iterator[None]:
    """Remove secrets from ``os.environ`` while child processes are started, then put them back.

    Schedulers (submitit's local controller, sbatch's --export=ALL) copy the head's
    environment into the job; the head is single-threaded, so hiding the variables
    for the duration of a submission keeps them out of every job.
    """
    with environ_without(lambda name: is_secret(name, extra_secrets)):
        yield
