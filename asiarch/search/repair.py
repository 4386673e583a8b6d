"""The gate between a proposal and a job: the pre-flight, and the Engineer's repairs.

Every candidate is pre-flighted in a sandboxed child at the experiment's training settings
(asiarch.search.preflight) before it may be trained. With the LLM agents, the Engineer repairs a
layer that fails the pre-flight or fails in training (llm.repair_attempts tries, each pre-flighted
in turn, never a copy of another candidate's code); every try is in the store's repairs table.
Without agents a failure is final.
"""

from __future__ import annotations

import threading

from asiarch.analysis.format import candidate_label
from asiarch.config import Config
from asiarch.dispatch.base import JobState
from asiarch.job.candidate import code_sha256
from asiarch.layout import ExperimentDir
from asiarch.search.ingest import Outcome, log_tail
from asiarch.search.messages import Sink
from asiarch.search.preflight import PreflightReport, preflight_settings, run_preflight
from asiarch.store import Attempt, Candidate, Store


def _tries(fix) -> str:
    n = len(fix.attempts)
    return f"{n} {'try' if n == 1 else 'tries'}"


class Checker:
    """Pre-flights candidates and has the Engineer (``agents``, or None) repair what fails."""

    def __init__(self, exp: ExperimentDir, cfg: Config, store: Store, agents, console: Sink):
        self.exp = exp
        self.cfg = cfg
        self.store = store
        self.agents = agents
        self.console = console
        self.slots = threading.BoundedSemaphore(cfg.search.preflight_workers)

    def preflight(self, code: str) -> PreflightReport:
        """The pre-flight battery on ``code`` in a sandboxed child process, at the experiment's own
        training settings (:func:`asiarch.search.preflight.preflight_settings`). At most
        search.preflight_workers run at once, whichever thread asks (the Engineer's checks included)."""
        with self.slots:
            return run_preflight(code, **preflight_settings(self.cfg))

    def check(self, cands: list[Candidate]) -> list[Candidate]:
        """Pre-flight each candidate in a sandboxed child process; returns those that pass. With the LLM
        agents, the Engineer repairs one that fails (each repair pre-flighted in turn)."""
        ok = []
        for cand in cands:
            self.console.status(f"checking #{cand.id} {cand.name}")
            report = self.preflight(cand.code)
            passed = self.record_preflight(cand, report)
            if passed is None:
                passed = self.record_repair(cand, report, self.repair_preflight(cand, report))
            if passed:
                ok.append(self.store.candidate(cand.id))
        return ok

    def record_preflight(self, cand: Candidate, report: PreflightReport) -> bool | None:
        """Record a pre-flight: True (checked), False (rejected: no agents to repair it) or None (the
        Engineer should try: :meth:`repair_preflight`, then :meth:`record_repair`)."""
        if report.ok:
            self.store.set_candidate_status(cand.id, "checked", event=f"pre-flight ok ({report.elapsed_s:.1f} s)")
            return True
        if self.agents is not None:
            return None
        return self.record_repair(cand, report, None)

    def repair_preflight(self, cand: Candidate, report: PreflightReport):
        """The Engineer's repair of a candidate that failed its pre-flight (None: none passed)."""
        return self.repair(cand, report.reason, stage="preflight", context=report.format_table())

    def record_repair(self, cand: Candidate, report: PreflightReport, fix) -> bool:
        """Record how a failed pre-flight ended: checked with the repair, or rejected."""
        if fix is not None:
            self.store.set_candidate_status(
                cand.id, "checked", event=f"pre-flight: {report.reason}; repaired by the Engineer "
                                          f"({_tries(fix)}), pre-flight ok"[:1000])
            self.console.line(f"{candidate_label(cand.id, cand.name)} REPAIRED  {report.reason}"[:200])
            return True
        self.store.set_candidate_status(cand.id, "rejected", report.reason, event=f"pre-flight: {report.reason}")
        self.console.line(f"{candidate_label(cand.id, cand.name)} REJECTED  {report.reason}"[:200])
        return False

    def repair(self, cand: Candidate, error: str, *, stage: str, context: str):
        """The Engineer's repair of ``cand`` for ``error`` (stage 'preflight' or 'job'), stored as the
        candidate's code; None without agents or when no repair passed the pre-flight. Every try is in
        the store's repairs table."""
        if self.agents is None:
            return None
        from asiarch.propose.llm.client import LLMError

        def check(code: str) -> str:  # '' when the repair may be trained, else why not
            sha = code_sha256(code)
            twin = self.store.candidate_with_code(sha, other_than=cand.id)
            if twin is not None:
                return (f"duplicate: this code is identical to candidate #{twin.id} {twin.name}; repair this layer "
                        "and keep its own idea")
            return self.preflight(code).reason

        self.console.status(f"the Engineer repairs #{cand.id} {cand.name} ({stage})")
        try:
            fix = self.agents.repair(cand, error, stage=stage, context=context, check=check)
        except LLMError as exc:
            fix = None
            self.store.log_event("llm", f"the Engineer failed on #{cand.id}: {exc}"[:1000], cand.id)
        if fix is None:
            first = error.splitlines()[0] if error else ""
            self.store.log_event("llm", f"the Engineer found no repair ({stage}): {first}"[:1000], cand.id)
            return None
        self.store.update_code(cand.id, fix.code, code_sha256(fix.code))
        self.store.log_event("repaired", f"repaired by the Engineer ({stage}, {_tries(fix)}): {fix.explanation}"[:1000],
                             cand.id)
        return fix

    def wants_job_repair(self, out: Outcome, *, attempts_used: int) -> bool:
        """Whether the Engineer should try to repair a candidate whose job failed: with agents, not for
        jobs cancelled by hand, nor once search.max_attempts are used (``attempts_used`` of the seed)."""
        return (self.agents is not None and attempts_used < self.cfg.search.max_attempts
                and out.attempt_status != "cancelled")

    def repair_job(self, attempt: Attempt, state: JobState, out: Outcome, *, attempts_used: int) -> bool:
        """Whether the Engineer repaired a candidate whose job failed (the next attempt trains the repair;
        :meth:`wants_job_repair` says when it is asked)."""
        if not self.wants_job_repair(out, attempts_used=attempts_used):
            return False
        cand = self.store.candidate(attempt.candidate_id)
        log = self.exp.attempt(cand.id, cand.name, attempt.n).log
        context = (f"job state {state.value}, attempt {attempt.n} of {self.cfg.search.max_attempts}, "
                   f"{self.cfg.train.nproc} ranks, batch {self.cfg.train.batch_size}, sequence length "
                   f"{self.cfg.train.seq_len}\nlog tail:\n{log_tail(log, 40)}")
        if self.repair(cand, out.error, stage="job", context=context) is None:
            return False
        self.console.line(f"{candidate_label(cand.id, cand.name)} REPAIRED  by the Engineer; attempt "
                          f"{attempt.n + 1} trains the repair")
        return True
