"""Slurm backend: one array job per round through submitit, one query per poll.

A round of job requests goes out as a single ``sbatch`` (submitit's ``executor.batch()``
makes an array ``--array=0-N%K``, K = ``max_in_flight``), so the head never calls sbatch
once per candidate. Each array task runs :func:`asiarch.dispatch.payload.run_job_script`
on its rendered ``job.sh`` (which execs torchrun).

Live states come from the controller (``squeue``: one call for every id in flight, ~10 ms);
jobs that have left the queue get their final state from accounting (``sacct``: one call
for all of them). ``sacct`` lags the controller and can omit pending array tasks, so a job
missing from both is ``UNKNOWN``, never done.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import submitit

from asiarch.dispatch.base import JobRequest, JobState, Scheduler, SchedulerError, environ_without, secrets_hidden
from asiarch.dispatch.payload import run_job_script
from asiarch.dispatch.registry import register

if TYPE_CHECKING:
    from asiarch.config import Config
    from asiarch.layout import ExperimentDir

__all__ = ["SchedulerError", "SlurmScheduler", "SlurmSpec", "expand_array_id", "parse_state", "parse_tres"]


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


def _run(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


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
    queries: int = 0                     # scheduler commands issued by states(): one per poll or two
    _final: dict[str, JobState] = field(default_factory=dict)
    _checked: bool = False

    @classmethod
    def from_config(cls, exp: ExperimentDir, cfg: Config) -> SlurmScheduler:
        """The backend for ``exp`` with :meth:`SlurmSpec.from_config`; polls back off to the larger of
        cluster.poll_interval_s and cluster.poll_max_interval_s; the LLM key is kept from every job."""
        c = cfg.cluster
        return cls(exp.jobs, SlurmSpec.from_config(cfg), secret_env=(cfg.llm.api_key_env,), python=c.python or None,
                   max_poll_s=max(c.poll_interval_s, c.poll_max_interval_s))

    def check(self) -> None:
        """Refuse early, in Slurm's words, when no controller answers or the partition is unknown."""
        import shutil

        if not shutil.which("sbatch"):
            raise SchedulerError("sbatch is not on PATH: run on a Slurm login node (or, on this machine, "
                                 "start the test cluster: eval \"$(slurm/start-test-cluster.sh)\")")
        res = _run(["sinfo", "-h", "-o", "%P"])
        if res.returncode != 0:
            raise SchedulerError(f"no Slurm controller answers: {res.stderr.strip() or res.stdout.strip()}")
        partitions = [p.rstrip("*") for p in res.stdout.split()]
        if self.spec.partition and self.spec.partition not in partitions:
            raise SchedulerError(f"partition {self.spec.partition!r} does not exist; "
                                 f"this cluster has: {', '.join(partitions)}")
        # a request no node can hold would pend forever: refuse it now
        argv = ["sinfo", "-h", "-N", "-o", "%c|%G"] + (["-p", self.spec.partition] if self.spec.partition else [])
        nodes = _run(argv).stdout.split()
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
            with secrets_hidden(self.secret_env), environ_without(_inherited_from_a_job), ex.batch():
                jobs = [ex.submit(run_job_script, str(r.script), str(r.log), self.secret_env) for r in requests]
        except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as exc:
            raise SchedulerError(f"sbatch refused the round: {_slurm_words(exc)}") from exc
        return [job.job_id for job in jobs]

    def states(self, job_ids: list[str]) -> dict[str, JobState]:
        out = {j: self._final[j] for j in job_ids if j in self._final}
        live = [j for j in job_ids if j not in out]
        if not live:
            return out
        queue = self._squeue(live)
        gone = []
        for j in live:
            if j in queue:
                out[j] = queue[j]
            else:
                gone.append(j)
        if gone:
            acct = self._sacct(gone)
            for j in gone:
                state = acct.get(j, JobState.UNKNOWN)
                out[j] = state
                if state.finished:
                    self._final[j] = state
        return out

    def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            _run(["scancel", *job_ids])

    def adopt(self, marker: dict, attempt_dir: Path) -> str | None:
        """The Slurm id the job wrote into its marker (squeue and sacct answer for it, running or
        ended), or None for a marker written outside Slurm."""
        return marker.get("slurm_job_id") or None

    def accounting(self, job_ids: list[str]) -> dict[str, dict[str, float]]:
        """Elapsed, CPU- and GPU-seconds of finished jobs from sacct, one call for all of them."""
        if not job_ids:
            return {}
        parents = sorted({j.split("_")[0] for j in job_ids})
        res = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,ElapsedRaw,AllocTRES", "-j", ",".join(parents)])
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
    def _squeue(self, job_ids: list[str]) -> dict[str, JobState]:
        """Live states from the controller, one call for all ids (array tasks included)."""
        self.queries += 1
        parents = sorted({j.split("_")[0] for j in job_ids})
        # --local skips the federation lookup: 2 controller RPCs per call instead of 3
        res = _run(["squeue", "--local", "-h", "-r", "-o", "%i|%T", "-j", ",".join(parents)])
        if res.returncode != 0:
            # squeue fails for ids the controller has purged: treat as "not in the queue"
            return {}
        return _parse_states(res.stdout)

    def _sacct(self, job_ids: list[str], retries: int = 3) -> dict[str, JobState]:
        """Final states from accounting; a failing sacct is retried, then reported as unknown."""
        parents = sorted({j.split("_")[0] for j in job_ids})
        for attempt in range(retries):
            self.queries += 1
            res = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(parents)])
            if res.returncode == 0:
                return _parse_states(res.stdout)
            time.sleep(0.5 * (attempt + 1))
        return {}


def _parse_states(text: str) -> dict[str, JobState]:
    """``ID|STATE`` lines (squeue -o '%i|%T', sacct -P -o JobID,State), array ranges expanded."""
    states = {}
    for line in text.splitlines():
        jid, _, raw = line.partition("|")
        for one in expand_array_id(jid.strip()):
            states[one] = parse_state(raw)
    return states


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
