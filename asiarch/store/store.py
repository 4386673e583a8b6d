"""The experiment store: one SQLite file per experiment directory.

Only the head process writes; CLI readers on login nodes open it read-only at any
time. Because clusters keep experiment directories on NFS or Lustre, the store uses
the rollback journal (``journal_mode=DELETE``, never WAL, which needs shared memory
that network filesystems do not provide), short transactions, and a busy timeout so
a reader and the head retry instead of failing with "database is locked".

The tables are declared in :mod:`asiarch.store.schema`; the read-only queries the views
and tools run are in :mod:`asiarch.store.queries`. This module holds the :class:`Store`:
its connection, every write, and the reads the search loop and the agents make.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from asiarch.store.schema import (ATTEMPT_STATUSES, CANDIDATE_STATUSES, SCHEMA_VERSION, StoreError, has_table,
                                  migrate)

__all__ = ["ATTEMPT_STATUSES", "CANDIDATE_STATUSES", "SCHEMA_VERSION", "Attempt", "Candidate", "Store", "StoreError",
           "to_json"]

# The device-seconds an attempt used, as SQL over ``attempts a`` joined with ``results r``: the
# scheduler's GPU-seconds (or CPU-seconds on CPU jobs) where it accounted the attempt, else the
# result's wall seconds x world size.
DEVICE_SECONDS = ("CASE WHEN a.gpu_seconds > 0 THEN a.gpu_seconds WHEN a.cpu_seconds > 0 THEN a.cpu_seconds"
                  " ELSE r.wall_s * COALESCE(r.world_size, 1) END")


@dataclass
class Candidate:
    id: int
    name: str
    origin: str
    parent_id: int | None
    round: int
    status: str
    reason: str
    code: str
    code_sha256: str
    genome_key: str
    motivation: str
    fitness: float | None
    loss: float | None
    score: float | None
    scores: dict
    num_params: int | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Candidate":
        d = dict(row)
        d["scores"] = json.loads(d["scores"] or "{}")
        return cls(**d)


@dataclass
class Attempt:
    id: int
    candidate_id: int
    n: int
    run_key: str
    status: str
    scheduler: str
    job_id: str
    dir: str
    code_sha256: str
    error: str
    submitted_at: float | None
    finished_at: float | None
    elapsed_s: float | None = None
    cpu_seconds: float | None = None
    gpu_seconds: float | None = None
    stage: str = "explore"
    seed: int = 0

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Attempt":
        return cls(**dict(row))


def _clean(value: Any) -> Any:
    """SQLite has no NaN: store missing numbers as NULL."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Store:
    """The experiment database. ``Store.open(path)`` for the head, ``Store.open_readonly`` for readers."""

    def __init__(self, conn: sqlite3.Connection, path: Path, readonly: bool):
        self.conn = conn
        self.path = path
        self.readonly = readonly

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | Path) -> "Store":
        path = Path(path)
        conn = sqlite3.connect(str(path), timeout=60.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute("PRAGMA journal_mode = DELETE")  # no WAL: it breaks on NFS/Lustre
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        store = cls(conn, path, readonly=False)
        with store.transaction():
            migrate(conn, path)
        return store

    @classmethod
    def open_readonly(cls, path: str | Path) -> "Store":
        path = Path(path)
        if not path.exists():
            raise StoreError(f"{path}: no experiment store here; is this an experiment directory (asiarch run DIR)?")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 60000")
        return cls(conn, path, readonly=True)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction; BEGIN IMMEDIATE takes the write lock up front (no deadlock on upgrade)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    # ----------------------------------------------------------------- meta
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                      (key, value))

    # ----------------------------------------------------------------- events
    def log_event(self, kind: str, message: str, candidate_id: int | None = None,
                  attempt_id: int | None = None, *, conn: sqlite3.Connection | None = None) -> None:
        sql = "INSERT INTO events (ts, kind, candidate_id, attempt_id, message) VALUES (?, ?, ?, ?, ?)"
        args = (time.time(), kind, candidate_id, attempt_id, message)
        if conn is not None:
            conn.execute(sql, args)
        else:
            with self.transaction() as c:
                c.execute(sql, args)

    def candidate_events(self, cid: int) -> list[dict]:
        """What happened to a candidate besides its attempts (ts, kind, message), oldest first: the
        Engineer's repairs, promotion to verification, re-attachment by a restarted head, failed seeds,
        ASHA rungs passed, early stops, lm-eval tasks a job could not run."""
        rows = self.conn.execute("SELECT ts, kind, message FROM events WHERE candidate_id = ? AND kind IN"
                                 " ('repaired', 'promoted', 'adopted', 'seed-failed', 'rung-passed', 'stopped',"
                                 " 'lm-eval-failed')"
                                 " ORDER BY id", (cid,))
        return [dict(r) for r in rows]

    def rungs_passed(self, attempt_id: int) -> int:
        """How many ASHA rungs the watchdog recorded an attempt passing (its 'rung-passed' events): a
        restarted head does not judge the attempt at them again."""
        row = self.conn.execute("SELECT COUNT(*) FROM events WHERE attempt_id = ? AND kind = 'rung-passed'",
                                (attempt_id,)).fetchone()
        return int(row[0])

    def events(self, limit: int = 20) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in reversed(rows)]

    # ----------------------------------------------------------------- candidates
    def add_candidate(self, *, name: str, origin: str, code: str, code_sha256: str, parent_id: int | None = None,
                      round: int = 0, motivation: str = "", genome_key: str = "", status: str = "proposed",
                      reference_ids: tuple[int, ...] | list[int] = ()) -> int:
        now = time.time()
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO candidates (name, origin, parent_id, round, status, code, code_sha256, genome_key,"
                " motivation, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, origin, parent_id, round, status, code, code_sha256, genome_key, motivation, now, now),
            )
            cid = int(cur.lastrowid)
            for ref in reference_ids:
                c.execute("INSERT OR IGNORE INTO candidate_refs VALUES (?, ?)", (cid, ref))
            self.log_event("proposed", f"{name} ({origin}) parent={parent_id}", cid, conn=c)
        return cid

    def set_candidate_status(self, cid: int, status: str, reason: str = "", *, event: str | None = None) -> None:
        assert status in CANDIDATE_STATUSES, status
        with self.transaction() as c:
            c.execute("UPDATE candidates SET status = ?, reason = ?, updated_at = ? WHERE id = ?",
                      (status, reason, time.time(), cid))
            if event:
                self.log_event(status, event, cid, conn=c)

    def update_code(self, cid: int, code: str, code_sha256: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE candidates SET code = ?, code_sha256 = ?, updated_at = ? WHERE id = ?",
                      (code, code_sha256, time.time(), cid))

    def set_scores(self, cid: int, *, fitness: float | None, loss: float | None, score: float | None,
                   scores: dict, num_params: int | None, status: str = "done", reason: str = "") -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE candidates SET fitness = ?, loss = ?, score = ?, scores = ?, num_params = ?, status = ?,"
                " reason = ?, updated_at = ? WHERE id = ?",
                (_clean(fitness), _clean(loss), _clean(score), to_json(scores),
                 num_params, status, reason, time.time(), cid),
            )

    def candidate(self, cid: int) -> Candidate:
        row = self.conn.execute("SELECT * FROM candidates WHERE id = ?", (cid,)).fetchone()
        if row is None:
            raise StoreError(f"no candidate with id {cid}")
        return Candidate.from_row(row)

    def find_candidate(self, ref: str) -> Candidate:
        """A candidate by id or by name (``asiarch show DIR 12`` or ``... delta_silu_k7f3``)."""
        if ref.isdigit():
            return self.candidate(int(ref))
        row = self.conn.execute("SELECT * FROM candidates WHERE name = ? ORDER BY id LIMIT 1", (ref,)).fetchone()
        if row is None:
            raise StoreError(f"no candidate named {ref!r}; `asiarch leaderboard DIR` lists them")
        return Candidate.from_row(row)

    def candidates(self, *, status: str | None = None, origin: str | None = None) -> list[Candidate]:
        sql, args = "SELECT * FROM candidates", []
        where = []
        if status:
            where.append("status = ?")
            args.append(status)
        if origin:
            where.append("origin = ?")
            args.append(origin)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [Candidate.from_row(r) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def ranked(self, limit: int | None = None, *, include_baselines: bool = True,
               include_stopped: bool = False) -> list[Candidate]:
        """Scored candidates, best fitness first (ties: lower loss, then older). With ``include_stopped``,
        the candidates stopped early follow, below every one trained to the end: the later their rung the
        higher (watchdog stops, without a rung, last), then by their loss there (``scores["stopped"]``)."""
        sql = "SELECT * FROM candidates WHERE (status = 'done' AND fitness IS NOT NULL)"
        if include_stopped:
            sql += " OR status = 'stopped'"
        sql = f"SELECT * FROM ({sql})"
        if not include_baselines:
            sql += " WHERE origin != 'baseline'"
        sql += (" ORDER BY status = 'stopped', fitness DESC, json_extract(scores, '$.stopped.rung') DESC,"
                " json_extract(scores, '$.stopped.loss') ASC, loss ASC, id ASC")
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [Candidate.from_row(r) for r in self.conn.execute(sql)]

    def reference_ids(self, cid: int) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT ref_id FROM candidate_refs WHERE candidate_id = ?", (cid,))]

    def children(self, cid: int) -> list[Candidate]:
        return [Candidate.from_row(r) for r in
                self.conn.execute("SELECT * FROM candidates WHERE parent_id = ? ORDER BY id", (cid,))]

    def known_keys(self) -> tuple[set[str], set[str]]:
        """(code sha256s, genome keys) of every candidate so far: the novelty filter's memory."""
        shas, keys = set(), set()
        for sha, key in self.conn.execute("SELECT code_sha256, genome_key FROM candidates"):
            shas.add(sha)
            if key:
                keys.add(key)
        return shas, keys

    def counts(self, *, baselines: bool = False) -> dict[str, int]:
        """Status -> how many of the new candidates (with ``baselines``: of the baselines) have it."""
        op = "=" if baselines else "!="
        rows = self.conn.execute(f"SELECT status, COUNT(*) FROM candidates WHERE origin {op} 'baseline'"
                                 " GROUP BY status")
        return {s: n for s, n in rows}

    def count(self, status: str) -> int:
        """How many candidates, baselines included, have ``status``."""
        return int(self.conn.execute("SELECT COUNT(*) FROM candidates WHERE status = ?", (status,)).fetchone()[0])

    def scored_baseline(self, name: str) -> Candidate | None:
        """The first baseline called ``name`` that is done and has a loss (the fitness reference), or None."""
        row = self.conn.execute("SELECT * FROM candidates WHERE origin = 'baseline' AND name = ? AND status = 'done'"
                                " AND loss IS NOT NULL ORDER BY id LIMIT 1", (name,)).fetchone()
        return Candidate.from_row(row) if row else None

    def candidate_with_code(self, code_sha256: str, *, other_than: int | None = None) -> Candidate | None:
        """The oldest candidate whose code has this sha256 (not counting candidate ``other_than``), or None."""
        row = self.conn.execute("SELECT * FROM candidates WHERE code_sha256 = ? AND id IS NOT ? ORDER BY id LIMIT 1",
                                (code_sha256, other_than)).fetchone()
        return Candidate.from_row(row) if row else None

    def candidate_texts(self) -> list[dict]:
        """id, name, motivation and code of every candidate, in id order (the novelty check's corpus)."""
        return [dict(r) for r in self.conn.execute("SELECT id, name, motivation, code FROM candidates ORDER BY id")]

    def insert_candidates(self, rows: Iterable[dict]) -> None:
        """Insert finished candidates as they are, in one transaction and without events: for
        benchmarks that need a large store fast. Each row gives name, origin, status, code and
        code_sha256, and may give parent_id, fitness, loss and score."""
        now = time.time()
        with self.transaction() as c:
            c.executemany(
                "INSERT INTO candidates (name, origin, parent_id, status, code, code_sha256, fitness, loss, score,"
                " created_at, updated_at) VALUES (:name, :origin, :parent_id, :status, :code, :code_sha256, :fitness,"
                " :loss, :score, :now, :now)",
                ({"parent_id": None, "fitness": None, "loss": None, "score": None, **r, "now": now} for r in rows))

    def max_round(self) -> int:
        row = self.conn.execute("SELECT MAX(round) FROM candidates").fetchone()
        return int(row[0] or 0)

    # ----------------------------------------------------------------- attempts
    def add_attempt(self, cid: int, n: int, run_key: str, dir: str, code_sha256: str, *,
                    stage: str = "explore", seed: int = 0) -> int:
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO attempts (candidate_id, n, run_key, status, dir, code_sha256, stage, seed)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (cid, n, run_key, "pending", dir, code_sha256, stage, seed),
            )
            return int(cur.lastrowid)

    def mark_submitted(self, attempt_id: int, scheduler: str, job_id: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE attempts SET status = 'submitted', scheduler = ?, job_id = ?, submitted_at = ?"
                      " WHERE id = ?", (scheduler, job_id, time.time(), attempt_id))
            cid, stage = c.execute("SELECT candidate_id, stage FROM attempts WHERE id = ?", (attempt_id,)).fetchone()
            if stage == "explore":  # a verification run leaves its candidate's (explored) status as it is
                c.execute("UPDATE candidates SET status = 'queued', updated_at = ? WHERE id = ?", (time.time(), cid))
            self.log_event("submitted", f"job {job_id} ({scheduler})", cid, attempt_id, conn=c)

    def set_attempt_status(self, attempt_id: int, status: str, error: str = "") -> None:
        assert status in ATTEMPT_STATUSES, status
        finished = time.time() if status not in ("pending", "submitted", "running") else None
        with self.transaction() as c:
            c.execute("UPDATE attempts SET status = ?, error = ?, finished_at = COALESCE(?, finished_at)"
                      " WHERE id = ?", (status, error, finished, attempt_id))
            if status == "running":
                cid, stage = c.execute("SELECT candidate_id, stage FROM attempts WHERE id = ?",
                                       (attempt_id,)).fetchone()
                if stage == "explore":
                    c.execute("UPDATE candidates SET status = 'running', updated_at = ? WHERE id = ?",
                              (time.time(), cid))

    def attempts(self, cid: int | None = None, *, statuses: tuple[str, ...] | None = None) -> list[Attempt]:
        sql, args, where = "SELECT * FROM attempts", [], []
        if cid is not None:
            where.append("candidate_id = ?")
            args.append(cid)
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [Attempt.from_row(r) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def attempt(self, attempt_id: int) -> Attempt:
        row = self.conn.execute("SELECT * FROM attempts WHERE id = ?", (attempt_id,)).fetchone()
        if row is None:
            raise StoreError(f"no attempt with id {attempt_id}")
        return Attempt.from_row(row)

    # ----------------------------------------------------------------- results and analyses
    def add_result(self, attempt_id: int, cid: int, *, status: str, result_path: str, final_loss: float | None,
                   eval_loss: float | None, metrics: dict, tokens_per_s: float | None, peak_memory_bytes: int | None,
                   num_params: int | None, steps_done: int | None, wall_s: float | None,
                   world_size: int | None) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (attempt_id, cid, status, _clean(final_loss), _clean(eval_loss),
                 to_json(metrics), _clean(tokens_per_s), peak_memory_bytes, num_params,
                 steps_done, _clean(wall_s), world_size, result_path),
            )

    def results(self, cid: int) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM results WHERE candidate_id = ? ORDER BY attempt_id", (cid,))
        out = []
        for r in rows:
            d = dict(r)
            d["metrics"] = json.loads(d["metrics"])
            out.append(d)
        return out

    def seed_results(self, *, stage: str | None = None, cid: int | None = None) -> list[dict]:
        """The ok results with their attempt's stage and seed: one dict per (candidate, stage, seed)
        (the last ok attempt of a seed wins), with candidate_id, stage, seed, eval_loss, metrics,
        attempt_id, finished_at, the attempt's code_sha256 and the device-seconds it used."""
        sql = ("SELECT r.candidate_id, a.stage, a.seed, r.eval_loss, r.metrics, r.attempt_id, a.finished_at,"
               f" a.code_sha256, {DEVICE_SECONDS} AS device_s"
               " FROM results r JOIN attempts a ON a.id = r.attempt_id WHERE r.status = 'ok'")
        args: list = []
        if stage is not None:
            sql += " AND a.stage = ?"
            args.append(stage)
        if cid is not None:
            sql += " AND r.candidate_id = ?"
            args.append(cid)
        out: dict[tuple, dict] = {}
        for r in self.conn.execute(sql + " ORDER BY r.attempt_id", args):
            d = dict(r)
            d["metrics"] = json.loads(d["metrics"])
            out[(d["candidate_id"], d["stage"], d["seed"])] = d
        return list(out.values())

    def add_analysis(self, cid: int, author: str, summary: str, text: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO analyses (candidate_id, author, summary, text, created_at) VALUES (?, ?, ?, ?, ?)",
                      (cid, author, summary, text, time.time()))

    def analyses(self, cid: int) -> list[dict]:
        return [dict(r) for r in
                self.conn.execute("SELECT * FROM analyses WHERE candidate_id = ? ORDER BY id", (cid,))]

    def set_attempt_usage(self, attempt_id: int, *, elapsed_s: float, cpu_seconds: float,
                          gpu_seconds: float) -> None:
        with self.transaction() as c:
            c.execute("UPDATE attempts SET elapsed_s = ?, cpu_seconds = ?, gpu_seconds = ? WHERE id = ?",
                      (elapsed_s, cpu_seconds, gpu_seconds, attempt_id))

    def compute_seconds(self) -> float:
        """Device-seconds spent on training: the scheduler's GPU-seconds (or CPU-seconds on CPU jobs)
        where it accounted the attempt, else the result's wall seconds x world size."""
        row = self.conn.execute(
            f"SELECT SUM({DEVICE_SECONDS}) FROM attempts a LEFT JOIN results r ON r.attempt_id = a.id").fetchone()
        return float(row[0] or 0.0)

    def mean_attempt_compute(self) -> float:
        """Device-seconds of an ended attempt, on average (0 before any): what the steady pipeline
        expects each attempt in flight to use, for budget.gpu_hours."""
        row = self.conn.execute(
            f"SELECT AVG({DEVICE_SECONDS}) FROM attempts a LEFT JOIN results r ON r.attempt_id = a.id "
            f"WHERE a.finished_at IS NOT NULL AND {DEVICE_SECONDS} > 0").fetchone()
        return float(row[0] or 0.0)

    # ----------------------------------------------------------------- LLM calls (asiarch.propose.llm)
    def add_llm_call(self, *, agent: str, model: str, prompt_tokens: int, completion_tokens: int,
                     cost_usd: float, latency_s: float, outcome: str) -> None:
        """One request to the LLM endpoint (every try, failed ones included)."""
        with self.transaction() as c:
            c.execute("INSERT INTO llm_calls (ts, agent, model, prompt_tokens, completion_tokens, cost_usd,"
                      " latency_s, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      (time.time(), agent, model, int(prompt_tokens), int(completion_tokens),
                       float(cost_usd), float(latency_s), outcome))

    def llm_dollars(self) -> float:
        """Dollars spent on LLM calls so far (budget.llm_dollars is checked against it)."""
        row = self.conn.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM llm_calls").fetchone()
        return float(row[0])

    # ----------------------------------------------------------------- the Engineer's repairs
    def add_repairs(self, candidate_id: int, stage: str, attempts: Iterable[dict]) -> None:
        """Keep repair attempts of a candidate (stage 'preflight' or 'job'): each a dict with n, error
        (its last 4,000 characters are kept), diff, outcome and explanation."""
        now = time.time()
        with self.transaction() as c:
            c.executemany("INSERT INTO repairs (candidate_id, stage, n, error, diff, outcome, explanation, created_at)"
                          " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          [(candidate_id, stage, a["n"], a["error"][-4000:], a["diff"], a["outcome"],
                            a["explanation"], now) for a in attempts])

    def repairs(self, candidate_id: int) -> list[dict]:
        """The repair attempts recorded for a candidate, oldest first (all the table's columns)."""
        if not has_table(self.conn, "repairs"):  # a read-only store made before the table was in the schema
            return []
        return [dict(r) for r in self.conn.execute("SELECT * FROM repairs WHERE candidate_id = ? ORDER BY id",
                                                   (candidate_id,))]

    # ----------------------------------------------------------------- knowledge (asiarch.propose.llm.knowledge)
    def put_knowledge(self, entries: Iterable[dict]) -> int:
        """Insert or replace (by key) knowledge entries, each a dict of the knowledge table's columns
        key, origin, title, source, tags (a list), problem, idea, when_to_use, how, candidate_id;
        returns how many were written."""
        now = time.time()
        rows = [(e["key"], e["origin"], e["title"], e["source"], json.dumps(e["tags"]), e["problem"], e["idea"],
                 e["when_to_use"], e["how"], e["candidate_id"], now) for e in entries]
        with self.transaction() as c:
            c.executemany("INSERT INTO knowledge (key, origin, title, source, tags, problem, idea, when_to_use, how,"
                          " candidate_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                          " ON CONFLICT(key) DO UPDATE SET origin = excluded.origin, title = excluded.title,"
                          " source = excluded.source, tags = excluded.tags, problem = excluded.problem,"
                          " idea = excluded.idea, when_to_use = excluded.when_to_use, how = excluded.how,"
                          " candidate_id = excluded.candidate_id", rows)
        return len(rows)

    def knowledge(self, *, origin: str | None = None) -> list[dict]:
        """Stored knowledge entries (optionally of one origin) in id order, tags parsed."""
        if not has_table(self.conn, "knowledge"):  # a read-only store made before the table was in the schema
            return []
        sql, args = "SELECT * FROM knowledge", ()
        if origin:
            sql, args = sql + " WHERE origin = ?", (origin,)
        out = []
        for r in self.conn.execute(sql + " ORDER BY id", args):
            d = dict(r)
            d["tags"] = json.loads(d["tags"])
            out.append(d)
        return out


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return _clean(obj.item())
    raise TypeError(f"not JSON serialisable: {obj!r}")


def to_json(obj: Any) -> str:
    """JSON with NaN/inf written as null (strict JSON that pandas and jq read)."""
    def clean(o):
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return _clean(o)
    return json.dumps(clean(obj), default=_json_default)
