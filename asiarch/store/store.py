"""The experiment store: one SQLite file per experiment directory.

Only the head process writes; CLI readers on login nodes open it read-only at any
time. Because clusters keep experiment directories on NFS or Lustre, the store uses
the rollback journal (``journal_mode=DELETE``, never WAL, which needs shared memory
that network filesystems do not provide), short transactions, and a busy timeout so
a reader and the head retry instead of failing with "database is locked".
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

SCHEMA_VERSION = 1

# Candidate life cycle: proposed -> checked -> queued -> running -> done
#                                 \-> rejected (pre-flight)     \-> failed (after max attempts)
CANDIDATE_STATUSES = ("proposed", "checked", "rejected", "queued", "running", "done", "failed")
ATTEMPT_STATUSES = ("pending", "submitted", "running", "ok", "failed", "timeout", "preempted", "diverged",
                    "cancelled", "lost")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    origin        TEXT NOT NULL,              -- baseline | offline | llm | asi-arch | manual
    parent_id     INTEGER REFERENCES candidates(id),
    round         INTEGER NOT NULL DEFAULT 0,
    status        TEXT NOT NULL,
    reason        TEXT NOT NULL DEFAULT '',   -- why it was rejected or failed
    code          TEXT NOT NULL,
    code_sha256   TEXT NOT NULL,
    genome_key    TEXT NOT NULL DEFAULT '',
    motivation    TEXT NOT NULL DEFAULT '',
    fitness       REAL,
    loss          REAL,                       -- evaluation loss of the best ok attempt
    score         REAL,                       -- mean task score (e.g. MQAR accuracy)
    scores        TEXT NOT NULL DEFAULT '{}', -- JSON: fitness terms and per-task metrics
    num_params    INTEGER,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS candidates_status ON candidates(status);
CREATE INDEX IF NOT EXISTS candidates_fitness ON candidates(fitness);
CREATE INDEX IF NOT EXISTS candidates_sha ON candidates(code_sha256);
CREATE INDEX IF NOT EXISTS candidates_parent ON candidates(parent_id);
CREATE INDEX IF NOT EXISTS candidates_origin ON candidates(origin);
CREATE TABLE IF NOT EXISTS candidate_refs (
    candidate_id  INTEGER NOT NULL REFERENCES candidates(id),
    ref_id        INTEGER NOT NULL REFERENCES candidates(id),
    PRIMARY KEY (candidate_id, ref_id)
);
CREATE TABLE IF NOT EXISTS attempts (
    id            INTEGER PRIMARY KEY,
    candidate_id  INTEGER NOT NULL REFERENCES candidates(id),
    n             INTEGER NOT NULL,           -- 1-based attempt number
    run_key       TEXT NOT NULL UNIQUE,
    status        TEXT NOT NULL,
    scheduler     TEXT NOT NULL DEFAULT '',
    job_id        TEXT NOT NULL DEFAULT '',
    dir           TEXT NOT NULL,              -- relative to the experiment directory
    code_sha256   TEXT NOT NULL,
    error         TEXT NOT NULL DEFAULT '',
    submitted_at  REAL,
    finished_at   REAL,
    elapsed_s     REAL,                       -- the scheduler's accounting, where it has one (sacct)
    cpu_seconds   REAL,
    gpu_seconds   REAL,
    stage         TEXT NOT NULL DEFAULT 'explore', -- explore | verify
    seed          INTEGER NOT NULL DEFAULT 0,      -- seed index within the stage (train.seed + seed)
    UNIQUE (candidate_id, n)
);
CREATE INDEX IF NOT EXISTS attempts_status ON attempts(status);
CREATE INDEX IF NOT EXISTS attempts_candidate ON attempts(candidate_id);
CREATE TABLE IF NOT EXISTS results (
    attempt_id        INTEGER PRIMARY KEY REFERENCES attempts(id),
    candidate_id      INTEGER NOT NULL REFERENCES candidates(id),
    status            TEXT NOT NULL,
    final_loss        REAL,
    eval_loss         REAL,
    metrics           TEXT NOT NULL DEFAULT '{}',
    tokens_per_s      REAL,
    peak_memory_bytes INTEGER,
    num_params        INTEGER,
    steps_done        INTEGER,
    wall_s            REAL,
    world_size        INTEGER,
    result_path       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS analyses (
    id            INTEGER PRIMARY KEY,
    candidate_id  INTEGER NOT NULL REFERENCES candidates(id),
    author        TEXT NOT NULL,              -- offline | llm model name
    summary       TEXT NOT NULL,
    text          TEXT NOT NULL,
    created_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id            INTEGER PRIMARY KEY,
    ts            REAL NOT NULL,
    kind          TEXT NOT NULL,
    candidate_id  INTEGER,
    attempt_id    INTEGER,
    message       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS llm_calls (
    id                INTEGER PRIMARY KEY,
    ts                REAL NOT NULL,
    agent             TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd          REAL NOT NULL DEFAULT 0,
    latency_s         REAL NOT NULL DEFAULT 0,
    outcome           TEXT NOT NULL
);
"""


class StoreError(RuntimeError):
    pass


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
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            have = {r[1] for r in conn.execute("PRAGMA table_info(attempts)")}
            for column in ("elapsed_s", "cpu_seconds", "gpu_seconds"):  # stores made before accounting
                if column not in have:
                    conn.execute(f"ALTER TABLE attempts ADD COLUMN {column} REAL")
            if "stage" not in have:  # stores made before stages and seeds
                conn.execute("ALTER TABLE attempts ADD COLUMN stage TEXT NOT NULL DEFAULT 'explore'")
                conn.execute("ALTER TABLE attempts ADD COLUMN seed INTEGER NOT NULL DEFAULT 0")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(
                    f"{path}: store schema version {row[0]}, this asiarch uses {SCHEMA_VERSION}; "
                    "use the asiarch version that created it"
                )
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
        Engineer's repairs, promotion to verification, re-attachment by a restarted head, failed seeds."""
        rows = self.conn.execute("SELECT ts, kind, message FROM events WHERE candidate_id = ? AND kind IN"
                                 " ('repaired', 'promoted', 'adopted', 'seed-failed') ORDER BY id", (cid,))
        return [dict(r) for r in rows]

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

    def ranked(self, limit: int | None = None, *, include_baselines: bool = True) -> list[Candidate]:
        """Scored candidates, best fitness first (ties: lower loss, then older)."""
        sql = "SELECT * FROM candidates WHERE status = 'done' AND fitness IS NOT NULL"
        if not include_baselines:
            sql += " AND origin != 'baseline'"
        sql += " ORDER BY fitness DESC, loss ASC, id ASC"
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

    def counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT status, COUNT(*) FROM candidates WHERE origin != 'baseline' GROUP BY status")
        return {s: n for s, n in rows}

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
               " a.code_sha256,"
               " CASE WHEN a.gpu_seconds > 0 THEN a.gpu_seconds WHEN a.cpu_seconds > 0 THEN a.cpu_seconds"
               " ELSE r.wall_s * COALESCE(r.world_size, 1) END AS device_s"
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
            "SELECT SUM(CASE WHEN a.gpu_seconds > 0 THEN a.gpu_seconds"
            " WHEN a.cpu_seconds > 0 THEN a.cpu_seconds"
            " ELSE r.wall_s * COALESCE(r.world_size, 1) END)"
            " FROM attempts a LEFT JOIN results r ON r.attempt_id = a.id").fetchone()
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
