"""The experiment store's schema: every table, the columns added since, and the migration.

One place declares what the database holds. :func:`migrate` brings any store this project
has written up to this schema, inside the caller's write transaction: it creates missing
tables and indexes (``CREATE ... IF NOT EXISTS``; the ``repairs`` and ``knowledge`` tables
were once created on first use, so older stores may lack them) and adds the columns listed
in :data:`ADDED_COLUMNS`. Every change so far is additive, so ``SCHEMA_VERSION`` is still 1:
older asiarch versions read a migrated store, and a store of a different version is refused.

A read-only store is never migrated; readers of an older store check :func:`has_table`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 1

# Candidate life cycle: proposed -> checked -> queued -> running -> done
#                                 \-> rejected (pre-flight,      \-> failed (after max attempts)
#                                               or a job's leak probe) \-> stopped (early stopping at a rung, or
#                                                                         the watchdog; queued again when promoted)
CANDIDATE_STATUSES = ("proposed", "checked", "rejected", "queued", "running", "done", "failed", "stopped")
ATTEMPT_STATUSES = ("pending", "submitted", "running", "ok", "failed", "timeout", "preempted", "diverged",
                    "leak", "cancelled", "lost", "stopped")  # leak: the job's probe refused the candidate


class StoreError(RuntimeError):
    pass


# Table name -> its CREATE statement, in dependency order (referenced tables first).
TABLES: dict[str, str] = {
    "meta": "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "candidates": """
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
)""",
    "candidate_refs": """
CREATE TABLE IF NOT EXISTS candidate_refs (
    candidate_id  INTEGER NOT NULL REFERENCES candidates(id),
    ref_id        INTEGER NOT NULL REFERENCES candidates(id),
    PRIMARY KEY (candidate_id, ref_id)
)""",
    "attempts": """
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
)""",
    # Column order matters: Store.add_result inserts by position.
    "results": """
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
)""",
    "analyses": """
CREATE TABLE IF NOT EXISTS analyses (
    id            INTEGER PRIMARY KEY,
    candidate_id  INTEGER NOT NULL REFERENCES candidates(id),
    author        TEXT NOT NULL,              -- offline | llm model name
    summary       TEXT NOT NULL,
    text          TEXT NOT NULL,
    created_at    REAL NOT NULL
)""",
    "events": """
CREATE TABLE IF NOT EXISTS events (
    id            INTEGER PRIMARY KEY,
    ts            REAL NOT NULL,
    kind          TEXT NOT NULL,
    candidate_id  INTEGER,
    attempt_id    INTEGER,
    message       TEXT NOT NULL
)""",
    "llm_calls": """
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
)""",
    # Every repair the Engineer tried (asiarch.propose.llm.agents), the failed ones too.
    "repairs": """
CREATE TABLE IF NOT EXISTS repairs (
    id            INTEGER PRIMARY KEY,
    candidate_id  INTEGER NOT NULL,
    stage         TEXT NOT NULL,              -- preflight | job
    n             INTEGER NOT NULL,
    error         TEXT NOT NULL,
    diff          TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    explanation   TEXT NOT NULL DEFAULT '',
    created_at    REAL NOT NULL
)""",
    # Imported and learned knowledge entries (asiarch.propose.llm.knowledge); the shipped ones are not stored.
    "knowledge": """
CREATE TABLE IF NOT EXISTS knowledge (
    id            INTEGER PRIMARY KEY,
    key           TEXT NOT NULL UNIQUE,       -- e.g. cognition:2102.11174#1, learned:c12
    origin        TEXT NOT NULL,              -- cognition | learned | manual
    title         TEXT NOT NULL,
    source        TEXT NOT NULL DEFAULT '',
    tags          TEXT NOT NULL DEFAULT '[]', -- JSON list
    problem       TEXT NOT NULL DEFAULT '',
    idea          TEXT NOT NULL DEFAULT '',
    when_to_use   TEXT NOT NULL DEFAULT '',
    how           TEXT NOT NULL DEFAULT '',
    candidate_id  INTEGER,
    created_at    REAL NOT NULL
)""",
}

INDEXES = (
    "CREATE INDEX IF NOT EXISTS candidates_status ON candidates(status)",
    "CREATE INDEX IF NOT EXISTS candidates_fitness ON candidates(fitness)",
    "CREATE INDEX IF NOT EXISTS candidates_sha ON candidates(code_sha256)",
    "CREATE INDEX IF NOT EXISTS candidates_parent ON candidates(parent_id)",
    "CREATE INDEX IF NOT EXISTS candidates_origin ON candidates(origin)",
    "CREATE INDEX IF NOT EXISTS attempts_status ON attempts(status)",
    "CREATE INDEX IF NOT EXISTS attempts_candidate ON attempts(candidate_id)",
)

# Columns added to a table after it first shipped, as (table, column, declaration), oldest
# first; TABLES already has them, so only stores made before them get an ALTER TABLE.
ADDED_COLUMNS = (
    ("attempts", "elapsed_s", "REAL"),          # the scheduler's accounting
    ("attempts", "cpu_seconds", "REAL"),
    ("attempts", "gpu_seconds", "REAL"),
    ("attempts", "stage", "TEXT NOT NULL DEFAULT 'explore'"),  # stages and seeds
    ("attempts", "seed", "INTEGER NOT NULL DEFAULT 0"),
)


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the store has table ``name`` (a read-only store made by an older asiarch may not)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the store at ``path`` to this schema; run it inside a write transaction (it rolls
    back whole). Raises :class:`StoreError` for a store of another schema version."""
    for ddl in (*TABLES.values(), *INDEXES):
        conn.execute(ddl)
    for table, column, declaration in ADDED_COLUMNS:
        if column not in columns(conn, table):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    elif int(row[0]) != SCHEMA_VERSION:
        raise StoreError(
            f"{path}: store schema version {row[0]}, this asiarch uses {SCHEMA_VERSION}; "
            "use the asiarch version that created it"
        )
