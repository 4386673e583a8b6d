"""The training job through real torchrun with 2 gloo ranks on CPU (the job path the loop uses)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asiarch.dispatch.attempt import write_attempt_files
from asiarch.config import ClusterConfig, TrainConfig
from asiarch.dispatch.payload import JobScriptFailed, run_job_script
from asiarch.job import result as rf
from asiarch.job.tasks import write_token_file
from asiarch.job.train import ProgressClock, wsd_lr
from asiarch.job.contract import AttemptFiles

pytestmark = pytest.mark.slow

CUMSUM = '''
import torch
from torch import nn

class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=2, layer_idx=None, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        T = hidden_states.shape[1]
        c = torch.cumsum(self.proj(hidden_states), 1) / torch.arange(1, T + 1).view(1, T, 1)
        return self.out(c){extra}, None, past_key_values
'''


def _attempt(tmp_path, source, *, steps=20, task="mqar", nproc=2, **train_kw):
    work = tmp_path / "attempt-1"
    layer = tmp_path / "layer.py"
    layer.write_text(source)
    paths = AttemptFiles(work)
    train = TrainConfig(steps=steps, task=task, nproc=nproc, batch_size=8, log_every=5, warmup_steps=2, **train_kw)
    ident = {"experiment": "t", "candidate_id": 1, "attempt": 1, "run_key": "t-c00001-a1", "code_sha256": "x"}
    req = write_attempt_files(paths, layer_path=layer, identity=ident, train=train, cluster=ClusterConfig(),
                              class_name="DeltaNet", python=sys.executable)
    return paths, req


def _run(req):
    try:
        run_job_script(str(req.script), str(req.log))
        return 0
    except JobScriptFailed:
        return 1


def test_trains_with_two_ranks_and_writes_result(tmp_path):
    paths, req = _attempt(tmp_path, CUMSUM.format(extra=""), steps=20)
    assert _run(req) == 0, paths.log.read_text()[-3000:]
    rec = rf.read_result(paths.result)
    assert rec.status == "ok"
    assert rec.env["world_size"] == 2 and rec.run_key == "t-c00001-a1"
    assert rec.curve.step == [5, 10, 15, 20] and all(l > 0 for l in rec.curve.loss)
    assert rec.curve.tokens[-1] == 20 * 8 * 64  # global batch of 8 sequences of 64 tokens
    assert 0.0 <= rec.metrics["mqar/accuracy"] <= 1.0 and rec.eval_loss > 0
    assert rec.tokens_per_s > 0 and rec.peak_memory_bytes > 10_000_000 and rec.num_params > 0
    assert rf.read_progress(paths.progress)["step"] == 20


def test_layer_that_raises_is_recorded_as_failed_with_traceback(tmp_path):
    source = CUMSUM.format(extra="") .replace("T = hidden_states.shape[1]",
                                               "raise RuntimeError('candidate bug here')")
    paths, req = _attempt(tmp_path, source)
    assert _run(req) == 1
    rec = rf.read_result(paths.result)
    assert rec.status == "failed"
    assert "candidate bug here" in rec.error and "Traceback" in rec.traceback


def test_nan_ends_the_run_as_diverged_not_a_hang(tmp_path):
    paths, req = _attempt(tmp_path, CUMSUM.format(extra=" * float('nan')"), steps=50)
    t = time.time()
    _run(req)
    rec = rf.read_result(paths.result)
    assert rec.status == "diverged" and "loss became nan" in rec.error
    assert rec.steps_done <= 1 and time.time() - t < 60


def test_sigterm_checkpoints_and_a_rerun_resumes_from_it(tmp_path):
    paths, req = _attempt(tmp_path, CUMSUM.format(extra=""), steps=400)
    log = open(paths.log, "ab")
    proc = subprocess.Popen(["bash", str(req.script)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline and (rf.read_progress(paths.progress) or {}).get("step", 0) < 10:
        time.sleep(0.2)
    assert rf.read_progress(paths.progress), paths.log.read_text()[-2000:]
    proc.send_signal(signal.SIGTERM)  # bash exec'd torchrun: the signal reaches torchrun, which forwards it
    proc.wait(timeout=60)
    rec = rf.read_result(paths.result)
    assert rec.status == "preempted" and "SIGTERM" in rec.error
    stopped_at = rec.steps_done
    assert stopped_at >= 5 and len(rec.curve.loss) >= 1
    ckpt = paths.dir.parent / "checkpoints" / "checkpoint.pt"
    assert ckpt.exists()
    # the scheduler requeues the job: the same script runs again and goes on from the checkpoint
    assert _run(req) == 0, paths.log.read_text()[-3000:]
    rec = rf.read_result(paths.result)
    assert rec.status == "ok" and rec.steps_done == 400
    resumed = rec.env["resumed_from_step"]
    assert stopped_at - 5 <= resumed <= stopped_at + 5
    assert rec.curve.step[0] == 5 and rec.curve.step[-1] == 400  # one curve across both runs
    assert f"resuming t-c00001-a1 from its checkpoint at step {resumed}" in paths.log.read_text()
    assert not ckpt.exists()  # finished: nothing left to resume


def _ignore_hangup_and_interrupt():
    """What `nohup` (HUP) and a script's `cmd &` (INT, QUIT) do to the processes they start."""
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)


@pytest.mark.parametrize("started", ["plainly", "under nohup"])
def test_a_time_limit_warning_before_the_trainer_is_ready_is_held_not_fatal(tmp_path, started):
    """Slurm may send --signal up to a minute early, for a short job at its very start: the payload
    holds the warning until the trainer has written its first progress record, then passes it on,
    and the run ends as a timeout with its partial curve instead of dying without a result.

    'under nohup': the payload inherits HUP (and INT, QUIT) ignored, as from a head started with
    nohup or in the background of a script; bash cannot trap a signal ignored at its start, so
    unless the payload gives the job's shell the default dispositions the warning is dropped and
    the job trains on (here: a million steps)."""
    from asiarch.job.contract import AttemptFiles
    JOB_MARKER = AttemptFiles.JOB_MARKER

    paths, req = _attempt(tmp_path, CUMSUM.format(extra=""), steps=1_000_000, nproc=1)
    payload = subprocess.Popen([sys.executable, "-c", "import sys; from asiarch.dispatch.payload import "
                                "run_job_script; run_job_script(sys.argv[1], sys.argv[2])",
                                str(req.script), str(req.log)], start_new_session=True,
                               preexec_fn=_ignore_hangup_and_interrupt if started == "under nohup" else None)
    try:
        deadline = time.time() + 60
        while not (paths.dir / JOB_MARKER).exists() and time.time() < deadline:
            time.sleep(0.02)
        assert not paths.progress.exists(), "the trainer was already up: nothing to hold"
        payload.send_signal(signal.SIGUSR1)
        payload.wait(timeout=120)  # non-zero: torchrun's agent exits with an error on the HUP it forwarded
    finally:  # a job that did not hear the warning must not train on beside the rest of the suite
        if payload.poll() is None:
            os.killpg(payload.pid, signal.SIGKILL)
            payload.wait()
    rec = rf.read_result(paths.result)
    assert rec.status == "timeout" and rec.steps_done > 0 and len(rec.curve.loss) > 0


def test_lm_task_over_a_byte_token_file(tmp_path):
    text = ("the quick brown fox jumps over the lazy dog. " * 400)
    tok = tmp_path / "tokens.u16"
    write_token_file(tok, text)
    paths, req = _attempt(tmp_path, CUMSUM.format(extra=""), steps=10, task="lm", token_file=str(tok),
                          vocab_size=256, nproc=1)
    assert _run(req) == 0, paths.log.read_text()[-3000:]
    rec = rf.read_result(paths.result)
    assert rec.status == "ok" and "mqar/accuracy" not in rec.metrics and rec.eval_loss < 6.0


def test_wsd_schedule():
    lrs = [wsd_lr(s, peak=1.0, steps=100, warmup=10, decay_fraction=0.2) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0 and lrs[50] == 1.0
    assert lrs[80] == 1.0 and lrs[90] == pytest.approx(0.5) and lrs[99] == pytest.approx(0.05)


def _written(clock: ProgressClock, *, steps=300, log_every=10, step_s=0.06) -> list[int]:
    """The steps at which ``clock`` has the progress record written, for a run logging every ``log_every``
    steps at ``step_s`` seconds a step (about the demo's MQAR on 2 cores)."""
    return [s for s in range(log_every, steps + 1, log_every) if clock.due(s, s * step_s, final=s == steps)]


def test_the_progress_record_is_written_on_reaching_each_rung_whatever_the_rate_limit():
    """The record is rewritten at most every 2 s (it holds the whole curve); the head judges an attempt at
    a rung from it, so a rung point held back would let the attempt train on past its stop."""
    plain = _written(ProgressClock())
    assert plain == [10, 50, 90, 130, 170, 210, 250, 290, 300]  # 100 and 200 held back by the rate limit
    rungs = _written(ProgressClock((100, 200)))
    assert {100, 200} <= set(rungs)
    others = [s for s in rungs if s not in (100, 200, 300)]
    assert all((b - a) * 0.06 > 2.0 for a, b in zip(others, others[1:]))  # the rate limit still holds between
    assert 100 in _written(ProgressClock((95,)))  # a rung between logged points: the first logged point past it


def test_training_inside_a_container_through_the_apptainer_stand_in(tmp_path, monkeypatch):
    """Apptainer cannot be installed here: tests/bin/apptainer is a STAND-IN that validates the
    flags asiarch composes and runs the inner command with --cleanenv semantics."""
    from asiarch.config import ClusterConfig

    bin_dir = Path(__file__).resolve().parents[1] / "bin"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("ASIARCH_APPTAINER_LOG", str(tmp_path / "apptainer.log"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-reach-the-container")
    image = tmp_path / "job.sif"
    image.write_bytes(b"stand-in image")
    work = tmp_path / "attempt-1"
    layer = tmp_path / "layer.py"
    layer.write_text(CUMSUM.format(extra=""))
    paths = AttemptFiles(work)
    cluster = ClusterConfig(container_image=str(image), python=sys.executable, binds=[str(tmp_path)])
    train = TrainConfig(steps=6, nproc=2, batch_size=8, log_every=3, warmup_steps=1)
    ident = {"experiment": "t", "candidate_id": 1, "attempt": 1, "run_key": "t-c00001-a1", "code_sha256": "x"}
    req = write_attempt_files(paths, layer_path=layer, identity=ident, train=train, cluster=cluster,
                              class_name="DeltaNet", python="/host/python/not/used", bind_root=tmp_path)
    script = req.script.read_text()
    assert "exec apptainer exec --containall --cleanenv --no-home --net --network none" in script  # the sandbox
    assert str(image) in script
    assert _run(req) == 0, paths.log.read_text()[-3000:]
    rec = rf.read_result(paths.result)
    assert rec.status == "ok" and rec.env["container_image"] == str(image)
    logged = (tmp_path / "apptainer.log").read_text()
    assert "--env OMP_NUM_THREADS=1" in logged and f"--bind {tmp_path}" in logged
    assert "sk-must-not" not in logged


def test_multinode_and_scratch_job_script(tmp_path):
    from asiarch.config import ClusterConfig

    cluster = ClusterConfig(scheduler="slurm", nodes=2, scratch_var="SCRATCH")
    paths, _ = _attempt(tmp_path, CUMSUM.format(extra=""))
    req = write_attempt_files(paths, layer_path=tmp_path / "layer.py", identity={
        "experiment": "t", "candidate_id": 1, "attempt": 1, "run_key": "k", "code_sha256": "x"},
        train=TrainConfig(), cluster=cluster, class_name="DeltaNet", python="python3")
    script = req.script.read_text()
    assert '--rdzv-endpoint="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)":29500' in script
    assert "--nnodes=2 --rdzv-backend=c10d" in script and "--standalone" not in script
    assert 'export TMPDIR="${SCRATCH:-/tmp}"' in script
    out = subprocess.run(["bash", "-n", str(req.script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
