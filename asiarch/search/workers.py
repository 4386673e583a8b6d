"""Work off the head's main thread, with the store kept to one writer.

The steady pipeline (asiarch.search.pipeline) runs the slow steps -- LLM calls (Researcher,
novelty, Engineer, Analyst), pre-flights in sandboxed children, offline proposals -- on worker
threads, and keeps the main thread for polling the jobs, ingesting results and submitting. The
store has one writer, the main thread: a worker never touches the SQLite connection; what it would
read or write (an LLM call's cost, a repair, an analysis) it hands to :class:`MainThread`, which
runs it between the main thread's own steps (:meth:`MainThread.serve`). :class:`OnMain` is the
proxy that does so for any object (the store, the console).

A worker's result reaches the main thread the same way: :meth:`Tasks.spawn` runs ``work`` on a
pool and, once it is done, ``then(result)`` on the main thread; an exception in ``work`` is raised
there, from :meth:`Tasks.reap`, as it would be from the round schedule's inline call.
:class:`Inline` is the same interface run in place, for the round schedule.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class HeadStopping(RuntimeError):
    """The head is shutting down: a worker's call to the main thread is not served."""


class MainThread:
    """Runs calls handed over by worker threads on the thread that made this object."""

    def __init__(self):
        self.owner = threading.get_ident()
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False

    def on_main(self) -> bool:
        return threading.get_ident() == self.owner

    def call(self, fn: Callable, *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)`` on the main thread (at once when called from it); its result or
        exception is the caller's."""
        if self.on_main():
            return fn(*args, **kwargs)
        if self._closed:
            raise HeadStopping("the head is stopping")
        fut: Future = Future()
        self._calls.put((fn, args, kwargs, fut))
        return fut.result()

    def wake(self) -> None:
        """Make a :meth:`serve` that is waiting return (a task finished)."""
        self._calls.put(None)

    def serve(self, timeout: float) -> None:
        """Run the calls handed over, waiting up to ``timeout`` seconds for the first; returns when
        one was run or a :meth:`wake` came, having run every call that was waiting."""
        try:
            item = self._calls.get(timeout=max(0.0, timeout)) if timeout > 0 else self._calls.get_nowait()
        except queue.Empty:
            return
        while True:
            if item is not None:
                self._run(item)
            try:
                item = self._calls.get_nowait()
            except queue.Empty:
                return

    @staticmethod
    def _run(item) -> None:
        fn, args, kwargs, fut = item
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 -- handed back to the worker that asked
            fut.set_exception(exc)

    def close(self) -> None:
        """Refuse further calls, and fail those waiting, so that no worker waits on a head that has
        stopped serving."""
        self._closed = True
        while True:
            try:
                item = self._calls.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[3].set_exception(HeadStopping("the head is stopping"))


class OnMain:
    """``target`` seen from any thread: its methods run on the main thread; plain attributes are
    read as they are."""

    def __init__(self, target: Any, main: MainThread):
        self._target = target
        self._main = main

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr
        main = self._main

        def on_main(*args, **kwargs):
            return main.call(attr, *args, **kwargs)

        on_main.__name__ = name
        return on_main


class Pool:
    """``n`` daemon worker threads taking work from one queue. Not concurrent.futures' pool: its
    threads are joined when the interpreter exits, so a head told to stop (Ctrl-C, scancel, the head
    job's requeue) would wait for an LLM answer or a pre-flight in flight; these are not waited for."""

    def __init__(self, name: str, n: int):
        self.name, self.n = name, max(1, n)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def submit(self, fn: Callable[[], Any]) -> Future:
        fut: Future = Future()
        self._queue.put((fn, fut))
        if len(self._threads) < self.n:  # started as work comes
            t = threading.Thread(target=self._work, name=f"asiarch-{self.name}-{len(self._threads)}", daemon=True)
            self._threads.append(t)
            t.start()
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 -- handed to whoever reaps the task
                fut.set_exception(exc)

    def shutdown(self) -> None:
        """Drop the work not started; the threads end after what they are doing."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[1].cancel()
        for _ in self._threads:
            self._queue.put(None)


class Tasks:
    """Named pools of worker threads; what finishes is continued on the main thread.

    ``sizes`` maps a pool name to its threads (e.g. ``{"llm": llm.concurrency, "check":
    search.preflight_workers, "propose": 1}``). :meth:`in_flight` counts the tasks of a pool that
    have not been reaped, by kind.
    """

    def __init__(self, main: MainThread, sizes: dict[str, int]):
        self.main = main
        self.pools = {name: Pool(name, n) for name, n in sizes.items()}
        self._running: list[tuple[str, str, Future, Callable]] = []  # (pool, kind, future, then)

    def spawn(self, pool: str, kind: str, work: Callable[[], Any], then: Callable[[Any], None]) -> None:
        fut = self.pools[pool].submit(work)
        fut.add_done_callback(lambda _f: self.main.wake())
        self._running.append((pool, kind, fut, then))

    def in_flight(self, kind: str | None = None) -> int:
        return sum(1 for _, k, _, _ in self._running if kind is None or k == kind)

    def reap(self) -> int:
        """Continue every finished task on this (the main) thread, in the order they were spawned;
        returns how many. An exception of a task's work is raised here."""
        done = [t for t in self._running if t[2].done()]
        for task in done:
            self._running.remove(task)  # first: a continuation that raises does not run twice
            task[3](task[2].result())
        return len(done)

    def close(self) -> None:
        """Stop taking work; tasks not yet started are dropped, running ones are not waited for."""
        self.main.close()
        for pool in self.pools.values():
            pool.shutdown()


class Inline:
    """The :class:`Tasks` interface run in place: ``then(work())`` at once (the round schedule)."""

    def spawn(self, pool: str, kind: str, work: Callable[[], Any], then: Callable[[Any], None]) -> None:
        then(work())

    def in_flight(self, kind: str | None = None) -> int:
        return 0

    def reap(self) -> int:
        return 0
