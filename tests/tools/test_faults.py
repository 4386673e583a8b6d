"""Fault injection against the real pieces: a head killed with SIGKILL while its jobs train (real
processes, real torchrun, the real store), a job that starts after its head gave it up, and the
kill-the-head stress run in small. The other faults have their tests beside the code they test:
broken result files (test_result, test_loop), LLM faults (test_llm_client, test_llm_loop),
hostile candidates (test_checks), readers and the journal mode (test_store), bad config and site
profiles (test_config, test_slurm), preemption and time limits (test_slurm, test_train_job)."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from asiarch.cli import main as cli_main
from asiarch.config import render_toml
from asiarch.cli.console import Console
from asiarch.dispatch.local import LocalScheduler
from asiarch.dispatch.payload import process_start_time, run_job_script
from asiarch.job.contract import AttemptFiles
from asiarch.tools.kill_head import audit, kill_head_stress, stress_config
from asiarch.layout import ExperimentDir
from asiarch.search.loop import Search
from asiarch.store import Store

pytestmark = pytest.mark.slow


def _wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = pred()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_a_job_training_when_its_head_is_killed_is_adopted_not_trained_again(tmp_path):
    """SIGKILL the head while a candidate's job is mid-training; the next head finds the job from
    the marker it wrote, watches it to the end and ingests its result: one attempt, one training."""
    cfg = stress_config("adopt", candidates=2)
    cfg.train.steps = 400  # long enough to be killed mid-run
    root = tmp_path / "exp"
    root.mkdir()
    (root / "config.toml").write_text(render_toml(cfg))
    head = subprocess.Popen([sys.executable, "-m", "asiarch", "run", str(root), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def training():  # an offline candidate's attempt whose trainer has logged progress, no result yet
        for d in (root / "candidates").glob("*/attempt-*"):
            if not d.parent.name.endswith("deltanet") and (d / "progress.json").exists() \
                    and not (d / "result.h5").exists():
                return d
        return None

    try:
        attempt_dir = _wait_for(training, 300, "a candidate's job to start training")
    finally:
        head.send_signal(signal.SIGKILL)
        head.wait()
    assert (attempt_dir / AttemptFiles.JOB_MARKER).exists()
    assert not (attempt_dir / AttemptFiles.JOB_EXIT).exists(), "the job ended before the head was killed; nothing to adopt"

    assert cli_main(["run", str(root), "--quiet"]) == 0
    with Store.open_readonly(root / "asiarch.db") as store:
        attempt, = [a for a in store.attempts() if a.dir == str(attempt_dir.relative_to(root))]
        adopted = [r[0] for r in store.conn.execute("SELECT attempt_id FROM events WHERE kind = 'adopted'")]
        assert attempt.id in adopted, "the running job was not re-attached"
        cid = attempt.candidate_id
        assert [a.status for a in store.attempts(cid)] == ["ok"]  # the same attempt ended it, no second one
        assert store.candidate(cid).status == "done"
    assert not (attempt_dir / AttemptFiles.ABANDONED).exists()
    result = audit(root, cfg.budget.candidates)
    assert (result["lost"], result["trained_twice"], result["wasted_trainings"]) == (0, 0, 0), result


def test_a_job_that_starts_after_its_head_gave_it_up_does_not_train(tmp_path):
    """The head died between writing an attempt and recording its job id (a Slurm job still pending,
    say). The next head abandons that attempt and trains a new one; when the old job finally starts,
    it sees the tombstone and exits without training."""
    cfg = stress_config("fence", candidates=1)
    root = tmp_path / "exp"
    exp = ExperimentDir(root)
    search = Search.open(exp, cfg, console=Console(verbose=False))
    try:
        search.register_baselines()
        base = search.store.candidates(origin="baseline")[0]
        attempt_id, request = search.submitter.prepare_attempt(base, 1)  # recorded 'pending', never submitted
        assert search.store.attempt(attempt_id).status == "pending"
        search.recover()  # a fresh head: nobody knows a job for this attempt, and no job has started
        assert search.store.attempt(attempt_id).status == "lost"
        assert (request.script.parent / AttemptFiles.ABANDONED).exists()
        retry = search.store.attempts(base.id)[-1]
        assert retry.n == 2 and retry.status == "submitted"
        # the orphan job starts now, in a real process, and must not train
        code = run_job_script(str(request.script), str(request.log))
        assert code == 0
        assert "abandoned" in request.log.read_text()
        assert not (request.script.parent / "progress.json").exists()
        assert not (request.script.parent / "result.h5").exists()
        search.wait()
        assert search.store.attempt(retry.id).status == "ok"
        # the lost attempt did not use up one of the candidate's attempts
        assert search.submitter.attempts_used(base.id) == 1
    finally:
        search.close()


def test_adopt_refuses_dead_foreign_and_reused_pids(tmp_path):
    sched = LocalScheduler(tmp_path / "jobs")
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    start = process_start_time(os.getpid())
    assert sched.adopt({**me, "pid_start": start}, tmp_path) is not None
    assert sched.adopt({**me, "pid_start": str(int(start) + 1)}, tmp_path) is None  # pid reused
    assert sched.adopt({**me, "host": "elsewhere", "pid_start": start}, tmp_path) is None
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert sched.adopt({**me, "pid": dead.pid, "pid_start": start}, tmp_path) is None
    assert sched.adopt({}, tmp_path) is None


def test_kill_head_stress_loses_and_duplicates_nothing(tmp_path):
    """The stress run of `asiarch bench kill-head` in small: 3 SIGKILLs during a 4-candidate search."""
    out = kill_head_stress(tmp_path / "stress", candidates=4, kills=3, seed=3, min_delay_s=3.0,
                           max_delay_s=10.0, progress=lambda line: None)
    assert out["final_exit"] == 0
    assert out["kills_done"] >= 2, out["kills"]
    assert out["statuses"] == {"done": 4}, out
    assert (out["lost"], out["trained_twice"], out["over_budget"], out["duplicate_code"],
            out["wasted_trainings"]) == (0, 0, 0, 0, 0), out


def test_the_audit_counts_a_candidate_the_watchdog_stopped_as_settled_not_lost(tmp_path):
    """A stop (watchdog or early stopping) ends a candidate with its reason and partial curve; the kill-head
    audit counted it lost (seen in a kill-head run here: a job re-attached after a kill was stopped as slow)."""
    from asiarch.store import Store
    from asiarch.tools.kill_head import audit

    exp = ExperimentDir(tmp_path / "exp")
    exp.root.mkdir()
    with Store.open(exp.db) as store:
        for name, status in (("a", "done"), ("b", "stopped"), ("c", "proposed")):
            cid = store.add_candidate(name=name, origin="offline", code=f"# {name}", code_sha256=name)
            store.set_candidate_status(cid, status)
    assert audit(exp.root, 2)["lost"] == 0   # done + stopped settle a budget of 2
    assert audit(exp.root, 3)["lost"] == 1   # the proposed one is still lost
