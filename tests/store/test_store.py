import math
import sqlite3
import threading

import pytest

from asiarch.search.sampling import sample_parents
from asiarch.store import Store, StoreError
import random


def _add(store, name, fitness=None, loss=None, origin="offline", parent=None):
    cid = store.add_candidate(name=name, origin=origin, code=f"# {name}", code_sha256=name, parent_id=parent)
    if fitness is not None:
        store.set_scores(cid, fitness=fitness, loss=loss or 1.0, score=0.5, scores={"x": math.nan},
                         num_params=10)
    return cid


def test_no_wal_and_schema(tmp_path):
    s = Store.open(tmp_path / "asiarch.db")
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not (tmp_path / "asiarch.db-wal").exists()
    s.close()


def test_candidates_attempts_results_round_trip(tmp_path):
    s = Store.open(tmp_path / "asiarch.db")
    base = _add(s, "deltanet", 0.5, 3.0, origin="baseline")
    cid = _add(s, "child", parent=base)
    s.set_candidate_status(cid, "checked", event="ok")
    aid = s.add_attempt(cid, 1, "exp-c00002-a1", "candidates/x/attempt-1", "child")
    s.mark_submitted(aid, "local", "job-7")
    assert s.candidate(cid).status == "queued"
    s.set_attempt_status(aid, "running")
    assert s.candidate(cid).status == "running"
    s.add_result(aid, cid, status="ok", result_path="r.h5", final_loss=float("nan"), eval_loss=2.5,
                 metrics={"mqar/accuracy": 0.7, "bad": float("inf")}, tokens_per_s=1e4, peak_memory_bytes=10,
                 num_params=5, steps_done=10, wall_s=4.0, world_size=2)
    s.set_scores(cid, fitness=0.7, loss=2.5, score=0.7, scores={"terms": {"loss": 0.9}}, num_params=5)
    c = s.candidate(cid)
    assert (c.parent_id, c.status, c.fitness, c.scores["terms"]["loss"]) == (base, "done", 0.7, 0.9)
    r = s.results(cid)[0]
    assert r["final_loss"] is None and r["metrics"] == {"mqar/accuracy": 0.7, "bad": None}
    assert s.compute_seconds() == 8.0
    assert [x.id for x in s.ranked()] == [cid, base]
    assert [x.id for x in s.ranked(include_baselines=False)] == [cid]
    assert s.find_candidate("child").id == cid and s.find_candidate(str(cid)).name == "child"
    with pytest.raises(StoreError, match="no candidate named"):
        s.find_candidate("nope")
    kinds = [e["kind"] for e in s.events(50)]
    assert kinds[:2] == ["proposed", "proposed"] and "submitted" in kinds
    with pytest.raises(sqlite3.IntegrityError):  # one row per (candidate, attempt number)
        s.add_attempt(cid, 1, "other-key", "d", "child")
    s.close()


def test_reader_never_sees_database_locked(tmp_path):
    """A login-node reader polling while the head writes in short transactions: no 'database is locked'."""
    path = tmp_path / "asiarch.db"
    head = Store.open(path)
    _add(head, "seed", 0.5)
    errors, stop = [], threading.Event()

    def reader():
        r = Store.open_readonly(path)
        try:
            while not stop.is_set():
                r.ranked(10)
                r.counts()
        except Exception as exc:  # pragma: no cover - the assertion reports it
            errors.append(exc)
        finally:
            r.close()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(150):
        _add(head, f"c{i}", i / 150)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert len(head.candidates()) == 151


def test_readonly_refuses_writes_and_missing(tmp_path):
    Store.open(tmp_path / "asiarch.db").close()
    r = Store.open_readonly(tmp_path / "asiarch.db")
    with pytest.raises(sqlite3.OperationalError):
        r.set_meta("x", "y")
    with pytest.raises(StoreError, match="no experiment store here"):
        Store.open_readonly(tmp_path / "missing.db")


def test_sampling_follows_asi_arch_ranks(tmp_path):
    s = Store.open(tmp_path / "asiarch.db")
    assert sample_parents(s, random.Random(0)) is None
    ids = [_add(s, f"c{i}", fitness=1.0 - i / 100) for i in range(60)]  # ids[i] has rank i+1
    rng = random.Random(0)
    parents, refs = set(), set()
    for _ in range(300):
        smp = sample_parents(s, rng, pool_size=50, parent_top=10, num_references=4)
        parents.add(smp.parent.id)
        refs |= {r.id for r in smp.references}
        assert len(smp.references) == 4
    assert parents == set(ids[:10])
    assert refs <= set(ids[10:50]) and len(refs) > 30


def test_pool_rebuilds_by_rule(tmp_path):
    s = Store.open(tmp_path / "asiarch.db")
    for i in range(5):
        _add(s, f"c{i}", fitness=0.1 * i)
    rng = random.Random(0)
    smp = sample_parents(s, rng, pool_size=3, parent_top=1, num_references=1, rebuild_every=2)
    top = smp.parent.name
    assert top == "c4"
    _add(s, "new_best", fitness=9.0)  # one new result: the full pool is not rebuilt yet
    assert sample_parents(s, rng, pool_size=3, parent_top=1, num_references=1, rebuild_every=2).parent.name == "c4"
    _add(s, "another", fitness=0.0)   # second new result: rebuilt
    assert sample_parents(s, rng, pool_size=3, parent_top=1, num_references=1,
                          rebuild_every=2).parent.name == "new_best"
