"""Early stopping: the watchdog's rules and asynchronous successive halving (ASHA), as pure functions.

Nothing here reads a file, touches the store or prints: the caller (the poller) reads every running
attempt's progress record once per poll, turns each into a :class:`Snapshot`, groups them with the
finished and stopped attempts at the same stage and settings (:func:`settings_key`), and asks
:func:`decide` what to do; the answer is a :class:`Decision` per attempt judged. A stop is carried
out by writing the attempt's control file (:func:`asiarch.job.contract.request_stop`).

**Watchdog** (``[watchdog]``), for a running attempt:

- ``stalled``: no progress record for ``stall_s`` seconds (before the first, since it started running);
- after ``warmup_fraction`` of its steps:
  ``diverging``: the curve points since the lowest loss so far (``diverging_window`` of them at least) rise
  (least-squares slope > 0) and the last is above that lowest loss by ``diverging_rise`` of the larger of it
  and the progress made down to it (the first point's loss less the lowest), or the loss is not finite;
  ``implausible``: the loss is below the task's floor (:func:`task_floor`), or below
  ``implausible_factor`` times the lowest loss of every peer at the same step (``min_peers`` of them);
  ``slow``: tokens/s below ``slow_fraction`` of the median of its peers' (``min_peers`` of them), once it
  has trained ``slow_min_s`` seconds (its throughput is the mean since its first step: over a few seconds
  it measures a load spike as readily as a slow layer).

**ASHA** (``[early_stopping]``; Li et al., "A System for Massively Parallel Hyperparameter Tuning",
MLSys 2020; the rule of Optuna's ``SuccessiveHalvingPruner``): rungs at fractions of the steps
(:func:`rung_steps`). When an attempt reaches a rung its loss there (:func:`loss_at`) is compared with
the losses there of every attempt of the group that has reached it so far, itself and the reference
included; it continues when it is within the best ``n // eta`` of those ``n`` (the best one when
``n < eta``, as Optuna does), else it stops at that rung. Nobody waits for a cohort. As more attempts
reach a rung, an attempt stopped there may come within the best ``n // eta``: :func:`promotions` names
those, to be resumed from their checkpoints. One departure from a single ``eta``: the first rung has its
own, ``first_rung_eta`` (:func:`rung_eta`; by default 2.5 there, 3 after), because the first rung is where
the curves have separated least (on the demo's MQAR curves the later best still sit on the plateau
with the worst at a third of the steps), so it should keep more.

A second departure, the fall rule (``drop_window``, on by default): an attempt also continues when its
loss fell over the ``drop_window`` of the steps before the rung by as much as the best ``n // eta``
falls there (:func:`loss_drop`, :func:`standing`). On MQAR a good mixer's loss takes off from the
plateau at a step that varies with the seed; one that took off late is behind at a rung by its loss
and ahead by its fall, and the loss alone stops it. ``drop_window = 0`` is plain ASHA.

The reference baseline is never stopped, by either rule. Rungs are numbered from 1.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Mapping, Sequence

from asiarch.analysis.stats import spearman

#: Why an attempt was stopped: at an ASHA rung, or by one of the watchdog's rules.
STOP_REASONS = ("rung", "slow", "stalled", "diverging", "implausible")
WATCHDOG_REASONS = STOP_REASONS[1:]


# ---------------------------------------------------------------------------------- inputs and outputs


@dataclass(frozen=True)
class Snapshot:
    """What the head knows of one attempt at one poll.

    ``curve`` holds the logged (step, loss) points so far, steps increasing (the progress record's
    ``curve``, or a result file's /curve). A finished attempt (trained to the end) and a stopped one
    are peers, never judged; pass ``stopped_rung`` for one ASHA stopped (so that :func:`promotions`
    can reconsider it). The caller keeps ``rungs_passed`` between polls: the rungs this attempt was
    already judged at and continued past (:attr:`Decision.rungs_passed` gives the new count).
    """

    key: Hashable                                  # the caller's id of the attempt
    steps: int                                     # steps the attempt trains for
    curve: tuple[tuple[int, float], ...] = ()
    tokens_per_s: float | None = None              # training throughput, all ranks together
    elapsed: float | None = None                   # seconds this run of the attempt has trained
    updated_at: float | None = None                # unix time of the latest progress record
    started_at: float | None = None                # unix time the attempt started running
    finished: bool = False                         # trained to the end
    stopped: bool = False                          # stopped (by a rung or the watchdog)
    stopped_rung: int | None = None                # the ASHA rung it was stopped at (1-based)
    reference: bool = False                        # the reference baseline: never stopped
    rungs_passed: int = 0

    @property
    def step(self) -> int:
        """The last logged step (0 before the first point)."""
        return self.curve[-1][0] if self.curve else 0

    @property
    def running(self) -> bool:
        return not self.finished and not self.stopped


@dataclass(frozen=True)
class Decision:
    """What to do with one running attempt: continue, or stop with a reason and a sentence saying why.

    ``rung`` is the ASHA rung the decision was taken at (1-based; None for the watchdog's), ``step``
    the step it looked at, ``rungs_passed`` the count the caller keeps for the next poll."""

    key: Hashable
    stop: bool = False
    reason: str = ""                               # one of STOP_REASONS when stopping, else ""
    message: str = ""
    rung: int | None = None
    step: int | None = None
    rungs_passed: int = 0

    def request(self) -> dict:
        """The stop request for the attempt's control file (asiarch.job.contract.request_stop)."""
        return {"reason": self.reason, "rung": self.rung, "step": self.step, "message": self.message}


def settings_key(train: Mapping) -> str:
    """Which attempts are peers: those whose resolved [train] settings are equal except for the seed
    (throughput and loss curves compare only between runs of the same size, length and task)."""
    return json.dumps({k: v for k, v in train.items() if k != "seed"}, sort_keys=True, default=str)


def snapshot_from_progress(key: Hashable, progress: Mapping | None, *, steps: int, started_at: float | None = None,
                           reference: bool = False, rungs_passed: int = 0) -> Snapshot:
    """A running attempt's snapshot from its progress record (asiarch.job.result.read_progress: step,
    tokens_per_s, elapsed, updated_at, curve as [[step, loss], ...]); None (no record yet) gives an empty one."""
    progress = progress or {}
    curve = tuple((int(s), float(l)) for s, l in (progress.get("curve") or ()))
    tps, elapsed = progress.get("tokens_per_s"), progress.get("elapsed")
    return Snapshot(key=key, steps=int(progress.get("steps") or steps), curve=curve,
                    tokens_per_s=float(tps) if isinstance(tps, (int, float)) else None,
                    elapsed=float(elapsed) if isinstance(elapsed, (int, float)) else None,
                    updated_at=progress.get("updated_at"), started_at=started_at, reference=reference,
                    rungs_passed=rungs_passed)


def snapshot_from_result(key: Hashable, record, *, reference: bool = False,
                         stopped_rung: int | None = None) -> Snapshot:
    """A finished or stopped attempt's snapshot from its result record (asiarch.job.result.ResultRecord):
    its curve, throughput and steps; stopped when its status is 'stopped'."""
    stopped = record.status == "stopped"
    if stopped and stopped_rung is None:
        stopped_rung = (record.env.get("stop") or {}).get("rung")
    return Snapshot(key=key, steps=int(record.config.get("steps") or record.steps_done or 0),
                    curve=tuple(zip((int(s) for s in record.curve.step), (float(l) for l in record.curve.loss))),
                    tokens_per_s=record.tokens_per_s, finished=not stopped, stopped=stopped,
                    stopped_rung=stopped_rung, reference=reference)


# ---------------------------------------------------------------------------------- rungs and the ASHA rule


def rung_fractions(cfg) -> list[float]:
    """The rungs of ``[early_stopping]`` as fractions of the steps: ``rungs``, or min_fraction * eta^k < 1."""
    if cfg.rungs:
        return list(cfg.rungs)
    out, f = [], cfg.min_fraction
    while f < 1 - 1e-9:
        out.append(f)
        f *= cfg.eta
    return out


def rung_steps(cfg, steps: int) -> list[int]:
    """The step of each rung for an attempt of ``steps`` steps (rounded; at least 1, below ``steps``,
    distinct)."""
    out: list[int] = []
    for f in rung_fractions(cfg):
        s = max(1, round(f * steps))
        if s < steps and (not out or s > out[-1]):
            out.append(s)
    return out


def loss_at(curve: Sequence[tuple[int, float]], step: int) -> float | None:
    """The loss of ``curve`` at ``step``: linear between the logged points around it, the first point's
    value before it (a logged point is the mean loss of the steps up to it); None when the curve has not
    reached ``step``. A non-finite value is returned as infinity (the worst)."""
    if not curve or curve[-1][0] < step:
        return None
    prev = None
    for s, l in curve:
        if s >= step:
            if prev is None or s == step:
                value = l
            else:
                (s0, l0) = prev
                value = l0 + (l - l0) * (step - s0) / (s - s0)
            return value if math.isfinite(value) else math.inf
        prev = (s, l)
    return None  # unreachable: the last point is at or past step


def rung_eta(cfg, index: int) -> float:
    """The reduction factor at rung ``index`` (0-based): ``first_rung_eta`` at the first (0: ``eta``),
    ``eta`` at the others."""
    return cfg.first_rung_eta if index == 0 and cfg.first_rung_eta else cfg.eta


def rung_cut(competitors: Sequence[float], eta: float) -> tuple[int, float]:
    """How many of ``competitors`` (the losses at a rung of every attempt that reached it) continue, the
    best ``len // eta`` (at least one), and the loss the last of them has: the bar to be within."""
    k = max(1, int(len(competitors) // eta))
    return k, sorted(competitors)[k - 1]


def drop_window(cfg, steps: int) -> int:
    """The steps over which :func:`loss_drop` is measured for an attempt of ``steps`` steps
    (``drop_window`` of them, rounded; 0: the rule judges the loss alone)."""
    return max(0, round(cfg.drop_window * steps)) if cfg.drop_window else 0


def loss_drop(curve: Sequence[tuple[int, float]], step: int, window: int) -> float | None:
    """How far the loss of ``curve`` fell over the ``window`` steps up to ``step`` (:func:`loss_at` there
    and ``window`` steps before; a curve taking off falls fast); None when ``window`` is 0 or the curve has
    not reached ``step``, minus infinity when either loss is not finite."""
    if not window:
        return None
    now = loss_at(curve, step)
    if now is None:
        return None
    before = loss_at(curve, max(0, step - window))
    return before - now if math.isfinite(now) and before is not None and math.isfinite(before) else -math.inf


@dataclass(frozen=True)
class Standing:
    """An attempt's standing at a rung among the ``n`` attempts that reached it (itself included): it
    continues when its loss is within the best ``k`` (at most ``bar``), or, where the fall rule is on, its
    fall over the window before the rung is within the best ``k`` falls (at least ``drop_bar``)."""

    value: float
    drop: float | None
    n: int
    k: int
    bar: float
    drop_bar: float | None = None

    @property
    def passed(self) -> bool:
        return self.value <= self.bar or self.by_drop

    @property
    def by_drop(self) -> bool:
        """Within the best by its fall, not by its loss: a curve taking off."""
        return self.value > self.bar and self.drop is not None and self.drop_bar is not None \
            and self.drop >= self.drop_bar

    def why_stopped(self) -> str:
        """Why it does not continue, in a sentence's second half."""
        out = (f"loss {self.value:.4g} is outside the best {self.k} of the {self.n} attempts that reached the rung "
               f"(needed <= {self.bar:.4g})")
        if self.drop is not None and self.drop_bar is not None:
            out += f" and so is its fall over the window before it, {self.drop:.4g} (needed >= {self.drop_bar:.4g})"
        return out


def standing(value: float, drop: float | None, competitors: Sequence[tuple[float, float | None]],
             eta: float) -> Standing:
    """The standing of an attempt with loss ``value`` and fall ``drop`` at a rung, against ``competitors``
    (the (loss, fall) of every attempt that reached the rung, its own included): the best ``n // eta``
    by loss continue (the best one when ``n < eta``, as Optuna's SuccessiveHalvingPruner does), and so do
    the best ``n // eta`` by their fall over the window before the rung, where it is measured."""
    k, bar = rung_cut([v for v, _ in competitors], eta)
    drops = [d for _, d in competitors if d is not None]
    drop_bar = sorted(drops, reverse=True)[min(k, len(drops)) - 1] if drop is not None and drops else None
    return Standing(value=value, drop=drop, n=len(competitors), k=k, bar=bar, drop_bar=drop_bar)


def rung_values(group: Iterable[Snapshot], step: int, window: int = 0) -> list[tuple[float, float | None]]:
    """The (loss, fall over ``window`` steps) at ``step`` of the attempts of ``group`` that reached it."""
    out = []
    for s in group:
        v = loss_at(s.curve, step)
        if v is not None:
            out.append((v, loss_drop(s.curve, step, window)))
    return out


def rung_standing(snap: Snapshot, group: Iterable[Snapshot], cfg, index: int) -> Standing | None:
    """``snap``'s standing at its rung ``index`` (0-based) against ``group`` (itself included); None before
    its curve reaches the rung."""
    step = rung_steps(cfg, snap.steps)[index]
    window = drop_window(cfg, snap.steps)
    value = loss_at(snap.curve, step)
    if value is None:
        return None
    return standing(value, loss_drop(snap.curve, step, window), rung_values(group, step, window),
                    rung_eta(cfg, index))


def asha_decision(snap: Snapshot, group: Sequence[Snapshot], cfg) -> Decision:
    """ASHA's decision for the running attempt ``snap`` against ``group`` (its peers, itself included):
    judged at each rung it reached since the last one it passed."""
    steps = rung_steps(cfg, snap.steps)
    passed = snap.rungs_passed
    for i in range(passed, len(steps)):
        st = rung_standing(snap, group, cfg, i)
        if st is None:
            break
        if snap.reference or st.passed:
            passed = i + 1
            continue
        return Decision(snap.key, True, "rung", f"stopped at rung {i + 1} of {len(steps)} (step {steps[i]} of "
                        f"{snap.steps}): {st.why_stopped()}", rung=i + 1, step=steps[i], rungs_passed=passed)
    return Decision(snap.key, rungs_passed=passed)


def promotions(group: Sequence[Snapshot], cfg) -> list[Hashable]:
    """The attempts of ``group`` stopped at a rung that the rule would now let continue (more attempts
    have reached that rung since): resume each from its checkpoint, with ``rungs_passed`` = its rung."""
    out = []
    for snap in group:
        if not snap.stopped or not snap.stopped_rung or snap.stopped_rung > len(rung_steps(cfg, snap.steps)):
            continue
        st = rung_standing(snap, group, cfg, snap.stopped_rung - 1)
        if st is not None and st.passed:
            out.append(snap.key)
    return out


# ---------------------------------------------------------------------------------- the watchdog


def task_floor(task: str, wcfg, best_final_loss: float | None = None) -> float:
    """The loss below which a run of ``task`` cannot be honest. MQAR: 0 (each query's value is in its
    context, so a perfect recaller scores 0 and the floor rule never fires; the peer rule still does).
    LM: ``watchdog.implausible_floor`` when set, else ``implausible_fraction`` of the best final loss a
    finished peer reached (0 before there is one)."""
    if task != "lm":
        return 0.0
    if wcfg.implausible_floor > 0:
        return float(wcfg.implausible_floor)
    if best_final_loss is not None and math.isfinite(best_final_loss):
        return wcfg.implausible_fraction * best_final_loss
    return 0.0


def _slope(points: Sequence[tuple[int, float]]) -> float:
    xs = [float(s) for s, _ in points]
    ys = [l for _, l in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def watchdog_decision(snap: Snapshot, group: Sequence[Snapshot], wcfg, *, now: float, floor: float = 0.0) -> Decision:
    """The watchdog's decision for the running attempt ``snap`` against ``group`` (its peers at the same
    stage and settings, running, finished and stopped; itself may be included)."""
    key = snap.key
    if snap.reference or not snap.running:
        return Decision(key, rungs_passed=snap.rungs_passed)
    last = snap.updated_at if snap.updated_at is not None else snap.started_at
    if last is not None and wcfg.stall_s > 0 and now - last > wcfg.stall_s:
        what = "progress record" if snap.updated_at is not None else "progress record since it started"
        return Decision(key, True, "stalled", f"stalled: no new {what} for {now - last:.0f} s (watchdog.stall_s = "
                        f"{wcfg.stall_s:g}) at step {snap.step} of {snap.steps}", step=snap.step,
                        rungs_passed=snap.rungs_passed)
    warm = max(1, math.ceil(wcfg.warmup_fraction * snap.steps))
    if snap.step < warm:
        return Decision(key, rungs_passed=snap.rungs_passed)
    step, loss = snap.curve[-1]
    peers = [p for p in group if p.key != key]
    stop = dict(step=step, rungs_passed=snap.rungs_passed)

    if not math.isfinite(loss):
        return Decision(key, True, "diverging", f"diverging: the loss is {loss} at step {step}", **stop)
    # the points from the lowest loss (its last occurrence) to now, after warm-up: judged on the curve itself, so
    # that the verdict does not hang on which of the job's records a poll happened to read
    lowest = min(l for _, l in snap.curve)
    low_at = max(i for i, (_, l) in enumerate(snap.curve) if l == lowest)
    since = [p for p in snap.curve[low_at:] if p[0] >= warm]
    if len(since) >= wcfg.diverging_window:
        # the rise is measured against the larger of the lowest loss and the progress made down to it, so that a
        # run near zero loss (an easy LM text) is not called diverging for a bump of a few hundredths
        bar = lowest + wcfg.diverging_rise * max(abs(lowest), snap.curve[0][1] - lowest)
        if _slope(since) > 0 and loss > bar:
            return Decision(key, True, "diverging", f"diverging: the loss rose over the {len(since)} points since its "
                            f"lowest ({lowest:.4g} at step {snap.curve[low_at][0]}) to {loss:.4g} at step {step}, "
                            f"above {bar:.4g} (the lowest plus watchdog.diverging_rise of the larger of it and the "
                            f"progress made down to it)", **stop)

    if loss < floor:
        return Decision(key, True, "implausible", f"implausible: loss {loss:.4g} at step {step} is below the floor "
                        f"{floor:.4g} an honest run of this task can reach; re-probe it for leaks", **stop)
    at_step = [v for v in (loss_at(p.curve, step) for p in peers) if v is not None]
    if len(at_step) >= max(1, wcfg.min_peers) and loss < wcfg.implausible_factor * min(at_step):
        return Decision(key, True, "implausible", f"implausible: loss {loss:.4g} at step {step} is below "
                        f"{wcfg.implausible_factor:g} x the best of {len(at_step)} peers there ({min(at_step):.4g}); "
                        "re-probe it for leaks", **stop)

    speeds = [p.tokens_per_s for p in peers if p.tokens_per_s and math.isfinite(p.tokens_per_s)
              and (not p.running or p.step >= warm)]
    tps = snap.tokens_per_s
    timed = snap.elapsed is None or snap.elapsed >= wcfg.slow_min_s
    if tps is not None and math.isfinite(tps) and timed and len(speeds) >= max(1, wcfg.min_peers):
        median = statistics.median(speeds)
        if tps < wcfg.slow_fraction * median:
            return Decision(key, True, "slow", f"slow: {tps:,.0f} tokens/s at step {step}, below "
                            f"{wcfg.slow_fraction:.2g} of the median {median:,.0f} of {len(speeds)} peers"
                            + (f" after {snap.elapsed:.0f} s of training" if snap.elapsed is not None else ""), **stop)
    return Decision(key, rungs_passed=snap.rungs_passed)


# ---------------------------------------------------------------------------------- both together


def applies(section, stage: str) -> bool:
    """Whether a [watchdog] or [early_stopping] section acts on attempts of ``stage``."""
    return bool(section.enabled) and stage in section.stages


def decide(group: Sequence[Snapshot], *, watchdog, early_stopping, stage: str, now: float,
           floor: float = 0.0) -> dict[Hashable, Decision]:
    """One decision per running attempt of ``group`` (the attempts of one stage at one setting:
    running, finished and stopped, the reference included; leave out failed ones, leaks and those stopped
    as implausible, whose curves are no standard): the watchdog's rules first, then ASHA,
    each where its section is enabled for ``stage``. ``floor``: :func:`task_floor`. The reference is
    never stopped. Continue decisions carry ``rungs_passed`` for the caller to keep."""
    out = {}
    for snap in group:
        if not snap.running:
            continue
        d = Decision(snap.key, rungs_passed=snap.rungs_passed)
        if applies(watchdog, stage):
            d = watchdog_decision(snap, group, watchdog, now=now, floor=floor)
        if not d.stop and applies(early_stopping, stage):
            d = asha_decision(snap, group, early_stopping)
        out[snap.key] = d
    return out


# ---------------------------------------------------------------------------------- replay of recorded curves


@dataclass(frozen=True)
class ReplayCurve:
    """One recorded attempt trained to the end, for :func:`replay`: its curve, its final loss (what it
    is ranked by) and its cost (device-seconds, or steps) of the whole run."""

    key: Hashable
    steps: int
    curve: tuple[tuple[int, float], ...]
    final_loss: float
    cost: float
    baseline: bool = False                        # trained before the search, never stopped; a peer from the start


@dataclass
class ReplayOutcome:
    candidates: int
    compute_saved: float                          # 1 - cost spent / cost of training every candidate to the end
    k: int
    topk_recall: float                            # share of the k best by final loss trained to the end
    rank_spearman: float                          # the policy's order against the order by final loss
    stopped: dict = field(default_factory=dict)   # key -> rung it ended stopped at
    promoted: int = 0                             # resumes of stopped attempts


def replay(curves: Sequence[ReplayCurve], cfg, *, parallel: int = 1, k: int = 3) -> ReplayOutcome:
    """Replay recorded full curves under the ASHA policy ``cfg`` ([early_stopping]): the candidates
    start in the given order (submission order), ``parallel`` at a time, each step costing its own
    cost / steps; the baselines are peers from the start. At each rung an attempt reaches, it is judged
    against what reached that rung before it; after each judgement, attempts stopped at a rung that the
    rule would now let continue are resumed (before new candidates start). Returns the compute saved
    against training every candidate to the end, and how well the best survive."""
    base = [c for c in curves if c.baseline]
    cands = [c for c in curves if not c.baseline]
    reached: dict[int, list[tuple[float, float | None]]] = {}  # rung step -> (loss, fall) there, in arrival order

    def at(c: ReplayCurve, step: int) -> tuple[float, float | None]:
        v = loss_at(c.curve, step)
        return (math.inf if v is None else v), loss_drop(c.curve, step, drop_window(cfg, c.steps))

    def arrive(c: ReplayCurve, step: int) -> tuple[float, float | None]:
        reached.setdefault(step, []).append(at(c, step))
        return reached[step][-1]

    def passes(c: ReplayCurve, index: int) -> bool:
        step = rung_steps(cfg, c.steps)[index]
        return standing(*at(c, step), reached[step], rung_eta(cfg, index)).passed

    for b in base:
        for s in rung_steps(cfg, b.steps):
            arrive(b, s)
    trained = {c.key: 0 for c in cands}          # steps trained so far
    stopped: dict[Hashable, int] = {}             # key -> the rung (1-based) it is stopped at
    pending = list(cands)                         # not started yet, in submission order
    resume: list[tuple[ReplayCurve, int]] = []    # promoted: (curve, index of the next rung), waiting for a slot
    running: list[tuple[float, int, ReplayCurve, int]] = []  # (time of its next event, tiebreak, curve, rung index)
    now, tick, promoted = 0.0, 0, 0

    def start(c: ReplayCurve, rung_index: int) -> None:
        nonlocal tick
        steps = rung_steps(cfg, c.steps)
        target = steps[rung_index] if rung_index < len(steps) else c.steps
        running.append((now + (target - trained[c.key]) * c.cost / c.steps, tick, c, rung_index))
        tick += 1

    def fill() -> None:
        while len(running) < parallel and (resume or pending):
            c, index = resume.pop(0) if resume else (pending.pop(0), 0)
            start(c, index)

    fill()
    while running:
        running.sort(key=lambda e: (e[0], e[1]))
        now, _, c, i = running.pop(0)
        steps = rung_steps(cfg, c.steps)
        if i >= len(steps):                       # trained to the end
            trained[c.key] = c.steps
            fill()
            continue
        trained[c.key] = steps[i]
        arrive(c, steps[i])
        if passes(c, i):
            start(c, i + 1)
        else:
            stopped[c.key] = i + 1
        for other in cands:                       # the rule may now let earlier stopped ones go on
            rung = stopped.get(other.key)
            if rung is None or other.key == c.key:
                continue
            if passes(other, rung - 1):
                del stopped[other.key]
                promoted += 1
                resume.append((other, rung))
        fill()

    full = sum(c.cost for c in cands)
    spent = sum(trained[c.key] / c.steps * c.cost for c in cands)
    survivors = {c.key for c in cands if trained[c.key] >= c.steps}
    best = sorted(cands, key=lambda c: c.final_loss)[:k]
    # the policy's order: survivors by final loss, then stopped ones by their last rung (later first), then loss there
    def policy_key(c: ReplayCurve):
        if c.key in survivors:
            return (0, 0, c.final_loss)
        rung = stopped[c.key]
        return (1, -rung, loss_at(c.curve, rung_steps(cfg, c.steps)[rung - 1]) or math.inf)
    order = sorted(cands, key=policy_key)
    pos = {c.key: i for i, c in enumerate(order)}
    return ReplayOutcome(
        candidates=len(cands), compute_saved=(1 - spent / full) if full else 0.0, k=min(k, len(cands)),
        topk_recall=(sum(1 for c in best if c.key in survivors) / len(best)) if best else math.nan,
        rank_spearman=spearman([c.final_loss for c in cands], [pos[c.key] for c in cands]),
        stopped=dict(stopped), promoted=promoted)

