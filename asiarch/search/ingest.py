"""The Analyst's ingestion: read an attempt's result file, score it, compare, store.

This is the LLM-free Analyst: it reads the HDF5 result through the project's reader,
computes ASI-Arch's fitness against the reference baseline, compares the candidate with
its parent, the baselines and its siblings, writes a short analysis to the store and
returns an Outcome: what the loop does next, and the figures of its console line
(asiarch.search.messages.outcome_line composes it). The LLM Analyst (asiarch.propose.llm, called by the loop)
adds prose on top of the same figures, and its judge score when fitness.judge_weight > 0.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from asiarch.analysis import format as fmt
from asiarch.config import Config, stage_seeds
from asiarch.dispatch.base import JobState
from asiarch.search.fitness import Reference, bench_score, compute_fitness
from asiarch.job import result as rf
from asiarch.job.contract import PlantedFileError, read_job_file, redact, secret_values
from asiarch.layout import ExperimentDir
from asiarch.store import Attempt, Candidate, Store

# Job outcomes that say nothing about the candidate: worth another attempt as they are.
INFRASTRUCTURE = (JobState.TIMEOUT, JobState.NODE_FAIL, JobState.PREEMPTED)


@dataclass
class Outcome:
    attempt_status: str         # what the store records for the attempt
    candidate_status: str       # 'done' or 'failed' -- 'queued' when another attempt follows, 'partial' when
                                # other seeds of the stage are still to come, 'verify' for a verification
                                # seed, 'stale' for a result of code that has since been repaired,
                                # 'rejected' when the job's leak probe refused it (already set in the store),
                                # 'stopped' when the head stopped it early (a rung or the watchdog; set in
                                # the store, with scores["stopped"]; its checkpoint is kept for a promotion)
    retry: bool = False         # infrastructure failure: try again with the same code
    error: str = ""             # what went wrong, for the Engineer and the store
    # what the attempt showed, for its console line (asiarch.search.messages.outcome_line)
    candidate_id: int = 0
    name: str = ""
    stage: str = "explore"
    seed: int = 0
    seeds: int = 1              # seeds of the stage
    has_result: bool = False    # the job wrote a readable result file
    message: str = ""           # the job's error message, or why there is no result
    loss: float | None = None   # evaluation loss: the seed's, or (candidate_status 'done') the candidate's mean
    acc: float | None = None    # task score (fitness.bench_score), likewise
    fitness: float | None = None
    averaged: int = 0           # seeds the candidate's figures are the mean of ('done')
    tokens_per_s: float | None = None
    wall_s: float | None = None


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a job's log (read from its last 256 KiB, never through a link the job planted)."""
    try:
        text = read_job_file(path, tail=256 * 1024).decode("utf-8", errors="replace")
    except PlantedFileError as exc:
        return f"(log not read: {exc})"
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def reference_for(store: Store, cfg: Config) -> Reference | None:
    """The reference baseline's loss and task score, once it has a result."""
    base = store.scored_baseline(cfg.baselines.reference)
    if base is None:
        return None
    return Reference(loss=base.loss, bench=base.score)


def score_candidate(store: Store, cfg: Config, cand: Candidate, ref: Reference | None) -> None:
    """(Re)compute a done candidate's fitness from its stored loss, task score and LLM judge score
    (``scores["judge"]``, 1-10, kept by the loop; counted when fitness.judge_weight > 0)."""
    if ref is None or cand.loss is None:
        return
    fit = compute_fitness(cand.loss, cand.score, ref, scale=cfg.fitness.scale, sharpness=cfg.fitness.sharpness,
                          judge=cand.scores.get("judge"), judge_weight=cfg.fitness.judge_weight,
                          combine=cfg.fitness.combine)
    scores = dict(cand.scores)
    scores["terms"] = fit.terms if fit else {}
    store.set_scores(cand.id, fitness=fit.value if fit else None, loss=cand.loss, score=cand.score, scores=scores,
                     num_params=cand.num_params, status=cand.status, reason=cand.reason)


def ingest_attempt(store: Store, exp: ExperimentDir, cfg: Config, attempt: Attempt, state: JobState) -> Outcome:
    """Read the result of a finished job and record what it says."""
    cand = store.candidate(attempt.candidate_id)
    paths = exp.attempt(cand.id, cand.name, attempt.n)
    shown = dict(candidate_id=cand.id, name=cand.name, stage=attempt.stage, seed=attempt.seed,
                 seeds=stage_seeds(cfg, attempt.stage))
    # a result of code that has since been repaired, or of a candidate already settled: kept, not acted on
    stale = attempt.code_sha256 != cand.code_sha256 or (attempt.stage == "explore" and
                                                        cand.status in ("done", "failed", "stopped"))
    try:
        rec = rf.read_result(paths.result)
    except rf.ResultFileError as exc:
        if exc.reason != "missing":
            moved = rf.quarantine(paths.result)
            why = f"result file {exc.reason}: {exc} (moved to {moved.name})"
        else:
            why = f"job ended {state.value} without writing {paths.result.name}; log tail:\n{log_tail(paths.log)}"
        why = redact(why, secret_values(os.environ, (cfg.llm.api_key_env,)))  # job output: never the key
        retry = state in INFRASTRUCTURE and not stale
        status = {JobState.TIMEOUT: "timeout", JobState.PREEMPTED: "preempted",
                  JobState.CANCELLED: "cancelled"}.get(state, "failed")
        return Outcome(status, "stale" if stale else "queued" if retry else "failed", retry, why, message=why,
                       **shown)

    secrets = secret_values(os.environ, (cfg.llm.api_key_env,))  # what the job wrote: never the key
    rec.error, rec.traceback = redact(rec.error, secrets), redact(rec.traceback, secrets)
    metrics = dict(rec.metrics)
    wall = (rec.finished_at - rec.started_at) if rec.finished_at and rec.started_at else None
    store.add_result(attempt.id, cand.id, status=rec.status, result_path=exp.relative(paths.result),
                     final_loss=rec.final_loss, eval_loss=rec.eval_loss, metrics=metrics,
                     tokens_per_s=rec.tokens_per_s, peak_memory_bytes=rec.peak_memory_bytes,
                     num_params=rec.num_params, steps_done=rec.steps_done, wall_s=wall,
                     world_size=int(rec.env.get("world_size", 1) or 1))
    shown["has_result"] = True
    if stale:
        return Outcome(rec.status, "stale", **shown)
    if rec.status == "stopped":
        return record_stopped(store, cand, attempt, rec, shown)
    if rec.status != "ok":
        retry = rec.status in ("timeout", "preempted")
        error = f"{rec.status}: {rec.error}" + (("\n" + rec.traceback) if rec.traceback else "")
        if rec.status == "leak":  # the job's probe saw the layer read future tokens: refused, never repaired
            first = error.splitlines()[0]
            store.set_candidate_status(cand.id, "rejected", first[:500], event=f"attempt {attempt.n}: {first}"[:1000])
            return Outcome("leak", "rejected", False, error, message=rec.error, **shown)
        return Outcome(rec.status, "queued" if retry else "failed", retry, error, message=rec.error, **shown)

    lm_errors = record_lm_eval_errors(store, cand, attempt, rec, secrets)
    shown.update(tokens_per_s=rec.tokens_per_s, wall_s=wall)
    one_seed = dict(shown, loss=rec.eval_loss, acc=bench_score(metrics))
    runs = [r for r in store.seed_results(stage=attempt.stage, cid=cand.id) if r["code_sha256"] == cand.code_sha256]
    if attempt.stage != "explore" or len(runs) < shown["seeds"]:
        if lm_errors != (cand.scores.get("lm_eval_errors") or {}):  # the candidate's only update this time
            store.set_scores(cand.id, fitness=cand.fitness, loss=cand.loss, score=cand.score,
                             scores={**cand.scores, "lm_eval_errors": lm_errors}, num_params=cand.num_params,
                             status=cand.status, reason=cand.reason)
        return Outcome("ok", "verify" if attempt.stage != "explore" else "partial", **one_seed)

    # every seed of the exploration stage is in: the candidate's figures are their means
    metrics = mean_metrics([r["metrics"] for r in runs])
    loss = metrics.get("eval/loss", rec.eval_loss)
    bench = bench_score(metrics)
    # keep what the candidate brought (e.g. ASI-Arch's reported results under "asi_arch")
    scores = {**cand.scores, "metrics": metrics, "seeds": len(runs), "tokens_per_s": rec.tokens_per_s,
              "peak_memory_bytes": rec.peak_memory_bytes, "mixer_params": rec.env.get("mixer_params")}
    if lm_errors:
        scores["lm_eval_errors"] = lm_errors
    if "stopped" in scores:  # stopped early once, then promoted and trained to the end
        scores["promoted_from"] = scores.pop("stopped")
    store.set_scores(cand.id, fitness=None, loss=loss, score=bench, scores=scores,
                     num_params=rec.num_params, status="done")
    ref = reference_for(store, cfg)
    cand = store.candidate(cand.id)
    score_candidate(store, cfg, cand, ref)
    cand = store.candidate(cand.id)
    write_analysis(store, cand)
    return Outcome("ok", "done", loss=cand.loss, acc=bench, fitness=cand.fitness, averaged=len(runs), **shown)


def record_lm_eval_errors(store: Store, cand: Candidate, attempt: Attempt, rec: rf.ResultRecord,
                          secrets: tuple[str, ...]) -> dict[str, str]:
    """The lm-eval tasks an ok job could not run (the result's ``env["lm_eval_errors"]``, lm-eval's words,
    redacted): one 'lm-eval-failed' event each, logged once per attempt and task (an attempt ingested
    again, e.g. by a restarted head, logs none anew). Returns what the candidate's
    ``scores["lm_eval_errors"]`` should hold (task -> message: its earlier seeds' with this attempt's
    added, {} when none), since its task score then lacks them; the caller stores it."""
    kept = dict(cand.scores.get("lm_eval_errors") or {})
    errors = {str(task): redact(str(why), secrets) for task, why in (rec.env.get("lm_eval_errors") or {}).items()}
    if not errors:
        return kept
    where = f"attempt {attempt.n} ({attempt.stage} seed {attempt.seed}): lm-eval"
    logged = {e["message"] for e in store.candidate_events(cand.id) if e["kind"] == "lm-eval-failed"}
    for task, why in errors.items():
        message = f"{where} {task} did not run: {why}"[:1000]
        if message not in logged:
            store.log_event("lm-eval-failed", message, cand.id, attempt.id)
    return {**kept, **errors}


def record_stopped(store: Store, cand: Candidate, attempt: Attempt, rec: rf.ResultRecord, shown: dict) -> Outcome:
    """A job the head stopped early (asiarch.search.early_stopping; the request is the result's
    ``env["stop"]``). In exploration the candidate ends 'stopped', with no fitness: it ranks below every
    candidate trained to the end (Store.ranked, the leaderboard), and ``scores["stopped"]`` says where
    (reason, rung, step, steps, training loss there); its checkpoint is kept so that a promotion can
    resume it. A verification seed stopped leaves its candidate as it is."""
    request = rec.env.get("stop") or {}
    steps = int(rec.config.get("steps") or 0) or None
    loss = rec.curve.loss[-1] if rec.curve.loss else rec.final_loss
    info = {"reason": request.get("reason") or "requested", "rung": request.get("rung"), "step": rec.steps_done,
            "steps": steps, "loss": loss if loss is not None and math.isfinite(loss) else None,
            "message": request.get("message") or rec.error, "attempt": attempt.n}
    where = f"rung {info['rung']}" if info["rung"] else info["reason"]
    reason = f"stopped ({where}) at step {rec.steps_done}" + (f" of {steps}" if steps else "") + \
        (f": {request['message']}" if request.get("message") else "")
    shown.update(tokens_per_s=rec.tokens_per_s, loss=info["loss"])
    if attempt.stage != "explore":
        return Outcome("stopped", "verify", error=reason, message=reason, **shown)
    scores = {**cand.scores, "stopped": info, "tokens_per_s": rec.tokens_per_s,
              "peak_memory_bytes": rec.peak_memory_bytes, "mixer_params": rec.env.get("mixer_params")}
    earlier = cand.scores.get("stopped")
    if earlier and earlier.get("attempt") != attempt.n:  # stopped once, promoted, and stopped again further on
        scores["promoted_from"] = earlier
    store.set_scores(cand.id, fitness=None, loss=None, score=None, scores=scores, num_params=rec.num_params,
                     status="stopped", reason=reason[:500])
    store.log_event("stopped", f"attempt {attempt.n}: {reason}"[:1000], cand.id, attempt.id)
    return Outcome("stopped", "stopped", error=reason, message=reason, **shown)


def mean_metrics(runs: list[dict]) -> dict[str, float]:
    """The mean of each metric over runs (seeds), for the metrics every run has and that are finite."""
    if not runs:
        return {}
    keys = set(runs[0]).intersection(*runs[1:])
    out = {}
    for k in sorted(keys):
        vals = [r[k] for r in runs]
        if all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
            out[k] = sum(vals) / len(vals)
    return out


def write_analysis(store: Store, cand: Candidate) -> None:
    """The offline Analyst's report: the figures against parent, baselines and siblings, in words."""
    if cand.fitness is None:
        return
    parts = [f"{cand.name} reached evaluation loss {fmt.number(cand.loss)} and task score "
             f"{fmt.number(cand.score, '.3f')}, fitness {fmt.number(cand.fitness, '.3f')}."]
    summary = f"fitness {fmt.number(cand.fitness, '.3f')}"
    if cand.parent_id is not None:
        parent = store.candidate(cand.parent_id)
        if parent.fitness is not None:
            better = cand.fitness > parent.fitness
            parts.append(f"Against its parent {parent.name} (#{parent.id}): loss "
                         f"{fmt.difference(cand.loss, parent.loss)}, "
                         f"task score {fmt.difference(cand.score, parent.score, '+.3f')}, fitness "
                         f"{fmt.difference(cand.fitness, parent.fitness, '+.3f')}: the change "
                         f"{'helped' if better else 'did not help'}.")
            summary += f", {'beats' if better else 'trails'} parent #{parent.id} by " \
                       f"{abs(cand.fitness - parent.fitness):.3f}"
        siblings = [s for s in store.children(cand.parent_id) if s.id != cand.id and s.fitness is not None]
        if siblings:
            rank = 1 + sum(1 for s in siblings if s.fitness > cand.fitness)
            parts.append(f"It ranks {rank} of {len(siblings) + 1} among the children of #{parent.id}.")
    baselines = [b for b in store.candidates(origin="baseline") if b.fitness is not None and b.id != cand.id]
    if baselines:
        beaten = [b.name for b in baselines if cand.fitness > b.fitness]
        parts.append(f"Baselines beaten: {', '.join(beaten) if beaten else 'none'} "
                     f"(of {', '.join(b.name for b in baselines)}).")
    if cand.motivation:
        parts.append(f"What was tried: {cand.motivation}")
    store.add_analysis(cand.id, "offline", summary, " ".join(parts))
