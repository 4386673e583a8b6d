"""Dispatch: the Scheduler interface and its backends (local, slurm), registered by name; the job
payload, the attempt's files, the rendered job scripts, the container command."""

from asiarch.dispatch.base import JobRequest, JobState, Scheduler, SchedulerError
from asiarch.dispatch.registry import make_scheduler, register, scheduler_class, scheduler_names

__all__ = ["JobRequest", "JobState", "Scheduler", "SchedulerError", "make_scheduler", "register",
           "scheduler_class", "scheduler_names"]
