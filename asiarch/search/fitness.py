"""Fitness in ASI-Arch's form (arXiv 2507.18074, and its code at commit 5995939).

For a candidate with evaluation loss ``L`` and task score ``B`` (the mean of its task
scores, e.g. MQAR accuracy), against the reference baseline's ``L0`` and ``B0``:

    loss_term  = sigmoid(k * clamp((L0 - L) / (s * L0), -1, 1))
    bench_term = sigmoid(k * clamp((B - B0) / (s * B0), -1, 1))
    judge_term = (J - 1) / 9            J: an LLM judge's weighted 1-10 score, when configured

with ``s`` = fitness.scale (0.1: a 10 % relative improvement saturates the term) and
``k`` = fitness.sharpness (6). The terms are averaged (ASI-Arch's paper; ``combine =
"mean"``) or summed (its code; ``combine = "sum"``); the judge term carries weight
``fitness.judge_weight`` and is left out when that is 0. The reference baseline
itself scores 0.5 on each of its terms. A term whose input is missing (no task score on
the LM task) is left out rather than guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reference:
    """The baseline fitness is measured against."""

    loss: float
    bench: float | None


@dataclass
class Fitness:
    value: float
    terms: dict[str, float] = field(default_factory=dict)   # name -> term in [0, 1]
    weights: dict[str, float] = field(default_factory=dict)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def relative_term(delta: float, base: float, *, scale: float, sharpness: float) -> float:
    """sigmoid(k * clamp(delta / (scale * |base|), -1, 1)); a zero base is treated as a tiny one."""
    denom = scale * max(abs(base), 1e-6)
    return sigmoid(sharpness * max(-1.0, min(1.0, delta / denom)))


def compute_fitness(loss: float | None, bench: float | None, ref: Reference, *, scale: float = 0.1,
                    sharpness: float = 6.0, judge: float | None = None, judge_weight: float = 0.0,
                    combine: str = "mean") -> Fitness | None:
    """ASI-Arch's fitness of one result; None when there is no finite loss to score."""
    if loss is None or not math.isfinite(loss) or not math.isfinite(ref.loss):
        return None
    terms = {"loss": relative_term(ref.loss - loss, ref.loss, scale=scale, sharpness=sharpness)}
    weights = {"loss": 1.0}
    if bench is not None and ref.bench is not None and math.isfinite(bench) and math.isfinite(ref.bench):
        terms["bench"] = relative_term(bench - ref.bench, ref.bench, scale=scale, sharpness=sharpness)
        weights["bench"] = 1.0
    if judge is not None and judge_weight > 0:
        terms["judge"] = (judge - 1.0) / 9.0
        weights["judge"] = judge_weight
    total = sum(terms[k] * weights[k] for k in terms)
    value = total / sum(weights.values()) if combine == "mean" else total
    return Fitness(value=value, terms=terms, weights=weights)


LM_EVAL_PREFIX = "lm_eval/"  # asiarch.job.harness.PREFIX (the job side imports lm-eval; this side must not)


def task_accuracies(metrics: dict[str, float]) -> dict[str, float]:
    """One accuracy per task: ``<task>/accuracy`` (MQAR and its difficulties), and for each lm-eval task its
    ``acc_norm``, else its ``acc`` (``lm_eval/<task>/acc_norm``: lm-eval's length-normalised accuracy, the one
    ASI-Arch's tables quote where a task has it). Non-finite values are left out."""
    out = {k: v for k, v in metrics.items() if k.endswith("/accuracy") and not k.startswith(LM_EVAL_PREFIX)}
    for key in metrics:
        if key.startswith(LM_EVAL_PREFIX):
            task = key[len(LM_EVAL_PREFIX):].rsplit("/", 1)[0]
            base = f"{LM_EVAL_PREFIX}{task}/"
            out.setdefault(task, metrics.get(base + "acc_norm", metrics.get(base + "acc")))
    return {k: v for k, v in out.items() if v is not None and math.isfinite(v)}


def bench_score(metrics: dict[str, float]) -> float | None:
    """The task score: the mean of :func:`task_accuracies`, None if there are none."""
    scores = list(task_accuracies(metrics).values())
    return sum(scores) / len(scores) if scores else None
