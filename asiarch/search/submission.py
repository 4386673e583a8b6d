"""From candidates to attempts in flight: each attempt's files and store row, one scheduler call
per batch, and the rule for trying a seed again.

An attempt is written (layer, spec, job script) and recorded 'pending' before the scheduler is
asked, and marked 'submitted' with its job id after, so a head killed in between leaves an attempt
that recovery either re-attaches (the job left a marker) or abandons (asiarch.search.recovery).
"""

from __future__ import annotations

import sys

from asiarch.config import Config, stage_seeds, stage_train
from asiarch.dispatch.attempt import write_attempt_files
from asiarch.dispatch.base import JobRequest, Scheduler
from asiarch.job.contract import atomic_write
from asiarch.layout import ExperimentDir, run_key
from asiarch.search import early_stopping as es
from asiarch.search.errors import SearchError
from asiarch.store import Attempt, Candidate, Store

# Attempt statuses of work the scheduler has (or is about to have): not ended, so not to be repeated.
ACTIVE = ("pending", "submitted", "running")

# The attempts this head watches: attempt id -> job id. Shared by the submitter (adds), recovery
# (re-attaches) and the poller (removes each as its job ends); its size is the slots in use.
InFlight = dict[int, str]


def checked_waiting(store: Store) -> list[Candidate]:
    """Checked new candidates with no attempt in flight (added by hand, or left by a previous head)."""
    busy = {a.candidate_id for a in store.attempts(statuses=ACTIVE)}
    return [c for c in store.candidates(status="checked") if c.origin != "baseline" and c.id not in busy]


class Submitter:
    """Prepares and submits attempts, and decides whether a seed is tried again."""

    def __init__(self, exp: ExperimentDir, cfg: Config, store: Store, scheduler: Scheduler, active: InFlight, *,
                 python: str | None = None):
        self.exp = exp
        self.cfg = cfg
        self.store = store
        self.scheduler = scheduler
        self.active = active
        self.python = python or cfg.cluster.python or sys.executable  # the jobs' interpreter
        # None: submit_runs sends at once (rounds). A list (the steady pipeline): prepared attempts wait
        # here, recorded 'pending', until flush() sends them as slots free.
        self.outbox: list[tuple[int, JobRequest]] | None = None

    def prepare_attempt(self, cand: Candidate, n: int, stage: str = "explore",
                        seed: int = 0) -> tuple[int, JobRequest]:
        """Write the attempt's files (layer, spec, job script) and record it; returns (attempt id, request)."""
        key = run_key(self.cfg.experiment.name, cand.id, n)
        paths = self.exp.attempt(cand.id, cand.name, n)
        layer = self.exp.layer_file(cand.id, cand.name)
        layer.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(layer, cand.code)
        identity = {"experiment": self.cfg.experiment.name, "candidate_id": cand.id, "attempt": n,
                    "run_key": key, "code_sha256": cand.code_sha256, "stage": stage, "seed": seed}
        checkpoint = "checkpoint.pt" if (stage, seed) == ("explore", 0) else f"checkpoint-{stage}-s{seed}.pt"
        train = stage_train(self.cfg, stage, seed)
        rungs = es.rung_steps(self.cfg.early_stopping, train.steps) if es.applies(self.cfg.early_stopping, stage) else []
        request = write_attempt_files(paths, layer_path=layer, identity=identity, train=train, cluster=self.cfg.cluster,
                                      class_name=self.cfg.search.class_name, python=self.python,
                                      bind_root=self.exp.root, checkpoint_name=checkpoint, report_steps=tuple(rungs))
        attempt_id = self.store.add_attempt(cand.id, n, key, self.exp.relative(paths.dir), cand.code_sha256,
                                            stage=stage, seed=seed)
        return attempt_id, request

    def missing_seeds(self, cand: Candidate, stage: str) -> list[int]:
        """The seeds of ``stage`` for which the candidate's current code has no attempt in flight, no ok
        result, and attempts left (search.max_attempts per seed)."""
        covered = {a.seed for a in self.store.attempts(cand.id)
                   if a.stage == stage and a.code_sha256 == cand.code_sha256 and (a.status in ACTIVE or a.status == "ok")}
        given_up = {s for s in range(stage_seeds(self.cfg, stage))
                    if self.attempts_used(cand.id, stage, s) >= self.cfg.search.max_attempts}
        return [s for s in range(stage_seeds(self.cfg, stage)) if s not in covered | given_up]

    def submit(self, cands: list[Candidate], stage: str = "explore") -> None:
        """Submit, as one batch, an attempt for every seed of ``stage`` each candidate still needs."""
        self.submit_runs([(cand, stage, seed) for cand in cands for seed in self.missing_seeds(cand, stage)])

    def submit_runs(self, runs: list[tuple[Candidate, str, int]]) -> None:
        """Submit one attempt per (candidate, stage, seed), as one batch (on Slurm: one array); with an
        outbox, prepare them and leave them there."""
        prepared = []
        numbers: dict[int, int] = {}
        for cand, stage, seed in runs:
            n = numbers.get(cand.id) or 1 + max((a.n for a in self.store.attempts(cand.id)), default=0)
            numbers[cand.id] = n + 1
            prepared.append(self.prepare_attempt(cand, n, stage, seed))
        if not prepared:
            return
        if self.outbox is not None:  # the steady pipeline sends them when slots free (flush)
            self.outbox.extend(prepared)
            return
        self.send(prepared)

    def flush(self, n: int | None = None) -> int:
        """Send the first ``n`` (default: all) prepared attempts of the outbox as one batch; returns how
        many went."""
        if not self.outbox:
            return 0
        n = len(self.outbox) if n is None else min(n, len(self.outbox))
        batch, self.outbox[:] = self.outbox[:n], self.outbox[n:]
        if batch:
            self.send(batch)
        return len(batch)

    def send(self, prepared: list[tuple[int, JobRequest]]) -> None:
        """One scheduler call (on Slurm: one sbatch, an array) for prepared attempts."""
        try:
            job_ids = self.scheduler.submit([req for _, req in prepared])
        except Exception as exc:  # the scheduler refused: nothing is marked submitted
            for attempt_id, _ in prepared:
                self.store.set_attempt_status(attempt_id, "failed", f"not submitted: {exc}")
            raise SearchError(f"the scheduler refused the round: {exc}. Fix [cluster] (partition, account, "
                              "qos, gres) and run again; the candidates stay checked and are resubmitted.") from exc
        for (attempt_id, _), job_id in zip(prepared, job_ids):
            self.store.mark_submitted(attempt_id, self.scheduler.name, job_id)
            self.active[attempt_id] = job_id

    def attempts_used(self, cid: int, stage: str = "explore", seed: int = 0) -> int:
        """Attempts of one seed of one stage that count against search.max_attempts: those that ran or
        were meant to, not the ones lost with a killed head (those never trained, or are watched again
        when they do)."""
        return sum(1 for a in self.store.attempts(cid) if a.status != "lost" and (a.stage, a.seed) == (stage, seed))

    def retry_or_fail(self, attempt: Attempt, why: str) -> None:
        """Train the attempt's seed again, within search.max_attempts; else fail the candidate (in the
        exploration stage) or record that the seed is missing (verification)."""
        cid = attempt.candidate_id
        used = self.attempts_used(cid, attempt.stage, attempt.seed)
        if used < self.cfg.search.max_attempts:
            self.submit_runs([(self.store.candidate(cid), attempt.stage, attempt.seed)])
        elif attempt.stage == "explore":
            self.store.set_candidate_status(cid, "failed", f"{why} (after {used} attempts)", event=why)
        else:
            self.store.log_event("seed-failed", f"{attempt.stage} seed {attempt.seed}: {why} (after {used} attempts); "
                                 "its statistics use the other seeds", cid, attempt.id)
