"""Read-only views of an experiment: status and leaderboard.

They open the store read-only and never take a write lock, so they are safe on a login
node while the head runs, and on a copy of the directory.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time

from asiarch.layout import ExperimentDir
from asiarch.store import Candidate, Store, StoreError


def open_readonly(exp: ExperimentDir) -> Store:
    if not exp.root.is_dir():
        raise StoreError(f"{exp.root}: no such directory")
    return Store.open_readonly(exp.db)


def leaderboard_rows(store: Store) -> list[dict]:
    """Every candidate, scored ones first (best fitness first), then the rest by id."""
    ranked = store.ranked()
    seen = {c.id for c in ranked}
    rest = [c for c in store.candidates() if c.id not in seen]
    rows = []
    for rank, cand in enumerate(ranked + rest, start=1):
        rows.append(_row(cand, rank if cand.id in seen else None))
    return rows


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _row(c: Candidate, rank: int | None) -> dict:
    scores = c.scores or {}
    return {
        "rank": rank,
        "id": c.id,
        "name": c.name,
        "origin": c.origin,
        "parent": c.parent_id,
        "round": c.round,
        "status": c.status,
        "fitness": _num(c.fitness),
        "loss": _num(c.loss),
        "score": _num(c.score),
        "num_params": c.num_params,
        "tokens_per_s": _num(scores.get("tokens_per_s")),
        "reason": c.reason,
    }


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def render_leaderboard(rows: list[dict], fmt: str = "table", limit: int | None = None) -> str:
    rows = rows[:limit] if limit else rows
    if fmt == "json":
        return json.dumps(rows, indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["id"])
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    header = f"{'rank':>4} {'id':>5} {'name':<34} {'origin':<8} {'parent':>6} {'status':<8} {'fitness':>7} " \
             f"{'loss':>7} {'score':>6} {'params':>8} {'tok/s':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{_fmt(r['rank'], 'd'):>4} {r['id']:>5} {r['name'][:34]:<34} {r['origin']:<8} "
            f"{_fmt(r['parent'], 'd'):>6} {r['status']:<8} {_fmt(r['fitness'], '.3f'):>7} {_fmt(r['loss'], '.4f'):>7} "
            f"{_fmt(r['score'], '.3f'):>6} {_fmt(r['num_params'], ',d'):>8} {_fmt(r['tokens_per_s'], ',.0f'):>8}"
            + (f"  {r['reason'][:60]}" if r["status"] in ("failed", "rejected") and r["reason"] else ""))
    return "\n".join(lines)


def status_text(store: Store, budget_candidates: int | None = None) -> str:
    """Where a run stands: counts by status, jobs in flight, compute spent, failures by reason, last events."""
    c = store.conn
    lines = [f"experiment: {store.get_meta('experiment', '?')}  ({store.path.parent})"]
    by_status = dict(c.execute("SELECT status, COUNT(*) FROM candidates WHERE origin != 'baseline' GROUP BY status"))
    base = dict(c.execute("SELECT status, COUNT(*) FROM candidates WHERE origin = 'baseline' GROUP BY status"))
    total = sum(by_status.values())
    budget = f" of budget {budget_candidates}" if budget_candidates else ""
    lines.append(f"candidates: {total} proposed{budget}: " +
                 ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) if total else "candidates: none yet")
    lines.append("baselines:  " + (", ".join(f"{n} {s}" for s, n in sorted(base.items())) or "none"))
    inflight = c.execute("SELECT status, COUNT(*) FROM attempts WHERE status IN ('pending','submitted','running')"
                         " GROUP BY status").fetchall()
    lines.append("jobs:       " + (", ".join(f"{n} {s}" for s, n in inflight) or "none in flight"))
    secs = store.compute_seconds()
    lines.append(f"compute:    {secs / 3600:.3f} core/GPU-hours over "
                 f"{c.execute('SELECT COUNT(*) FROM results').fetchone()[0]} results")
    first = c.execute("SELECT MIN(created_at), MAX(updated_at) FROM candidates WHERE origin != 'baseline'").fetchone()
    if first[0] and total:
        hours = max((first[1] - first[0]) / 3600, 1e-9)
        lines.append(f"rate:       {total / hours:.1f} proposals/hour")
    best = store.ranked(1, include_baselines=False)
    if best:
        b = best[0]
        lines.append(f"best:       #{b.id} {b.name}  fitness {b.fitness:.3f}  loss {b.loss:.4f}")
    reasons = c.execute("SELECT status, reason, COUNT(*) FROM candidates WHERE status IN ('failed','rejected')"
                        " GROUP BY status, reason ORDER BY COUNT(*) DESC LIMIT 5").fetchall()
    if reasons:
        lines.append("failures:")
        lines += [f"  {n:3d} {s}: {r[:100]}" for s, r, n in reasons]
    events = store.events(8)
    if events:
        lines.append("last events:")
        for e in events:
            when = time.strftime("%H:%M:%S", time.localtime(e["ts"]))
            who = f"#{e['candidate_id']}" if e["candidate_id"] else ""
            lines.append(f"  {when} {e['kind']:<9} {who:<6} {e['message'][:90]}")
    return "\n".join(lines)
