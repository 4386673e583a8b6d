"""The store's schema and its migration: stores made by earlier asiarch versions open and migrate.

OLD_SCHEMA is the DDL as asiarch/store/store.py declared it at commit 5d20458, frozen here:
the store it makes has no repairs or knowledge table (the code of that time created them on
first use, in asiarch/propose/llm/agents.py and knowledge.py). Do not update it with the schema.
"""

import sqlite3

import pytest

from asiarch.propose.llm.agents import RepairAttempt, record_repairs, repairs
from asiarch.propose.llm.knowledge import KnowledgeEntry, add_entries, knowledge_base, stored_entries
from asiarch.store import SCHEMA_VERSION, Store, StoreError
from asiarch.store.schema import ADDED_COLUMNS, TABLES

OLD_SCHEMA = """
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

# The attempts table before the scheduler's accounting and the stages (the columns ADDED_COLUMNS lists).
OLDER_ATTEMPTS = """
CREATE TABLE attempts (
    id            INTEGER PRIMARY KEY,
    candidate_id  INTEGER NOT NULL REFERENCES candidates(id),
    n             INTEGER NOT NULL,
    run_key       TEXT NOT NULL UNIQUE,
    status        TEXT NOT NULL,
    scheduler     TEXT NOT NULL DEFAULT '',
    job_id        TEXT NOT NULL DEFAULT '',
    dir           TEXT NOT NULL,
    code_sha256   TEXT NOT NULL,
    error         TEXT NOT NULL DEFAULT '',
    submitted_at  REAL,
    finished_at   REAL,
    UNIQUE (candidate_id, n)
)"""


def old_store(path, *, attempts_ddl: str | None = None) -> None:
    """A store as the code of 5d20458 left it after one trained candidate: no repairs, no knowledge table."""
    ddl = OLD_SCHEMA
    if attempts_ddl:
        start = ddl.index("CREATE TABLE IF NOT EXISTS attempts")
        ddl = ddl[:start] + attempts_ddl + ddl[ddl.index(";", start):]
    conn = sqlite3.connect(path)
    conn.executescript(ddl)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO candidates (name, origin, status, code, code_sha256, fitness, loss, created_at,"
                 " updated_at) VALUES ('deltanet', 'baseline', 'done', '# code', 'sha1', 0.5, 3.0, 1.0, 2.0)")
    conn.execute("INSERT INTO attempts (candidate_id, n, run_key, status, dir, code_sha256)"
                 " VALUES (1, 1, 'exp-c00001-a1', 'ok', 'candidates/1-deltanet/attempt-1', 'sha1')")
    conn.execute("INSERT INTO llm_calls (ts, agent, model, cost_usd, outcome) VALUES (1.0, 'researcher', 'm', 0.25, 'ok')")
    conn.commit()
    conn.close()


def tables(path) -> dict[str, set[str]]:
    conn = sqlite3.connect(path)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: {r[1] for r in conn.execute(f"PRAGMA table_info({n})")} for n in names}
    finally:
        conn.close()


def test_a_new_store_has_every_table_of_the_schema(tmp_path):
    Store.open(tmp_path / "asiarch.db").close()
    assert set(tables(tmp_path / "asiarch.db")) == set(TABLES)
    assert {"repairs", "knowledge"} <= set(TABLES)


def test_a_store_of_the_old_schema_is_read_before_and_after_it_migrates(tmp_path):
    path = tmp_path / "asiarch.db"
    old_store(path)
    assert not {"repairs", "knowledge"} & set(tables(path))
    # A reader (never migrates) of the old store: the missing tables read as empty.
    with Store.open_readonly(path) as r:
        assert repairs(r, 1) == [] and stored_entries(r) == [] and r.knowledge() == []
        assert len(knowledge_base(r).entries) > 0  # the shipped entries still serve
        assert r.candidate(1).name == "deltanet" and r.llm_dollars() == 0.25
    assert not {"repairs", "knowledge"} & set(tables(path))

    # The head opens it: the tables appear, the rows are kept, and both new tables take writes.
    with Store.open(path) as s:
        assert s.get_meta("schema_version") == str(SCHEMA_VERSION)
        assert (s.candidate(1).fitness, s.attempt(1).run_key, s.llm_dollars()) == (0.5, "exp-c00001-a1", 0.25)
        record_repairs(s, 1, [RepairAttempt(1, "E" * 5000, "new", "diff", "ok", "why")], stage="preflight")
        add_entries(s, [KnowledgeEntry(key="learned:c1", title="t", tags=["a"], origin="learned", candidate_id=1)])
    fresh = tmp_path / "fresh.db"
    Store.open(fresh).close()
    assert tables(path) == tables(fresh)  # migrated: the same tables and columns as a new store

    with Store.open_readonly(path) as r:
        [rep] = repairs(r, 1)
        assert (rep["stage"], rep["outcome"], len(rep["error"])) == ("preflight", "ok", 4000)
        [entry] = stored_entries(r, origin="learned")
        assert (entry.key, entry.tags, entry.candidate_id) == ("learned:c1", ["a"], 1)
    Store.open(path).close()  # migrating twice changes nothing
    assert tables(path) == tables(fresh)


def test_the_tables_the_old_code_created_on_first_use_are_kept(tmp_path):
    """A store where the previous code had already made repairs/knowledge (with its own DDL) keeps their rows."""
    path = tmp_path / "asiarch.db"
    old_store(path)
    conn = sqlite3.connect(path)
    conn.execute(TABLES["repairs"])  # the same statement as agents.py's _REPAIRS_TABLE of 5d20458
    conn.execute(TABLES["knowledge"])
    conn.execute("INSERT INTO repairs (candidate_id, stage, n, error, diff, outcome, created_at)"
                 " VALUES (1, 'job', 1, 'boom', 'd', 'ok', 3.0)")
    conn.execute("INSERT INTO knowledge (key, origin, title, created_at) VALUES ('cognition:x#1', 'cognition', 'T', 3.0)")
    conn.commit()
    conn.close()
    with Store.open(path) as s:
        assert [r["error"] for r in repairs(s, 1)] == ["boom"]
        assert [e.key for e in stored_entries(s)] == ["cognition:x#1"]


def test_a_store_from_before_accounting_and_stages_gains_those_columns(tmp_path):
    path = tmp_path / "asiarch.db"
    old_store(path, attempts_ddl=OLDER_ATTEMPTS)
    assert not {c for _, c, _ in ADDED_COLUMNS} & tables(path)["attempts"]
    with Store.open(path) as s:
        a = s.attempt(1)
        assert (a.stage, a.seed, a.gpu_seconds) == ("explore", 0, None)
        s.set_attempt_usage(1, elapsed_s=10.0, cpu_seconds=20.0, gpu_seconds=0.0)
        assert s.compute_seconds() == 20.0


def test_a_store_of_another_version_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "asiarch.db"
    old_store(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    before = tables(path)
    with pytest.raises(StoreError, match=f"store schema version {SCHEMA_VERSION + 1}, this asiarch uses "
                                         f"{SCHEMA_VERSION}; use the asiarch version that created it"):
        Store.open(path)
    assert tables(path) == before  # the migration rolled back whole
