"""Slurm backend: one array job per round through submitit, one query per poll.

A round of job requests goes out as a single ``sbatch`` (submitit's ``executor.batch()``
makes an array ``--array=0-N%K``, K = ``max_in_flight``), so the head never calls sbatch
once per candidate. Each array task runs :func:`asiarch.dispatch.payload.run_job_script`
on its rendered ``job.sh`` (which execs torchrun).

Live states come from the controller (``squeue``: one call for every id in flight, ~10 ms);
jobs that have left the queue get their final state from accounting (``sacct``: one call
for all of them). ``sacct`` lags the controller and can omit pending array tasks, so a job
missing from both is ``UNKNOWN``, never done.

Every command runs with a time limit (``cluster.slurm_timeout_s``). A controller that does not
answer is a :class:`ControllerTimeout` naming the command, the limit and ``SLURM_CONF`` where it
stops the search (sinfo at the start, sbatch); a poll whose squeue goes unanswered is retried a few
times with backoff and then keeps every job at its last known state (``UNKNOWN`` when none): a job
is read as done only from an answer that says so.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import submitit

from asiarch.dispatch.base import JobRequest, JobState, Scheduler, SchedulerError, environ_without, secrets_hidden
from asiarch.dispatch.payload import run_job_script
from asiarch.dispatch.registry import register
from asiarch.job.contract import AttemptFiles

if TYPE_CHECKING:
    from asiarch.config import Config
    from asiarch.layout import ExperimentDir

__all__ = ["ControllerTimeout", "SchedulerError", "SlurmScheduler", "SlurmSpec", "expand_array_id", "parse_state",
           "parse_tres"]


# Slurm's job states (squeue %T, sacct State) -> what the loop acts on.
_STATES = {
    "PENDING": JobState.PENDING, "CONFIGURING": JobState.PENDING, "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING, "REQUEUE_FED": JobState.PENDING, "RESIZING": JobState.PENDING,
    "SUSPENDED": JobState.PENDING, "STOPPED": JobState.PENDING,
    "RUNNING": JobState.RUNNING, "COMPLETING": JobState.RUNNING, "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED, "BOOT_FAIL": JobState.FAILED, "DEADLINE": JobState.TIMEOUT,
    "TIMEOUT": JobState.TIMEOUT,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "NODE_FAIL": JobState.NODE_FAIL,
    "PREEMPTED": JobState.PREEMPTED,
    "CANCELLED": JobState.CANCELLED, "REVOKED": JobState.CANCELLED,
}


def parse_state(raw: str) -> JobState:
    """``CANCELLED by 0`` -> CANCELLED; unknown words -> UNKNOWN."""
    word = raw.strip().split(" ")[0].rstrip("+")
    return _STATES.get(word, JobState.UNKNOWN)


def expand_array_id(job_id: str) -> list[str]:
    """``123_[0-2,5%2]`` (a pending array range in squeue) -> ``['123_0', '123_1', '123_2', '123_5']``."""
    m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", job_id)
    if not m:
        return [job_id]
    base, out = m.group(1), []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        out += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


@dataclass(frozen=True)
class SlurmSpec:
    """What each job of an experiment asks of Slurm (from [cluster] and the site profile)."""

    job_name: str
    time_min: int = 30
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    nodes: int = 1
    cpus_per_task: int = 2
    gpus_per_node: int = 0
    gres_name: str = "gpu"
    mem_gb: float = 0.0
    array_parallelism: int = 4
    signal_delay_s: int = 120   # the trainer gets USR1/TERM this long before the limit
    modules: tuple[str, ...] = ()
    additional: tuple[tuple[str, str], ...] = ()   # any other sbatch option, passed through

    def submitit_parameters(self) -> dict:
        """The spec in submitit's SlurmExecutor vocabulary (it renders sorted #SBATCH lines,
        --open-mode=append, %A_%a log names and --signal)."""
        params: dict = {
            "job_name": self.job_name,
            "time": self.time_min,
            "nodes": self.nodes,
            "ntasks_per_node": 1,            # one torchrun per node; torchrun starts the ranks
            "cpus_per_task": self.cpus_per_task,
            "array_parallelism": self.array_parallelism,
            "signal_delay_s": self.signal_delay_s,
            "stderr_to_stdout": True,
            "setup": ["set -euo pipefail"] + [f"module load {m}" for m in self.modules],
            "additional_parameters": {"requeue": True, **dict(self.additional)},
        }
        for key, value in (("partition", self.partition), ("account", self.account), ("qos", self.qos),
                           ("constraint", self.constraint)):
            if value:
                params[key] = value
        if self.gpus_per_node:
            params["gres"] = f"{self.gres_name}:{self.gpus_per_node}"
        if self.mem_gb:
            params["mem"] = f"{int(self.mem_gb * 1024)}MB"
        return params

    @classmethod
    def from_config(cls, cfg: Config) -> SlurmSpec:
        """What [cluster] and [train] ask of each job. CPUs per task: train.nproc x
        train.threads_per_rank on CPU, 4 per GPU (at least 2) with GPUs."""
        c, t = cfg.cluster, cfg.train
        extra = tuple((k, v or True) for k, _, v in (x.partition("=") for x in c.sbatch_extra))
        return cls(
            job_name=cfg.experiment.name, time_min=max(1, math.ceil(c.timeout_min)), partition=c.partition,
            account=c.account, qos=c.qos, constraint=c.constraint, nodes=c.nodes,
            cpus_per_task=t.nproc * t.threads_per_rank if not c.gpus_per_node else max(2, 4 * c.gpus_per_node),
            gpus_per_node=c.gpus_per_node, gres_name=c.gres_name, mem_gb=c.mem_gb,
            array_parallelism=c.max_in_flight, additional=extra)


class ControllerTimeout(SchedulerError):
    """A Slurm command did not answer within its time limit: the controller is down, overloaded or
    unreachable from here."""


def _slurm_conf() -> str:
    conf = os.environ.get("SLURM_CONF")
    return f"SLURM_CONF={conf}" if conf else "SLURM_CONF unset (Slurm's default /etc/slurm/slurm.conf)"


def _not_answering(argv: list[str], timeout: float) -> ControllerTimeout:
    return ControllerTimeout(
        f"the Slurm controller did not answer: `{' '.join(argv[:1] + argv[1:4])}{' ...' if len(argv) > 4 else ''}` "
        f"took longer than {timeout:g} s ({_slurm_conf()}). Check that slurmctld runs and is reachable "
        "(`scontrol ping`), or raise cluster.slurm_timeout_s on a busy controller; then run again.")


def _run(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run a Slurm command; :class:`ControllerTimeout` past ``timeout`` seconds, :class:`SchedulerError`
    when it is not installed here."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise _not_answering(argv, timeout) from None
    except OSError as exc:
        raise SchedulerError(f"{argv[0]} could not be run ({exc}): run on a Slurm login node, or put Slurm's "
                             f"commands on PATH ({_slurm_conf()})") from None


#: The one failure of squeue that is an answer: the controller no longer knows (has purged) an id.
#: Any other (no controller, a socket timeout, munge down) says nothing about the jobs.
_PURGED = re.compile(r"invalid job id", re.IGNORECASE)


@contextmanager
def _sbatch_within(timeout_s: float) -> Iterator[None]:
    """While submitting, submitit runs ``sbatch`` under coreutils' ``timeout`` (it waits on sbatch
    for ever otherwise): a controller that does not answer is exit status 124, not a hung head.
    submitit builds a plain SlurmExecutor of its own for an array, so the hook is replaced on the
    class, for the duration of one submission (the head submits from one thread)."""
    cls = submitit.SlurmExecutor
    original = cls._make_submission_command

    def timed(self, submission_file_path: Path) -> list[str]:
        return ["timeout", "-k", "5", f"{timeout_s:g}", *original(self, submission_file_path)]

    cls._make_submission_command = timed
    try:
        yield
    finally:
        cls._make_submission_command = original


@register("slurm")
@dataclass
class SlurmScheduler(Scheduler):
    """The Scheduler interface over a real Slurm (``sbatch``, ``squeue``, ``sacct``, ``scancel``)."""

    folder: Path
    spec: SlurmSpec
    secret_env: tuple[str, ...] = ()
    python: str | None = None
    name: str = "slurm"
    max_poll_s: float = 10.0             # polls back off to this while nothing changes
    timeout_s: float = 30.0              # each Slurm command's time limit (cluster.slurm_timeout_s)
    query_retries: int = 3               # tries of a poll's squeue before its jobs keep their last state
    retry_backoff_s: float = 1.0         # between those tries: 1 s, then 2 s, ...
    queries: int = 0                     # scheduler commands issued by states(): one per poll or two
    unanswered: int = 0                  # polls in a row whose squeue got no answer (0: the last one did)
    last_problem: str = ""               # why the last unanswered poll got none
    _final: dict[str, JobState] = field(default_factory=dict)
    _live: dict[str, JobState] = field(default_factory=dict)  # last state squeue gave each job in flight
    _checked: bool = False

    @classmethod
    def from_config(cls, exp: ExperimentDir, cfg: Config) -> SlurmScheduler:
        """The backend for ``exp`` with :meth:`SlurmSpec.from_config`; polls back off to the larger of
        cluster.poll_interval_s and cluster.poll_max_interval_s; the LLM key is kept from every job."""
        c = cfg.cluster
        return cls(exp.jobs, SlurmSpec.from_config(cfg), secret_env=(cfg.llm.api_key_env,), python=c.python or None,
                   max_poll_s=max(c.poll_interval_s, c.poll_max_interval_s), timeout_s=c.slurm_timeout_s)

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess:
        return _run(argv, timeout=self.timeout_s)

    def check(self) -> None:
        """Refuse early, in Slurm's words, when no controller answers or the partition is unknown."""
        if not shutil.which("sbatch"):
            raise SchedulerError("sbatch is not on PATH: run on a Slurm login node (or, on this machine, "
                                 "start the test cluster: eval \"$(slurm/start-test-cluster.sh)\")")
        res = self._run(["sinfo", "-h", "-o", "%P"])
        if res.returncode != 0:
            raise SchedulerError(f"no Slurm controller answers: {res.stderr.strip() or res.stdout.strip()} "
                                 f"({_slurm_conf()})")
        partitions = [p.rstrip("*") for p in res.stdout.split()]
        if self.spec.partition and self.spec.partition not in partitions:
            raise SchedulerError(f"partition {self.spec.partition!r} does not exist; "
                                 f"this cluster has: {', '.join(partitions)}")
        # a request no node can hold would pend forever: refuse it now
        argv = ["sinfo", "-h", "-N", "-o", "%c|%G"] + (["-p", self.spec.partition] if self.spec.partition else [])
        nodes = self._run(argv).stdout.split()
        if nodes:
            cpus = max(int(n.split("|")[0]) for n in nodes if n.split("|")[0].isdigit())
            gpus = max(_gres_count(n.split("|", 1)[1], self.spec.gres_name) for n in nodes)
            if self.spec.cpus_per_task > cpus:
                raise SchedulerError(f"each job asks for {self.spec.cpus_per_task} CPUs but the largest node of "
                                     f"{self.spec.partition or 'the default partition'} has {cpus}: lower "
                                     "train.nproc / train.threads_per_rank or pick another partition")
            if self.spec.gpus_per_node > gpus:
                raise SchedulerError(f"each job asks for {self.spec.gpus_per_node} {self.spec.gres_name} per node "
                                     f"but the largest node has {gpus}: lower cluster.gpus_per_node")
        self._checked = True

    def executor(self) -> submitit.SlurmExecutor:
        ex = submitit.SlurmExecutor(folder=str(self.folder / "%j"), python=self.python)
        ex.update_parameters(**self.spec.submitit_parameters())
        return ex

    def render_sbatch(self, n: int) -> str:
        """The sbatch script a round of ``n`` would submit (``asiarch render --dry-run``)."""
        ex = self.executor()
        if n > 1:
            ex.parameters["map_count"] = n
        return ex._make_submission_file_text(ex._submitit_command_str, "dry-run")

    def submit(self, requests: list[JobRequest]) -> list[str]:
        if not requests:
            return []
        if not self._checked:
            self.check()
        ex = self.executor()
        try:
            with secrets_hidden(self.secret_env), environ_without(_inherited_from_a_job), \
                    _sbatch_within(self.timeout_s), ex.batch():
                jobs = [ex.submit(run_job_script, str(r.script), str(r.log), self.secret_env) for r in requests]
        except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as exc:
            if getattr(exc.__cause__, "returncode", None) == 124:  # coreutils' timeout: sbatch got no answer
                # it may have been queued all the same: a job of it that starts later must not train
                for r in requests:
                    _fence(r.script.parent, f"sbatch did not answer within {self.timeout_s:g} s")
                raise _not_answering(["sbatch", f"(an array of {len(requests)})"], self.timeout_s) from None
            raise SchedulerError(f"sbatch refused the round: {_slurm_words(exc)}") from exc
        return [job.job_id for job in jobs]

    def states(self, job_ids: list[str]) -> dict[str, JobState]:
        out = {j: self._final[j] for j in job_ids if j in self._final}
        live = [j for j in job_ids if j not in out]
        if not live:
            return out
        queue = self._squeue(live)
        if queue is None:  # no answer: nothing is known to have changed, least of all that a job ended
            out.update({j: self._live.get(j, JobState.UNKNOWN) for j in live})
            return out
        gone = []
        for j in live:
            if j in queue:
                out[j] = self._live[j] = queue[j]
            else:
                gone.append(j)
        if gone:
            acct = self._sacct(gone)
            for j in gone:
                state = acct.get(j, JobState.UNKNOWN)
                out[j] = state
                if state.finished:
                    self._final[j] = state
                    self._live.pop(j, None)
        return out

    def cancel(self, job_ids: list[str]) -> None:
        """scancel them (one call); :class:`ControllerTimeout` when the controller does not answer."""
        if job_ids:
            self._run(["scancel", *job_ids])

    def adopt(self, marker: dict, attempt_dir: Path) -> str | None:
        """The Slurm id the job wrote into its marker (squeue and sacct answer for it, running or
        ended), or None for a marker written outside Slurm."""
        return marker.get("slurm_job_id") or None

    def accounting(self, job_ids: list[str]) -> dict[str, dict[str, float]]:
        """Elapsed, CPU- and GPU-seconds of finished jobs from sacct, one call for all of them."""
        if not job_ids:
            return {}
        parents = sorted({j.split("_")[0] for j in job_ids})
        try:
            res = self._run(["sacct", "-X", "-n", "-P", "-o", "JobID,ElapsedRaw,AllocTRES", "-j", ",".join(parents)])
        except ControllerTimeout:
            return {}  # not known now; the jobs' states are not affected
        out = {}
        for line in res.stdout.splitlines() if res.returncode == 0 else []:
            jid, elapsed, tres = (line.split("|") + ["", ""])[:3]
            if jid in job_ids and elapsed.isdigit():
                t = parse_tres(tres)
                secs = float(elapsed)
                out[jid] = {"elapsed_s": secs, "cpu_seconds": secs * t.get("cpu", 0),
                            "gpu_seconds": secs * t.get("gres/gpu", 0)}
        return out

    # ------------------------------------------------------------------ queries
    def _squeue(self, job_ids: list[str]) -> dict[str, JobState] | None:
        """Live states from the controller, one call for all ids (array tasks included); None when
        it did not answer (timed out, or could not be reached) in ``query_retries`` tries."""
        parents = sorted({j.split("_")[0] for j in job_ids})
        # --local skips the federation lookup: 2 controller RPCs per call instead of 3
        argv = ["squeue", "--local", "-h", "-r", "-o", "%i|%T", "-j", ",".join(parents)]
        for attempt in range(self.query_retries):
            if attempt:
                time.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
            self.queries += 1
            try:
                res = self._run(argv)
            except ControllerTimeout as exc:
                self.last_problem = str(exc)
                continue
            if res.returncode == 0:
                self.unanswered = 0
                return _parse_states(res.stdout)
            if _PURGED.search(res.stderr):  # an answer: "not in the queue" (sacct has the end)
                self.unanswered = 0
                return {}
            self.last_problem = f"squeue: {res.stderr.strip()} ({_slurm_conf()})"
        self.unanswered += 1
        return None

    def ended(self, job_ids: list[str]) -> dict[str, JobState]:
        """From sacct alone (slurmdbd answers; no controller RPC): a job whose exit record the head saw.
        Accounting may lag the job's end by a moment: such a job reads as still running, and is asked
        again."""
        known = self._sacct(job_ids)
        return {j: known.get(j, JobState.UNKNOWN) for j in job_ids}

    def _sacct(self, job_ids: list[str]) -> dict[str, JobState]:
        """Final states from accounting; a failing or unanswered sacct is retried, then reported as
        unknown (never done)."""
        parents = sorted({j.split("_")[0] for j in job_ids})
        for attempt in range(self.query_retries):
            if attempt:
                time.sleep(0.5 * attempt)
            self.queries += 1
            try:
                res = self._run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(parents)])
            except ControllerTimeout:
                continue
            if res.returncode == 0:
                return _parse_states(res.stdout)
        return {}


def _parse_states(text: str) -> dict[str, JobState]:
    """``ID|STATE`` lines (squeue -o '%i|%T', sacct -P -o JobID,State), array ranges expanded."""
    states = {}
    for line in text.splitlines():
        jid, _, raw = line.partition("|")
        for one in expand_array_id(jid.strip()):
            states[one] = parse_state(raw)
    return states


def _fence(attempt_dir: Path, why: str) -> None:
    """Write the attempt's tombstone (see :func:`asiarch.dispatch.payload.claim_attempt`): a job of it
    that sbatch queued without telling the head exits when it starts instead of training."""
    try:
        AttemptFiles(attempt_dir).abandoned.write_text(f"{why} at {time.time():.0f}; the head recorded this "
                                                       "attempt as not submitted\n")
    except OSError:
        pass


def _inherited_from_a_job(name: str) -> bool:
    """A head running as a Slurm job must not hand its own allocation's variables to the jobs it
    submits (srun then fails on e.g. SLURM_MEM_PER_CPU with SLURM_MEM_PER_NODE)."""
    return name != "SLURM_CONF" and name.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SUBMITIT_"))


def _gres_count(gres: str, name: str) -> int:
    """GPUs of one kind in sinfo's %G (``gpu:4``, ``gpu:a100:4(S:0-1)``, ``(null)``)."""
    total = 0
    for part in gres.split(","):
        fields = part.split("(")[0].split(":")
        if fields[0] == name and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def parse_tres(tres: str) -> dict[str, int]:
    """``cpu=2,mem=2000M,node=1,gres/gpu=4`` -> {'cpu': 2, 'gres/gpu': 4, ...} (numbers only)."""
    out = {}
    for part in tres.split(","):
        key, _, value = part.partition("=")
        if value.isdigit():
            out[key] = int(value)
    return out


def _slurm_words(exc: BaseException) -> str:
    text = str(exc)
    m = re.search(r"sbatch: error: (.*)", text)
    return m.group(1).strip() if m else text.strip().splitlines()[-1] if text.strip() else repr(exc)
