"""The live watchdog and early stopping: the head side of asiarch.search.early_stopping.

Once per poll (:meth:`Watchdog.check`, called by the poller with the states it just read) the
progress record of every running attempt is read (one small JSON file each), grouped with the
finished and stopped attempts of its stage (their curves read once from their result files and
kept), and :func:`asiarch.search.early_stopping.decide` says which to stop. A stop is a request in
the attempt's control file (``stop.json``): the job's ranks stop together at the end of a step,
checkpoint and write a result with status 'stopped', which ingest records (the candidate ends
'stopped' with its partial curve). A job that does not answer the request within its grace
(:meth:`Watchdog.grace_s`: ``GRACE_S``, or ``watchdog.stall_s`` when shorter; a stalled one may never
read it) is cancelled through the scheduler, its candidate recorded stopped with the watchdog's
reason. The reference baseline is never stopped.

ASHA's promotions (an attempt stopped at a rung that more arrivals have brought within the top
1/eta) are handed to ``on_promote``, which trains the candidate again from its checkpoint; the
new attempt starts past the rung it was stopped at (``scores["stopped"]["rung"]``), so it is not judged
there again. Each rung a running attempt passes is recorded in the store (a 'rung-passed' event, with
its step, loss and standing there), so a resumed head (asiarch.search.recovery re-attaches the running
jobs) continues past the rungs an attempt already passed instead of judging it there again against the
peers it then knows. What is not kept across a head restart: when each job was first seen running (a
resumed head counts a job's stall from when it first sees it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from asiarch.config import Config
from asiarch.dispatch.base import JobState, Scheduler
from asiarch.job import result as rf
from asiarch.job.contract import AttemptFiles, request_stop
from asiarch.layout import ExperimentDir
from asiarch.search import early_stopping as es
from asiarch.search.messages import Sink
from asiarch.store import Attempt, Store

GRACE_S = 120.0  # a job that has not ended this long after its stop request is cancelled


class Watchdog:
    """Judges the running attempts in ``active`` at each poll, and stops those the rules say to."""

    def __init__(self, exp: ExperimentDir, cfg: Config, store: Store, scheduler: Scheduler, active: dict[int, str],
                 console: Sink, on_promote: Callable[[Attempt], None] | None = None):
        self.exp = exp
        self.cfg = cfg
        self.store = store
        self.scheduler = scheduler
        self.active = active
        self.console = console
        self.on_promote = on_promote
        self.rungs: dict[int, int] = {}          # attempt id -> rungs passed (each also a 'rung-passed' event)
        self.requested: dict[int, tuple[float, es.Decision]] = {}  # attempt id -> (when, why)
        self.peers: dict[int, es.Snapshot] | None = None  # ended attempt id -> its snapshot
        self.stages: dict[int, str] = {}
        self.asked: set[int] = set()             # stopped attempts handed to on_promote (once each)
        self.promoted: set[int] = set()          # those resumed: a later attempt carries their curve on
        self.running_since: dict[int, float] = {}  # attempt id -> when this head first saw its job running

    @property
    def enabled(self) -> bool:
        return any(es.applies(section, stage) for section in (self.cfg.watchdog, self.cfg.early_stopping)
                   for stage in ("explore", "verify"))

    def is_reference(self, cid: int) -> bool:
        cand = self.store.candidate(cid)
        return cand.origin == "baseline" and cand.name == self.cfg.baselines.reference

    # ------------------------------------------------------------------ peers
    def load_peers(self) -> None:
        """Snapshots of the attempts that ended with a curve (ok or stopped), read once. A stopped attempt
        that a later attempt of the same stage and seed resumed (a promotion) is left out: the later one
        carries its curve on, and a rung counts each candidate once."""
        self.peers = {}
        for cand in self.store.candidates():
            attempts = self.store.attempts(cand.id)
            for i, a in enumerate(attempts):
                if a.status == "stopped" and any((b.stage, b.seed) == (a.stage, a.seed) for b in attempts[i + 1:]):
                    self.asked.add(a.id)
                    self.promoted.add(a.id)
                elif a.status in ("ok", "stopped"):
                    self.add_peer(a)

    def add_peer(self, attempt: Attempt) -> None:
        """Keep an ended attempt's curve for judging the others (called as each is ingested)."""
        if self.peers is None:
            return
        try:
            rec = rf.read_result(AttemptFiles(self.exp.root / attempt.dir).result)
        except rf.ResultFileError:
            return
        if rec.status not in ("ok", "stopped") or (rec.env.get("stop") or {}).get("reason") == "implausible":
            return  # an implausible curve is no standard for the others
        self.peers[attempt.id] = es.snapshot_from_result(attempt.id, rec, reference=self.is_reference(attempt.candidate_id))
        self.stages[attempt.id] = attempt.stage

    # ------------------------------------------------------------------ one poll
    def check(self, states: dict[str, JobState]) -> None:
        """Judge every running attempt (one progress read each) and act on the decisions."""
        if not self.enabled or not self.active:
            return
        if self.peers is None:
            self.load_peers()
        now = time.time()
        running: dict[str, list[es.Snapshot]] = {}
        attempts: dict[int, Attempt] = {}
        for attempt_id, job_id in list(self.active.items()):
            if states.get(job_id) is not JobState.RUNNING:
                continue
            a = attempts[attempt_id] = self.store.attempt(attempt_id)
            if attempt_id in self.requested:
                self.overdue(a, now)
                continue
            progress = rf.read_progress(AttemptFiles(self.exp.root / a.dir).progress)
            # the scheduler's start is not recorded: a job's stall before its first progress record counts
            # from when this head first saw it running (not its submission: it may have queued for hours)
            started = self.running_since.setdefault(attempt_id, now)
            if attempt_id not in self.rungs:  # past those a promotion resumed it after, and those it passed since
                self.rungs[attempt_id] = self.resumed_past(a) + self.store.rungs_passed(attempt_id)
            snap = es.snapshot_from_progress(attempt_id, progress, steps=self.steps(a), started_at=started,
                                             reference=self.is_reference(a.candidate_id),
                                             rungs_passed=self.rungs[attempt_id])
            running.setdefault(a.stage, []).append(snap)
        best = min((p.curve[-1][1] for p in self.peers.values() if p.finished and p.curve), default=None)
        floor = es.task_floor(self.cfg.train.task, self.cfg.watchdog, best)
        for stage, snaps in running.items():
            ended = [p for k, p in self.peers.items() if self.stages.get(k) == stage and k not in self.promoted]
            group = snaps + ended
            by_key = {snap.key: snap for snap in snaps}
            for key, d in es.decide(group, watchdog=self.cfg.watchdog, early_stopping=self.cfg.early_stopping,
                                    stage=stage, now=now, floor=floor).items():
                self.passed(attempts[key], by_key[key], group, d.rungs_passed)
                if d.stop:
                    self.stop(attempts[key], d, now)
            if self.on_promote is not None and es.applies(self.cfg.early_stopping, stage):
                # against every attempt that reached the rung, the running ones included: the arrival that
                # makes an earlier stopped attempt promotable may be the last job of the search
                for key in es.promotions(group, self.cfg.early_stopping):
                    if key not in self.asked:
                        self.promote(key)

    def passed(self, a: Attempt, snap: es.Snapshot, group: list[es.Snapshot], rungs_passed: int) -> None:
        """Keep the rungs ``a`` has now passed, and record each newly passed one in the store (a
        'rung-passed' event: its step, the attempt's loss there and its standing among the ``group``
        attempts that reached it, as the rule judged it), so that a restarted head continues past them."""
        held = self.rungs[a.id]
        self.rungs[a.id] = rungs_passed
        steps = es.rung_steps(self.cfg.early_stopping, snap.steps)
        for i in range(held, rungs_passed):
            st = es.rung_standing(snap, group, self.cfg.early_stopping, i)
            if snap.reference:
                why = "the reference baseline, never stopped"
            elif st.by_drop:
                why = f"its fall {st.drop:.4g} over the window before the rung within the best {st.k} of {st.n}"
            else:
                why = f"within the best {st.k} of {st.n}"
            self.store.log_event("rung-passed", f"attempt {a.n}: passed rung {i + 1} of {len(steps)} at step {steps[i]} "
                                 f"of {snap.steps} (loss {st.value:.4g}, {why})", a.candidate_id, a.id)

    def promote(self, key: int) -> None:
        """Hand a stopped attempt the rule now lets continue to ``on_promote`` (once); when its candidate
        is resumed (no longer 'stopped'), its own curve leaves the peers: the new attempt's carries it on."""
        self.asked.add(key)
        a = self.store.attempt(key)
        self.on_promote(a)
        if self.store.candidate(a.candidate_id).status != "stopped":
            self.promoted.add(key)

    def resumed_past(self, a: Attempt) -> int:
        """The rungs a new attempt starts past: a promoted candidate's rung it was stopped at (its
        ``scores["stopped"]``, kept through the promotion), when this attempt resumes that one's seed."""
        info = self.store.candidate(a.candidate_id).scores.get("stopped") or {}
        rung = info.get("rung") if info.get("reason") == "rung" else None
        return int(rung) if isinstance(rung, int) and a.stage == "explore" and a.seed == 0 else 0

    def grace_s(self) -> float:
        """How long a job has to answer its stop request before it is cancelled: ``GRACE_S``, or
        ``watchdog.stall_s`` when shorter (a live trainer reads the request after its current step; one
        that has not answered within a stall period is as good as stalled)."""
        stall = self.cfg.watchdog.stall_s
        return min(GRACE_S, stall) if stall > 0 else GRACE_S

    def steps(self, a: Attempt) -> int:
        from asiarch.config import stage_train

        return int(stage_train(self.cfg, a.stage, a.seed).steps)

    def stop(self, a: Attempt, d: es.Decision, now: float) -> None:
        try:
            request_stop(AttemptFiles(self.exp.root / a.dir), **d.request())
        except OSError as exc:  # the job made stop.json a directory (or the disk is full): cancel it at the next check
            self.requested[a.id] = (now - self.grace_s(), d)
            self.store.log_event("stopping", f"attempt {a.n}: its stop request could not be written ({exc}); "
                                             f"cancelling the job instead ({d.reason})"[:1000], a.candidate_id, a.id)
            return
        self.requested[a.id] = (now, d)
        where = f"rung {d.rung}" if d.rung else d.reason
        self.store.log_event("stopping", f"attempt {a.n}: asked to stop ({where}): {d.message}"[:1000],
                             a.candidate_id, a.id)
        cand = self.store.candidate(a.candidate_id)
        self.console.line(f"#{cand.id:<4} {cand.name[:34]:<34} STOPPING  {where}: {d.message}"[:200])

    def overdue(self, a: Attempt, now: float) -> None:
        """Cancel a job that has not answered its stop request within :meth:`grace_s` (a stalled one may
        never read it); its candidate is recorded stopped with the watchdog's reason, as ingest records a
        job that answered (``scores["stopped"]``, from its progress record; no checkpoint to resume)."""
        when, d = self.requested[a.id]
        grace = self.grace_s()
        if now - when < grace:
            return
        self.requested[a.id] = (float("inf"), d)  # once
        self.scheduler.cancel([a.job_id])
        if a.stage != "explore":
            return
        cand = self.store.candidate(a.candidate_id)
        if cand.status in ("done", "failed", "stopped", "rejected"):
            return
        progress = rf.read_progress(AttemptFiles(self.exp.root / a.dir).progress) or {}
        loss = progress.get("loss")
        where = f"rung {d.rung}" if d.rung else d.reason
        why = (f"stopped ({where}) at step {progress.get('step', d.step or 0)} of {self.steps(a)}: {d.message}; "
               f"cancelled, it did not answer the stop request in {grace:.0f} s")
        info = {"reason": d.reason, "rung": d.rung, "step": progress.get("step", d.step), "steps": self.steps(a),
                "loss": loss if isinstance(loss, (int, float)) and math.isfinite(loss) else None,
                "message": d.message, "attempt": a.n, "cancelled": True}
        self.store.set_scores(cand.id, fitness=None, loss=None, score=None, scores={**cand.scores, "stopped": info},
                              num_params=cand.num_params, status="stopped", reason=why[:500])
        self.store.log_event("stopped", f"attempt {a.n}: {why}"[:1000], cand.id, a.id)

    def ended(self, attempt: Attempt) -> None:
        """An attempt left flight: forget it, and keep its curve as a peer."""
        self.rungs.pop(attempt.id, None)
        self.requested.pop(attempt.id, None)
        self.running_since.pop(attempt.id, None)
        self.add_peer(self.store.attempt(attempt.id))
