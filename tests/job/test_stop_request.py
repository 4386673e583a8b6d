"""The head's stop request (the attempt's control file stop.json) through real torchrun, 2 gloo ranks on CPU."""

import subprocess
import sys
import time

import pytest
import torch

from asiarch.config import ClusterConfig, TrainConfig
from asiarch.dispatch.attempt import write_attempt_files
from asiarch.dispatch.payload import JobScriptFailed, run_job_script
from asiarch.job import result as rf
from asiarch.job.contract import AttemptFiles, read_stop_request, request_stop

# Each rank writes how many training forwards (train mode, grad on) it has run to fwd-<rank> in its
# working directory, the attempt directory: the two files must agree when the job stops.
COUNTING = '''
import os
import torch
from torch import nn

class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=2, layer_idx=None, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.calls = 0
    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            with open("fwd-" + os.environ.get("RANK", "0"), "w") as fh:
                fh.write(str(self.calls))
        T = hidden_states.shape[1]
        c = torch.cumsum(self.proj(hidden_states), 1) / torch.arange(1, T + 1).view(1, T, 1)
        return self.out(c), None, past_key_values
'''


def _attempt(tmp_path, *, steps, report_steps=()):
    layer = tmp_path / "layer.py"
    layer.write_text(COUNTING)
    files = AttemptFiles(tmp_path / "attempt-1")
    train = TrainConfig(steps=steps, nproc=2, batch_size=8, log_every=5, warmup_steps=2, num_layers=1)
    ident = {"experiment": "t", "candidate_id": 1, "attempt": 1, "run_key": "t-c00001-a1", "code_sha256": "x"}
    req = write_attempt_files(files, layer_path=layer, identity=ident, train=train, cluster=ClusterConfig(),
                              class_name="DeltaNet", python=sys.executable, report_steps=report_steps)
    return files, req


def test_request_stop_round_trip_and_a_broken_file_still_asks_to_stop(tmp_path):
    files = AttemptFiles(tmp_path)
    assert read_stop_request(files.stop) is None
    request_stop(files, reason="rung", rung=2, step=100, message="behind")
    assert read_stop_request(files.stop) == {"reason": "rung", "rung": 2, "step": 100, "message": "behind"}
    files.stop.write_text("{half")
    assert read_stop_request(files.stop)["reason"] == "requested"


@pytest.mark.slow
def test_a_stop_request_stops_both_ranks_at_one_step_with_a_checkpoint_and_a_resume_finishes(tmp_path):
    files, req = _attempt(tmp_path, steps=400, report_steps=(12,))  # a rung between logged points (every 5)
    log = open(files.log, "ab")
    proc = subprocess.Popen(["bash", str(req.script)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 90
    while time.time() < deadline and (rf.read_progress(files.progress) or {}).get("step", 0) < 20:
        time.sleep(0.2)
    assert rf.read_progress(files.progress), files.log.read_text()[-2000:]
    request_stop(files, reason="rung", rung=1, step=20, message="stopped at rung 1 of 2 (step 20 of 400)")
    assert proc.wait(timeout=90) == 0, files.log.read_text()[-3000:]

    rec = rf.read_result(files.result)
    assert rec.status == "stopped", rec.error
    stop = rec.env["stop"]
    assert stop["reason"] == "rung" and stop["rung"] == 1 and stop["step"] == 20
    stopped_at = rec.steps_done
    assert 20 <= stopped_at < 400 and stop["stopped_at"] == stopped_at
    assert f"stopped by the head at step {stopped_at}: stopped at rung 1" in rec.error
    assert rec.curve.step[-1] == stopped_at  # the partial curve reaches the stop
    assert list(rec.curve.step[:4]) == [5, 10, 12, 15]  # the rung is a logged point: judged there, not at 15
    assert rec.tokens_per_s > 0
    # both ranks ran the same number of training steps (a rank that went on would have hung the other)
    counts = {r: int((files.dir / f"fwd-{r}").read_text()) for r in (0, 1)}
    assert counts[0] == counts[1] >= stopped_at, counts
    ckpt = files.dir.parent / "checkpoints" / "checkpoint.pt"
    assert ckpt.exists() and torch.load(ckpt, weights_only=False)["step"] == stopped_at
    assert not files.stop.exists()  # acted on: a resumed job does not stop again at once

    # promoted: the same attempt runs again and goes on from the checkpoint to the end
    try:
        run_job_script(str(req.script), str(req.log))
    except JobScriptFailed:
        pytest.fail(files.log.read_text()[-3000:])
    rec = rf.read_result(files.result)
    assert rec.status == "ok" and rec.steps_done == 400
    assert rec.env["resumed_from_step"] == stopped_at
    assert stopped_at in rec.curve.step and rec.curve.step[0] == 5 and rec.curve.step[-1] == 400
    assert f"resuming t-c00001-a1 from its checkpoint at step {stopped_at}" in files.log.read_text()
    assert not ckpt.exists()
