"""Read-only views of an experiment: status and leaderboard, and the row data other views share.

Every view opens the store read-only and runs short statements, each fetched whole before
anything slow happens (reading a result file, drawing a plot). With the rollback journal a
reader holds a shared lock only while a statement runs, so the head's commits never wait
on a login node's `asiarch report`; the views are as safe on a copy of the directory.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from pathlib import Path

from asiarch.analysis.format import NAME_WIDTH, interval, number, plus_minus
from asiarch.analysis.palette import PLAIN, Palette
from asiarch.job.contract import AttemptFiles
from asiarch.layout import ExperimentDir
from asiarch.search.fitness import LM_EVAL_PREFIX
from asiarch.store import Store, StoreError, queries

# The stage the candidates' own figures (fitness, loss, score: seed means) come from; the
# verification stage has its figures in the stage leaderboard (`leaderboard --stage verify`).
DEFAULT_STAGE = "explore"
STAGES = ("explore", "verify")

# Columns a leaderboard row always has, in order; task-score columns (one per task metric,
# e.g. "mqar/accuracy") follow "score".
_HEAD = ("rank", "id", "name", "origin", "parent", "round", "stage", "status", "fitness", "loss", "score")
# rung, stopped_step: where a candidate stopped early was stopped (status "stopped"; rung None for the watchdog);
# lm_eval_not_run: the lm-eval tasks its jobs could not run (their task score lacks them), names sorted
_TAIL = ("num_params", "mixer_params", "tokens_per_s", "attempts", "rung", "stopped_step", "lm_eval_not_run",
         "reason")
LEADERBOARD_COLUMNS = _HEAD + _TAIL


def open_readonly(exp: ExperimentDir) -> Store:
    if not exp.root.is_dir():
        raise StoreError(f"{exp.root}: no such directory")
    return Store.open_readonly(exp.db)


def load_budget(exp: ExperimentDir):
    """The ``[budget]`` section of DIR/config.toml, or None when the file is missing or unreadable."""
    from asiarch.config import load_config

    try:
        return load_config(exp.config).budget
    except Exception:  # a view never fails because of the config; it just shows no budget
        return None


def check_stage(stage: str | None) -> None:
    if stage is not None and stage not in STAGES:
        raise StoreError(f"no stage {stage!r} in this experiment; stages: {', '.join(STAGES)}")


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def task_names(score_dicts) -> list[str]:
    """Task metrics present in any candidate's scores, sorted (``eval/loss`` is the loss column)."""
    names = set()
    for scores in score_dicts:
        names.update(k for k in (scores.get("metrics") or {}) if k != "eval/loss" and not k.endswith("_stderr"))
    return sorted(names)


def _table_tasks(keys) -> list[str]:
    """The task columns of the leaderboard table: every task metric, but one per lm-eval task (the accuracy
    the task score uses, asiarch.search.fitness.task_accuracies; a perplexity task's first metric)."""
    keys = list(keys)
    shown, seen = [], set()
    for k in keys:
        if not k.startswith(LM_EVAL_PREFIX):
            shown.append(k)
            continue
        task = k[len(LM_EVAL_PREFIX):].rsplit("/", 1)[0]
        if task in seen:
            continue
        base = f"{LM_EVAL_PREFIX}{task}/"
        pick = next((base + m for m in ("acc_norm", "acc") if base + m in keys), k)
        shown.append(pick)
        seen.add(task)
    return shown


def lm_eval_not_run(scores: dict) -> list[str]:
    """The lm-eval tasks a candidate's jobs could not run (``scores["lm_eval_errors"]``, kept by the ingest), sorted."""
    errors = scores.get("lm_eval_errors")
    return sorted(errors) if isinstance(errors, dict) else []


def task_of(metric: str) -> str | None:
    """``lm_eval/piqa/acc_norm`` -> ``piqa``; None for a metric not from lm-eval."""
    return metric[len(LM_EVAL_PREFIX):].rpartition("/")[0] if metric.startswith(LM_EVAL_PREFIX) else None


def task_cell(row: dict, metric: str) -> str:
    """A leaderboard row's figure for a task metric: "not run" where lm-eval could not run the task."""
    if row.get(metric) is None and task_of(metric) in (row.get("lm_eval_not_run") or ()):
        return "not run"
    return number(row.get(metric), ".3f")


def csv_cells(row: dict) -> dict:
    """A row as CSV writes it: a list (``lm_eval_not_run``) as its items joined with ``;``."""
    return {k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()}


def stop_info(scores: dict) -> dict:
    """Where a candidate stopped early was stopped (``scores["stopped"]``, written by the ingest): reason,
    rung (None for the watchdog), rungs, step, steps, loss (training loss there), message; {} otherwise."""
    info = scores.get("stopped")
    return info if isinstance(info, dict) else {}


def _stopped_key(c: dict) -> tuple:
    """Stopped candidates among themselves: a later rung first (the watchdog's, without one, last), then
    the lower loss there, then older."""
    info = stop_info(c["scores"])
    rung, loss = info.get("rung"), info.get("loss")
    return (-(rung or 0), loss if isinstance(loss, (int, float)) else math.inf, c["id"])


def ranked_order(table: list[dict]) -> list[dict]:
    """Scored candidates best first (fitness desc, then loss asc, then id), then the candidates stopped
    early (below every one trained to the end: :func:`_stopped_key`), then the rest by id; the same order
    as ``Store.ranked(include_stopped=True)``."""
    scored = [c for c in table if c["status"] == "done" and c["fitness"] is not None]
    scored.sort(key=lambda c: (-c["fitness"], c["loss"] if c["loss"] is not None else math.inf, c["id"]))
    stopped = sorted((c for c in table if c["status"] == "stopped"), key=_stopped_key)
    ids = {c["id"] for c in scored + stopped}
    return scored + stopped + [c for c in table if c["id"] not in ids]


def leaderboard_rows(store: Store, *, stage: str | None = None) -> list[dict]:
    """Every candidate, scored ones first (best fitness first), then the rest by id.

    Keys: rank (None when unscored; candidates stopped early are ranked below every scored one), id,
    name, origin, parent, round, stage, status, fitness, loss, score, one key per task metric (e.g.
    ``mqar/accuracy``), num_params, mixer_params, tokens_per_s, attempts, rung and stopped_step (where
    a stopped candidate stopped; None otherwise), lm_eval_not_run (the lm-eval tasks its jobs could not
    run: a list, [] when none; ``asiarch show`` gives lm-eval's words), reason. The figures are the candidates' own
    (exploration seed means);
    ``stage = 'verify'`` keeps only the candidates with verification results (their figures in that
    stage are :func:`stage_leaderboard_rows`').
    """
    check_stage(stage)
    table = queries.candidate_table(store)
    if stage not in (None, DEFAULT_STAGE):
        trained = {r["candidate_id"] for r in store.seed_results(stage=stage)}
        table = [c for c in table if c["id"] in trained]
    tasks = task_names(c["scores"] for c in table)
    attempts = queries.attempt_counts(store)
    rows = []
    rank = 0
    for c in ranked_order(table):
        scored = (c["status"] == "done" and c["fitness"] is not None) or c["status"] == "stopped"
        rank += scored
        stop = stop_info(c["scores"]) if c["status"] == "stopped" else {}
        scores = c["scores"]
        metrics = scores.get("metrics") or {}
        row = {"rank": rank if scored else None, "id": c["id"], "name": c["name"], "origin": c["origin"],
               "parent": c["parent_id"], "round": c["round"], "stage": DEFAULT_STAGE, "status": c["status"],
               "fitness": _num(c["fitness"]), "loss": _num(c["loss"]), "score": _num(c["score"])}
        row.update({t: _num(metrics.get(t)) for t in tasks})
        row.update({"num_params": c["num_params"], "mixer_params": scores.get("mixer_params"),
                    "tokens_per_s": _num(scores.get("tokens_per_s")), "attempts": attempts.get(c["id"], 0),
                    "rung": stop.get("rung"), "stopped_step": stop.get("step"),
                    "lm_eval_not_run": lm_eval_not_run(scores), "reason": c["reason"]})
        rows.append(row)
    return rows


def _task_label(name: str) -> str:
    """``mqar/accuracy`` -> ``mqar``, ``lm_eval/piqa/acc_norm`` -> ``piqa``: a short column header (JSON and
    CSV carry the full metric names)."""
    if name.startswith(LM_EVAL_PREFIX):  # one column per task (_table_tasks): the task names it
        return task_of(name)[:9]
    task, _, metric = name.partition("/")
    return task if metric in ("accuracy", "acc", "") else f"{task}/{metric}"[:9]


def render_leaderboard(rows: list[dict], fmt: str = "table", limit: int | None = None,
                       palette: Palette = PLAIN, max_task_columns: int = 4) -> str:
    """The leaderboard as a table, JSON (a list of row objects) or CSV (header row first)."""
    rows = rows[:limit] if limit else rows
    if fmt == "json":
        return json.dumps(rows, indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else list(LEADERBOARD_COLUMNS))
        writer.writeheader()
        writer.writerows(map(csv_cells, rows))
        return buf.getvalue()
    tasks = _table_tasks(k for k in (rows[0] if rows else {}) if k not in _HEAD and k not in _TAIL)[:max_task_columns]
    header = (f"{'rank':>4} {'id':>5} {'name':<{NAME_WIDTH}} {'origin':<8} {'parent':>6} {'status':<8} {'fitness':>7} "
              f"{'loss':>7} {'score':>6} " + "".join(f"{_task_label(t):>9} " for t in tasks) +
              f"{'params':>9} {'tok/s':>8}")
    lines = [palette.paint(header, "bold"), "-" * len(header)]
    for r in rows:
        name = r["name"][:NAME_WIDTH].ljust(NAME_WIDTH)
        if r["rank"] == 1:
            name = palette.paint(name, "bold")
        reason = r["reason"].splitlines()[0][:70] if r["reason"] else ""
        not_run = r.get("lm_eval_not_run") or []
        if r["status"] not in ("failed", "rejected", "stopped") or not reason:
            reason = ("lm-eval did not run: " + ", ".join(not_run))[:70] if not_run else ""
        lines.append(
            f"{number(r['rank'], 'd'):>4} {r['id']:>5} {name} {r['origin'][:8]:<8} "
            f"{number(r['parent'], 'd'):>6} {palette.status(r['status'][:8].ljust(8), r['status'])} "
            f"{number(r['fitness'], '.3f'):>7} {number(r['loss'], '.4f'):>7} {number(r['score'], '.3f'):>6} "
            + "".join(f"{task_cell(r, t):>9} " for t in tasks)
            + f"{number(r['num_params'], ',d'):>9} {number(r['tokens_per_s'], ',.0f'):>8}"
            + (f"  {palette.paint(reason, 'dim')}" if reason else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- stages


def load_reference(exp: ExperimentDir) -> tuple[str, object]:
    """(reference baseline name, [fitness] section) from DIR/config.toml; defaults when unreadable."""
    from asiarch.config import Config, load_config

    try:
        cfg = load_config(exp.config)
    except Exception:  # a view never fails because of the config
        cfg = Config()
    return cfg.baselines.reference, cfg.fitness


def interval_dict(iv) -> dict:
    """An interval as JSON-ready numbers (None for what two seeds are needed for)."""
    return {"mean": _num(iv.mean), "sd": _num(iv.sd), "low": _num(iv.low), "high": _num(iv.high), "n": iv.n}


def stage_leaderboard_rows(store: Store, stage: str, reference: str, fitness_cfg=None, *, rows=None) -> list[dict]:
    """One row per candidate trained in ``stage``, best first: seeds, loss and task score as mean with
    its 95 % interval, fitness on the means, and the paired difference against ``reference`` (positive
    = better than the reference; ``beats`` when its interval excludes zero). ``rows``: the stage's
    asiarch.analysis.stages.stage_rows when the caller has them already."""
    from asiarch.analysis.stages import stage_rows

    check_stage(stage)
    out = []
    if rows is None:
        rows = stage_rows(store, stage, reference, fitness_cfg=fitness_cfg)
    for rank, r in enumerate(rows, 1):
        c = r.candidate
        out.append({
            "rank": rank, "id": c.id, "name": c.name, "origin": c.origin, "stage": stage, "seeds": len(r.seeds),
            "fitness": _num(r.fitness), "terms": r.terms, "loss": interval_dict(r.loss),
            "score": interval_dict(r.score) if r.score else None,
            "loss_vs_ref": interval_dict(r.loss_vs_ref.interval) if r.loss_vs_ref else None,
            "score_vs_ref": interval_dict(r.score_vs_ref.interval) if r.score_vs_ref else None,
            "beats_ref": r.beats if r.loss_vs_ref else None,
            "note": r.loss_vs_ref.note if r.loss_vs_ref else "",
            "metrics": {k: interval_dict(v) for k, v in r.metrics.items() if k != "eval/loss"},
        })
    return out


def render_stage_leaderboard(rows: list[dict], fmt: str = "table", limit: int | None = None,
                             palette: Palette = PLAIN, reference: str = "", stage: str = "") -> str:
    """The stage leaderboard as a table, JSON, or CSV (intervals flattened to _mean/_low/_high)."""
    rows = rows[:limit] if limit else rows
    if fmt == "json":
        return json.dumps(rows, indent=1)
    if fmt == "csv":
        flat = []
        for r in rows:
            f = {k: r[k] for k in ("rank", "id", "name", "origin", "stage", "seeds", "fitness", "beats_ref")}
            for key in ("loss", "score", "loss_vs_ref", "score_vs_ref"):
                for part in ("mean", "low", "high"):
                    f[f"{key}_{part}"] = (r[key] or {}).get(part)
            flat.append(f)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(flat[0]) if flat else ["rank"])
        writer.writeheader()
        writer.writerows(flat)
        return buf.getvalue()
    if not rows:
        return "no candidate has results in stage " + (stage or "this stage") + " yet"
    header = (f"{'rank':>4} {'id':>5} {'name':<30} {'origin':<8} {'seeds':>5} {'fitness':>7} {'loss (95% CI)':>17} "
              f"{'score':>13}  {'loss gain vs ' + reference[:12]:<34} {'score gain':<28} beats")
    lines = [palette.paint(header, "bold"), "-" * len(header)]
    for r in rows:
        beats = {True: palette.paint("yes", "green"), False: "no", None: "-"}[r["beats_ref"]]
        lines.append(f"{r['rank']:>4} {r['id']:>5} {r['name'][:30]:<30} {r['origin'][:8]:<8} {r['seeds']:>5} "
                     f"{number(r['fitness'], '.3f'):>7} {plus_minus(r['loss'], '.4f'):>17} "
                     f"{plus_minus(r['score'], '.3f'):>13}  "
                     f"{interval(r['loss_vs_ref'], '+.4f'):<34} {interval(r['score_vs_ref'], '+.3f'):<28} {beats}")
    lines.append("")
    lines.append(f"gains are paired differences against {reference} over the same seeds (positive = better); "
                 "'beats' when the 95 % interval of the loss gain excludes zero and the score is not significantly worse")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- status


def reason_class(reason: str) -> str:
    """What a failure reason is about, for grouping: ``causality``, ``failed: IndexError``, ``diverged``.

    The first line, up to its first ``": "``; when that part only names an outcome (failed,
    diverged, ...) and the next part starts with an exception type, that type too.
    """
    first = reason.strip().splitlines()[0] if reason.strip() else "(no reason given)"
    parts = first.split(": ")
    key = parts[0]
    if len(parts) > 1 and parts[0] in _OUTCOMES:
        word = (parts[1].split() or [""])[0]
        if re.fullmatch(r"[A-Za-z_.]*[A-Z]\w*(Error|Exception|Exit|Interrupt|Warning)", word):
            key = f"{parts[0]}: {word.rsplit('.', 1)[-1]}"
    return key[:40]


_OUTCOMES = ("failed", "diverged", "timeout", "preempted", "cancelled", "lost")


def failures_by_reason(store: Store) -> list[dict]:
    """Failed and rejected candidates grouped by :func:`reason_class`, most frequent first."""
    rows = queries.failed_reasons(store)
    groups: dict[tuple[str, str], dict] = {}
    for cid, status, reason in rows:
        g = groups.setdefault((status, reason_class(reason)),
                              {"status": status, "reason": reason_class(reason), "count": 0, "example_id": cid,
                               "example": (reason.strip().splitlines() or [""])[0]})
        g["count"] += 1
    return sorted(groups.values(), key=lambda g: (-g["count"], g["status"], g["reason"]))


def in_flight(store: Store, exp: ExperimentDir | None = None, limit: int = 8) -> list[dict]:
    """Attempts pending, submitted or running, with their live progress record where one exists."""
    rows = queries.in_flight_attempts(store)
    from asiarch.job.result import read_progress

    out = []
    for i, d in enumerate(rows):
        d["progress"] = read_progress(AttemptFiles(exp.root / d["dir"]).progress) if exp and i < limit else None
        out.append(d)
    return out


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def status_figures(store: Store, exp: ExperimentDir | None = None) -> dict:
    """Everything ``asiarch status`` shows, read from the store (and the in-flight attempts' progress
    records) in one step: :func:`asiarch.store.queries.status_overview`'s figures plus the experiment's
    name and directory, the attempts in flight, compute seconds, LLM spend, the best new candidate
    (or None), failures by reason and the last eight events."""
    best = store.ranked(1, include_baselines=False)
    return {**queries.status_overview(store), "experiment": store.get_meta("experiment", "?"),
            "directory": store.path.parent, "in_flight": in_flight(store, exp),
            "compute_seconds": store.compute_seconds(), "llm": queries.llm_spend(store),
            "best": best[0] if best else None, "failures": failures_by_reason(store), "events": store.events(8),
            "pipeline": _pipeline(store)}


def _pipeline(store: Store) -> dict | None:
    """The steady pipeline's figures as its head last wrote them (asiarch.search.pipeline), or None."""
    text = store.get_meta("pipeline")
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def status_text(store: Store, budget=None, palette: Palette = PLAIN, exp: ExperimentDir | None = None,
                now: float | None = None) -> str:
    """Where a run stands: candidates by status, what is in flight, compute and LLM spend against the
    budget, proposal rate, the best so far, failures by reason, the last events.

    ``budget`` is the config's ``[budget]`` section (or an int: the candidate budget), or None.
    """
    return render_status(status_figures(store, exp), budget, palette, now)


def render_status(figures: dict, budget=None, palette: Palette = PLAIN, now: float | None = None) -> str:
    """:func:`status_figures` as the text of ``asiarch status`` (pure: no store, no files)."""
    now = time.time() if now is None else now
    if isinstance(budget, int):
        budget_candidates, budget_hours, budget_usd = budget, 0.0, 0.0
    elif budget is not None:
        budget_candidates, budget_hours, budget_usd = budget.candidates, budget.gpu_hours, budget.llm_dollars
    else:
        budget_candidates, budget_hours, budget_usd = None, 0.0, 0.0
    b = lambda s: palette.paint(s, "bold")  # noqa: E731
    lines = [f"{b('experiment:')} {figures['experiment']}  ({figures['directory']})"]
    by_status, base = figures["candidates"], figures["baselines"]
    total = sum(by_status.values())
    of = f" of budget {budget_candidates}" if budget_candidates else ""
    counts = ", ".join(palette.status(f"{n} {s}", s) for s, n in sorted(by_status.items()))
    lines.append(f"{b('candidates:')} {total} proposed{of}: {counts}" if total else f"{b('candidates:')} none yet")
    lines.append(f"{b('baselines:')}  " + (", ".join(palette.status(f"{n} {s}", s) for s, n in sorted(base.items()))
                                          or "none"))

    flying = figures["in_flight"]
    by_attempt = {}
    for a in flying:
        by_attempt[a["status"]] = by_attempt.get(a["status"], 0) + 1
    lines.append(f"{b('in flight:')}  " + (", ".join(f"{n} {s}" for s, n in sorted(by_attempt.items()))
                                          + " (attempts)" if flying else "nothing queued or running"))
    pipe = figures.get("pipeline")
    if pipe and isinstance(pipe.get("at"), (int, float)):
        # what only the head knows (proposals and checks in flight), as it last said, and when
        lines.append(f"{b('pipeline:')}   slots {pipe.get('busy', '?')}/{pipe.get('slots', '?')} busy, proposing "
                     f"{pipe.get('proposing', 0)}, checking {pipe.get('checking', 0)}, ready {pipe.get('ready', 0)}"
                     f"  (head pid {pipe.get('pid', '?')} on {pipe.get('host', '?')}, {_ago(now - pipe['at'])} ago)")
    for a in flying[:8]:
        p = a["progress"]
        live = ""
        if p:
            live = (f"step {p.get('step', '?')}/{p.get('steps', '?')}  loss {number(p.get('loss'), '.3f')}  "
                    f"{number(p.get('tokens_per_s'), ',.0f')} tok/s  (updated {_ago(now - p['updated_at'])} ago)"
                    if isinstance(p.get("updated_at"), (int, float)) else "")
        lines.append(f"  #{a['candidate_id']:<5} {a['name'][:NAME_WIDTH]:<{NAME_WIDTH}} attempt {a['n']} "
                     f"{palette.status(a['status'].ljust(9), a['status'])} job {a['job_id'] or '-':<10} {live}")
    if len(flying) > 8:
        lines.append(f"  ... and {len(flying) - 8} more")

    secs = figures["compute_seconds"]
    spent = f"{secs / 3600:,.2f} core/GPU-hours"
    if budget_hours:
        spent += f" of budget {budget_hours:,g} ({100 * secs / 3600 / budget_hours:.1f} %)"
    lines.append(f"{b('compute:')}    {spent} over {figures['results']} results")
    llm = figures["llm"]
    usd = f"${llm['usd']:,.2f} over {llm['calls']} calls ({llm['tokens']:,} tokens)"
    if budget_usd:
        usd += f" of budget ${budget_usd:,.2f}"
    lines.append(f"{b('LLM:')}        {usd}")
    first, last = figures["first_proposed"], figures["last_proposed"]
    if first and total:
        span = last - first
        rate = f"{total / (span / 3600):.1f} proposals/hour over {_ago(span)}" if total > 1 and span > 0 else \
            f"{total} proposal(s)"
        lines.append(f"{b('rate:')}       {rate}; the last one {_ago(now - last)} ago")
    x = figures["best"]
    if x is not None:
        lines.append(f"{b('best:')}       #{x.id} {palette.paint(x.name, 'bold')}  fitness {x.fitness:.3f}  "
                     f"loss {number(x.loss, '.4f')}  score {number(x.score, '.3f')}")
    groups = figures["failures"]
    if groups:
        lines.append(b("failures:") + " (by reason)")
        for g in groups[:8]:
            lines.append(f"  {g['count']:5d} {palette.status(g['status'].ljust(8), g['status'])} {g['reason']:<22} "
                         f"e.g. #{g['example_id']}: {g['example'][:80]}")
        if len(groups) > 8:
            lines.append(f"  ... {len(groups) - 8} more reasons, {sum(g['count'] for g in groups[8:])} candidates")
    events = figures["events"]
    if events:
        lines.append(b("last events:"))
        for e in events:
            when = time.strftime("%m-%d %H:%M:%S", time.localtime(e["ts"]))
            who = f"#{e['candidate_id']}" if e["candidate_id"] else ""
            lines.append(f"  {when} {palette.status(e['kind'][:9].ljust(9), e['kind'])} {who:<6} {e['message'][:90]}")
    return "\n".join(lines)


def relative_to_exp(exp: ExperimentDir, path: str | Path) -> Path:
    """A path recorded in the store (relative to the experiment directory) on this copy of it."""
    p = Path(path)
    return p if p.is_absolute() else exp.root / p
