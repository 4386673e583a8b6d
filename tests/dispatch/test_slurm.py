"""The Slurm backend against a real single-node Slurm (slurmctld, slurmd, slurmdbd + MariaDB)."""

import subprocess
import time
from pathlib import Path

import pytest

from asiarch.cli.console import Console
from asiarch.dispatch.base import JobRequest, JobState
from asiarch.dispatch.slurm import SlurmScheduler, SlurmSpec, SchedulerError, expand_array_id, parse_state
from asiarch.job import result as rf
from asiarch.layout import ExperimentDir
from asiarch.search.loop import Search
from tests.conftest import check_golden
from tests.slurm_cluster import slurm_cluster  # noqa: F401  (fixture)
from tests.search.test_loop import offline_in_flight, small_config


def test_tres_parsing():
    from asiarch.dispatch.slurm import parse_tres

    assert parse_tres("billing=8,cpu=8,gres/gpu=4,mem=64G,node=1") == {"billing": 8, "cpu": 8, "gres/gpu": 4,
                                                                      "node": 1}


def test_state_words_and_array_ids():
    assert parse_state("CANCELLED by 0") is JobState.CANCELLED
    assert parse_state("OUT_OF_MEMORY") is JobState.OUT_OF_MEMORY
    assert parse_state("COMPLETING") is JobState.RUNNING
    assert parse_state("WHATEVER") is JobState.UNKNOWN
    assert expand_array_id("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]
    assert expand_array_id("12_3") == ["12_3"]
    from asiarch.dispatch.slurm import _parse_states
    assert _parse_states("12_[0-1%2]|PENDING\n12_3|RUNNING\n13|CANCELLED by 0\n") == {
        "12_0": JobState.PENDING, "12_1": JobState.PENDING, "12_3": JobState.RUNNING, "13": JobState.CANCELLED}


def test_sbatch_golden():
    spec = SlurmSpec(job_name="demo", time_min=30, partition="gpu", account="lab", qos="normal", cpus_per_task=8,
                     gpus_per_node=4, array_parallelism=2, additional=(("mail-type", "END"),))
    text = SlurmScheduler(Path("/scratch/exp/jobs"), spec, python="/opt/venv/bin/python").render_sbatch(4)
    sbatch = [l for l in text.splitlines() if l.startswith("#SBATCH")]
    assert sbatch == sorted(sbatch)
    for needed in ("--array=0-3%2", "--requeue", "--open-mode=append", "--gres=gpu:4", "--signal=USR2@120",
                   "--mail-type=END"):
        assert any(l.startswith(f"#SBATCH {needed}") for l in sbatch), needed
    assert "%A_%a" in text
    check_golden("round.sbatch", text)


def _job(tmp_path, name, body):
    script = tmp_path / f"{name}.sh"
    script.write_text("set -euo pipefail\n" + body + "\n")
    return JobRequest(run_key=name, script=script, log=tmp_path / f"{name}.log")


def _wait(sched, ids, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = sched.states(ids)
        if all(s.finished for s in states.values()):
            return states
        time.sleep(0.5)
    raise AssertionError(f"jobs did not finish: {sched.states(ids)}")


@pytest.mark.slow
def test_round_is_one_array_job_polled_with_one_query(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-in-a-job")
    sched = SlurmScheduler(tmp_path / "jobs", SlurmSpec(job_name="t", time_min=5, cpus_per_task=1,
                                                       array_parallelism=4))
    reqs = [_job(tmp_path, f"ok{i}", "echo task-$SLURM_ARRAY_TASK_ID; env") for i in range(3)]
    reqs.append(_job(tmp_path, "bad", "echo boom; exit 3"))
    ids = sched.submit(reqs)
    parents = {i.split("_")[0] for i in ids}
    assert len(parents) == 1, ids          # one sbatch for the whole round
    before = sched.queries
    sched.states(ids)
    assert sched.queries - before <= 2      # one squeue (+ at most one sacct), whatever the number of ids
    states = _wait(sched, ids)
    assert [states[i] for i in ids] == [JobState.COMPLETED] * 3 + [JobState.FAILED]
    log = (tmp_path / "ok0.log").read_text()
    assert "task-" in log and "sk-never-in-a-job" not in log


@pytest.mark.slow
def test_cancelled_job_is_cancelled(slurm_cluster, tmp_path):
    sched = SlurmScheduler(tmp_path / "jobs", SlurmSpec(job_name="t", time_min=5, cpus_per_task=1))
    ids = sched.submit([_job(tmp_path, "long", "sleep 300")])
    deadline = time.time() + 30
    while sched.states(ids)[ids[0]] is not JobState.RUNNING and time.time() < deadline:
        time.sleep(0.3)
    sched.cancel(ids)
    assert _wait(sched, ids)[ids[0]] is JobState.CANCELLED


@pytest.mark.slow
def test_bad_partition_and_gres_are_refused_before_anything_runs(slurm_cluster, tmp_path):
    sched = SlurmScheduler(tmp_path / "jobs", SlurmSpec(job_name="t", partition="nosuchpart", cpus_per_task=1))
    with pytest.raises(SchedulerError, match="partition 'nosuchpart' does not exist; this cluster has: debug"):
        sched.submit([_job(tmp_path, "x", "true")])
    # what only sbatch can judge is refused in Slurm's own words
    odd = SlurmScheduler(tmp_path / "jobs", SlurmSpec(job_name="t", cpus_per_task=1,
                                                     additional=(("gres", "warpdrive:1"),)))
    with pytest.raises(SchedulerError, match="(?i)sbatch refused the round: .*gres"):
        odd.submit([_job(tmp_path, "y", "true")])
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip() == ""


@pytest.mark.slow
def test_search_through_slurm_trains_a_round_as_one_array(slurm_cluster, tmp_path):
    cfg = small_config(candidates=4)
    cfg.cluster.scheduler = "slurm"
    cfg.cluster.max_in_flight = 2
    cfg.cluster.timeout_min = 10
    cfg.search.round_size = 4
    cfg.search.schedule = "rounds"  # a round is one array; the steady schedule's sbatch count: bench pipeline
    search = Search.open(ExperimentDir(tmp_path), cfg, console=Console(verbose=False))
    search.run()
    store = search.store
    offline = [c for c in store.candidates() if c.origin == "offline"]
    assert len(offline) == 4 and all(c.status == "done" for c in offline), [(c.name, c.reason) for c in offline]
    jobs = [a.job_id for c in offline for a in store.attempts(c.id)]
    assert len({j.split("_")[0] for j in jobs}) == 1 and all("_" in j for j in jobs)  # one array job
    for c in offline:
        a = store.attempts(c.id)[0]
        rec = rf.read_result(tmp_path / a.dir / "result.h5")
        assert rec.status == "ok" and rec.array_job_id == a.job_id.split("_")[0] and rec.env["world_size"] == 2
        # the scheduler's own accounting: elapsed seconds x the 2 CPUs each task was given
        assert a.elapsed_s is not None and a.cpu_seconds == pytest.approx(2 * a.elapsed_s)
    assert store.compute_seconds() > 0
    search.close()


@pytest.mark.slow
def test_requeued_training_job_finishes_from_its_checkpoint(slurm_cluster, tmp_path):
    """`scontrol requeue` a running 2-rank training job: it checkpoints, is requeued, and resumes."""
    from tests.job.test_train_job import CUMSUM, _attempt

    paths, req = _attempt(tmp_path, CUMSUM.format(extra=""), steps=400)
    sched = SlurmScheduler(tmp_path / "jobs", SlurmSpec(job_name="rq", time_min=10, cpus_per_task=2))
    (job_id,) = sched.submit([req])
    deadline = time.time() + 90
    while time.time() < deadline and (rf.read_progress(paths.progress) or {}).get("step", 0) < 20:
        time.sleep(0.3)
    assert (rf.read_progress(paths.progress) or {}).get("step", 0) >= 20, paths.log.read_text()[-2000:]
    out = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    states = _wait(sched, [job_id], timeout=240)
    log = paths.log.read_text()
    assert states[job_id] is JobState.COMPLETED, log[-3000:]
    rec = rf.read_result(paths.result)
    assert rec.status == "ok" and rec.steps_done == 400, (rec.status, rec.error)
    # none when the first run ended before its ranks had checkpointed (its job script exiting early
    # took the sandbox down with it)
    assert rec.env.get("resumed_from_step", 0) >= 20, log[-3000:]
    assert "resuming" in log


@pytest.mark.slow
def test_time_limit_warning_records_a_timeout_with_its_partial_curve(slurm_cluster, tmp_path):
    from tests.job.test_train_job import CUMSUM, _attempt

    paths, req = _attempt(tmp_path, CUMSUM.format(extra=""), steps=1_000_000)
    # a 1-minute limit with the warning 30 s before it. Slurm may send it up to a minute early, i.e. at
    # the job's start: the payload then holds it until the trainer is up (test_train_job tests that alone)
    sched = SlurmScheduler(tmp_path / "jobs", SlurmSpec(job_name="to", time_min=1, cpus_per_task=2,
                                                       signal_delay_s=30))
    (job_id,) = sched.submit([req])
    _wait(sched, [job_id], timeout=150)
    rec = rf.read_result(paths.result)
    assert rec.status == "timeout", (rec.status, rec.error, paths.log.read_text()[-2000:])
    assert rec.steps_done > 0 and len(rec.curve.loss) > 0
    assert (paths.dir.parent / "checkpoints" / "checkpoint.pt").exists()  # a retry of this candidate resumes from it


@pytest.mark.slow
def test_killed_head_reattaches_to_its_slurm_jobs_by_id(slurm_cluster, tmp_path):
    """kill -9 the head while its array is in Slurm; the next head re-attaches, trains nothing twice."""
    import os
    import signal
    import sys

    from asiarch.cli import main as cli_main
    from asiarch.config import render_toml
    from asiarch.store import Store

    cfg = small_config(candidates=2, steps=60)
    cfg.cluster.scheduler = "slurm"
    cfg.cluster.max_in_flight = 2
    cfg.search.round_size = 2
    root = tmp_path / "exp"
    root.mkdir()
    (root / "config.toml").write_text(render_toml(cfg))
    head = subprocess.Popen([sys.executable, "-m", "asiarch", "run", str(root), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    deadline = time.time() + 180
    while time.time() < deadline:
        if offline_in_flight(root / "asiarch.db") == 2:
            break
        time.sleep(0.3)
    else:
        head.kill()
        pytest.fail("the head never submitted its round: " + head.stderr.read().decode()[-2000:])
    head.send_signal(signal.SIGKILL)
    head.wait()
    assert cli_main(["run", str(root), "--quiet"]) == 0
    store = Store.open_readonly(root / "asiarch.db")
    offline = [c for c in store.candidates() if c.origin == "offline"]
    assert len(offline) == 2 and all(c.status == "done" for c in offline), [(c.name, c.reason) for c in offline]
    for c in offline:
        attempts = store.attempts(c.id)
        assert [a.n for a in attempts] == [1] and attempts[0].status == "ok"   # re-attached, not retried


@pytest.mark.slow
def test_a_request_no_node_can_hold_is_refused_not_left_pending(slurm_cluster, tmp_path):
    sched = SlurmScheduler(tmp_path / "jobs", SlurmSpec(job_name="big", cpus_per_task=512))
    with pytest.raises(SchedulerError, match="asks for 512 CPUs but the largest node .* has 8"):
        sched.submit([_job(tmp_path, "x", "true")])
    gpu = SlurmScheduler(tmp_path / "jobs", SlurmSpec(job_name="gpu", cpus_per_task=1, gpus_per_node=2))
    with pytest.raises(SchedulerError, match="asks for 2 gpu per node but the largest node has 0"):
        gpu.submit([_job(tmp_path, "y", "true")])


@pytest.mark.slow
def test_head_runs_as_a_slurm_job_and_requeues_itself(slurm_cluster, tmp_path):
    """The head as a job (asiarch head-script): warned with USR1 it stops, requeues, and the requeued
    head finishes the search."""
    import re
    import sys

    from asiarch.config import render_toml
    from asiarch.dispatch.render import render_head_script
    from asiarch.store import Store

    cfg = small_config(candidates=2, steps=150)
    cfg.cluster.scheduler = "slurm"
    cfg.cluster.max_in_flight = 2
    root = tmp_path / "exp"
    root.mkdir()
    (root / "config.toml").write_text(render_toml(cfg))
    script = tmp_path / "head.sbatch"
    script.write_text(render_head_script(name="t", experiment_dir=str(root), asiarch=(sys.executable, "-m", "asiarch"),
                                         time_min=20))
    out = subprocess.run(["sbatch", str(script)], capture_output=True, text=True, cwd=str(Path(__file__).resolve().parents[2]))
    head_id = re.search(r"(\d+)", out.stdout).group(1)
    db = root / "asiarch.db"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for the head's first training round to be in Slurm
        if offline_in_flight(db):
            break
        time.sleep(0.5)
    # the time-limit warning of --signal=B:USR1@300, sent now
    assert subprocess.run(["scancel", "--batch", "--signal=USR1", head_id]).returncode == 0
    deadline = time.time() + 240
    while time.time() < deadline:
        info = subprocess.run(["scontrol", "show", "job", head_id], capture_output=True, text=True).stdout
        if "JobState=COMPLETED" in info:
            break
        time.sleep(1)
    log = next(root.glob("head-*.log")).read_text()
    assert "time limit near, stopping the loop and requeueing" in log, log[-3000:]
    assert "JobState=COMPLETED" in info and "Restarts=1" in info, info   # completed after one restart
    assert "resuming experiment" in log.split("requeueing")[1]           # the second head took over
    store = Store.open_readonly(db)
    offline = [c for c in store.candidates() if c.origin == "offline"]
    assert len(offline) == 2 and all(c.status == "done" for c in offline), [(c.name, c.status, c.reason)
                                                                             for c in offline]


def _slurm_search(tmp_path, **cluster):
    cfg = small_config(candidates=1, steps=150)
    cfg.cluster.scheduler = "slurm"
    cfg.cluster.timeout_min = 10
    for k, v in cluster.items():
        setattr(cfg.cluster, k, v)
    search = Search.open(ExperimentDir(tmp_path), cfg, console=Console(verbose=False))
    search.register_baselines()
    return search


@pytest.mark.slow
def test_a_running_job_whose_id_was_never_recorded_is_adopted_from_its_marker(slurm_cluster, tmp_path):
    """The head ran sbatch and died before recording the id: the next head finds the running task by
    the Slurm id in the marker the job wrote, watches it to the end, and trains nothing twice."""
    import json

    from asiarch.job.contract import AttemptFiles
    JOB_MARKER = AttemptFiles.JOB_MARKER

    first = _slurm_search(tmp_path)
    base = first.store.candidates(origin="baseline")[0]
    attempt_id, request = first.submitter.prepare_attempt(base, 1)
    (job_id,) = first.scheduler.submit([request])  # the id never reaches the store
    first.close()
    marker = request.script.parent / JOB_MARKER
    deadline = time.time() + 90
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert json.loads(marker.read_text())["slurm_job_id"] == job_id

    second = _slurm_search(tmp_path)
    second.recover()
    a = second.store.attempt(attempt_id)
    assert (a.status, a.job_id) == ("submitted", job_id)
    second.wait()
    assert [(x.n, x.status) for x in second.store.attempts(base.id)] == [(1, "ok")]
    assert any(e["kind"] == "adopted" for e in second.store.events(50))
    second.close()


@pytest.mark.slow
def test_a_pending_job_whose_id_was_never_recorded_does_not_train_when_it_starts(slurm_cluster, tmp_path):
    """The same, with the job still pending (held) when the next head recovers: that head abandons the
    attempt and trains a new one; released later, the old job reads the tombstone and exits untrained."""
    from asiarch.job.contract import AttemptFiles
    ABANDONED = AttemptFiles.ABANDONED

    first = _slurm_search(tmp_path, sbatch_extra=["hold"])
    base = first.store.candidates(origin="baseline")[0]
    attempt_id, request = first.submitter.prepare_attempt(base, 1)
    (job_id,) = first.scheduler.submit([request])
    first.close()

    second = _slurm_search(tmp_path)
    second.recover()
    assert second.store.attempt(attempt_id).status == "lost"
    assert (request.script.parent / ABANDONED).exists()
    subprocess.run(["scontrol", "release", job_id.split("_")[0]], check=True)
    second.wait()  # the retry
    assert [(x.n, x.status) for x in second.store.attempts(base.id)] == [(1, "lost"), (2, "ok")]
    orphan = SlurmScheduler(tmp_path / "jobs", SlurmSpec(job_name="x"))
    assert _wait(orphan, [job_id]) == {job_id: JobState.COMPLETED}
    assert "abandoned by a restarted head" in request.log.read_text()
    assert not (request.script.parent / "result.h5").exists()
    assert not (request.script.parent / "progress.json").exists()
    second.close()
