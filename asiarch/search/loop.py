"""The discovery loop: baselines, then rounds of propose -> check -> train -> analyse.

With ``search.proposer = 'llm'`` (or 'mixed') the LLM agents take part (asiarch.propose.llm):
the Researcher proposes, the Engineer repairs a layer that fails pre-flight or training
(each repair checked by the pre-flight, bounded by llm.repair_attempts and
search.max_attempts), and the Analyst explains each trained candidate beside the
offline analysis. An LLM failure costs a proposal, a repair or an analysis, never the
search; the dollar cap (budget.llm_dollars) ends LLM proposals.

Every step is written to the store before the next begins, so a restarted head
(``asiarch run DIR`` again) picks up where the last one stopped: candidates already
scored stay scored, checked candidates are submitted, and attempts whose jobs the
scheduler no longer knows are tried again (within ``search.max_attempts``).
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass

from asiarch.search import ingest as analyst
from asiarch.dispatch.attempt import write_attempt_files
from asiarch.search.preflight import PreflightReport, run_preflight
from asiarch.config import Config, render_toml, stage_seeds, stage_train
from asiarch.cli.console import Console
from asiarch.dispatch.base import JobRequest, JobState, Scheduler
from asiarch.dispatch.payload import ABANDONED, JOB_MARKER
from asiarch.propose.genome import genome_from_code
from asiarch.job import result as rf
from asiarch.job.candidate import code_sha256
from asiarch.layout import ExperimentDir, run_key, write_atomic
from asiarch.propose.offline import OfflineProposer, ProposalError, baseline_sources
from asiarch.search.sampling import sample_parents
from asiarch.analysis.stages import promote, stage_agreement, stage_rows
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
    """The LLM-free proposer: the whole search with 'offline', the other share with 'mixed', and the
    fallback of 'mixed' once the LLM budget is spent."""
    return OfflineProposer(seed=cfg.experiment.seed, class_name=cfg.search.class_name,
                           allow_quadratic=cfg.search.allow_quadratic)


def _tries(fix) -> str:
    n = len(fix.attempts)
    return f"{n} {'try' if n == 1 else 'tries'}"


def make_agents(cfg: Config, store: Store):
    """The LLM agents over ``store`` (asiarch.propose.llm.LLMAgents), or None with proposer 'offline'.
    Imported here only when used: the openai client costs half a second to import."""
    if cfg.search.proposer == "offline":
        return None
    from asiarch.propose.llm.team import LLMAgents

    return LLMAgents.from_config(cfg, store)


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
        self.agents = make_agents(cfg, self.store)
        self.llm_budget_noted = False
        self.rng = random.Random(cfg.experiment.seed)
        self.active: dict[int, str] = {}  # attempt id -> job id
        write_atomic(exp.config, render_toml(cfg))
        self.store.set_meta("experiment", cfg.experiment.name)

    # ------------------------------------------------------------------ top level
    def run(self) -> Summary:
        t0 = time.time()
        c = self.console
        self.register_baselines()
        self.recover()
        pending = [b for b in self.store.candidates(origin="baseline") if b.status == "checked"]
        if pending:
            seeds = f", {self.cfg.train.seeds} seeds each" if self.cfg.train.seeds > 1 else ""
            c.line(f"baselines: training {len(pending)} ({', '.join(b.name for b in pending)}{seeds})")
        # seeds a previous head did not get to submit (and the new baselines)
        self.submit(pending + [x for x in self.store.candidates() if x.status in ("queued", "running")])
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
                if not self.out_of_budget():  # which says so itself when the LLM budget ran out
                    who = {"offline": "the proposer has", "llm": "the Researcher has"}.get(self.cfg.search.proposer,
                                                                                          "the proposers have")
                    c.line(f"{who} nothing new to offer; stopping (`asiarch status DIR` shows the last events)")
                break
            ready = waiting + self.check(proposed)
            if ready:
                c.line(f"round {round_no}: submitting {len(ready)} candidate(s)")
                self.submit(ready)
            self.wait()
            if self.proposals_exhausted():
                c.line("too many proposals rejected; stopping (see `asiarch status DIR` for the reasons)")
                break
        if self.cfg.verify.enabled:
            self.verify()
        return self.summary(time.time() - t0)

    # ------------------------------------------------------------------ verification
    def verify(self) -> None:
        """The verification stage: the promoted candidates and the reference baseline, each trained with
        verify.seeds seeds at the verification settings, as one round. The promotion is decided once and
        kept in the store, so a restarted head verifies the same candidates."""
        c = self.console
        promoted = self.store.get_meta("verify_promoted")
        if promoted is None:
            if self.out_of_budget():
                c.line("verification: not started, the budget is spent")
                return
            chosen = promote(self.store, self.cfg)
            for cand, why in chosen:
                self.store.log_event("promoted", f"promoted to verification: {why}", cand.id)
            self.store.set_meta("verify_promoted", json.dumps([cand.id for cand, _ in chosen]))
            ids = [cand.id for cand, _ in chosen]
        else:
            ids = json.loads(promoted)
        if not ids:
            c.line(f"verification: no candidate meets the promotion rule ({self.cfg.verify.promote}); nothing to verify")
            return
        ref = [b for b in self.store.candidates(origin="baseline") if b.name == self.cfg.baselines.reference]
        targets = ref + [self.store.candidate(i) for i in ids]
        todo = [(x, s) for x in targets for s in self.missing_seeds(x, "verify")]
        if todo:
            c.line(f"verification: {len(ids)} candidate(s) and the reference {self.cfg.baselines.reference}, "
                   f"{self.cfg.verify.seeds} seeds each ({len(todo)} jobs)")
            self.submit_runs([(x, "verify", s) for x, s in todo])
        self.wait()
        ref_name = self.cfg.baselines.reference
        rows = [r for r in stage_rows(self.store, "verify", ref_name, fitness_cfg=self.cfg.fitness)
                if r.candidate.id in ids]
        winners = [r.candidate.name for r in rows if r.beats]
        c.line(f"verification: {len(winners)} of {len(rows)} beat {ref_name} (the 95 % interval of the paired "
               f"loss gain over {self.cfg.verify.seeds} seeds excludes zero){': ' + ', '.join(winners) if winners else ''}")
        ag = stage_agreement(self.store, ref_name)
        if ag.n >= 3:
            c.line(f"stage agreement: Spearman {ag.rho:+.2f} between exploration and verification losses over "
                   f"{ag.n} candidates")
        c.line("`asiarch leaderboard DIR --stage verify` shows the intervals")

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
            job_id = self.adopt(a)
            if job_id:
                continue
            self.store.set_attempt_status(a.id, "lost", "the scheduler no longer knows this job (head restarted)")
            self.console.line(f"#{a.candidate_id}: attempt {a.n} was lost with the previous head; trying again")
            self.retry_or_fail(a, "lost with the previous head")

    def adopt(self, a: Attempt) -> str | None:
        """Watch the job of an attempt the scheduler does not know by its recorded id (the head died
        before recording it, or the local jobs' ids died with it), when the job left a marker and
        still runs; otherwise abandon the attempt, so that a job of it that starts later does not
        train the candidate a second time. Returns the adopted job id, or None."""
        attempt_dir = self.exp.root / a.dir
        tombstone = attempt_dir / ABANDONED
        attempt_dir.mkdir(parents=True, exist_ok=True)
        # the tombstone before the marker is read; the job writes its marker before reading the tombstone
        tombstone.write_text(f"abandoned by the head (pid {os.getpid()}) at {time.time():.0f}; "
                             f"attempt {a.n} of candidate {a.candidate_id} is retried as a new attempt\n")
        try:
            marker = json.loads((attempt_dir / JOB_MARKER).read_text())
        except (OSError, ValueError):
            marker = None
        job_id = self.scheduler.adopt(marker, attempt_dir) if isinstance(marker, dict) else None
        if not job_id:
            return None
        tombstone.unlink(missing_ok=True)  # a requeued run of the adopted job may run again
        self.store.mark_submitted(a.id, self.scheduler.name, job_id)
        self.store.log_event("adopted", f"attempt {a.n}: re-attached to running job {job_id} from its marker",
                             a.candidate_id, a.id)
        self.console.line(f"#{a.candidate_id}: attempt {a.n} still runs as job {job_id}; watching it again")
        self.active[a.id] = job_id
        return job_id

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
            use_llm = self.agents is not None and (
                s.proposer == "llm" or (s.proposer == "mixed" and self.rng.random() < s.llm_fraction))
            prop = None
            try:
                if use_llm and not self.agents.budget_spent():
                    prop = self.propose_llm(sample)  # None: the budget ran out during this proposal
                if use_llm and prop is None:  # the LLM budget is spent
                    if s.proposer == "llm":
                        self.console.line(f"budget: {self.llm_spend_text()}; no more LLM proposals")
                        break
                    if not self.llm_budget_noted:
                        self.console.line(f"budget: {self.llm_spend_text()}; the offline proposer takes the "
                                          "LLM's share")
                        self.llm_budget_noted = True
                    use_llm = False
                if prop is None:
                    prop = self.proposer.propose(sample.parent, sample.references, seen_keys=keys,
                                                 rng_key=f"{round_no}:{i}")
            except ProposalError as exc:
                who = "the Researcher" if use_llm else "the offline proposer"
                self.console.line(f"round {round_no}: no new proposal from {who} for #{sample.parent.id}: "
                                  f"{exc}"[:300])
                if use_llm:
                    self.store.log_event("llm", f"no proposal from the Researcher for #{sample.parent.id}: "
                                                f"{exc}"[:1000], sample.parent.id)
                continue
            sha = code_sha256(prop.code)
            if sha in shas:
                continue
            shas.add(sha)
            genome_key = prop.genome.key() if prop.genome is not None else ""
            if genome_key:
                keys.add(genome_key)
            cid = self.store.add_candidate(name=prop.name, origin="llm" if use_llm else "offline", code=prop.code,
                                           code_sha256=sha, parent_id=sample.parent.id, round=round_no,
                                           motivation=prop.motivation, genome_key=genome_key,
                                           reference_ids=list(prop.reference_ids))
            out.append(self.store.candidate(cid))
            self.console.line(f"#{cid:<4d} {prop.name[:34]:<34s} proposed ({prop.operator} of #{sample.parent.id} "
                              f"{sample.parent.name})")
        return out

    def propose_llm(self, sample):
        """The Researcher's proposal for one slot; None when the LLM budget ran out (ProposalError
        when it gave nothing usable)."""
        from asiarch.propose.llm.client import BudgetExceeded, LLMError

        self.console.status(f"the Researcher proposes from #{sample.parent.id} {sample.parent.name}")
        try:
            return self.agents.propose(sample.parent, sample.references)
        except BudgetExceeded:
            return None
        except LLMError as exc:  # the agents turn these into ProposalError; kept as a safety net
            raise ProposalError(str(exc)) from exc

    def llm_spend_text(self) -> str:
        from asiarch.propose.llm.client import spent_dollars

        return f"${spent_dollars(self.store):.4f} of LLM spent (budget.llm_dollars = {self.cfg.budget.llm_dollars:g})"

    def preflight(self, code: str) -> PreflightReport:
        """The pre-flight battery on ``code`` in a sandboxed child process."""
        t = self.cfg.train
        # 128 tokens: at least two chunks of the chunked kernels ASI-Arch-style layers use (chunk 32-64),
        # so state passed across chunks is checked too; bf16 autocast when training runs in bf16, since
        # many published layers hard-code bf16 inside their kernels.
        return run_preflight(code, class_name=self.cfg.search.class_name, hidden_size=t.hidden_size,
                             num_heads=t.num_heads, seq_len=128, max_params=t.max_params or None,
                             autocast=t.precision == "bf16", allow_quadratic=self.cfg.search.allow_quadratic,
                             secret_env_names=(self.cfg.llm.api_key_env,))

    def check(self, cands: list[Candidate]) -> list[Candidate]:
        """Pre-flight each candidate in a sandboxed child process; returns those that pass. With the LLM
        agents, the Engineer repairs one that fails (each repair pre-flighted in turn)."""
        ok = []
        for cand in cands:
            self.console.status(f"checking #{cand.id} {cand.name}")
            report = self.preflight(cand.code)
            if report.ok:
                self.store.set_candidate_status(cand.id, "checked", event=f"pre-flight ok ({report.elapsed_s:.1f} s)")
                ok.append(self.store.candidate(cand.id))
                continue
            fix = self.repair(cand, report.reason, stage="preflight", context=report.format_table())
            if fix is not None:
                self.store.set_candidate_status(
                    cand.id, "checked", event=f"pre-flight: {report.reason}; repaired by the Engineer "
                                              f"({_tries(fix)}), pre-flight ok"[:1000])
                self.console.line(f"#{cand.id:<4d} {cand.name[:34]:<34s} REPAIRED  {report.reason}"[:200])
                ok.append(self.store.candidate(cand.id))
            else:
                self.store.set_candidate_status(cand.id, "rejected", report.reason, event=f"pre-flight: {report.reason}")
                self.console.line(f"#{cand.id:<4d} {cand.name[:34]:<34s} REJECTED  {report.reason}"[:200])
        return ok

    def repair(self, cand: Candidate, error: str, *, stage: str, context: str):
        """The Engineer's repair of ``cand`` for ``error`` (stage 'preflight' or 'job'), stored as the
        candidate's code; None without agents or when no repair passed the pre-flight. Every try is in
        the store's repairs table."""
        if self.agents is None:
            return None
        from asiarch.propose.llm.client import LLMError

        def check(code: str) -> str:  # '' when the repair may be trained, else why not
            sha = code_sha256(code)
            twin = self.store.conn.execute("SELECT id, name FROM candidates WHERE code_sha256 = ? AND id != ?",
                                           (sha, cand.id)).fetchone()
            if twin is not None:
                return (f"duplicate: this code is identical to candidate #{twin[0]} {twin[1]}; repair this layer "
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

    def checked_waiting(self) -> list[Candidate]:
        """Checked candidates with no attempt yet in flight (added by hand, or left by a previous head)."""
        busy = {a.candidate_id for a in self.store.attempts(statuses=ACTIVE)}
        return [c for c in self.store.candidates(status="checked") if c.origin != "baseline" and c.id not in busy]

    # ------------------------------------------------------------------ submitting
    def prepare_attempt(self, cand: Candidate, n: int, stage: str = "explore",
                        seed: int = 0) -> tuple[int, JobRequest]:
        """Write the attempt's files (layer, spec, job script) and record it; returns (attempt id, request)."""
        key = run_key(self.cfg.experiment.name, cand.id, n)
        paths = self.exp.attempt(cand.id, cand.name, n)
        layer = self.exp.layer_file(cand.id, cand.name)
        layer.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(layer, cand.code)
        identity = {"experiment": self.cfg.experiment.name, "candidate_id": cand.id, "attempt": n,
                    "run_key": key, "code_sha256": cand.code_sha256, "stage": stage, "seed": seed}
        checkpoint = "checkpoint.pt" if (stage, seed) == ("explore", 0) else f"checkpoint-{stage}-s{seed}.pt"
        request = write_attempt_files(paths, layer_path=layer, identity=identity,
                                      train=stage_train(self.cfg, stage, seed), cluster=self.cfg.cluster,
                                      class_name=self.cfg.search.class_name, python=self.python,
                                      bind_root=self.exp.root, checkpoint_name=checkpoint)
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
        """Submit, as one round, an attempt for every seed of ``stage`` each candidate still needs."""
        self.submit_runs([(cand, stage, seed) for cand in cands for seed in self.missing_seeds(cand, stage)])

    def submit_runs(self, runs: list[tuple[Candidate, str, int]]) -> None:
        """Submit one attempt per (candidate, stage, seed), as one round."""
        prepared = []
        numbers: dict[int, int] = {}
        for cand, stage, seed in runs:
            n = numbers.get(cand.id) or 1 + max((a.n for a in self.store.attempts(cand.id)), default=0)
            numbers[cand.id] = n + 1
            prepared.append(self.prepare_attempt(cand, n, stage, seed))
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
        """Record a finished attempt; retry it (infrastructure failure), have the Engineer repair it
        (a failure of the candidate, with attempts left) or settle its candidate."""
        out = analyst.ingest_attempt(self.store, self.exp, self.cfg, attempt, state)
        self.store.set_attempt_status(attempt.id, out.attempt_status, out.error)
        self.console.line(out.line)
        cid = attempt.candidate_id
        first = out.error.splitlines()[0] if out.error else out.attempt_status
        if out.retry:
            self.retry_or_fail(attempt, first)
        elif out.candidate_status == "failed":
            if attempt.stage != "explore":
                self.store.log_event("seed-failed", f"{attempt.stage} seed {attempt.seed}: {first[:300]}", cid,
                                     attempt.id)
            elif self.repair_job(attempt, state, out):
                self.submit([self.store.candidate(cid)])  # every seed again, with the repaired code
            else:
                self.store.set_candidate_status(cid, "failed", first[:500],
                                                event=f"attempt {attempt.n}: {out.attempt_status}")
        elif out.candidate_status == "done":
            self.analyse_llm(cid)

    def repair_job(self, attempt: Attempt, state: JobState, out: analyst.Outcome) -> bool:
        """Whether the Engineer repaired a candidate whose job failed (the next attempt trains the repair).
        Not for jobs cancelled by hand, nor once search.max_attempts are used."""
        if (self.agents is None
                or self.attempts_used(attempt.candidate_id, attempt.stage, attempt.seed) >= self.cfg.search.max_attempts
                or out.attempt_status == "cancelled"):
            return False
        cand = self.store.candidate(attempt.candidate_id)
        log = self.exp.attempt(cand.id, cand.name, attempt.n).log
        context = (f"job state {state.value}, attempt {attempt.n} of {self.cfg.search.max_attempts}, "
                   f"{self.cfg.train.nproc} ranks, batch {self.cfg.train.batch_size}, sequence length "
                   f"{self.cfg.train.seq_len}\nlog tail:\n{analyst.log_tail(log, 40)}")
        if self.repair(cand, out.error, stage="job", context=context) is None:
            return False
        self.console.line(f"#{cand.id:<4d} {cand.name[:34]:<34s} REPAIRED  by the Engineer; attempt "
                          f"{attempt.n + 1} trains the repair")
        return True

    def analyse_llm(self, cid: int) -> None:
        """The Analyst's report on a trained candidate (baselines excluded), beside the offline one; with
        fitness.judge_weight > 0 its judge score enters the fitness. Never stops the search."""
        if self.agents is None:
            return
        cand = self.store.candidate(cid)
        if cand.origin == "baseline":
            return
        self.console.status(f"the Analyst reads #{cid} {cand.name}")
        try:
            analysis = self.agents.analyse(cand)
        except Exception as exc:  # noqa: BLE001 -- an LLM failure costs the analysis, not the search
            self.store.log_event("llm", f"the Analyst failed: {type(exc).__name__}: {exc}"[:1000], cid)
            return
        if analysis is None:
            self.store.log_event("llm", "the Analyst gave no analysis (the offline one stands)", cid)
            return
        line = f"#{cid:<4d} {cand.name[:34]:<34s} ANALYSED  {analysis.summary}"
        if analysis.judge_score is not None:
            cand = self.store.candidate(cid)
            self.store.set_scores(cid, fitness=cand.fitness, loss=cand.loss, score=cand.score,
                                  scores={**cand.scores, "judge": analysis.judge_score}, num_params=cand.num_params,
                                  status=cand.status, reason=cand.reason)
            analyst.score_candidate(self.store, self.cfg, self.store.candidate(cid),
                                    analyst.reference_for(self.store, self.cfg))
            fitness = self.store.candidate(cid).fitness
            line += f" (judge {analysis.judge_score:g}/10, fitness {fitness:.3f})" if fitness is not None else ""
        self.console.line(line[:200])

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
        verifying = sum(1 for a in self.active if self.store.attempt(a).stage == "verify")
        stage = f"verification: {verifying} job(s) left | " if verifying else ""
        return f"trained {done}/{self.cfg.budget.candidates} | {stage}" + " | ".join(parts)

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
        if self.cfg.search.proposer == "llm" and self.agents is not None and self.agents.budget_spent():
            self.console.line(f"budget: {self.llm_spend_text()}; stopping")
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
