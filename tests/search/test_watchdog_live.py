"""The watchdog and early stopping live, against real jobs: the local scheduler (submitit), torchrun with
2 gloo ranks, real HDF5 results and progress records, the real SQLite store; one search on the test Slurm.

Each watchdog reason is provoked by a layer or a setting, named where it is used:

- ``slow``: SLOW_IN_TRAINING does redundant matrix products in training only (so the pre-flight, which
  never runs the training batch of 4 per rank, passes it quickly): honest output, ~10x fewer tokens/s;
- ``stalled``: STALLS_AFTER_20_STEPS spends seconds per step after its 20th, so its progress record stops
  updating for longer than watchdog.stall_s (25 s; every honest job of these searches writes one at
  least every few seconds once running, and its first within ~10 s of starting, ~20 s on a loaded machine);
- ``diverging``: DELTANET_DROWNED_AFTER_40_STEPS, DeltaNet whose output is drowned, after its 40th training
  step, by a causal pattern that changes and grows every step, on the LM task over a short repeated text:
  DeltaNet has learned the text well below its character frequencies by then (loss ~1 against ~3), and the
  drowned model falls back towards them, a rise the trainer's own check (3x the first loss) never sees.
  (On MQAR at these sizes every run still sits at the values' marginal at step 40, so nothing can rise.)
- ``implausible``: the LM task with watchdog.implausible_floor set above any loss these runs reach
  (the configured LM floor): the rule then fires for every honest candidate past warm-up, which is the
  point: the same search shows the reference baseline is never stopped although the rule fires for it.

The trainer writes a progress record at most every 2 s, so the watchdog only sees jobs that train for
several seconds: the curves here are 100-400 steps, and the misbehaving layers are slow in training.

ASHA's promotion is shown twice: directly (Search.promote, what the watchdog calls) and arising on its own
in a search, where the last job's arrival at a rung brings an attempt stopped there within the best n // eta.
"""

import math
import time
from pathlib import Path

import pytest

from asiarch.cli import main as cli_main
from asiarch.cli.console import Console
from asiarch.config import render_toml
from asiarch.job import result as rf
from asiarch.job.tasks import write_token_file
from asiarch.layout import ExperimentDir
from asiarch.search.loop import Search
from asiarch.propose.offline import baseline_sources
from asiarch.store import Store
from tests.search.test_loop import small_config
from tests.slurm_cluster import slurm_cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

_HEAD = '''
import torch
from torch import nn


class DeltaNet(nn.Module):
    """{doc}"""

    def __init__(self, hidden_size=32, num_heads=2, layer_idx=None, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.first = not layer_idx
        self.register_buffer("_calls", torch.zeros((), dtype=torch.long), persistent=False)

    def forward(self, x, **kwargs):
        h = self.proj(x)
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        out = h.cumsum(1) / steps
        if self.training and x.shape[0] == 4:  # the training batch per rank: never run by the pre-flight
            self._calls += 1
{body}
        return out, None, None
'''


def _layer(doc: str, body: str) -> str:
    return _HEAD.format(doc=doc, body=body)


# redundant products of an identity: the output is that of a causal running mean, the time ~10x its peers'
_BURN = '''            w = torch.eye(256, dtype=x.dtype, device=x.device)
            acc = w
            for _ in range({n}):
                acc = acc @ w
            out = out + 0.0 * acc[0, 0]'''

SLOW_IN_TRAINING = _layer("A causal running mean, slowed in training by redundant matrix products.",
                          _BURN.format(n=400))
# one step of ~35 s unloaded (the first layer's 21st training forward): no progress record for longer than stall_s
STALLS_AFTER_20_STEPS = _layer("A causal running mean whose 21st training step takes many seconds.",
                               "            if int(self._calls) == 21 and self.first:\n" +
                               "\n".join("    " + line for line in _BURN.format(n=110000).splitlines()))
def _deltanet(doc: str, body: str) -> str:
    """The DeltaNet baseline with ``body`` run on its output (``out``) at each training step (its count in
    ``self._calls``), after redundant products that keep each step long enough for the watchdog to see."""
    return baseline_sources(["deltanet"])["deltanet"].replace(
        "class DeltaNet(nn.Module):", "class _DeltaNet(nn.Module):") + f'''

class DeltaNet(_DeltaNet):
    """{doc}"""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("_calls", torch.zeros((), dtype=torch.long), persistent=False)

    def forward(self, x, *args, **kwargs):
        out, attn, past = super().forward(x, *args, **kwargs)
        if self.training and x.shape[0] == 4:  # the training batch per rank: never run by the pre-flight
            self._calls += 1
{_BURN.format(n=100)}
{body}
        return out, attn, past
'''


# DeltaNet, and after its 40th training step a pattern that changes every step (causal: a function of the
# position and the step only) added to its output with a growing amplitude: the model cannot learn it away, so
# the information in the residual stream drowns a little more each step and the loss climbs, as a diverging
# run's does
DELTANET_DROWNED_AFTER_40_STEPS = _deltanet(
    "DeltaNet drowned, after 40 training steps, by a growing pattern that changes every step.", '''\
            steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
            scale = torch.clamp(self._calls.to(x.dtype) - 40.0, min=0.0) * 0.1
            dims = torch.arange(x.shape[2], dtype=x.dtype, device=x.device).view(1, 1, -1)
            out = out + scale * torch.sin(steps * (dims + 1.0) * 0.37 * self._calls.to(x.dtype))''')

# ahead of DeltaNet early on MQAR at these sizes (a causal running mean learns the task's easy part faster:
# ~3.4 against DeltaNet's ~3.5 at step 60 of 200, measured here), and a copy of the DeltaNet baseline (its
# curve is the reference's), behind it at a rung at 0.3 of the steps
RUNNING_MEAN = _layer("A causal running mean of a projection.", "            pass")
DELTANET_COPY = baseline_sources(["deltanet"])["deltanet"] + "\n# a copy of the reference baseline\n"


def add_layer(root: Path, source: str, name: str) -> None:
    f = root / f"{name}.py"
    f.write_text(source)
    assert cli_main(["add", str(root), str(f), "--name", name]) == 0


def watched_config(name: str, candidates: int, **train):
    """small_config with curves long enough to watch: 100 steps logged every 2, the watchdog judging
    after 5 steps against one peer (the reference, trained first); one pre-flight at a time, so that the
    candidates train in the order they were added (ASHA's decisions depend on who reaches a rung first)."""
    cfg = small_config(name, candidates, steps=100, log_every=2, **train)
    cfg.search.preflight_workers = 1
    w = cfg.watchdog
    w.enabled, w.min_peers, w.warmup_fraction, w.stall_s = True, 1, 0.05, 25.0
    w.slow_min_s = 2.0  # these jobs train for seconds; the default (60 s) would never judge their speed
    return cfg


def run_search(root: Path, cfg, layers: dict[str, str]) -> None:
    root.mkdir(parents=True)
    (root / "config.toml").write_text(render_toml(cfg))
    for name, source in layers.items():
        add_layer(root, source, name)
    search = Search.open(ExperimentDir(root), cfg, console=Console(verbose=False))
    try:
        search.run()
    finally:
        search.close()


def stopped(store: Store, name: str) -> dict:
    cand = store.find_candidate(name)
    assert cand.status == "stopped", (name, cand.status, cand.reason)
    return cand.scores["stopped"]


# ---------------------------------------------------------------------------------- slow, stalled, diverging


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """One search: the reference and two misbehaving layers, trained one at a time."""
    root = tmp_path_factory.mktemp("watchdog") / "exp"
    cfg = watched_config("wd", 2)
    t0 = time.time()
    run_search(root, cfg, {"slowpoke": SLOW_IN_TRAINING, "staller": STALLS_AFTER_20_STEPS})
    return root, cfg, time.time() - t0


def test_a_slow_layer_is_stopped_as_slow_with_its_partial_curve(watched):
    root, cfg, _ = watched
    with Store.open_readonly(root / "asiarch.db") as store:
        info = stopped(store, "slowpoke")
        assert info["reason"] == "slow" and info["rung"] is None, info
        assert "tokens/s" in info["message"] and info["step"] < cfg.train.steps
        a = store.attempts(store.find_candidate("slowpoke").id)[-1]
        rec = rf.read_result(root / a.dir / "result.h5")
        assert rec.status == "stopped" and rec.env["stop"]["reason"] == "slow"
        assert rec.curve.step and rec.curve.step[-1] == rec.steps_done < cfg.train.steps  # the partial curve
        ref = store.find_candidate("deltanet")
        assert rec.tokens_per_s < cfg.watchdog.slow_fraction * ref.scores["tokens_per_s"]


def test_a_stalled_job_is_stopped_as_stalled(watched):
    root, cfg, _ = watched
    with Store.open_readonly(root / "asiarch.db") as store:
        info = stopped(store, "staller")
        assert info["reason"] == "stalled" and "watchdog.stall_s" in info["message"], info
        assert info["step"] < cfg.train.steps


def test_a_diverging_layer_is_stopped_as_diverging_before_the_trainers_own_check(tmp_path):
    """The LM task over a short repeated text (the implausible test's), 400 steps; the trainer's own check
    at its default (a loss above 3x the first). The slow and peer rules are off (min_peers above the peers
    there are: the layer's redundant products make it ~4x slower than the reference) and stall_s is long:
    this test is about the loss."""
    tokens = write_token_file(tmp_path / "tokens.bin", "the quick brown fox jumps over the lazy dog. " * 400)
    cfg = watched_config("div", 1, task="lm", token_file=str(tokens), vocab_size=256)
    cfg.train.steps = 400
    w = cfg.watchdog
    w.min_peers, w.stall_s = 99, 300.0
    root = tmp_path / "exp"
    run_search(root, cfg, {"diverger": DELTANET_DROWNED_AFTER_40_STEPS})
    with Store.open_readonly(root / "asiarch.db") as store:
        info = stopped(store, "diverger")
        assert info["reason"] == "diverging" and "diverging: the loss rose" in info["message"], info
        a = store.attempts(store.find_candidate("diverger").id)[-1]
        rec = rf.read_result(root / a.dir / "result.h5")
        losses = rec.curve.loss
        lowest = min(losses)
        assert rec.status == "stopped" and 40 < rec.curve.step[-1] < cfg.train.steps  # after the drowning began
        # the point the watchdog judged rose past its bar; the job logs a few steps more before it stops (the
        # poll's lag), so the last point can be a lower one of a noisy rise
        low_at = max(i for i, x in enumerate(losses) if x == lowest)
        assert max(losses[low_at:]) > lowest + w.diverging_rise * max(lowest, losses[0] - lowest)
        assert max(losses) < cfg.train.divergence_factor * losses[0]  # the trainer's own check never fired
        assert store.find_candidate("deltanet").status == "done"


def test_the_reference_trains_to_the_end_and_every_stop_is_logged(watched):
    root, cfg, wall = watched
    print(f"watchdog search: {wall:.0f} s")
    with Store.open_readonly(root / "asiarch.db") as store:
        ref = store.find_candidate("deltanet")
        assert ref.status == "done" and ref.fitness is not None
        events = [e for e in store.events(limit=1000) if e["kind"] == "stopping"]
        assert {e["candidate_id"] for e in events} == {store.find_candidate(n).id
                                                       for n in ("slowpoke", "staller")}


# ---------------------------------------------------------------------------------- implausible


# on the test Slurm only: the local scheduler's watchdog path is the module fixture's (slow, stalled)
@pytest.mark.parametrize("where", ["slurm"])
def test_implausible_below_the_lm_floor_and_the_reference_is_never_stopped(where, tmp_path, slurm_cluster):
    """The LM task with watchdog.implausible_floor = 50 nats, above any loss these runs reach (ln 256 = 5.5 at
    the start): the configured floor says every loss is too good to be true, so the rule fires for the
    honest candidate once past warm-up and would for the reference, which trains to the end regardless."""
    tokens = write_token_file(tmp_path / "tokens.bin", "the quick brown fox jumps over the lazy dog. " * 400)
    cfg = watched_config("floor", 1, task="lm", token_file=str(tokens), vocab_size=256)
    cfg.watchdog.implausible_floor = 50.0
    # this test is about the floor: the LM curve on this tiny repetitive text can bump up 10 % over 5 points
    # (seen on Slurm), which the diverging rule, judged first, would call diverging
    cfg.watchdog.diverging_rise = 1e9
    # the trainer writes a progress record at most every 2 s: 400 steps (~8 s here) so that the watchdog sees
    # some past warm-up while the job still trains (100 took 2 s: only the first and the last record)
    cfg.train.steps = 400
    if where == "slurm":
        cfg.cluster.scheduler = "slurm"
        # the watchdog judges at each squeue poll, which backs off to poll_max_interval_s (10 s) while no job
        # changes state: on CI the ~8 s job was polled once running, at its last step, and finished first
        cfg.cluster.poll_max_interval_s = 2.0
    root = tmp_path / "exp"
    run_search(root, cfg, {})
    with Store.open_readonly(root / "asiarch.db") as store:
        ref = store.find_candidate("deltanet")
        assert ref.status == "done" and ref.fitness is not None  # trained to the end: never stopped
        (cand,) = [c for c in store.candidates() if c.origin != "baseline" and store.attempts(c.id)]
        info = stopped(store, cand.name)
        assert info["reason"] == "implausible" and "below the floor 50" in info["message"], info
        assert math.ceil(cfg.watchdog.warmup_fraction * cfg.train.steps) <= info["step"] < cfg.train.steps
        assert "re-probe it for leaks" in cand.reason
        a = store.attempts(cand.id)[-1]
        assert rf.read_result(root / a.dir / "result.h5").env["stop"]["reason"] == "implausible"


# ---------------------------------------------------------------------------------- ASHA: stopped at a rung, promoted


def test_stopped_at_a_rung_with_its_checkpoint_then_promoted_and_resumed_from_it(tmp_path):
    """early_stopping on (eta 3, one rung at 0.3 of the steps, the loss alone deciding), the watchdog off so that only ASHA decides:
    RUNNING_MEAN reaches the rung ahead of the reference and continues; DELTANET_COPY reaches it as the third,
    behind RUNNING_MEAN, is outside the best max(1, 3 // 3) = 1 and stops there with its checkpoint. Promoted
    (Search.promote, what the watchdog calls when later arrivals bring an attempt within the best n // eta),
    it resumes from the checkpoint, is not judged at its rung again, and trains to the end."""
    cfg = watched_config("asha", 2)
    cfg.train.steps = 200
    cfg.watchdog.enabled = False
    e = cfg.early_stopping
    e.enabled, e.eta, e.rungs, e.drop_window = True, 3.0, [0.3], 0.0  # the loss alone
    root = tmp_path / "exp"
    run_search(root, cfg, {"ahead": RUNNING_MEAN, "behind": DELTANET_COPY})
    exp = ExperimentDir(root)
    with Store.open_readonly(exp.db) as store:
        assert store.find_candidate("ahead").status == "done"
        assert store.find_candidate("deltanet").status == "done"
        cand = store.find_candidate("behind")
        info = stopped(store, "behind")
        assert info["reason"] == "rung" and info["rung"] == 1 and 60 <= info["step"] < cfg.train.steps, info
        (first,) = store.attempts(cand.id)
        rec = rf.read_result(root / first.dir / "result.h5")
        assert rec.status == "stopped" and rec.env["stop"]["rung"] == 1 and rec.steps_done == info["step"]
    checkpoint = exp.layer_file(cand.id, cand.name).parent / "checkpoints" / "checkpoint.pt"
    assert checkpoint.exists()  # kept for a promotion

    search = Search.open(exp, cfg, console=Console(verbose=False))
    try:
        search.promote(search.store.attempt(first.id))
        search.poller.wait(search.ingest)
    finally:
        search.close()
    with Store.open_readonly(exp.db) as store:
        cand = store.find_candidate("behind")
        assert cand.status == "done" and cand.fitness is not None, (cand.status, cand.reason)
        assert cand.scores["promoted_from"]["rung"] == 1
        first, second = store.attempts(cand.id)
        rec = rf.read_result(root / second.dir / "result.h5")
        assert rec.status == "ok" and rec.steps_done == cfg.train.steps
        assert rec.env["resumed_from_step"] == info["step"]  # from the checkpoint, not from the start
        assert rec.curve.step[0] == 2 and info["step"] in rec.curve.step  # the curve goes on from the stopped one
    assert not checkpoint.exists()  # trained to the end: nothing to resume any more


# ---------------------------------------------------------------------------------- ASHA: a later arrival promotes


# DeltaNet whose output is zero for its first 20 training steps, so that it starts learning late: on the LM text
# at step 60 behind the reference and far ahead of a causal running mean (which is still near the characters'
# frequencies there, ~3 nats, measured here)
DELTANET_LATE_BY_20_STEPS = _deltanet("DeltaNet that starts mixing after 20 training steps.",
                                      "            out = out * (self._calls > 20).to(out.dtype)")
SLOW_RUNNING_MEANS = [_layer(f"A causal running mean ({i}), slowed in training by redundant matrix products.",
                             _BURN.format(n=100)) for i in (1, 2)]


def test_a_later_arrival_promotes_an_attempt_stopped_at_its_rung_and_it_resumes_in_the_same_search(tmp_path):
    """eta 2 at one rung at 0.3 of 200 steps, the loss alone deciding, the watchdog off so that only ASHA decides, one job at a time.
    The reference trains first; 'late' reaches the rung behind it (2 there, the best 1 goes on) and stops
    there; 'mean1', behind both (3, the best 1), stops; 'mean2', the search's last job, behind all (4, the
    best 2 go on), stops, and its arrival brings 'late' within the best 2: promoted while 'mean2' still runs
    (a running arrival counts), 'late' resumes from its checkpoint past the rung and trains to the end
    within the same search."""
    tokens = write_token_file(tmp_path / "tokens.bin", "the quick brown fox jumps over the lazy dog. " * 400)
    cfg = watched_config("promo", 3, task="lm", token_file=str(tokens), vocab_size=256)
    cfg.train.steps = 200
    cfg.watchdog.enabled = False
    e = cfg.early_stopping
    # the loss alone: by its fall at the rung 'late' (learning since step 20) would go on at once
    e.enabled, e.eta, e.first_rung_eta, e.rungs, e.drop_window = True, 2.0, 0.0, [0.3], 0.0
    root = tmp_path / "exp"
    run_search(root, cfg, {"late": DELTANET_LATE_BY_20_STEPS, "mean1": SLOW_RUNNING_MEANS[0],
                           "mean2": SLOW_RUNNING_MEANS[1]})
    with Store.open_readonly(root / "asiarch.db") as store:
        assert store.find_candidate("deltanet").status == "done"
        for name in ("mean1", "mean2"):
            info = stopped(store, name)
            assert info["reason"] == "rung" and info["rung"] == 1 and 60 <= info["step"] < cfg.train.steps, info
        late = store.find_candidate("late")
        assert late.status == "done" and late.fitness is not None, (late.status, late.reason)
        assert late.scores["promoted_from"]["rung"] == 1
        first, second = store.attempts(late.id)
        stopped_rec = rf.read_result(root / first.dir / "result.h5")
        resumed = rf.read_result(root / second.dir / "result.h5")
        assert stopped_rec.status == "stopped" and stopped_rec.env["stop"]["rung"] == 1
        assert resumed.status == "ok" and resumed.steps_done == cfg.train.steps
        assert resumed.env["resumed_from_step"] == stopped_rec.steps_done  # from the checkpoint
        events = store.events(limit=1000)
        promoted = [e["id"] for e in events
                    if e["candidate_id"] == late.id and "promoted past the rung" in e["message"]]
        mean2 = store.find_candidate("mean2").id
        ended = [e["id"] for e in events if e["candidate_id"] == mean2 and e["kind"] == "stopped"]
        assert len(promoted) == 1 and len(ended) == 1 and promoted[0] < ended[0]  # while 'mean2' still ran
