"""Stages and seeds, read from the store: per-stage means with intervals, paired differences
against the reference baseline, the promotion rule, the stage rank agreement and the arms'
discovery curves.

Every figure here is computed from the ok results of the store (one per candidate, stage and
seed, the candidate's current code only), never stored twice. A candidate "beats" the
baseline in a stage when the interval of its paired differences (same seeds, same stage)
excludes zero in the good direction; see :mod:`asiarch.analysis.stats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from asiarch.search.fitness import Reference, bench_score, compute_fitness
from asiarch.analysis.stats import Interval, Paired, paired_difference, spearman, summarize
from asiarch.store import Candidate, Store, queries

STAGES = ("explore", "verify")


@dataclass
class StageRow:
    """One candidate's figures in one stage."""

    candidate: Candidate
    stage: str
    seeds: list[int]
    loss: Interval                              # evaluation loss over seeds (lower is better)
    score: Interval | None                      # task score over seeds (higher is better), None on LM
    metrics: dict[str, Interval] = field(default_factory=dict)
    loss_vs_ref: Paired | None = None           # candidate - reference, sign so that > 0 is better
    score_vs_ref: Paired | None = None
    fitness: float | None = None                # ASI-Arch's form on the stage's means, against the reference's
    terms: dict[str, float] = field(default_factory=dict)

    @property
    def beats(self) -> bool:
        """The loss's paired interval excludes zero on the good side (and the task score, where there
        is one, is not significantly worse)."""
        if self.loss_vs_ref is None or not self.loss_vs_ref.beats:
            return False
        return not (self.score_vs_ref is not None and self.score_vs_ref.worse)


def _runs(store: Store, stage: str, candidates) -> dict[int, dict[int, dict]]:
    """candidate id -> seed -> ok result of the candidate's current code in ``stage`` (of ``candidates``)."""
    codes = {c.id: c.code_sha256 for c in candidates}
    out: dict[int, dict[int, dict]] = {}
    for r in store.seed_results(stage=stage):
        if codes.get(r["candidate_id"]) == r["code_sha256"]:
            out.setdefault(r["candidate_id"], {})[r["seed"]] = r
    return out


def _loss(r: dict) -> float | None:
    x = r.get("eval_loss")
    return x if x is not None and math.isfinite(x) else None


def stage_rows(store: Store, stage: str, reference: str, *, fitness_cfg=None) -> list[StageRow]:
    """Every candidate (baselines included) with at least one ok seed in ``stage``, best first
    (by fitness, then by mean loss). ``reference`` names the baseline the paired differences and
    the fitness are measured against; ``fitness_cfg`` is the [fitness] section (defaults if None).
    """
    if stage not in STAGES:
        raise ValueError(f"no stage {stage!r}; stages: {', '.join(STAGES)}")
    every = store.candidates()
    runs = _runs(store, stage, every)
    cands = {c.id: c for c in every if c.id in runs}
    ref = next((c for c in cands.values() if c.origin == "baseline" and c.name == reference), None)
    ref_runs = runs.get(ref.id, {}) if ref else {}
    ref_loss = {s: _loss(r) for s, r in ref_runs.items() if _loss(r) is not None}
    ref_score = {s: bench_score(r["metrics"]) for s, r in ref_runs.items() if bench_score(r["metrics"]) is not None}
    ref_point = None
    if ref_loss:
        ref_point = Reference(loss=sum(ref_loss.values()) / len(ref_loss),
                              bench=sum(ref_score.values()) / len(ref_score) if ref_score else None)
    fc = fitness_cfg
    rows = []
    for cid, by_seed in runs.items():
        losses = {s: _loss(r) for s, r in by_seed.items() if _loss(r) is not None}
        if not losses:
            continue
        scores = {s: bench_score(r["metrics"]) for s, r in by_seed.items() if bench_score(r["metrics"]) is not None}
        metric_names = set.intersection(*(set(r["metrics"]) for r in by_seed.values()))
        metrics = {}
        for m in sorted(metric_names):
            vals = [r["metrics"][m] for r in by_seed.values()]
            if all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
                metrics[m] = summarize(vals)
        row = StageRow(candidate=cands[cid], stage=stage, seeds=sorted(by_seed), loss=summarize(list(losses.values())),
                       score=summarize(list(scores.values())) if scores else None, metrics=metrics)
        if ref is not None and cid != ref.id and ref_loss:
            row.loss_vs_ref = paired_difference(losses, ref_loss, higher_is_better=False)
            if scores and ref_score:
                row.score_vs_ref = paired_difference(scores, ref_score, higher_is_better=True)
        if ref_point is not None:
            fit = compute_fitness(row.loss.mean, row.score.mean if row.score else None, ref_point,
                                  scale=fc.scale if fc else 0.1, sharpness=fc.sharpness if fc else 6.0,
                                  combine=fc.combine if fc else "mean")
            if fit is not None:
                row.fitness, row.terms = fit.value, fit.terms
        rows.append(row)
    rows.sort(key=lambda r: (-(r.fitness if r.fitness is not None else -math.inf), r.loss.mean))
    return rows


def promote(store: Store, cfg) -> list[tuple[Candidate, str]]:
    """The candidates the verification stage trains, with why: by ``verify.promote``, at most
    ``verify.top_k``, from the explored (done) non-baseline candidates, best exploration fitness first."""
    v = cfg.verify
    rows = [r for r in stage_rows(store, "explore", cfg.baselines.reference, fitness_cfg=cfg.fitness)
            if r.candidate.origin != "baseline" and r.candidate.status == "done"]
    chosen = []
    for r in rows:
        if len(chosen) >= v.top_k:
            break
        fit = f"{r.fitness:.3f}" if r.fitness is not None else "n/a"
        if v.promote == "top_k":
            chosen.append((r.candidate, f"top {v.top_k} by exploration fitness ({fit})"))
        elif r.beats:
            iv = r.loss_vs_ref.interval
            chosen.append((r.candidate, f"beats {cfg.baselines.reference} in exploration: loss lower by "
                                        f"{iv.mean:.4f} [{iv.low:.4f}, {iv.high:.4f}] over {iv.n} seeds"))
    return chosen


@dataclass
class Agreement:
    """How well the exploration stage ranks what the verification stage finds."""

    rho: float                                   # Spearman's rank correlation of the mean losses (nan if n < 3)
    n: int
    pairs: list[tuple[str, float, float]]        # (name, exploration mean loss, verification mean loss)


def stage_agreement(store: Store, reference: str, rows: dict | None = None) -> Agreement:
    """Spearman correlation between the exploration and verification mean losses of the candidates
    trained in both stages (baselines excluded). ``rows``: stage -> its :func:`stage_rows`, when the
    caller has them already."""
    rows = rows or {stage: stage_rows(store, stage, reference) for stage in ("explore", "verify")}
    explore = {r.candidate.id: r for r in rows["explore"]}
    pairs = [(r.candidate.name, explore[r.candidate.id].loss.mean, r.loss.mean)
             for r in rows["verify"]
             if r.candidate.id in explore and r.candidate.origin != "baseline"]
    rho = spearman([p[1] for p in pairs], [p[2] for p in pairs]) if len(pairs) >= 3 else math.nan
    return Agreement(rho=rho, n=len(pairs), pairs=pairs)


def arm_curves(store: Store) -> dict[str, tuple[list[float], list[float | None]]]:
    """Per proposer arm ('llm', 'offline', ...; baselines and imports left out): the device-hours
    spent by that arm's exploration attempts, in the order they finished, against the best
    exploration fitness of the arm so far. The ablation plot draws one line per arm."""
    rows = queries.arm_attempts(store)
    last = {cid: i for i, (_, cid, _, _, _) in enumerate(rows)}  # a candidate counts once all its seeds are in
    spent: dict[str, float] = {}
    best: dict[str, float | None] = {}
    out: dict[str, tuple[list[float], list[float | None]]] = {}
    for i, (origin, cid, fitness, _, device_s) in enumerate(rows):
        spent[origin] = spent.get(origin, 0.0) + (device_s or 0.0)
        if fitness is not None and last[cid] == i:
            best[origin] = fitness if best.get(origin) is None else max(best[origin], fitness)
        xs, ys = out.setdefault(origin, ([], []))
        xs.append(spent[origin] / 3600)
        ys.append(best.get(origin))
    return out
