"""A Slurm controller that does not answer: clear errors, never a traceback, never a job read as done.

The fast tests put a stand-in for Slurm's commands first on PATH: ``sinfo``, ``squeue``, ``sacct``,
``sbatch`` and ``scancel`` that sleep, which is what a client does while its controller is hung
(a boundary stand-in: it answers nothing, so nothing of Slurm's behaviour is faked). The slow test
does it with the real commands of the test cluster, pointed (SLURM_CONF) at a controller address
that accepts connections and never answers, while a real job runs on the real controller."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asiarch.config import render_toml
from asiarch.dispatch.base import JobRequest, JobState, SchedulerError
from asiarch.dispatch.slurm import ControllerTimeout, SlurmScheduler, SlurmSpec
from asiarch.job.contract import AttemptFiles
from asiarch.tools.kill_head import stress_config
from tests.slurm_cluster import slurm_cluster  # noqa: F401  (fixture)

COMMANDS = ("sinfo", "squeue", "sacct", "sbatch", "scancel")


@pytest.fixture
def hung_slurm(tmp_path, monkeypatch):
    """Slurm's commands, each hanging for 60 s, first on PATH; SLURM_CONF names a conf of their own."""
    bin_dir = tmp_path / "hung-bin"
    bin_dir.mkdir()
    for name in COMMANDS:
        (bin_dir / name).write_text("#!/bin/sh\nexec sleep 60\n")
        (bin_dir / name).chmod(0o755)
    conf = tmp_path / "hung-slurm.conf"
    conf.write_text("# a controller that does not answer\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    return conf


def _scheduler(tmp_path, **kw) -> SlurmScheduler:
    return SlurmScheduler(tmp_path / "jobs", SlurmSpec(job_name="t", cpus_per_task=1), timeout_s=0.5,
                          retry_backoff_s=0.05, **kw)


def _request(tmp_path, name="a") -> JobRequest:
    attempt = tmp_path / name / "attempt-1"
    attempt.mkdir(parents=True)
    (attempt / "job.sh").write_text("true\n")
    return JobRequest(run_key=name, script=attempt / "job.sh", log=attempt / "job.log")


def test_sinfo_that_does_not_answer_is_a_clear_error(hung_slurm, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(ControllerTimeout) as err:
        _scheduler(tmp_path).check()
    assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert "sinfo" in msg and "0.5 s" in msg and f"SLURM_CONF={hung_slurm}" in msg and "slurm_timeout_s" in msg
    assert isinstance(err.value, SchedulerError)


def test_sbatch_that_does_not_answer_fences_its_attempts_off(hung_slurm, tmp_path):
    """sbatch may have queued the array all the same: each attempt gets its tombstone, so that a job
    of it that starts later exits instead of training a candidate the head recorded as not submitted."""
    sched = _scheduler(tmp_path)
    sched._checked = True  # past the start-up check: the controller stops answering later
    reqs = [_request(tmp_path, "a"), _request(tmp_path, "b")]
    t0 = time.monotonic()
    with pytest.raises(ControllerTimeout) as err:
        sched.submit(reqs)
    assert time.monotonic() - t0 < 15
    assert "sbatch" in str(err.value) and f"SLURM_CONF={hung_slurm}" in str(err.value)
    assert all(AttemptFiles(r.script.parent).abandoned.exists() for r in reqs)


def test_an_unanswered_squeue_is_retried_and_reads_no_job_as_done(hung_slurm, tmp_path):
    sched = _scheduler(tmp_path)
    sched._live["7_0"] = JobState.RUNNING  # what the last answer said
    states = sched.states(["7_0", "7_1"])
    assert states == {"7_0": JobState.RUNNING, "7_1": JobState.UNKNOWN}
    assert not any(s.finished for s in states.values())
    assert sched.queries == sched.query_retries == 3  # retried, and no sacct asked on top
    assert sched.unanswered == 1 and "squeue" in sched.last_problem
    assert sched.accounting(["7_0"]) == {}  # unknown, not an error


def test_scancel_that_does_not_answer_is_a_clear_error(hung_slurm, tmp_path):
    with pytest.raises(ControllerTimeout, match="scancel"):
        _scheduler(tmp_path).cancel(["7_0"])


def test_the_cli_says_what_is_wrong_without_a_traceback(hung_slurm, tmp_path):
    cfg = stress_config("hung", candidates=1)
    cfg.cluster.scheduler, cfg.cluster.slurm_timeout_s = "slurm", 0.5
    root = tmp_path / "exp"
    root.mkdir()
    (root / "config.toml").write_text(render_toml(cfg))
    out = subprocess.run([sys.executable, "-m", "asiarch", "run", str(root)], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ))
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "Traceback" not in text
    assert "did not answer" in text and "sinfo" in text and f"SLURM_CONF={hung_slurm}" in text


# ---------------------------------------------------------------------- the real commands


@pytest.fixture
def silent_controller(slurm_cluster, tmp_path):
    """A slurm.conf like the test cluster's whose controller (and accounting) address accepts
    connections and never answers, as a hung slurmctld does; the real one goes on running jobs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # the kernel completes the handshakes; nobody ever reads or replies
    port = listener.getsockname()[1]
    real = Path(os.environ["SLURM_CONF"])
    lines = []
    for line in real.read_text().splitlines():
        key = line.split("=", 1)[0]
        lines.append(f"{key}={port}" if key in ("SlurmctldPort", "AccountingStoragePort") else line)
    conf = tmp_path / "silent.conf"
    conf.write_text("\n".join(lines) + "\n")
    yield real, conf
    listener.close()


@pytest.mark.slow
def test_a_running_job_whose_squeue_goes_unanswered_stays_running_until_an_answer_ends_it(silent_controller,
                                                                                         tmp_path, monkeypatch):
    real, silent = silent_controller
    sched = SlurmScheduler(tmp_path / "jobs", SlurmSpec(job_name="t", time_min=5, cpus_per_task=1), timeout_s=1.0,
                           retry_backoff_s=0.1)
    script = tmp_path / "job.sh"
    script.write_text("sleep 6\n")
    job, = sched.submit([JobRequest(run_key="j", script=script, log=tmp_path / "job.log")])
    deadline = time.time() + 60
    while sched.states([job])[job] is not JobState.RUNNING:
        assert time.time() < deadline, "the job did not start"
        time.sleep(0.3)
    monkeypatch.setenv("SLURM_CONF", str(silent))
    for _ in range(4):  # the job ends meanwhile, but nobody has said so
        assert sched.states([job]) == {job: JobState.RUNNING}
    assert sched.unanswered == 4 and f"SLURM_CONF={silent}" in sched.last_problem
    monkeypatch.setenv("SLURM_CONF", str(real))
    deadline = time.time() + 90
    while not (state := sched.states([job])[job]).finished:
        assert time.time() < deadline, "the job's end was never read"
        time.sleep(0.5)
    assert state is JobState.COMPLETED and sched.unanswered == 0
