"""The rungs a running attempt has passed survive a head restart: a fresh Watchdog over the same store (what a
restarted head builds, once asiarch.search.recovery has re-attached the running jobs) continues past them
instead of judging the attempt there again against the peers it now knows (real SQLite store, real progress
records, real HDF5 results of the peers)."""

import json

from asiarch.analysis.show import show_text
from asiarch.config import Config, render_toml
from asiarch.dispatch.base import JobState, Scheduler
from asiarch.job import result as rf
from asiarch.layout import ExperimentDir
from asiarch.search.ingest import ingest_attempt
from asiarch.search.messages import Silent
from asiarch.search.watchdog import Watchdog
from asiarch.store import Store
from tests.search.test_stopped import _result


class AlwaysRunning(Scheduler):
    """Reports every job running. Only its states reach the watchdog here (it cancels nothing within a
    stop's grace): the scheduler is not what this test is about."""

    name = "always-running"

    def states(self, job_ids):
        return {j: JobState.RUNNING for j in job_ids}

    def submit(self, requests):
        raise AssertionError("nothing is submitted here")

    def cancel(self, job_ids):
        raise AssertionError("nothing is cancelled here")

    def adopt(self, marker, attempt_dir):
        raise AssertionError("nothing is adopted here")


def _progress(files, points):
    """The running attempt's progress record with the (step, loss) ``points`` logged so far."""
    rf.write_progress(files.progress, step=points[-1][0], steps=100, loss=points[-1][1], tokens_per_s=1000.0,
                      curve=[list(p) for p in points])


def _experiment(tmp_path):
    """ASHA alone (the watchdog's rules off) over 100 steps, pinned to rungs at steps 33 and 67 judged by the loss
    alone (the curves here are straight and fall at one rate); the reference, 'good' and 'runner' proposed."""
    exp = ExperimentDir(tmp_path / "exp")
    exp.root.mkdir()
    cfg = Config()
    cfg.train.steps = 100
    cfg.watchdog.enabled = False
    cfg.early_stopping.enabled = True
    e = cfg.early_stopping
    e.rungs, e.first_rung_eta, e.drop_window = [1 / 3, 2 / 3], 2.0, 0.0
    exp.config.write_text(render_toml(cfg))
    store = Store.open(exp.db)
    ids = {name: store.add_candidate(name=name, origin=origin, code=f"# {name}", code_sha256=f"sha-{name}")
           for name, origin in (("deltanet", "baseline"), ("good", "offline"), ("runner", "offline"))}
    return exp, cfg, store, ids


def test_a_restarted_head_does_not_judge_an_attempt_again_at_a_rung_it_passed(tmp_path):
    """ASHA alone (the watchdog's rules off), rungs at steps 33 and 67 of 100. The first head sees 'runner'
    reach rung 1 alone (the best 1 of 1) and pass it. Then the reference and 'good' finish, far ahead at
    both rungs: judged at rung 1 again, 'runner' would now be outside the best 3 // 2 = 1 of 3 and stop. The
    restarted head's fresh Watchdog leaves it running past rung 1, and still judges it at rung 2 (where it
    stops, behind both)."""
    exp, cfg, store, ids = _experiment(tmp_path)
    files = exp.attempt(ids["runner"], "runner", 1)
    files.dir.mkdir(parents=True)
    aid = store.add_attempt(ids["runner"], 1, "e-c00003-a1", exp.relative(files.dir), "sha-runner")
    store.mark_submitted(aid, AlwaysRunning.name, "job-1")
    store.set_attempt_status(aid, "running")
    scheduler = AlwaysRunning()
    _progress(files, [(10, 3.0), (20, 2.5), (30, 2.2), (40, 2.0)])

    first = Watchdog(exp, cfg, store, scheduler, {aid: "job-1"}, Silent())
    first.check(scheduler.states(["job-1"]))
    assert first.rungs[aid] == 1
    (event,) = [e for e in store.events(limit=100) if e["kind"] == "rung-passed"]
    assert (event["candidate_id"], event["attempt_id"]) == (ids["runner"], aid)
    assert event["message"] == "attempt 1: passed rung 1 of 2 at step 33 of 100 (loss 2.14, within the best 1 of 1)"

    # the head is killed; meanwhile two peers finish (ingested as the loop does), ~0.53 at rung 1 (0.5 + 1 / step)
    for name in ("deltanet", "good"):
        a = _result(exp, store, ids[name], name, status="ok", loss=0.5, steps_done=100)
        out = ingest_attempt(store, exp, cfg, a, JobState.COMPLETED)
        store.set_attempt_status(a.id, out.attempt_status, out.error)

    second = Watchdog(exp, cfg, store, scheduler, {aid: "job-1"}, Silent())
    second.check(scheduler.states(["job-1"]))
    assert len(second.peers) == 2  # both finished peers are in the group it judged
    assert not files.stop.exists(), json.loads(files.stop.read_text())
    assert second.rungs[aid] == 1
    assert [e["kind"] for e in store.events(limit=100) if e["attempt_id"] == aid] == ["submitted", "rung-passed"]

    _progress(files, [(10, 3.0), (20, 2.5), (30, 2.2), (40, 2.0), (60, 1.9), (70, 1.8)])
    second.check(scheduler.states(["job-1"]))
    assert json.loads(files.stop.read_text())["rung"] == 2  # judged at the next rung: it is still watched
    shown = show_text(store, exp, "runner", code=False)
    assert "rung-passed attempt 1: passed rung 1 of 2 at step 33 of 100" in shown  # listed by `asiarch show`
    store.close()


class RecordsCancels(AlwaysRunning):
    def __init__(self):
        self.cancelled = []

    def cancel(self, job_ids):
        self.cancelled += list(job_ids)


def test_a_job_that_blocks_its_stop_request_is_cancelled_and_the_head_goes_on(tmp_path):
    """A job can write its attempt directory: with stop.json made a directory the head's request cannot be written
    (a red team's find: the watchdog raised IsADirectoryError and took the head down at every restart). It is
    logged and the job cancelled at the next check instead."""
    exp, cfg, store, ids = _experiment(tmp_path)
    for name in ("deltanet", "good"):
        a = _result(exp, store, ids[name], name, status="ok", loss=0.5, steps_done=100)
        out = ingest_attempt(store, exp, cfg, a, JobState.COMPLETED)
        store.set_attempt_status(a.id, out.attempt_status, out.error)
    files = exp.attempt(ids["runner"], "runner", 1)
    files.dir.mkdir(parents=True)
    aid = store.add_attempt(ids["runner"], 1, "e-c00003-a1", exp.relative(files.dir), "sha-runner")
    store.mark_submitted(aid, AlwaysRunning.name, "job-1")
    store.set_attempt_status(aid, "running")
    (files.stop / "blocker").mkdir(parents=True)  # what the job plants
    _progress(files, [(10, 3.0), (20, 2.5), (30, 2.2), (40, 2.0)])  # far behind both peers at rung 1
    scheduler = RecordsCancels()
    watchdog = Watchdog(exp, cfg, store, scheduler, {aid: "job-1"}, Silent())
    watchdog.check(scheduler.states(["job-1"]))  # decides to stop it: no exception
    (event,) = [e for e in store.events(limit=100) if e["kind"] == "stopping"]
    assert "could not be written" in event["message"] and "cancelling the job" in event["message"]
    watchdog.check(scheduler.states(["job-1"]))
    assert scheduler.cancelled == ["job-1"]
    store.close()
