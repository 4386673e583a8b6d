"""The local backend against real submitit controller processes."""

import signal
import time

from asiarch.dispatch.base import JobRequest, JobState
from asiarch.dispatch.local import LocalScheduler
from asiarch.job.contract import AttemptFiles


def _job(tmp_path, name, body):
    script = tmp_path / f"{name}.sh"
    script.write_text("set -euo pipefail\n" + body + "\n")
    return JobRequest(run_key=name, script=script, log=tmp_path / f"{name}.log")


def _wait(sched, ids, timeout=60):
    deadline = time.time() + timeout
    seen_running = {}
    while time.time() < deadline:
        states = sched.states(ids)
        running = [i for i, s in states.items() if s is JobState.RUNNING]
        seen_running[len(seen_running)] = len(running)
        if all(s.finished for s in states.values()):
            return states, max(seen_running.values())
        time.sleep(0.2)
    raise AssertionError(f"jobs did not finish: {states}")


def test_limit_in_flight_states_and_exit_codes(tmp_path):
    sched = LocalScheduler(tmp_path / "jobs", max_in_flight=1, timeout_min=2)
    reqs = [_job(tmp_path, "a", "sleep 1; echo hello-a"), _job(tmp_path, "b", "echo boom >&2; exit 3"),
            _job(tmp_path, "c", "sleep 1")]
    ids = sched.submit(reqs)
    assert len(set(ids)) == 3
    first = sched.states(ids)
    assert list(first.values()).count(JobState.PENDING) == 2  # only one started
    states, max_running = _wait(sched, ids)
    assert max_running == 1
    assert [states[i] for i in ids] == [JobState.COMPLETED, JobState.FAILED, JobState.COMPLETED]
    assert "hello-a" in (tmp_path / "a.log").read_text()
    assert "boom" in (tmp_path / "b.log").read_text()


def test_secrets_never_reach_the_job(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-1")
    monkeypatch.setenv("MY_ENDPOINT_CRED", "sk-secret-2")
    monkeypatch.setenv("HARMLESS", "visible")
    sched = LocalScheduler(tmp_path / "jobs", max_in_flight=2, secret_env=("MY_ENDPOINT_CRED",))
    ids = sched.submit([_job(tmp_path, "env", "env")])
    _wait(sched, ids)
    env_dump = (tmp_path / "env.log").read_text()
    assert "HARMLESS=visible" in env_dump
    assert "sk-secret" not in env_dump
    # and the head keeps its own environment
    import os
    assert os.environ["OPENAI_API_KEY"] == "sk-secret-1"


def test_cancel_queued_and_running(tmp_path):
    sched = LocalScheduler(tmp_path / "jobs", max_in_flight=1)
    ids = sched.submit([_job(tmp_path, "long", "sleep 60"), _job(tmp_path, "queued", "sleep 60")])
    deadline = time.time() + 20
    while sched.states(ids[:1])[ids[0]] is not JobState.RUNNING and time.time() < deadline:
        time.sleep(0.1)
    sched.cancel(ids)
    states, _ = _wait(sched, ids, timeout=40)
    assert states == {ids[0]: JobState.CANCELLED, ids[1]: JobState.CANCELLED}


def test_cancel_reaches_a_job_whose_head_runs_with_sigint_ignored(tmp_path):
    """`nohup asiarch run DIR &` starts the head with SIGINT ignored, and its jobs inherit that: the
    cancel must still stop a job that is past its start (its marker written), not only a starting one."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sched = LocalScheduler(tmp_path / "jobs", max_in_flight=1)
        ids = sched.submit([_job(tmp_path, "long", "exec sleep 60")])
        deadline = time.time() + 30
        while not (tmp_path / AttemptFiles.JOB_MARKER).exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the job's script runs
        assert sched.states(ids)[ids[0]] is JobState.RUNNING
        sched.cancel(ids)
        states, _ = _wait(sched, ids, timeout=20)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert states == {ids[0]: JobState.CANCELLED}


def test_unknown_ids_are_unknown_not_done(tmp_path):
    sched = LocalScheduler(tmp_path / "jobs")
    assert sched.states(["local-0-99"]) == {"local-0-99": JobState.UNKNOWN}
    assert not JobState.UNKNOWN.finished
