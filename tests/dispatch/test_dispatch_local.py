"""The local backend against real submitit controller processes."""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from asiarch.dispatch.base import JobRequest, JobState
from asiarch.dispatch.local import LocalScheduler
from asiarch.dispatch.payload import attempt_processes, process_start_time
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


# ---------------------------------------------------------------------- what a killed job leaves behind


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_job_with_a_setsid_child(tmp_path):
    """A real payload (run_job_script) in a process group of its own, as under a head, whose script
    starts a child in a session of its own, as torchrun starts its ranks. Returns (payload process,
    attempt dir, the child's pid) once the child runs."""
    attempt = tmp_path / "attempt-1"
    attempt.mkdir()
    script = attempt / "job.sh"
    script.write_text(f"cd {shlex.quote(str(attempt))}\nsetsid sleep 600 &\necho $! > child.pid\nwait\n")
    payload = subprocess.Popen(
        [sys.executable, "-c", "import sys; from asiarch.dispatch.payload import run_job_script; "
                               "run_job_script(sys.argv[1], sys.argv[2])", str(script), str(attempt / "job.log")],
        start_new_session=True)
    deadline = time.time() + 30
    while not (attempt / "child.pid").exists() or not (attempt / "child.pid").read_text().strip():
        if time.time() > deadline or payload.poll() is not None:
            os.killpg(payload.pid, signal.SIGKILL)
            raise AssertionError(f"the job did not start its child: {(attempt / 'job.log').read_text()}")
        time.sleep(0.05)
    child = int((attempt / "child.pid").read_text())
    # bash writes $! when it has forked, before the child has called setsid(): until then the child is
    # still in the payload's group, and a kill of that group (the test's next step) takes it too.
    while not _in_own_session(child):
        if time.time() > deadline:
            os.killpg(payload.pid, signal.SIGKILL)
            raise AssertionError("the job's child never moved into a session of its own")
        time.sleep(0.02)
    return payload, attempt, child


def _in_own_session(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except ProcessLookupError:
        return False


def test_reap_ends_what_a_killed_job_left_and_spares_a_live_job(tmp_path):
    """kill -9 of a job's process group (a head killed with its group) leaves the child that runs in
    a session of its own, with parent 1 (torchrun's ranks, in life). The backend's reap ends it;
    while the job's own process runs (an adopted job), reap touches nothing."""
    sched = LocalScheduler(tmp_path / "jobs")
    payload, attempt, child = _start_job_with_a_setsid_child(tmp_path)
    try:
        marker = json.loads(AttemptFiles(attempt).job_marker.read_text())
        assert attempt_processes(attempt) and child in attempt_processes(attempt)
        assert sched.reap(marker, attempt) == 0 and _alive(child)  # the job still runs: not the head's to end
        os.killpg(payload.pid, signal.SIGKILL)
        payload.wait()
        time.sleep(0.5)
        assert _alive(child), "nothing was left behind: the test shows nothing"
        assert sched.adopt(marker, attempt) is None  # the job's own process is gone: abandoned
        assert sched.reap(marker, attempt) >= 1
        deadline = time.time() + 5
        while _alive(child) and time.time() < deadline:
            time.sleep(0.05)
        assert not _alive(child) and attempt_processes(attempt) == []
    finally:
        for pid in attempt_processes(attempt):
            os.kill(pid, signal.SIGKILL)
        if payload.poll() is None:
            os.killpg(payload.pid, signal.SIGKILL)
            payload.wait()


def test_reap_leaves_the_processes_of_a_job_elsewhere_alone(tmp_path):
    """A marker written on another machine: the processes here that name the attempt are not its job's."""
    sched = LocalScheduler(tmp_path / "jobs")
    payload, attempt, child = _start_job_with_a_setsid_child(tmp_path)
    try:
        os.killpg(payload.pid, signal.SIGKILL)
        payload.wait()
        marker = {**json.loads(AttemptFiles(attempt).job_marker.read_text()), "host": "another-node"}
        assert sched.reap(marker, attempt) == 0 and _alive(child)
    finally:
        for pid in attempt_processes(attempt):
            os.kill(pid, signal.SIGKILL)


def test_a_zombie_marker_pid_is_not_adopted(tmp_path):
    """A job's payload killed with its head's group stays a zombie until init reaps it (1.5 s here;
    forever under a parent that never waits): it has ended, so its marker is not adopted."""
    sched = LocalScheduler(tmp_path / "jobs")
    child = subprocess.Popen(["sleep", "30"])
    start = process_start_time(child.pid)
    marker = {"host": socket.gethostname(), "pid": child.pid, "pid_start": start}
    try:
        assert start and sched.adopt(marker, tmp_path) is not None
        child.kill()
        deadline = time.time() + 5
        while _alive(child.pid):  # not waited for: a zombie
            assert time.time() < deadline
            time.sleep(0.02)
        assert Path(f"/proc/{child.pid}/stat").exists()
        assert process_start_time(child.pid) is None and sched.adopt(marker, tmp_path) is None
    finally:
        child.kill()
        child.wait()
