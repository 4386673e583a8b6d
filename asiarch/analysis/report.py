"""``asiarch report DIR``: a self-contained HTML report and PNG plots in DIR/reports/.

The data behind each plot is computed here from the store and the result files (pure
functions, tested against the store); :mod:`asiarch.analysis.plots` draws it. The HTML embeds the
plots as base64 PNGs, so it opens from a file with no server and can be mailed around.
LLM-written text (names, motivations, analyses) reaches the page, so every string is
HTML-escaped before it meets the template (templates/report.html.j2).
"""

from __future__ import annotations

import base64
import difflib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from markupsafe import Markup, escape

from asiarch.job.contract import atomic_write
from asiarch.layout import ExperimentDir
from asiarch.analysis.lineage import load_lineage, render_lineage
from asiarch.analysis.show import best_result
from asiarch.analysis.stages import arm_curves, stage_agreement, stage_rows
from asiarch.store import Candidate, Store, queries
from asiarch.analysis.format import interval, number, plus_minus
from asiarch.analysis.views import (DEFAULT_STAGE, STAGES, failures_by_reason, leaderboard_rows, load_budget,
                                    load_reference, open_readonly, stage_leaderboard_rows, task_cell)

PNG_NAMES = {"discovery_index": "discovery_by_candidate.png", "discovery_compute": "discovery_by_compute.png",
             "curves": "training_curves.png", "tasks": "task_scores.png", "lineage": "lineage.png",
             "arms": "arms.png"}


# ---------------------------------------------------------------------------------- the data behind the plots


def discovery_by_index(store: Store) -> tuple[list[float], list[float | None]]:
    """x: 1..N over the new (non-baseline) candidates in the order proposed; y: each one's fitness
    (None when it was not scored: rejected, failed, still training)."""
    rows = queries.new_candidate_fitness(store)
    return [float(i) for i in range(1, len(rows) + 1)], [f if s == "done" else None for f, s in rows]


def discovery_by_compute(store: Store) -> tuple[list[float], list[float | None]]:
    """x: compute-hours spent (wall time x ranks, every recorded result, baselines and failures too)
    when each result came in, in the order they finished; y: the fitness that result brought
    (a new candidate's ok result), else None. The last x is the experiment's total compute."""
    rows = queries.results_by_finish(store)
    xs, ys, total = [], [], 0.0
    for wall, ranks, rstatus, origin, cstatus, fitness in rows:
        total += (wall or 0.0) * (ranks or 1)
        xs.append(total / 3600)
        ys.append(fitness if rstatus == "ok" and origin != "baseline" and cstatus == "done" else None)
    return xs, ys


def label(c: Candidate) -> str:
    fit = f" ({c.fitness:.3f})" if c.fitness is not None else ""
    return f"#{c.id} {c.name[:30]}{fit}"


def training_curves(store: Store, exp: ExperimentDir, cands: list[Candidate]) -> dict[str, tuple[list, list]]:
    """label -> (steps, training losses) from each candidate's best result file (skipped when unreadable)."""
    out = {}
    for c in cands:
        found = best_result(store, exp, c.id)
        if found is not None:
            out[label(c)] = (list(found[1].curve.step), list(found[1].curve.loss))
    return out


def task_table(cands: list[Candidate]) -> dict[str, dict[str, float]]:
    """label -> {task metric: score} from the store (``eval/loss`` left out: it is the loss)."""
    out = {}
    for c in cands:
        metrics = {k: v for k, v in ((c.scores or {}).get("metrics") or {}).items()
                   if k != "eval/loss" and v is not None and math.isfinite(v)}
        if metrics:
            out[label(c)] = metrics
    return out


# ---------------------------------------------------------------------------------- writing


@dataclass
class Report:
    html: Path
    pngs: dict[str, Path] = field(default_factory=dict)
    series: dict[str, dict] = field(default_factory=dict)  # what each plot drew (plots.py return values)


def _escape_all(obj):
    """Every string in a nested structure HTML-escaped (Markup is kept as it is)."""
    if isinstance(obj, Markup):
        return obj
    if isinstance(obj, str):
        return escape(obj)
    if isinstance(obj, dict):
        return {k: _escape_all(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_escape_all(v) for v in obj]
    return obj


def _diff_html(old: str, new: str) -> Markup:
    parts = []
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), "parent", "candidate", lineterm=""):
        cls = ("meta" if line.startswith(("+++", "---")) else "hunk" if line.startswith("@@")
               else "add" if line.startswith("+") else "del" if line.startswith("-") else "ctx")
        parts.append(Markup('<span class="{}">{}</span>').format(cls, line))
    return Markup("\n").join(parts) if parts else Markup("(same code)")


def write_report(exp: ExperimentDir, out_dir: str | Path | None = None, *, top: int = 5, lineage_top: int = 10,
                 table_rows: int = 25, plots: bool = True) -> Report:
    """Write report.html and the PNG plots into ``out_dir`` (default DIR/reports/); returns what was written
    and the series each plot drew."""
    from asiarch.dispatch.render import render_template

    out = Path(out_dir) if out_dir else exp.reports
    out.mkdir(parents=True, exist_ok=True)
    store = open_readonly(exp)
    try:
        report = Report(html=out / "report.html")
        rows = leaderboard_rows(store)
        best = store.ranked(top, include_baselines=False)
        baselines = [c for c in store.candidates(origin="baseline") if c.status == "done"]
        lin = load_lineage(store)
        images: dict[str, str] = {}
        if plots:
            from asiarch.analysis import plots as P

            xi, fi = discovery_by_index(store)
            xc, fc = discovery_by_compute(store)
            bfit = queries.baseline_fitness(store)
            report.series["discovery_index"] = P.plot_discovery(
                xi, fi, out / PNG_NAMES["discovery_index"], xlabel="candidate (in the order proposed)",
                title="Best fitness so far, by candidate", baselines=bfit)
            report.series["discovery_compute"] = P.plot_discovery(
                xc, fc, out / PNG_NAMES["discovery_compute"], xlabel="compute spent (core/GPU-hours)",
                title="Best fitness so far, by compute (the discovery curve)", baselines=bfit)
            report.series["curves"] = P.plot_curves(
                training_curves(store, exp, best + baselines), out / PNG_NAMES["curves"],
                baselines={label(c) for c in baselines},
                title=f"Training loss: the top {len(best)} against the baselines (dashed)")
            report.series["tasks"] = P.plot_tasks(
                task_table(best + baselines), out / PNG_NAMES["tasks"], baselines={label(c) for c in baselines},
                title=f"Task scores: the top {len(best)} and the baselines (hatched)")
            report.series["lineage"] = P.plot_lineage(lin, out / PNG_NAMES["lineage"], top=lineage_top)
            report.series["arms"] = P.plot_arms(arm_curves(store), out / PNG_NAMES["arms"])
            for key, name in PNG_NAMES.items():
                report.pngs[key] = out / name
                images[key] = base64.b64encode((out / name).read_bytes()).decode("ascii")
        context = _context(store, exp, rows, best, baselines, lin, lineage_top, table_rows)
        context.update(stages_context(store, exp, table_rows))
        context["images"] = images
        html = render_template("report.html.j2", **_escape_all(context))
        atomic_write(report.html, html, mode=0o644)  # readable by whoever the report is shared with
        return report
    finally:
        store.close()


def stages_context(store: Store, exp: ExperimentDir, table_rows: int) -> dict:
    """Per-stage tables (seed means with intervals, paired gains against the reference), the stage rank
    agreement and the arms shown in the ablation plot."""
    reference, fitness_cfg = load_reference(exp)
    by_stage = {stage: stage_rows(store, stage, reference, fitness_cfg=fitness_cfg) for stage in STAGES}
    stages = []
    for stage in STAGES:
        rows = stage_leaderboard_rows(store, stage, reference, fitness_cfg, rows=by_stage[stage])
        if not rows:
            continue
        stages.append({"name": stage, "n": str(len(rows)), "rows": [
            {"rank": str(r["rank"]), "id": str(r["id"]), "name": r["name"], "origin": r["origin"],
             "seeds": str(r["seeds"]), "fitness": number(r["fitness"], ".3f"),
             "loss": plus_minus(r["loss"], ".4f"),
             "score": plus_minus(r["score"], ".3f"), "gain": interval(r["loss_vs_ref"], "+.4f"),
             "score_gain": interval(r["score_vs_ref"], "+.3f"),
             "beats": {True: "yes", False: "no", None: "-"}[r["beats_ref"]]} for r in rows[:table_rows]]})
    ag = stage_agreement(store, reference, by_stage)
    if ag.n >= 3:
        agreement = (f"Spearman rank correlation of the mean evaluation losses over the {ag.n} candidates trained in "
                     f"both stages: {ag.rho:+.2f} (1: the exploration stage ranks them as verification does; "
                     "0: no relation).")
    elif ag.n:
        agreement = f"{ag.n} candidate(s) trained in both stages; a rank correlation needs at least 3."
    else:
        agreement = "No candidate has been verified yet."
    arms = []
    for arm, (hours, best) in sorted(arm_curves(store).items()):
        found = [(h, b) for h, b in zip(hours, best) if b is not None]
        arms.append(f"{arm}: best fitness {number(found[-1][1], '.3f')} after {hours[-1]:.2f} core/GPU-hours" if found
                    else f"{arm}: nothing scored yet ({hours[-1]:.2f} core/GPU-hours)")
    return {"stages": stages, "reference": reference, "agreement": agreement,
            "agreement_pairs": [{"name": n, "explore": number(a, ".4f"), "verify": number(b, ".4f")}
                                for n, a, b in ag.pairs],
            "arms": arms}


def _context(store: Store, exp: ExperimentDir, rows: list[dict], best: list[Candidate], baselines: list[Candidate],
             lin, lineage_top: int, table_rows: int) -> dict:
    budget = load_budget(exp)
    counts = store.counts()
    hours = store.compute_seconds() / 3600
    llm = queries.llm_spend(store)
    summary = [
        ("experiment", f"{store.get_meta('experiment', '?')} ({exp.root})"),
        ("stage", DEFAULT_STAGE),
        ("candidates", f"{sum(counts.values())} proposed"
         + (f" of budget {budget.candidates}" if budget and budget.candidates else "") + ": "
         + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))),
        ("compute", f"{hours:,.2f} core/GPU-hours"
         + (f" of budget {budget.gpu_hours:,g} ({100 * hours / budget.gpu_hours:.1f} %)"
            if budget and budget.gpu_hours else "")),
        ("LLM", f"${llm['usd']:,.2f} over {llm['calls']} calls"),
    ]
    if best:
        summary.append(("best", f"#{best[0].id} {best[0].name}, fitness {number(best[0].fitness, '.3f')}"))
    stopped = [r for r in rows if r["status"] == "stopped"]
    if stopped:
        by = {}
        for r in stopped:
            where = f"rung {r['rung']}" if r["rung"] else "the watchdog"
            by[where] = by.get(where, 0) + 1
        summary.append(("stopped early", f"{len(stopped)} (" + ", ".join(f"{n} at {w}" for w, n in sorted(by.items()))
                        + "), ranked below every candidate trained to the end"))
    not_run = {}
    for r in rows:
        for task in r["lm_eval_not_run"]:
            not_run[task] = not_run.get(task, 0) + 1
    if not_run:
        summary.append(("lm-eval not run", ", ".join(f"{t} for {n} candidate{'s' * (n > 1)}"
                                                     for t, n in sorted(not_run.items()))
                        + "; a candidate's task score leaves out what did not run (asiarch show ID: lm-eval's words)"))
    tasks = [k for k in (rows[0] if rows else {}) if "/" in k][:6]
    ranked = [r for r in rows if r["rank"] is not None]
    n_scored = sum(1 for r in ranked if r["status"] != "stopped")
    shown = ranked[:table_rows] + [r for r in ranked[table_rows:] if r["origin"] == "baseline"]
    table = [{"rank": number(r["rank"], "d"), "id": str(r["id"]), "name": r["name"], "origin": r["origin"],
              "parent": number(r["parent"], "d"),
              "fitness": (f"stopped at rung {r['rung']}" if r["rung"] else "stopped") if r["status"] == "stopped"
              else number(r["fitness"], ".3f"),
              "loss": number(r["loss"], ".4f"), "score": number(r["score"], ".3f"),
              "tasks": [task_cell(r, t) for t in tasks],
              "params": number(r["num_params"], ",d"), "tps": number(r["tokens_per_s"], ",.0f"),
              "baseline": r["origin"] == "baseline"} for r in shown]
    details = []
    for c in best:
        parent = store.candidate(c.parent_id) if c.parent_id is not None else None
        analyses = store.analyses(c.id)
        details.append({
            "id": str(c.id), "name": c.name, "fitness": number(c.fitness, ".3f"), "loss": number(c.loss, ".4f"),
            "score": number(c.score, ".3f"),
            "parent": f"#{parent.id} {parent.name} ({number(parent.fitness, '.3f')})" if parent else "none",
            "motivation": c.motivation or "(none)",
            "analysis": analyses[-1]["text"] if analyses else "(no analysis)",
            "diff": _diff_html(parent.code, c.code) if parent else Markup("(no parent)"),
            "events": [f"{e['kind']}: {e['message'][:300]}" for e in store.candidate_events(c.id)],
            "code": c.code})
    return {
        "title": f"asiarch report: {store.get_meta('experiment', exp.root.name)}",
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "summary": summary,
        "tasks": tasks,
        "table": table,
        "n_ranked": str(n_scored),
        "details": details,
        "failures": [{"count": str(g["count"]), "status": g["status"], "reason": g["reason"],
                      "example": f"#{g['example_id']}: {g['example'][:200]}"} for g in failures_by_reason(store)[:12]],
        "lineage_text": render_lineage(lin, top=lineage_top),
        "events": [{"when": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["ts"])), "kind": e["kind"],
                    "who": f"#{e['candidate_id']}" if e["candidate_id"] else "", "message": e["message"][:200]}
                   for e in store.events(15)],
    }
