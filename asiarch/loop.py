"""The discovery loop: baselines, then rounds of propose -> check -> train -> analyse.

Every step is written to the store before the next begins, so a restarted head
(``asiarch run DIR`` again) picks up where the last one stopped: candidates already
scored stay scored, checked candidates are submitted, and attempts whose jobs the
scheduler no longer knows are tried again (within ``search.max_attempts``).
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from asiarch import analyst
from asiarch.attempt import write_attempt_files
from asiarch.checks import run_preflight
from asiarch.config import Config, render_toml
from asiarch.console import Console
from asiarch.dispatch.base import JobRequest, JobState, Scheduler
from asiarch.genome import genome_from_code
from asiarch.job import result as rf
from asiarch.job.candidate import code_sha256
from asiarch.layout import ExperimentDir, run_key
from asiarch.proposer import OfflineProposer, ProposalError, baseline_sources
from asiarch.sampling import sample_parents
from asiarch.store import Attempt, Candidate, Store


class SearchError(RuntimeError):
    """The search cannot go on (e.g. the reference baseline failed); the message says what to fix."""


ACTIVE = ("pending", "submitted", "running")


@dataclass
class Summary:
    trained: int
    failed: int
    rejected: int
    best: Candidate | None
    elapsed_s: float


def make_scheduler(exp: ExperimentDir, cfg: Config, *, check: bool = True) -> Scheduler:
    if cfg.cluster.scheduler == "local":
        from asiarch.dispatch.local import LocalScheduler

        return LocalScheduler(exp.jobs, max_in_flight=cfg.cluster.max_in_flight, timeout_min=cfg.cluster.timeout_min,
                              secret_env=(cfg.llm.api_key_env,), python=cfg.cluster.python or None)
    from asiarch.dispatch.slurm import SchedulerError, SlurmScheduler, SlurmSpec

    c, t = cfg.cluster, cfg.train
    extra = tuple((k, v or True) for k, _, v in (x.partition("=") for x in c.sbatch_extra))
    spec = SlurmSpec(
        job_name=cfg.experiment.name, time_min=max(1, math.ceil(c.timeout_min)), partition=c.partition,
        account=c.account, qos=c.qos, constraint=c.constraint, nodes=c.nodes,
        cpus_per_task=t.nproc * t.threads_per_rank if not c.gpus_per_node else max(2, 4 * c.gpus_per_node),
        gpus_per_node=c.gpus_per_node, gres_name=c.gres_name, mem_gb=c.mem_gb,
        array_parallelism=c.max_in_flight, additional=extra)
    sched = SlurmScheduler(exp.jobs, spec, secret_env=(cfg.llm.api_key_env,), python=c.python or None,
                           max_poll_s=max(c.poll_interval_s, c.poll_max_interval_s))
    if check:
        try:
            sched.check()
        except SchedulerError as exc:
            raise SearchError(str(exc)) from exc
    return sched


def make_proposer(cfg: Config) -> OfflineProposer:
    if cfg.search.proposer != "offline":
        raise SearchError(f"search.proposer = {cfg.search.proposer!r} needs the LLM agents, which this version does "
                          "not have yet; use 'offline'")
    return OfflineProposer(seed=cfg.experiment.seed, class_name=cfg.search.class_name,
                           allow_quadratic=cfg.search.allow_quadratic)


class Search:
    """One experiment's loop. ``Search(exp, cfg).run()`` runs it to its budget."""

    def __init__(self, exp: ExperimentDir, cfg: Config, *, scheduler: Scheduler | None = None,
                 console: Console | None = None, python: str | None = None):
        self.exp = exp
        self.cfg = cfg
        self.console = console or Console()
        self.python = python or cfg.cluster.python or sys.executable
        exp.root.mkdir(parents=True, exist_ok=True)
        self.store = Store.open(exp.db)
        self.scheduler = scheduler or make_scheduler(exp, cfg)
        self.proposer = make_proposer(cfg)
        self.rng = random.Random(cfg.experiment.seed)
        self.active: dict[int, str] = {}  # attempt id -> job id
        exp.config.write_text(render_toml(cfg))
        self.store.set_meta("experiment", cfg.experiment.name)

    # ------------------------------------------------------------------ top level
    def run(self) -> Summary:
        t0 = time.time()
        c = self.console
        self.register_baselines()
        self.recover()
        pending = [b for b in self.store.candidates(origin="baseline") if b.status == "checked"]
        if pending:
            c.line(f"baselines: training {len(pending)} ({', '.join(b.name for b in pending)})")
            self.submit(pending)
        self.wait()
        self.require_reference()
        while True:
            remaining = self.cfg.budget.candidates - self.trained_count()
            if remaining <= 0 or self.out_of_budget():
                break
            round_no = self.store.max_round() + 1
            waiting = self.checked_waiting()  # added by hand, or left checked by a previous head
            n_new = max(0, min(self.cfg.search.round_size, remaining) - len(waiting))
            proposed = self.propose_round(round_no, n_new) if n_new else []
            if n_new and not proposed and not waiting:
                c.line("the proposer has nothing new to offer; stopping")
                break
            ready = waiting + self.check(proposed)
            if ready:
                c.line(f"round {round_no}: submitting {len(ready)} candidate(s)")
                self.submit(ready)
            self.wait()
            if self.proposals_exhausted():
                c.line("too many proposals rejected; stopping (see `asiarch status DIR` for the reasons)")
                break
        return self.summary(time.time() - t0)

    # ------------------------------------------------------------------ baselines
    def register_baselines(self) -> None:
        have = {b.name for b in self.store.candidates(origin="baseline")}
        missing = [n for n in self.cfg.baselines.names if n not in have]
        if not missing:
            return
        try:
            sources = baseline_sources(tuple(missing), class_name=self.cfg.search.class_name)
        except KeyError as exc:
            raise SearchError(f"baselines.names: unknown baseline {exc}; see `asiarch init` for the valid ones")
        for name in missing:
            code = sources[name]
            genome = genome_from_code(code)
            self.store.add_candidate(name=name, origin="baseline", code=code, code_sha256=code_sha256(code),
                                     genome_key=genome.key() if genome else "", status="checked",
                                     motivation=f"Baseline {name}.")

    def require_reference(self) -> None:
        ref_name = self.cfg.baselines.reference
        ref = [b for b in self.store.candidates(origin="baseline") if b.name == ref_name]
        if not ref or ref[0].status != "done":
            reason = ref[0].reason if ref else "not registered"
            raise SearchError(
                f"the reference baseline {ref_name!r} has no result ({reason}); fitness is measured against it. "
                "Check its log under candidates/, fix [train] (e.g. a smaller lr) and run again.")
        refv = analyst.reference_for(self.store, self.cfg)
        for cand in self.store.candidates(status="done"):
            if cand.fitness is None:
                analyst.score_candidate(self.store, self.cfg, cand, refv)

    # ------------------------------------------------------------------ recovery
    def recover(self) -> None:
        """Check candidates left unchecked; re-attach to attempts a previous head left in flight, and
        retry those the scheduler lost."""
        for cand in self.store.candidates(status="proposed"):
            self.check([cand])
        stale = self.store.attempts(statuses=ACTIVE)
        if not stale:
            return
        states = self.scheduler.states([a.job_id for a in stale if a.job_id])
        for a in stale:
            state = states.get(a.job_id, JobState.UNKNOWN) if a.job_id else JobState.UNKNOWN
            if state in (JobState.PENDING, JobState.RUNNING):
                self.active[a.id] = a.job_id
                continue
            if state.finished:
                self.active[a.id] = a.job_id  # ingested by the next wait()
                continue
            if (self.exp.root / a.dir / "result.h5").exists():
                # the job outlived its head and finished: ingest its result instead of training again
                self.ingest(a, JobState.COMPLETED)
                continue
            self.store.set_attempt_status(a.id, "lost", "the scheduler no longer knows this job (head restarted)")
            self.console.line(f"#{a.candidate_id}: attempt {a.n} was lost with the previous head; trying again")
            self.retry_or_fail(a.candidate_id, a.n, "lost with the previous head")

    # ------------------------------------------------------------------ proposing and checking
    def propose_round(self, round_no: int, n: int) -> list[Candidate]:
        shas, keys = self.store.known_keys()
        out = []
        s = self.cfg.search
        for i in range(n):
            sample = sample_parents(self.store, self.rng, pool_size=s.pool_size, parent_top=s.parent_top,
                                    num_references=s.num_references, rebuild_every=s.pool_rebuild_every)
            if sample is None:
                break
            try:
                prop = self.proposer.propose(sample.parent, sample.references, seen_keys=keys,
                                             rng_key=f"{round_no}:{i}")
            except ProposalError as exc:
                self.console.line(f"round {round_no}: no new proposal from #{sample.parent.id}: {exc}")
                continue
            sha = code_sha256(prop.code)
            if sha in shas:
                continue
            shas.add(sha)
            keys.add(prop.genome.key())
            cid = self.store.add_candidate(name=prop.name, origin="offline", code=prop.code, code_sha256=sha,
                                           parent_id=sample.parent.id, round=round_no, motivation=prop.motivation,
                                           genome_key=prop.genome.key(),
                                           reference_ids=list(prop.reference_ids))
            out.append(self.store.candidate(cid))
            self.console.line(f"#{cid:<4d} {prop.name[:34]:<34s} proposed ({prop.operator} of #{sample.parent.id} "
                              f"{sample.parent.name})")
        return out

    def check(self, cands: list[Candidate]) -> list[Candidate]:
        """Pre-flight each candidate in a sandboxed child process; returns those that pass."""
        t = self.cfg.train
        ok = []
        for cand in cands:
            self.console.status(f"checking #{cand.id} {cand.name}")
            # 128 tokens: at least two chunks of the chunked kernels ASI-Arch-style layers use (chunk 32-64),
            # so state passed across chunks is checked too; bf16 autocast when training runs in bf16, since
            # many published layers hard-code bf16 inside their kernels.
            report = run_preflight(cand.code, class_name=self.cfg.search.class_name, hidden_size=t.hidden_size,
                                   num_heads=t.num_heads, seq_len=128, max_params=t.max_params or None,
                                   autocast=t.precision == "bf16", allow_quadratic=self.cfg.search.allow_quadratic,
                                   secret_env_names=(self.cfg.llm.api_key_env,))
            if report.ok:
                self.store.set_candidate_status(cand.id, "checked", event=f"pre-flight ok ({report.elapsed_s:.1f} s)")
                ok.append(self.store.candidate(cand.id))
            else:
                self.store.set_candidate_status(cand.id, "rejected", report.reason, event=f"pre-flight: {report.reason}")
                self.console.line(f"#{cand.id:<4d} {cand.name[:34]:<34s} REJECTED  {report.reason}"[:200])
        return ok

    def checked_waiting(self) -> list[Candidate]:
        """Checked candidates with no attempt yet in flight (added by hand, or left by a previous head)."""
        busy = {a.candidate_id for a in self.store.attempts(statuses=ACTIVE)}
        return [c for c in self.store.candidates(status="checked") if c.origin != "baseline" and c.id not in busy]

    # ------------------------------------------------------------------ submitting
    def prepare_attempt(self, cand: Candidate, n: int) -> tuple[int, JobRequest]:
        """Write the attempt's files (layer, spec, job script) and record it; returns (attempt id, request)."""
        key = run_key(self.cfg.experiment.name, cand.id, n)
        paths = self.exp.attempt(cand.id, cand.name, n)
        layer = self.exp.layer_file(cand.id, cand.name)
        layer.parent.mkdir(parents=True, exist_ok=True)
        layer.write_text(cand.code)
        identity = {"experiment": self.cfg.experiment.name, "candidate_id": cand.id, "attempt": n,
                    "run_key": key, "code_sha256": cand.code_sha256}
        request = write_attempt_files(paths, layer_path=layer, identity=identity, train=self.cfg.train,
                                      cluster=self.cfg.cluster, class_name=self.cfg.search.class_name,
                                      python=self.python, bind_root=self.exp.root)
        attempt_id = self.store.add_attempt(cand.id, n, key, self.exp.relative(paths.dir), cand.code_sha256)
        return attempt_id, request

    def submit(self, cands: list[Candidate], attempt_numbers: dict[int, int] | None = None) -> None:
        prepared = []
        for cand in cands:
            n = (attempt_numbers or {}).get(cand.id) or 1 + len(self.store.attempts(cand.id))
            prepared.append(self.prepare_attempt(cand, n))
        if not prepared:
            return
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

    def retry_or_fail(self, cid: int, n_done: int, why: str) -> None:
        if n_done < self.cfg.search.max_attempts:
            self.submit([self.store.candidate(cid)], {cid: n_done + 1})
        else:
            self.store.set_candidate_status(cid, "failed", f"{why} (after {n_done} attempts)", event=why)

    # ------------------------------------------------------------------ waiting and ingesting
    def wait(self) -> None:
        """Poll every job in flight with one scheduler query per poll; ingest each as it ends.

        The interval starts at cluster.poll_interval_s and grows by half each poll up to the
        scheduler's max_poll_s (Slurm: cluster.poll_max_interval_s), so a long round costs the
        controller a few RPCs; a job's end is noticed at most that late."""
        interval = self.cfg.cluster.poll_interval_s
        cap = max(self.scheduler.max_poll_s, interval)
        while self.active:
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
                self.ingest(attempt, state)
            if self.active:
                self.console.status(self.progress_text(states))
                time.sleep(interval)
                interval = min(interval * 1.5, cap)

    def record_usage(self, finished: dict[int, str]) -> None:
        """The scheduler's accounting (Slurm: sacct's elapsed x allocated CPUs/GPUs), one query per poll."""
        accounting = getattr(self.scheduler, "accounting", None)
        if not finished or accounting is None:
            return
        usage = accounting(list(finished.values()))
        for attempt_id, job_id in finished.items():
            if job_id in usage:
                self.store.set_attempt_usage(attempt_id, **usage[job_id])

    def ingest(self, attempt: Attempt, state: JobState) -> None:
        """Record a finished attempt; retry it (infrastructure failure) or settle its candidate."""
        out = analyst.ingest_attempt(self.store, self.exp, self.cfg, attempt, state)
        self.store.set_attempt_status(attempt.id, out.attempt_status, out.error)
        self.console.line(out.line)
        first = out.error.splitlines()[0] if out.error else out.attempt_status
        if out.retry:
            self.retry_or_fail(attempt.candidate_id, attempt.n, first)
        elif out.candidate_status == "failed":
            self.store.set_candidate_status(attempt.candidate_id, "failed", first[:500],
                                            event=f"attempt {attempt.n}: {out.attempt_status}")

    def progress_text(self, states: dict[str, JobState]) -> str:
        running = [a for a, j in self.active.items() if states.get(j) is JobState.RUNNING]
        queued = len(self.active) - len(running)
        parts = [f"{len(running)} running, {queued} queued"]
        for attempt_id in running[:2]:
            a = self.store.attempt(attempt_id)
            p = rf.read_progress(self.exp.root / a.dir / "progress.json")
            if p:
                parts.append(f"#{a.candidate_id} step {p.get('step')}/{p.get('steps')} loss {p.get('loss', 0):.3f}")
        done = self.trained_count()
        return f"trained {done}/{self.cfg.budget.candidates} | " + " | ".join(parts)

    # ------------------------------------------------------------------ budget
    def trained_count(self) -> int:
        """New candidates whose training has ended (scored, or failed after their attempts)."""
        row = self.store.conn.execute(
            "SELECT COUNT(*) FROM candidates WHERE origin != 'baseline' AND status IN ('done', 'failed')").fetchone()
        return int(row[0])

    def out_of_budget(self) -> bool:
        hours = self.cfg.budget.gpu_hours
        if hours and self.store.compute_seconds() / 3600 >= hours:
            self.console.line(f"budget: {hours} compute-hours spent; stopping")
            return True
        return False

    def proposals_exhausted(self) -> bool:
        rejected = self.store.conn.execute("SELECT COUNT(*) FROM candidates WHERE status = 'rejected'").fetchone()[0]
        return rejected >= 4 * max(1, self.cfg.budget.candidates)

    def summary(self, elapsed: float) -> Summary:
        counts = self.store.counts()
        best = self.store.ranked(1, include_baselines=False)
        return Summary(trained=counts.get("done", 0), failed=counts.get("failed", 0),
                       rejected=counts.get("rejected", 0), best=best[0] if best else None, elapsed_s=elapsed)

    def close(self) -> None:
        self.store.close()
