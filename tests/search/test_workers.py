"""The steady pipeline's threads: one SQLite writer, results continued on the main thread, and the LLM
dollar cap counting calls in flight (asiarch.search.workers, asiarch.propose.llm.client)."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from asiarch.propose.llm.client import BudgetExceeded, LLMClient, LLMSettings
from asiarch.search.workers import HeadStopping, MainThread, OnMain, Tasks
from asiarch.store import Store
from tests.llm_server import FakeLLMServer, Step


def serve_until(main: MainThread, done, timeout: float = 10.0) -> None:
    t_end = time.monotonic() + timeout
    while not done() and time.monotonic() < t_end:
        main.serve(0.05)
    assert done(), "the workers did not finish"


def test_workers_write_the_store_only_through_the_main_thread(tmp_path):
    store = Store.open(tmp_path / "s.db")
    main = MainThread()
    # without the proxy: SQLite refuses a connection used from another thread
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(sqlite3.ProgrammingError):
            pool.submit(store.log_event, "test", "from a worker").result()
    shared = OnMain(store, main)
    threads_seen = set()
    real_log = store.log_event

    def spy(*a, **kw):
        threads_seen.add(threading.get_ident())
        return real_log(*a, **kw)

    store.log_event = spy
    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(shared.log_event, "test", f"event {i}") for i in range(40)]
        serve_until(main, lambda: all(f.done() for f in futs))
        for f in futs:
            f.result()
    assert threads_seen == {threading.get_ident()}  # every write ran on this (the main) thread
    assert sum(1 for e in store.events(100) if e["kind"] == "test") == 40
    store.close()


def test_an_exception_on_the_main_thread_reaches_the_worker_and_close_frees_waiters():
    main = MainThread()

    def boom():
        raise ValueError("no such candidate")

    with ThreadPoolExecutor(2) as pool:
        f = pool.submit(main.call, boom)
        serve_until(main, f.done)
        with pytest.raises(ValueError, match="no such candidate"):
            f.result()
        waiting = pool.submit(main.call, lambda: 1)
        time.sleep(0.2)  # it is waiting for a serve() that never comes
        main.close()
        with pytest.raises(HeadStopping):
            waiting.result(timeout=5)
        with pytest.raises(HeadStopping):  # and later calls are refused at once
            pool.submit(main.call, lambda: 1).result(timeout=5)


def test_tasks_continue_on_the_main_thread_and_raise_there():
    main = MainThread()
    tasks = Tasks(main, {"a": 2})
    got = []
    tasks.spawn("a", "x", lambda: threading.get_ident(), got.append)
    tasks.spawn("a", "y", lambda: 1 / 0, got.append)
    assert tasks.in_flight() == 2 and tasks.in_flight("x") == 1
    t_end = time.monotonic() + 5
    with pytest.raises(ZeroDivisionError):
        while time.monotonic() < t_end:
            main.serve(0.05)
            tasks.reap()
    while tasks.in_flight() and time.monotonic() < t_end:
        main.serve(0.05)
        tasks.reap()
    assert len(got) == 1 and got[0] != threading.get_ident()  # the work ran on a worker
    assert tasks.in_flight() == 0
    tasks.close()


def _client(url: str, store) -> LLMClient:
    # each answer: 50 completion tokens at $20,000 per million = $1.00; the cap has room for 2.5
    settings = LLMSettings(base_url=url, model="m", prices={"m": (0.0, 20000.0)}, dollar_cap=2.5, max_tokens=50,
                           max_retries=0, timeout_s=10)
    return LLMClient(settings, store)


def _spend_at_once(tmp_path, monkeypatch, *, count_in_flight: bool) -> float:
    store = Store.open(tmp_path / f"s{count_in_flight}.db")
    main = MainThread()
    with FakeLLMServer() as srv:
        srv.default("m", Step.slow(0.5, '{"ok": true}'))
        srv.defaults["m"].usage = (0, 50)
        client = _client(srv.url, OnMain(store, main))
        if not count_in_flight:  # the defence off: a call in flight is expected to cost nothing
            monkeypatch.setattr(client, "estimate", lambda model, messages: 0.0)
        outcomes = []

        def ask():
            try:
                client.chat("researcher", [{"role": "user", "content": "hi"}])
                outcomes.append("ok")
            except BudgetExceeded:
                outcomes.append("refused")

        with ThreadPoolExecutor(6) as pool:
            futs = [pool.submit(ask) for _ in range(6)]
            serve_until(main, lambda: all(f.done() for f in futs))
        spent = store.llm_dollars()
    store.close()
    return spent


def test_llm_calls_in_flight_count_against_the_dollar_cap(tmp_path, monkeypatch):
    # six calls at once, room for 2.5 answers: counting the calls in flight, three start and the cap is
    # overshot by less than one answer, as with calls one after another
    assert _spend_at_once(tmp_path, monkeypatch, count_in_flight=True) == pytest.approx(3.0)
    # without: all six pass the check before any is recorded
    assert _spend_at_once(tmp_path, monkeypatch, count_in_flight=False) == pytest.approx(6.0)


@pytest.mark.slow
def test_a_head_told_to_stop_does_not_wait_for_work_in_flight():
    """A worker in a long LLM call or pre-flight must not keep a stopped head alive: the pool's threads
    are daemons. concurrent.futures' pool, joined at exit, would wait (shown with an 8 s task)."""
    import subprocess
    import sys

    def exit_time(pool_code: str) -> float:
        code = ("import time\n" + pool_code + "\ntime.sleep(0.3)\nt0 = time.time()\nprint(t0, flush=True)\n")
        t0 = time.time()
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60, capture_output=True)
        return time.time() - t0

    ours = exit_time("from asiarch.search.workers import Pool\np = Pool('llm', 2)\np.submit(lambda: time.sleep(8))")
    stdlib = exit_time("from concurrent.futures import ThreadPoolExecutor\np = ThreadPoolExecutor(2)\n"
                       "p.submit(lambda: time.sleep(8))")
    assert stdlib >= 8 and ours < 5, (ours, stdlib)
