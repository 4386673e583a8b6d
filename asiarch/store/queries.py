"""Read-only queries the views, the report and the tools run on a store.

Each takes a :class:`~asiarch.store.Store` (read-only or not), runs short statements fetched
whole (a reader holds a shared lock only while a statement runs, so the head's commits never
wait on a login node's `asiarch report`), and returns plain data: tuples, dicts and numbers,
no formatting. What the search loop itself reads is a :class:`Store` method.
"""

from __future__ import annotations

import json

from asiarch.store.store import DEVICE_SECONDS, Store


# ---------------------------------------------------------------------------------- candidates


def candidate_table(store: Store) -> list[dict]:
    """Every candidate's columns except its code, in id order, with its scores JSON parsed."""
    rows = store.conn.execute(
        "SELECT id, name, origin, parent_id, round, status, reason, fitness, loss, score, scores, num_params,"
        " code_sha256, genome_key, motivation, created_at, updated_at FROM candidates ORDER BY id").fetchall()
    out = []
    for r in rows:
        d = dict(r)
        d["scores"] = json.loads(d["scores"] or "{}")
        out.append(d)
    return out


def candidate_codes(store: Store) -> dict[int, str]:
    """Candidate id -> its code."""
    return dict(store.conn.execute("SELECT id, code FROM candidates").fetchall())


def lineage_rows(store: Store) -> list[tuple]:
    """(id, name, parent_id, origin, status, fitness, loss) of every candidate in id order: the
    whole tree in one query, without code or scores JSON (fast at thousands of candidates)."""
    return [tuple(r) for r in store.conn.execute(
        "SELECT id, name, parent_id, origin, status, fitness, loss FROM candidates ORDER BY id").fetchall()]


def children_summary(store: Store, cid: int) -> tuple[int, float | None]:
    """(how many children ``cid`` has, their best fitness or None)."""
    n, best = store.conn.execute("SELECT COUNT(*), MAX(fitness) FROM candidates WHERE parent_id = ?",
                                 (cid,)).fetchone()
    return int(n), best


def fitness_rank(store: Store, fitness: float) -> tuple[int, int]:
    """(how many scored candidates have a fitness above ``fitness``, how many are scored), baselines included."""
    above = store.conn.execute("SELECT COUNT(*) FROM candidates WHERE status = 'done' AND fitness > ?",
                               (fitness,)).fetchone()[0]
    scored = store.conn.execute("SELECT COUNT(*) FROM candidates WHERE status = 'done' AND fitness IS NOT NULL"
                                ).fetchone()[0]
    return int(above), int(scored)


def failed_reasons(store: Store) -> list[tuple[int, str, str]]:
    """(id, status, reason) of the failed and rejected candidates, in id order."""
    return [tuple(r) for r in store.conn.execute(
        "SELECT id, status, reason FROM candidates WHERE status IN ('failed', 'rejected') ORDER BY id").fetchall()]


def new_candidate_fitness(store: Store) -> list[tuple[float | None, str]]:
    """(fitness, status) of the new (non-baseline) candidates in the order proposed."""
    return [tuple(r) for r in store.conn.execute(
        "SELECT fitness, status FROM candidates WHERE origin != 'baseline' ORDER BY id").fetchall()]


def baseline_fitness(store: Store) -> dict[str, float]:
    """Name -> fitness of the scored baselines (of two with one name, the newer)."""
    rows = store.conn.execute("SELECT name, fitness FROM candidates WHERE origin = 'baseline' AND status = 'done'"
                              " AND fitness IS NOT NULL ORDER BY id").fetchall()
    return {name: f for name, f in rows}


def status_overview(store: Store) -> dict:
    """The figures of ``asiarch status``: new candidates and baselines by status ("candidates",
    "baselines": status -> count), how many results are recorded ("results"), and when the
    first and last new candidates were proposed ("first_proposed", "last_proposed": Unix
    seconds, None before any)."""
    first, last = store.conn.execute("SELECT MIN(created_at), MAX(created_at) FROM candidates"
                                     " WHERE origin != 'baseline'").fetchone()
    return {"candidates": store.counts(), "baselines": store.counts(baselines=True),
            "results": int(store.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]),
            "first_proposed": first, "last_proposed": last}


# ---------------------------------------------------------------------------------- attempts and results


def attempt_counts(store: Store) -> dict[int, int]:
    """Candidate id -> how many attempts it has (candidates without any are absent)."""
    return dict(store.conn.execute("SELECT candidate_id, COUNT(*) FROM attempts GROUP BY candidate_id").fetchall())


def in_flight_attempts(store: Store) -> list[dict]:
    """Attempts pending, submitted or running (running first, then by id), each a dict with id,
    candidate_id, n, status, job_id, dir, submitted_at and the candidate's name."""
    return [dict(r) for r in store.conn.execute(
        "SELECT a.id, a.candidate_id, a.n, a.status, a.job_id, a.dir, a.submitted_at, c.name FROM attempts a"
        " JOIN candidates c ON c.id = a.candidate_id WHERE a.status IN ('pending', 'submitted', 'running')"
        " ORDER BY a.status = 'running' DESC, a.id").fetchall()]


def attempt_result_paths(store: Store, cid: int) -> list[tuple[int, str, str | None, str | None]]:
    """(attempt number, attempt dir, result status, result path) of every attempt of ``cid``, newest
    first; the last two are None for an attempt without a recorded result."""
    return [tuple(r) for r in store.conn.execute(
        "SELECT a.n, a.dir, r.status, r.result_path FROM attempts a LEFT JOIN results r ON r.attempt_id = a.id"
        " WHERE a.candidate_id = ? ORDER BY a.n DESC", (cid,)).fetchall()]


def last_attempt_dir(store: Store, cid: int) -> tuple[int, str] | None:
    """(number, dir) of the last attempt of ``cid``, or None before its first."""
    row = store.conn.execute("SELECT n, dir FROM attempts WHERE candidate_id = ? ORDER BY n DESC LIMIT 1",
                             (cid,)).fetchone()
    return tuple(row) if row else None


def last_failed_result_path(store: Store, cid: int) -> str | None:
    """The result path of the newest recorded result of ``cid`` that is not ok, or None."""
    row = store.conn.execute("SELECT result_path FROM results WHERE candidate_id = ? AND status != 'ok'"
                             " ORDER BY attempt_id DESC LIMIT 1", (cid,)).fetchone()
    return row[0] if row else None


def best_result_paths(store: Store) -> dict[int, str]:
    """Candidate id -> the path of its best result file: its latest ok result, else its latest
    result of any status (candidates without results are absent)."""
    paths: dict[int, str] = {}
    for cid, _, path in store.conn.execute(
            "SELECT candidate_id, status, result_path FROM results ORDER BY status = 'ok', attempt_id").fetchall():
        paths[cid] = path
    return paths


def compute_by_candidate(store: Store) -> dict[int, float]:
    """Candidate id -> wall seconds x ranks over its recorded results."""
    return dict(store.conn.execute("SELECT candidate_id, SUM(wall_s * COALESCE(world_size, 1)) FROM results"
                                   " GROUP BY candidate_id").fetchall())


def results_by_finish(store: Store) -> list[tuple]:
    """(wall_s, world_size, result status, origin, candidate status, fitness) of every recorded
    result, in the order the attempts finished (else were submitted), then by attempt id."""
    return [tuple(r) for r in store.conn.execute(
        "SELECT r.wall_s, r.world_size, r.status, c.origin, c.status, c.fitness FROM results r"
        " JOIN attempts a ON a.id = r.attempt_id JOIN candidates c ON c.id = r.candidate_id"
        " ORDER BY COALESCE(a.finished_at, a.submitted_at, 0), a.id").fetchall()]


def finished_explore_results(store: Store) -> list[dict]:
    """The exploration results trained to the end (status ok), in the order their attempts were submitted:
    dicts with candidate_id, name, origin, seed, attempt_id, result_path, eval_loss and device_s (what the
    attempt used), for replaying their curves (asiarch.tools.early_stopping)."""
    return [dict(r) for r in store.conn.execute(
        "SELECT r.candidate_id, c.name, c.origin, a.seed, a.id AS attempt_id, r.result_path, r.eval_loss,"
        f" {DEVICE_SECONDS} AS device_s FROM results r JOIN attempts a ON a.id = r.attempt_id"
        " JOIN candidates c ON c.id = r.candidate_id WHERE r.status = 'ok' AND a.stage = 'explore'"
        " ORDER BY COALESCE(a.submitted_at, a.finished_at, 0), a.id").fetchall()]


def arm_attempts(store: Store) -> list[tuple]:
    """(origin, candidate id, fitness, finished_at, device-seconds) of every finished exploration
    attempt of a proposed candidate (origin 'llm' or 'offline'), in the order they finished."""
    return [tuple(r) for r in store.conn.execute(
        f"SELECT c.origin, c.id, c.fitness, a.finished_at, {DEVICE_SECONDS}"
        " FROM attempts a JOIN candidates c ON c.id = a.candidate_id LEFT JOIN results r ON r.attempt_id = a.id"
        " WHERE a.stage = 'explore' AND c.origin IN ('llm', 'offline') AND a.finished_at IS NOT NULL"
        " ORDER BY a.finished_at, a.id").fetchall()]


# ---------------------------------------------------------------------------------- analyses, events, LLM


def analysis_summaries(store: Store) -> dict[int, str]:
    """Candidate id -> the summary of its latest analysis."""
    return dict(store.conn.execute("SELECT candidate_id, summary FROM analyses ORDER BY id").fetchall())


def event_count(store: Store, kind: str) -> int:
    """How many events of ``kind`` (e.g. 'adopted') the log holds."""
    return int(store.conn.execute("SELECT COUNT(*) FROM events WHERE kind = ?", (kind,)).fetchone()[0])


def llm_spend(store: Store) -> dict:
    """LLM calls so far: {"calls": how many, "usd": dollars, "tokens": prompt + completion tokens}."""
    row = store.conn.execute("SELECT COUNT(*), COALESCE(SUM(cost_usd), 0),"
                             " COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM llm_calls").fetchone()
    return {"calls": row[0], "usd": float(row[1]), "tokens": int(row[2])}
