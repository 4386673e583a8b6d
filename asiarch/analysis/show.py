"""One candidate in full (``asiarch show``) and the code change between two (``asiarch diff``).

Read-only, like every view: the store is opened read-only and result files are read with
the project's reader, which never locks them.
"""

from __future__ import annotations

import difflib
import math
import textwrap
import time
from pathlib import Path

from asiarch.analysis.palette import PLAIN, Palette
from asiarch.job import result as rf
from asiarch.job.contract import AttemptFiles
from asiarch.layout import ExperimentDir
from asiarch.store import Candidate, Store, StoreError, queries
from asiarch.analysis.format import interval, number, plus_minus
from asiarch.analysis.views import (DEFAULT_STAGE, STAGES, load_reference, relative_to_exp,
                                    stage_leaderboard_rows, stop_info)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _wrap(text: str, indent: str = "  ", width: int = 100) -> list[str]:
    out = []
    for para in (text or "").strip().splitlines() or ["(none)"]:
        out += textwrap.wrap(para, width, initial_indent=indent, subsequent_indent=indent) or [""]
    return out


# ---------------------------------------------------------------------------------- result files


def result_paths(store: Store, exp: ExperimentDir, cid: int) -> list[tuple[int, Path]]:
    """(attempt number, result file) of every attempt of ``cid`` that recorded or may have left one,
    best first: the latest ok result, then the other results newest first, then attempts
    without a recorded result (their file may still be there, e.g. while the head ingests it)."""
    rows = queries.attempt_result_paths(store, cid)
    ok = [(n, relative_to_exp(exp, p)) for n, _, s, p in rows if p and s == "ok"]
    other = [(n, relative_to_exp(exp, p)) for n, _, s, p in rows if p and s != "ok"]
    unrecorded = [(n, AttemptFiles(relative_to_exp(exp, d)).result) for n, d, _, p in rows if not p]
    return ok + other + unrecorded


def best_result(store: Store, exp: ExperimentDir, cid: int) -> tuple[int, rf.ResultRecord] | None:
    """The first readable result file of :func:`result_paths`, or None."""
    for n, path in result_paths(store, exp, cid):
        try:
            return n, rf.read_result(path)
        except rf.ResultFileError:
            continue
    return None


# ---------------------------------------------------------------------------------- text chart


def text_chart(xs: list[float], ys: list[float], *, width: int = 64, height: int = 10) -> list[str]:
    """A small ASCII line chart of ys against xs (plain characters: it survives any terminal and log).

    Each of ``width`` columns shows the mean of the points that fall in it, as ``*``.
    """
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    if len(pts) < 2:
        return ["  (fewer than two points)"]
    x0, x1 = pts[0][0], pts[-1][0]
    lo, hi = min(y for _, y in pts), max(y for _, y in pts)
    span_x, span_y = (x1 - x0) or 1, (hi - lo) or 1
    cols: list[list[float]] = [[] for _ in range(width)]
    for x, y in pts:
        cols[min(width - 1, int((x - x0) / span_x * (width - 1) + 0.5))].append(y)
    grid = [[" "] * width for _ in range(height)]
    for i, col in enumerate(cols):
        if col:
            row = int(round((hi - sum(col) / len(col)) / span_y * (height - 1)))
            grid[row][i] = "*"
    label_w = max(len(f"{hi:.4g}"), len(f"{lo:.4g}"))
    lines = []
    for r in range(height):
        label = f"{hi:.4g}" if r == 0 else f"{lo:.4g}" if r == height - 1 else ""
        lines.append(f"  {label:>{label_w}} |" + "".join(grid[r]).rstrip())
    lines.append(f"  {'':>{label_w}} +" + "-" * width)
    left, right = f"{x0:,.0f}", f"{x1:,.0f}"
    lines.append(f"  {'':>{label_w}}  " + left + right.rjust(width - len(left)))
    return lines


# ---------------------------------------------------------------------------------- show


def show_text(store: Store, exp: ExperimentDir, ref: str, palette: Palette = PLAIN, *, code: bool = True) -> str:
    """Everything about one candidate (by id or name): identity and lineage, scores, motivation,
    analyses, attempts with their errors, result figures, the training curve, and its code."""
    cand = store.find_candidate(ref)
    h = lambda s: palette.paint(s, "bold")  # noqa: E731
    attempts = store.attempts(cand.id)
    stages = sorted({a.stage for a in attempts} or {DEFAULT_STAGE}, key=STAGES.index)
    lines = [f"{palette.paint(f'#{cand.id} {cand.name}', 'bold')}  {cand.origin}, round {cand.round}, "
             f"stage {'+'.join(stages)}, {palette.status(cand.status, cand.status)}"
             + (f": {cand.reason.splitlines()[0][:120]}" if cand.reason else "")]
    if cand.parent_id is not None:
        p = store.candidate(cand.parent_id)
        lines.append(f"parent     #{p.id} {p.name} (fitness {number(p.fitness, '.3f')})")
    refs = store.reference_ids(cand.id)
    if refs:
        lines.append("references " + " ".join(f"#{r}" for r in refs))
    kids = queries.children_summary(store, cand.id)
    if kids[0]:
        lines.append(f"children   {kids[0]} (best fitness {number(kids[1], '.3f')})")
    lines += _scores(store, cand)
    lines += [palette.paint(x, "red") for x in _lm_eval_errors(cand)]
    lines += _stages(store, exp, cand)

    lines += ["", h("Motivation")] + _wrap(cand.motivation)
    analyses = store.analyses(cand.id)
    if analyses:
        for a in analyses:
            lines += ["", h(f"Analysis ({a['author']}, {_when(a['created_at'])})"), f"  {a['summary']}"]
            lines += _wrap(a["text"])

    lines += ["", h("Attempts")]
    if not attempts:
        lines.append("  none yet" if cand.status not in ("rejected",) else "  none (rejected before training)")
    results = {r["attempt_id"]: r for r in store.results(cand.id)}
    for a in attempts:
        r = results.get(a.id)
        took = f"{r['wall_s'] / 60:.1f} min on {r['world_size'] or 1} ranks" if r and r["wall_s"] else ""
        lines.append(f"  {a.n} {palette.status(a.status.ljust(9), a.status)} {a.stage} seed {a.seed}  "
                     f"job {a.job_id or '-':<14} submitted {_when(a.submitted_at)}  {took}  {a.dir}")
        if a.error:
            lines += [palette.paint(x, "red") for x in _wrap(a.error.splitlines()[0], "      ")]
        if r:
            lines.append(f"      loss {number(r['eval_loss'], '.4f')} (train {number(r['final_loss'], '.4f')}), "
                         f"{number(r['tokens_per_s'], ',.0f')} tok/s, peak "
                         f"{number((r['peak_memory_bytes'] or 0) / 2**30, '.2f')} GiB, {r['steps_done']} steps"
                         + "".join(f", {k} {number(v, '.4f')}" for k, v in r["metrics"].items()))
    lines += _failure_tracebacks(store, exp, cand, palette)
    events = store.candidate_events(cand.id)
    if events:  # what happened to it besides its attempts: the Engineer's repairs, promotion, re-attachment
        lines += ["", h("Events")] + [f"  {_when(e['ts'])}  {e['kind']:<11} {e['message'][:300]}" for e in events]
    lines += ["", *_curve_section(store, exp, cand, palette)]
    if code:
        layer = exp.layer_file(cand.id, cand.name)
        src = cand.code.rstrip("\n")
        lines += ["", h(f"Code ({exp.relative(layer) if layer.exists() else 'from the store'}, "
                        f"{len(src.splitlines())} lines, sha256 {cand.code_sha256[:12]})")]
        lines += ["  " + x for x in src.splitlines()]
    return "\n".join(lines)


def _stages(store: Store, exp: ExperimentDir, cand: Candidate) -> list[str]:
    """Per stage with results: seeds, loss and score (mean and 95 % interval), and the paired gain
    against the reference baseline; nothing for a candidate trained with one seed in one stage."""
    reference, fitness_cfg = load_reference(exp)
    out = []
    for stage in STAGES:
        row = next((r for r in stage_leaderboard_rows(store, stage, reference, fitness_cfg) if r["id"] == cand.id),
                   None)
        if row is None or (row["seeds"] == 1 and stage == DEFAULT_STAGE):
            continue
        gain = f"   loss gain vs {reference} {interval(row['loss_vs_ref'], '+.4f')}" if row["loss_vs_ref"] else ""
        beats = {True: ", beats it", False: ", does not beat it", None: ""}[row["beats_ref"]]
        out.append(f"{stage:<10} {row['seeds']} seeds: loss {plus_minus(row['loss'], '.4f')}   score "
                   f"{plus_minus(row['score'], '.3f')}   fitness {number(row['fitness'], '.3f')}{gain}{beats}")
    return out


def _stopped(cand: Candidate) -> list[str]:
    """Where a candidate stopped early stopped, and why (it ranks below every candidate trained to the end)."""
    info = stop_info(cand.scores or {})
    where = (f"at rung {info['rung']}" + (f" of {info['rungs']}" if info.get("rungs") else "")
             if info.get("rung") else f"by the watchdog ({info.get('reason', '?')})")
    return [f"stopped    {where}, step {number(info.get('step'), 'd')} of {number(info.get('steps'), 'd')}, "
            f"training loss there {number(info.get('loss'), '.4f')}; ranked below every candidate trained to the "
            "end (its checkpoint is kept: it resumes if promoted)"]


def _scores(store: Store, cand: Candidate) -> list[str]:
    if cand.status == "stopped":
        return _stopped(cand)
    if cand.status != "done":
        return []
    rank = ""
    if cand.fitness is not None:
        above, scored = queries.fitness_rank(store, cand.fitness)
        rank = f"   rank {above + 1} of {scored}"
    terms = (cand.scores or {}).get("terms") or {}
    metrics = (cand.scores or {}).get("metrics") or {}
    out = [f"fitness    {number(cand.fitness, '.3f')}"
           + (" (" + ", ".join(f"{k} term {v:.3f}" for k, v in terms.items()) + ")" if terms else "") + rank,
           f"loss       {number(cand.loss, '.4f')}   score {number(cand.score, '.3f')}   "
           + "  ".join(f"{k} {number(v, '.3f')}" for k, v in metrics.items() if k != "eval/loss")]
    s = cand.scores or {}
    out.append(f"params     {number(cand.num_params, ',d')} (mixer {number(s.get('mixer_params'), ',d')})   "
               f"{number(s.get('tokens_per_s'), ',.0f')} tok/s   peak memory "
               f"{number((s.get('peak_memory_bytes') or 0) / 2**30, '.2f')} GiB")
    return out


def _lm_eval_errors(cand: Candidate) -> list[str]:
    """The lm-eval tasks its jobs could not run (``scores["lm_eval_errors"]``, kept redacted by the ingest): its
    task score lacks them."""
    errors = (cand.scores or {}).get("lm_eval_errors") or {}
    return [f"lm-eval {task} did not run: {(why.splitlines() or [''])[0][:300]}" for task, why in errors.items()]


def _failure_tracebacks(store: Store, exp: ExperimentDir, cand: Candidate, palette: Palette) -> list[str]:
    """The tail of the traceback kept in the result file of the last failed attempt."""
    path = queries.last_failed_result_path(store, cand.id)
    if path is None or cand.status == "done":
        return []
    try:
        rec = rf.read_result(relative_to_exp(exp, path))
    except rf.ResultFileError as exc:
        return ["", f"  (cannot read the failed attempt's result: {exc})"]
    tb = (rec.traceback or rec.error).rstrip().splitlines()[-12:]
    return ["", palette.paint("Traceback (last lines, from the result file)", "bold")] + \
        [palette.paint("  " + x, "red") for x in tb]


def _curve_section(store: Store, exp: ExperimentDir, cand: Candidate, palette: Palette) -> list[str]:
    head = lambda s: palette.paint(s, "bold")  # noqa: E731
    found = best_result(store, exp, cand.id)
    if found is not None:
        n, rec = found
        c = rec.curve
        title = (f"Training curve (attempt {n}, {rec.status}; loss against step, {len(c)} points; "
                 f"final {number(c.loss[-1] if c.loss else None, '.4f')})")
        return [head(title)] + text_chart(c.step, c.loss)
    # Nothing finished yet: a running job's progress record carries its curve so far.
    last = queries.last_attempt_dir(store, cand.id)
    if last:
        p = rf.read_progress(AttemptFiles(relative_to_exp(exp, last[1])).progress)
        if p and p.get("curve"):
            pts = [pt for pt in p["curve"] if isinstance(pt, (list, tuple)) and len(pt) >= 2]
            return [head(f"Training curve so far (attempt {last[0]}, live progress record, step "
                         f"{p.get('step')}/{p.get('steps')})")] + text_chart([x for x, *_ in pts], [y for _, y, *_ in pts])
    return [head("Training curve"), "  (no result file yet)"]


# ---------------------------------------------------------------------------------- diff


def diff_text(store: Store, a: str, b: str | None = None, palette: Palette = PLAIN, context: int = 3) -> str:
    """Unified diff of the code from A to B; with no B, from A's parent to A."""
    ca = store.find_candidate(a)
    if b is None:
        if ca.parent_id is None:
            raise StoreError(f"#{ca.id} {ca.name} has no parent; name a second candidate: asiarch diff DIR {a} OTHER")
        old, new = store.candidate(ca.parent_id), ca
    else:
        old, new = ca, store.find_candidate(b)
    lines = list(difflib.unified_diff(old.code.splitlines(), new.code.splitlines(),
                                      f"#{old.id} {old.name} (fitness {number(old.fitness, '.3f')})",
                                      f"#{new.id} {new.name} (fitness {number(new.fitness, '.3f')})",
                                      lineterm="", n=context))
    if not lines:
        return f"#{old.id} {old.name} and #{new.id} {new.name} have the same code"
    out = []
    for line in lines:
        if line.startswith(("+++", "---")):
            out.append(palette.paint(line, "bold"))
        elif line.startswith("@@"):
            out.append(palette.paint(line, "cyan"))
        elif line.startswith("+"):
            out.append(palette.paint(line, "green"))
        elif line.startswith("-"):
            out.append(palette.paint(line, "red"))
        else:
            out.append(line)
    return "\n".join(out)
