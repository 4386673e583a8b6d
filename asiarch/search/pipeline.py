"""The steady schedule: keep every slot of the allocation busy (``search.schedule = "steady"``).

The round schedule proposes a round, checks it, trains it and waits for its last job before the
next; a slot whose job ended early sits idle meanwhile, and so does every slot while an LLM
proposes. Here the head keeps ``cluster.max_in_flight`` attempts in flight and refills a slot as
soon as it frees, from a queue of candidates already proposed and checked ahead:

    proposals (Researcher on the "llm" pool, offline proposer on "propose")
        -> pre-flight (the "check" pool, search.preflight_workers sandboxed children; the Engineer's
           repair of a failed one on the "llm" pool)
        -> ready (checked, waiting for a slot)
        -> the outbox (prepared attempts, recorded 'pending')
        -> one scheduler call for what is ready within cluster.submit_window_s (one sbatch, one array)
        -> jobs in flight (a job's exit record makes the head ask the scheduler's cheapest source about
           it at once, on Slurm sacct; one squeue for all of them on a backing-off interval)
        -> ingest on the main thread; the Analyst's report and the Engineer's job repair on "llm".

The main thread is the only one that touches the store: workers hand their reads and writes to it
(asiarch.search.workers). Proposals are sampled when they start, from the store as it stands, so a
proposal started after a result was ingested may take it as its parent (asynchronous evolution;
the pool is rebuilt by ASI-Arch's rule, asiarch.search.sampling). Budgets count what is in flight:
a candidate training counts against budget.candidates, its expected device-seconds against
budget.gpu_hours, and the LLM calls in flight against budget.llm_dollars (asiarch.propose.llm.client).

What is given up for it: the order of proposals, and so the search's course, depends on when
results arrive; ``search.schedule = "rounds"`` gives the same order on every run.
"""

from __future__ import annotations

import json
import os
import time

from asiarch.search.budget import (Spend, budget_reason, candidates_left, compute_reason, proposals_exhausted,
                                   trained_count)
from asiarch.search.messages import pipeline_line
from asiarch.search.proposals import LLMBudgetSpent, Slot
from asiarch.search.submission import ACTIVE, checked_waiting
from asiarch.search.workers import Inline, Tasks
from asiarch.store import Candidate

# The store's meta key where the head keeps the pipeline's figures for `asiarch status`.
PIPELINE_KEY = "pipeline"


class Steady:
    """The steady pipeline over one :class:`asiarch.search.loop.Search`; used as a context manager
    around the search's run (it swaps the search's inline task runner for worker pools, and the
    submitter's immediate sends for an outbox)."""

    TICK_S = 0.5        # how often the exit records of the jobs in flight are looked at (one stat each)
    STATUS_S = 2.0      # the store's pipeline figures are rewritten at most this often

    def __init__(self, search):
        self.search = search
        self.cfg = cfg = search.cfg
        self.store = search.store
        self.slots = cfg.cluster.max_in_flight
        self.ahead = cfg.search.ahead if cfg.search.ahead >= 0 else max(1, self.slots // 2)
        self.window = cfg.cluster.submit_window_s
        self.ready: list[int] = []          # checked candidates waiting for a slot, oldest first
        self.checking: set[int] = set()     # candidates in pre-flight or in the Engineer's repair of it
        self.stop: str | None = None        # why no more proposals are started
        self.empty = 0                      # proposals in a row that gave nothing new
        self.opened = 0                     # proposals started by this head
        self.round0 = 0
        self.outbox_since: float | None = None
        self.interval = cfg.cluster.poll_interval_s
        self.next_poll = 0.0
        self.next_tick = 0.0
        self.last_states: dict = {}
        self.shown = ("", 0.0)
        self.noted = ("", 0.0)
        self._spend: Spend | None = None

    # ------------------------------------------------------------------ context
    def __enter__(self) -> "Steady":
        s, cfg = self.search, self.cfg
        s.tasks = Tasks(s.main, {"llm": cfg.llm.concurrency, "check": cfg.search.preflight_workers, "propose": 1})
        s.submitter.outbox = []
        s.pipeline = self
        self.round0 = self.store.max_round()
        return self

    def __exit__(self, *exc) -> None:
        s = self.search
        s.tasks.close()
        s.tasks = Inline()
        s.submitter.outbox = None  # prepared attempts not sent stay 'pending': the next head retries them
        s.pipeline = None

    # ------------------------------------------------------------------ the two loops
    def run(self) -> None:
        """Exploration: propose, check and train until the budget or the proposer ends it and nothing is
        in flight."""
        self.ready += [c.id for c in checked_waiting(self.store) if c.id not in self.ready]
        while True:
            self.step(propose=True)
            if not self.busy() and (self.stop or not self.ready or self.budget_left() <= 0):
                if not self.stop and not self.ready and self.budget_left() > 0:
                    self.stop = self.nothing_new()
                break

    def drain(self) -> None:
        """Until nothing is in flight, proposing nothing (the baselines, the verification stage)."""
        while self.busy():
            self.step(propose=False)

    def busy(self) -> bool:
        s = self.search
        return bool(s.active) or bool(s.submitter.outbox) or s.tasks.in_flight() > 0

    def step(self, *, propose: bool) -> None:
        """One turn of the main thread: serve the workers' store calls (waiting until something happens
        or the next poll is due), continue finished tasks, poll, fill free slots, top up proposals."""
        s = self.search
        now = time.monotonic()
        due = [self.next_tick]
        if s.active:
            due.append(self.next_poll)
        if s.submitter.outbox and self.outbox_since is not None:
            due.append(self.outbox_since + self.window)
        s.main.serve(min(due) - now)
        self._spend = None
        s.tasks.reap()
        self.poll_if_due()
        self.fill_slots()
        if propose:
            self.top_up()
        self.show()

    # ------------------------------------------------------------------ jobs
    def poll_if_due(self) -> None:
        """Jobs whose exit record appeared are asked about at once, from the scheduler's cheapest
        source (Slurm: sacct, no controller RPC); every job in flight, with one query (squeue), on an
        interval that backs off from cluster.poll_interval_s to the scheduler's max_poll_s while no job
        ends unseen: the safety net for jobs that die without an exit record."""
        s = self.search
        if not s.active:
            return
        now = time.monotonic()
        if now >= self.next_tick:
            self.next_tick = now + self.TICK_S
            exited = s.poller.exited()
            if exited and s.poller.poll_exited(exited, s.ingest):
                self._spend = None
        if now < self.next_poll or not s.active:
            return
        states = s.poller.poll(s.ingest)
        self._spend = None
        self.last_states = dict(states)
        unseen = any(st.finished for st in states.values())
        base = self.cfg.cluster.poll_interval_s
        self.interval = base if unseen else min(self.interval * 1.5, max(s.scheduler.max_poll_s, base))
        self.next_poll = time.monotonic() + self.interval

    def fill_slots(self) -> None:
        """Ready candidates into the outbox while slots are free and the budget allows; the outbox to
        the scheduler, as one batch, once it fills the free slots, its oldest entry has waited
        cluster.submit_window_s, or nothing else is coming."""
        s = self.search
        outbox = s.submitter.outbox
        free = self.slots - len(s.active) - len(outbox)
        left = self.budget_left() if free > 0 and self.ready else 0
        while free > 0 and left > 0 and self.ready:
            cand = self.store.candidate(self.ready.pop(0))
            if cand.status != "checked":
                continue
            before = len(outbox)
            s.submitter.submit([cand])
            free -= len(outbox) - before
            left -= 1
            self._spend = None  # its attempts are in flight now (recorded 'pending')
        if not outbox:
            self.outbox_since = None
            return
        now = time.monotonic()
        if self.outbox_since is None:
            self.outbox_since = now
        send = self.slots - len(s.active)
        coming = self.ready or self.checking or s.tasks.in_flight("propose")
        if send > 0 and (len(outbox) >= send or now - self.outbox_since >= self.window or not coming):
            s.submitter.flush(send)
            self.outbox_since = now if outbox else None
            self._spend = None

    # ------------------------------------------------------------------ budgets
    def spend(self) -> Spend:
        """What is spent, with what is in flight: new candidates training (or in the Engineer's repair
        of a failed job) and the device-seconds their attempts are expected to use. Read from the
        store once per step (and again after a submission)."""
        if self._spend is None:
            self._spend = self._read_spend()
        return self._spend

    def _read_spend(self) -> Spend:
        s = self.search
        counts = self.store.counts()
        live = [a for a in self.store.attempts(statuses=ACTIVE) if a.stage == "explore"]
        settled = {c.id for c in self.store.candidates(origin="baseline")}
        busy = {a.candidate_id for a in live if a.candidate_id not in settled} | s.repairing
        if busy:
            busy = {cid for cid in busy if self.store.candidate(cid).status not in ("done", "failed", "stopped")}
        return Spend(trained=trained_count(counts), compute_s=self.store.compute_seconds(),
                     llm_dollars=self.store.llm_dollars(),
                     llm_exhausted=s.agents is not None and s.agents.budget_spent(),
                     in_flight=len(busy), in_flight_compute_s=len(live) * self.store.mean_attempt_compute())

    def budget_left(self) -> int:
        """New candidates that may still start training (budget.candidates less those trained and in
        flight); 0 once budget.gpu_hours is spent. A spent LLM budget stops proposals, not the training
        of candidates already checked."""
        spend = self.spend()
        if compute_reason(self.cfg, spend):
            return 0
        return candidates_left(self.cfg, spend)

    # ------------------------------------------------------------------ proposals
    def top_up(self) -> None:
        """Start proposals so that the free slots and search.ahead more are covered by candidates being
        proposed, checked or ready, within what the budget can still train."""
        if self.stop:
            return
        s = self.search
        spend = self.spend()
        reason = budget_reason(self.cfg, spend)
        if reason:
            self.stop = f"budget: {reason}; stopping"
            s.console.line(self.stop)
            return
        left = candidates_left(self.cfg, spend)
        if left <= 0:  # not for good: a candidate in flight that ends rejected (a leak) frees its place
            return
        if proposals_exhausted(self.cfg, self.store.count("rejected")):
            self.stop = "too many proposals rejected; stopping (see `asiarch status DIR` for the reasons)"
            s.console.line(self.stop)
            return
        free = max(0, self.slots - len(s.active) - len(s.submitter.outbox))
        coming = s.tasks.in_flight("propose") + len(self.checking) + len(self.ready)
        want = min(free + self.ahead, left) - coming
        while want > 0 and not self.stop:
            n = self.opened
            round_no = self.round0 + 1 + n // max(1, self.slots)
            try:
                slot = s.proposals.open(round_no, f"{round_no}:{n % max(1, self.slots)}")
            except LLMBudgetSpent:
                self.stop = "the LLM budget is spent"
                return
            if slot is None:
                return
            self.opened += 1
            want -= 1
            s.tasks.spawn("llm" if slot.use_llm else "propose", "propose", lambda sl=slot: self.make(sl),
                          lambda made, sl=slot: self.proposed(sl, made))

    def make(self, slot: Slot):
        """On a worker: the proposal of ``slot`` (None: the LLM budget ended proposing)."""
        try:
            return self.search.proposals.make(slot)
        except LLMBudgetSpent:
            return None

    def proposed(self, slot: Slot, made) -> None:
        """On the main thread: record a made proposal and start its pre-flight."""
        if made is None:
            self.stop = self.stop or "the LLM budget is spent"
            return
        cand = self.search.proposals.record(slot, made)
        if cand is None:
            self.empty += 1
            # as many empty proposals in a row as the slots and the queue ahead: the proposer is dry
            if self.empty >= max(4, self.slots + self.ahead) and not self.stop:
                self.stop = self.nothing_new()
            return
        self.empty = 0
        self.check(cand)

    def nothing_new(self) -> str:
        who = {"offline": "the proposer has", "llm": "the Researcher has"}.get(self.cfg.search.proposer,
                                                                              "the proposers have")
        line = f"{who} nothing new to offer; stopping (`asiarch status DIR` shows the last events)"
        self.search.console.line(line)
        return line

    # ------------------------------------------------------------------ checks
    def check(self, cand: Candidate) -> None:
        """Pre-flight ``cand`` on the check pool; the Engineer repairs a failure on the LLM pool."""
        s = self.search
        self.checking.add(cand.id)
        s.tasks.spawn("check", "check", lambda: s.checker.preflight(cand.code),
                      lambda report: self.checked(cand, report))

    def checked(self, cand: Candidate, report) -> None:
        s = self.search
        passed = s.checker.record_preflight(cand, report)
        if passed is None:
            s.tasks.spawn("llm", "repair", lambda: s.checker.repair_preflight(cand, report),
                          lambda fix: self.repaired(cand, report, fix))
            return
        self.settled(cand, passed)

    def repaired(self, cand: Candidate, report, fix) -> None:
        self.settled(cand, self.search.checker.record_repair(cand, report, fix))

    def settled(self, cand: Candidate, passed: bool) -> None:
        self.checking.discard(cand.id)
        if passed:
            self.ready.append(cand.id)

    # ------------------------------------------------------------------ what the user sees
    def figures(self) -> dict:
        s = self.search
        return {"slots": self.slots, "busy": len(s.active), "outbox": len(s.submitter.outbox or ()),
                "proposing": s.tasks.in_flight("propose"), "checking": len(self.checking), "ready": len(self.ready),
                "analysing": s.tasks.in_flight("analyse"), "repairing": s.tasks.in_flight("repair")}

    def show(self) -> None:
        """The status line, and the same figures in the store for `asiarch status` (rate-limited)."""
        s = self.search
        f = self.figures()
        running = sum(1 for j in s.active.values() if getattr(self.last_states.get(j), "name", "") == "RUNNING")
        line = pipeline_line(trained=trained_count(self.store.counts()), budget=self.cfg.budget.candidates,
                             running=running, **f)
        now = time.monotonic()
        if line != self.shown[0] or now - self.shown[1] > 5.0:
            s.console.status(line)
            self.shown = (line, now)
        key = json.dumps(f, sort_keys=True)
        if key != self.noted[0] and now - self.noted[1] >= self.STATUS_S or now - self.noted[1] > 30.0:
            self.store.set_meta(PIPELINE_KEY, json.dumps({**f, "at": time.time(), "pid": os.getpid(),
                                                          "host": os.uname().nodename}))
            self.noted = (key, now)
