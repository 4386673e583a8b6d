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

This module is the orchestration; each concern is a piece it is built from:

    proposals.py   new candidates for a round's slots (Researcher or offline proposer)
    repair.py      the pre-flight gate and the Engineer's repairs
    submission.py  attempts' files and rows, submitting, the retry rule, the attempts in flight
    poller.py      one scheduler query per poll, accounting, progress
    recovery.py    what a restarted head does with the attempts left in flight
    budget.py      the budgets, as pure predicates
    messages.py    the sink the loop writes to, and its composed lines
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from asiarch.analysis.format import candidate_label
from asiarch.analysis.stages import promote, stage_agreement, stage_rows
from asiarch.config import Config, render_toml, stage_train
from asiarch.dispatch.base import JobState, Scheduler, SchedulerError
from asiarch.dispatch.registry import make_scheduler as make_backend
from asiarch.dispatch.sandbox import RUN_WARNING, SandboxUnavailable, data_binds, resolve_kind
from asiarch.job.candidate import code_sha256
from asiarch.job.contract import atomic_write
from asiarch.layout import ExperimentDir
from asiarch.propose.genome import genome_from_code
from asiarch.propose.offline import OfflineProposer, baseline_sources
from asiarch.search import ingest as analyst
from asiarch.search.budget import Spend, budget_reason, candidates_left, proposals_exhausted, trained_count
from asiarch.search.errors import SearchError
from asiarch.search.messages import Silent, Sink, outcome_line
from asiarch.search.poller import Poller
from asiarch.search.proposals import Proposals
from asiarch.search.recovery import Recovery
from asiarch.search.repair import Checker
from asiarch.search.submission import InFlight, Submitter, checked_waiting
from asiarch.search.watchdog import Watchdog
from asiarch.search.workers import Inline, MainThread, OnMain, Tasks
from asiarch.store import Attempt, Candidate, Store

__all__ = ["Search", "SearchError", "Summary", "make_agents", "make_proposer", "make_scheduler"]


@dataclass
class Summary:
    trained: int
    failed: int
    rejected: int
    best: Candidate | None
    elapsed_s: float
    stopped: int = 0  # stopped early (watchdog or early stopping): counted apart from those trained to the end


def make_scheduler(exp: ExperimentDir, cfg: Config, *, check: bool = True) -> Scheduler:
    """The backend cluster.scheduler names (asiarch.dispatch.make_scheduler); a refusal is a SearchError."""
    try:
        return make_backend(exp, cfg, check=check)
    except SchedulerError as exc:
        raise SearchError(str(exc)) from exc


def make_proposer(cfg: Config) -> OfflineProposer:
    """The LLM-free proposer: the whole search with 'offline', the other share with 'mixed', and the
    fallback of 'mixed' once the LLM budget is spent."""
    return OfflineProposer(seed=cfg.experiment.seed, class_name=cfg.search.class_name,
                           allow_quadratic=cfg.search.allow_quadratic)


def make_agents(cfg: Config, store: Store):
    """The LLM agents over ``store`` (asiarch.propose.llm.LLMAgents), or None with proposer 'offline'.
    Imported here only when used: the openai client costs half a second to import."""
    if cfg.search.proposer == "offline":
        return None
    from asiarch.propose.llm.team import LLMAgents

    return LLMAgents.from_config(cfg, store)


class Search:
    """One experiment's loop over ready collaborators. ``Search.open(exp, cfg).run()`` runs it to its
    budget; the constructor only wires the pieces (no files, no store writes, no scheduler calls)."""

    def __init__(self, exp: ExperimentDir, cfg: Config, *, store: Store, scheduler: Scheduler,
                 proposer: OfflineProposer, agents=None, console: Sink | None = None, python: str | None = None):
        self.exp = exp
        self.cfg = cfg
        self.store = store
        self.scheduler = scheduler
        self.agents = agents  # asiarch.propose.llm.LLMAgents, or None (proposer 'offline')
        self.console: Sink = console or Silent()
        self.active: InFlight = {}  # attempt id -> job id, shared by the pieces below
        self.repairing: set[int] = set()  # candidates whose failed job the Engineer is repairing
        # The steady schedule runs agents and pre-flights on worker threads (asiarch.search.pipeline):
        # what those pieces read and write goes through the main thread (asiarch.search.workers).
        self.main = MainThread()
        self.tasks: Tasks | Inline = Inline()
        self.pipeline = None  # the Steady pipeline while it runs
        shared, said = store, self.console
        if cfg.search.schedule == "steady":
            shared, said = OnMain(store, self.main), OnMain(self.console, self.main)
            if agents is not None:
                agents.bind_store(shared)
        self.submitter = Submitter(exp, cfg, store, scheduler, self.active, python=python)
        self.checker = Checker(exp, cfg, shared, agents, said)
        self.proposals = Proposals(cfg, shared, proposer, agents, said)
        self.recovery = Recovery(exp, store, scheduler, self.submitter, self.active, self.console)
        self.poller = Poller(exp, cfg, store, scheduler, self.active, self.console)
        self.poller.watchdog = Watchdog(exp, cfg, store, scheduler, self.active, self.console, on_promote=self.promote)

    @classmethod
    def open(cls, exp: ExperimentDir, cfg: Config, *, scheduler: Scheduler | None = None,
             console: Sink | None = None, python: str | None = None) -> "Search":
        """The search of the experiment in ``exp``: creates the directory, opens its store, builds the
        scheduler cluster.scheduler names (Slurm: asks the controller whether the partition, account
        and qos exist; a refusal is a SearchError), the proposer and the agents, and writes the
        resolved config to config.toml. ``python`` is the jobs' interpreter (default:
        cluster.python, else this one)."""
        exp.root.mkdir(parents=True, exist_ok=True)
        store = Store.open(exp.db)
        try:
            scheduler = scheduler or make_scheduler(exp, cfg)
            proposer = make_proposer(cfg)
            agents = make_agents(cfg, store)
            atomic_write(exp.config, render_toml(cfg))
            store.set_meta("experiment", cfg.experiment.name)
        except BaseException:
            store.close()
            raise
        return cls(exp, cfg, store=store, scheduler=scheduler, proposer=proposer, agents=agents,
                   console=console, python=python)

    # ------------------------------------------------------------------ top level
    def check_sandbox(self) -> None:
        """Refuse to start where cluster.sandbox cannot run, or where the jobs' data would bind a home directory
        (or a token) into the sandbox; warn on every run without a sandbox."""
        c = self.cfg.cluster
        try:
            kind = resolve_kind(c.sandbox, container_image=c.container_image)
            for stage in ("explore", "verify") if kind != "none" else ():  # what the jobs will bind
                data_binds(stage_train(self.cfg, stage), c)
        except SandboxUnavailable as exc:
            raise SearchError(str(exc)) from None
        if kind == "none":
            self.console.line(RUN_WARNING)

    def check_data(self) -> None:
        """Refuse to start on a prepared directory whose shards are missing or differ from its manifest
        (sha256, every shard: once per head start, before any job trains on it)."""
        t = self.cfg.train
        if t.task != "lm" or not t.data:
            return
        from asiarch.job.data import DataError, verify_shards

        t0 = time.time()
        try:
            m = verify_shards(t.data)
        except DataError as exc:
            raise SearchError(f"train.data: {exc}") from None
        self.console.line(f"data: {t.data}: {len(m.shards())} shard(s), {m.splits['train'].tokens:,} train tokens, "
                          f"sha256 verified in {time.time() - t0:.1f} s")

    def run(self) -> Summary:
        """The search to its budget: baselines, then exploration on search.schedule ('steady': the
        pipeline of asiarch.search.pipeline; 'rounds': below), then the verification stage."""
        t0 = time.time()
        self.check_sandbox()
        self.check_data()
        self.register_baselines()
        if self.cfg.search.schedule == "steady":
            from asiarch.search.pipeline import Steady

            with Steady(self) as pipeline:
                self.start()
                pipeline.run()
                if self.cfg.verify.enabled:
                    self.verify()
        else:
            self.start()
            self.rounds()
            if self.cfg.verify.enabled:
                self.verify()
        return self.summary(time.time() - t0)

    def start(self) -> None:
        """What a (re)started head does first: recover what the last one left, train the baselines (and
        seeds a previous head did not get to submit), and require the reference's result."""
        self.recover()
        pending = [b for b in self.store.candidates(origin="baseline") if b.status == "checked"]
        if pending:
            seeds = f", {self.cfg.train.seeds} seeds each" if self.cfg.train.seeds > 1 else ""
            self.console.line(f"baselines: training {len(pending)} ({', '.join(b.name for b in pending)}{seeds})")
        self.submitter.submit(pending + [x for x in self.store.candidates() if x.status in ("queued", "running")])
        self.wait()
        self.require_reference()

    def rounds(self) -> None:
        """The round schedule: propose search.round_size, check them, train them all, then the next."""
        c = self.console
        while True:
            spend = self.spend()
            remaining = candidates_left(self.cfg, spend)
            if remaining <= 0:
                break
            reason = budget_reason(self.cfg, spend)
            if reason:
                c.line(f"budget: {reason}; stopping")
                break
            round_no = self.store.max_round() + 1
            waiting = checked_waiting(self.store)  # added by hand, or left checked by a previous head
            n_new = max(0, min(self.cfg.search.round_size, remaining) - len(waiting))
            proposed = self.proposals.propose_round(round_no, n_new) if n_new else []
            if n_new and not proposed and not waiting:
                reason = budget_reason(self.cfg, self.spend())  # the LLM budget may have run out meanwhile
                if reason:
                    c.line(f"budget: {reason}; stopping")
                else:
                    who = {"offline": "the proposer has", "llm": "the Researcher has"}.get(self.cfg.search.proposer,
                                                                                          "the proposers have")
                    c.line(f"{who} nothing new to offer; stopping (`asiarch status DIR` shows the last events)")
                break
            ready = waiting + self.checker.check(proposed)
            if ready:
                c.line(f"round {round_no}: submitting {len(ready)} candidate(s)")
                self.submitter.submit(ready)
            self.wait()
            if proposals_exhausted(self.cfg, self.store.count("rejected")):
                c.line("too many proposals rejected; stopping (see `asiarch status DIR` for the reasons)")
                break

    def spend(self) -> Spend:
        """What the search has used so far, for the budget predicates (asiarch.search.budget)."""
        return Spend(trained=trained_count(self.store.counts()), compute_s=self.store.compute_seconds(),
                     llm_dollars=self.store.llm_dollars(),
                     llm_exhausted=self.agents is not None and self.agents.budget_spent())

    def recover(self) -> None:
        """Check candidates left unchecked; re-attach to attempts a previous head left in flight, and
        retry those the scheduler lost (asiarch.search.recovery)."""
        unchecked = self.store.candidates(status="proposed")
        if self.pipeline is not None:
            for cand in unchecked:
                self.pipeline.check(cand)
        else:
            self.checker.check(unchecked)
        self.recovery.recover(self.ingest)

    def wait(self) -> None:
        """Until no attempt is in flight: poll, and ingest each attempt as its job ends (the steady
        pipeline: and until no task is in flight)."""
        if self.pipeline is not None:
            self.pipeline.drain()
        else:
            self.poller.wait(self.ingest)

    # ------------------------------------------------------------------ verification
    def verify(self) -> None:
        """The verification stage: the promoted candidates and the reference baseline, each trained with
        verify.seeds seeds at the verification settings, as one round. The promotion is decided once and
        kept in the store, so a restarted head verifies the same candidates."""
        c = self.console
        promoted = self.store.get_meta("verify_promoted")
        if promoted is None:
            reason = budget_reason(self.cfg, self.spend())
            if reason:
                c.line(f"budget: {reason}; stopping")
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
        todo = [(x, s) for x in targets for s in self.submitter.missing_seeds(x, "verify")]
        if todo:
            c.line(f"verification: {len(ids)} candidate(s) and the reference {self.cfg.baselines.reference}, "
                   f"{self.cfg.verify.seeds} seeds each ({len(todo)} jobs)")
            self.submitter.submit_runs([(x, "verify", s) for x, s in todo])
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

    # ------------------------------------------------------------------ a finished attempt
    def ingest(self, attempt: Attempt, state: JobState) -> None:
        """Record a finished attempt; retry it (infrastructure failure), have the Engineer repair it
        (a failure of the candidate, with attempts left) or settle its candidate."""
        out = analyst.ingest_attempt(self.store, self.exp, self.cfg, attempt, state)
        self.store.set_attempt_status(attempt.id, out.attempt_status, out.error)
        self.console.line(outcome_line(out))
        cid = attempt.candidate_id
        first = out.error.splitlines()[0] if out.error else out.attempt_status
        if out.retry:
            self.submitter.retry_or_fail(attempt, first)
        elif out.candidate_status == "failed":
            if attempt.stage != "explore":
                self.store.log_event("seed-failed", f"{attempt.stage} seed {attempt.seed}: {first[:300]}", cid,
                                     attempt.id)
            else:
                used = self.submitter.attempts_used(cid, attempt.stage, attempt.seed)
                if self.checker.wants_job_repair(out, attempts_used=used):
                    self.repairing.add(cid)
                    self.tasks.spawn("llm", "repair",
                                     lambda: self.checker.repair_job(attempt, state, out, attempts_used=used),
                                     lambda repaired: self.after_job_repair(attempt, out, first, repaired))
                else:
                    self.after_job_repair(attempt, out, first, False)
        elif out.candidate_status == "done":
            self.analyse_llm(cid)

    def promote(self, attempt: Attempt) -> None:
        """Train again, from its checkpoint, a candidate early stopping stopped at a rung that more
        arrivals have since brought within the top 1/eta (asiarch.search.watchdog)."""
        cand = self.store.candidate(attempt.candidate_id)
        if cand.status != "stopped" or attempt.stage != "explore":
            return
        if self.submitter.attempts_used(cand.id, attempt.stage, attempt.seed) >= self.cfg.search.max_attempts:
            return
        self.store.set_candidate_status(cand.id, "checked", event=f"promoted past the rung it was stopped at "
                                                                   f"(attempt {attempt.n}); resumed from its checkpoint")
        self.console.line(f"{candidate_label(cand.id, cand.name)} PROMOTED  resumes from its checkpoint")
        self.submitter.submit([self.store.candidate(cand.id)])

    def after_job_repair(self, attempt: Attempt, out, first: str, repaired: bool) -> None:
        """Train the Engineer's repair of a failed job (every seed again), or fail the candidate."""
        cid = attempt.candidate_id
        self.repairing.discard(cid)
        if repaired:
            self.submitter.submit([self.store.candidate(cid)])
        else:
            self.store.set_candidate_status(cid, "failed", first[:500],
                                            event=f"attempt {attempt.n}: {out.attempt_status}")

    def analyse_llm(self, cid: int) -> None:
        """The Analyst's report on a trained candidate (baselines excluded), beside the offline one; with
        fitness.judge_weight > 0 its judge score enters the fitness. Never stops the search. The steady
        pipeline asks on a worker; the report is recorded here, on the main thread."""
        if self.agents is None:
            return
        cand = self.store.candidate(cid)
        if cand.origin == "baseline":
            return
        self.console.status(f"the Analyst reads #{cid} {cand.name}")

        def work():
            try:
                return self.agents.analyse(cand), None
            except Exception as exc:  # noqa: BLE001 -- an LLM failure costs the analysis, not the search
                return None, exc

        self.tasks.spawn("llm", "analyse", work, lambda done: self.record_analysis(cid, *done))

    def record_analysis(self, cid: int, analysis, error: Exception | None) -> None:
        if error is not None:
            self.store.log_event("llm", f"the Analyst failed: {type(error).__name__}: {error}"[:1000], cid)
            return
        cand = self.store.candidate(cid)
        if analysis is None:
            self.store.log_event("llm", "the Analyst gave no analysis (the offline one stands)", cid)
            return
        line = f"{candidate_label(cid, cand.name)} ANALYSED  {analysis.summary}"
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

    # ------------------------------------------------------------------ the end
    def summary(self, elapsed: float) -> Summary:
        counts = self.store.counts()
        best = self.store.ranked(1, include_baselines=False)
        return Summary(trained=counts.get("done", 0), failed=counts.get("failed", 0),
                       rejected=counts.get("rejected", 0), best=best[0] if best else None, elapsed_s=elapsed,
                       stopped=counts.get("stopped", 0))

    def close(self) -> None:
        self.store.close()
