"""The watchdog and early stopping live, against real jobs: the local scheduler (submitit), torchrun with
2 gloo ranks, real HDF5 results and progress records, the real SQLite store; one search on the test Slurm.

Each watchdog reason is provoked by a layer or a setting, named where it is used:

- ``slow``: SLOW_IN_TRAINING does redundant matrix products in training only (so the pre-flight, which
  never runs the training batch of 4 per rank, passes it quickly): honest output, ~10x fewer tokens/s;
- ``stalled``: STALLS_AFTER_20_STEPS spends seconds per step after its 20th, so its progress record stops
  updating for longer than watchdog.stall_s (25 s; every honest job of these searches writes one at
  least every few seconds once running, and its first within ~10 s of starting, ~20 s on a loaded machine);

The trainer writes a progress record at most every 2 s, so the watchdog only sees jobs that train for
several seconds: the curves here are 100-400 steps, and the misbehaving layers are slow in training.
- ``diverging``: not provoked live yet (the test is skipped, with why): DIVERGES_AFTER_30_STEPS adds a
  causal pattern that changes and grows every step after the 30th, but on MQAR the runs fall back to the
  values' marginal and the loss never rises 10 % above its lowest; the rule is covered by the pure tests;
- ``implausible``: the LM task with watchdog.implausible_floor set above any loss these runs reach
  (the configured LM floor): the rule then fires for every honest candidate past warm-up, which is the
  point: the same search shows the reference baseline is never stopped although the rule fires for it.
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
# after its 30th training step a pattern that changes every step (causal: a function of the position and the
# step only) is added with a growing amplitude: the model cannot learn it away, so the information in the
# residual stream drowns a little more each step and the loss climbs, as a diverging run's does
DIVERGES_AFTER_30_STEPS = _layer(
    "A causal running mean drowned, after 30 training steps, by a growing pattern that changes every step.",
    '''            scale = torch.clamp(self._calls.to(x.dtype) - 30.0, min=0.0) * 0.1
            dims = torch.arange(x.shape[2], dtype=x.dtype, device=x.device).view(1, 1, -1)
            out = out + scale * torch.sin(steps * (dims + 1.0) * 0.37 * self._calls.to(x.dtype))
''' + _BURN.format(n=100))

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
    after 5 steps against one peer (the reference, trained first)."""
    cfg = small_config(name, candidates, steps=100, log_every=2, **train)
    w = cfg.watchdog
    w.enabled, w.min_peers, w.warmup_fraction, w.stall_s = True, 1, 0.05, 25.0
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


@pytest.mark.skip(reason="not provoked live yet: on MQAR at these sizes every run falls back to the values' "
                         "marginal (~3.5 nats), so neither DIVERGES_AFTER_30_STEPS nor lr 0.5 raised a loss 10 % "
                         "above its lowest over 5 points; needs an LM run or a layer that makes the logits "
                         "confidently wrong")
def test_a_diverging_layer_is_stopped_as_diverging_before_the_trainers_own_check(tmp_path):
    cfg = watched_config("div", 1, divergence_factor=100.0)
    root = tmp_path / "exp"
    run_search(root, cfg, {"diverger": DIVERGES_AFTER_30_STEPS})
    with Store.open_readonly(root / "asiarch.db") as store:
        info = stopped(store, "diverger")
        assert info["reason"] == "diverging", info
        a = store.attempts(store.find_candidate("diverger").id)[-1]
        rec = rf.read_result(root / a.dir / "result.h5")
        losses = rec.curve.loss
        assert rec.status == "stopped" and losses[-1] > min(losses) * (1 + cfg.watchdog.diverging_rise)
        assert rec.curve.step[-1] > 30  # it rose after the 30th step, as the layer makes it


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
def test_implausible_below_the_lm_floor_and_the_reference_is_never_stopped(where, tmp_path, request):
    """The LM task with watchdog.implausible_floor = 50 nats, above any loss these runs reach (ln 256 = 5.5 at
    the start): the configured floor says every loss is too good to be true, so the rule fires for the
    honest candidate once past warm-up and would for the reference, which trains to the end regardless."""
    if where == "slurm":
        request.getfixturevalue("slurm_cluster")
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
    root = tmp_path / "exp"
    run_search(root, cfg, {})
    with Store.open_readonly(root / "asiarch.db") as store:
        ref = store.find_candidate("deltanet")
        assert ref.status == "done" and ref.fitness is not None  # trained to the end: never stopped
        (cand,) = [c for c in store.candidates() if c.origin != "baseline" and store.attempts(c.id)]
        info = stopped(store, cand.name)
        assert info["reason"] == "implausible" and "below the floor 50" in info["message"], info
        assert info["step"] >= math.ceil(cfg.watchdog.warmup_fraction * cfg.train.steps)
        assert "re-probe it for leaks" in cand.reason
        a = store.attempts(cand.id)[-1]
        assert rf.read_result(root / a.dir / "result.h5").env["stop"]["reason"] == "implausible"


# ---------------------------------------------------------------------------------- ASHA: stopped at a rung, promoted


def test_stopped_at_a_rung_with_its_checkpoint_then_promoted_and_resumed_from_it(tmp_path):
    """early_stopping on (eta 3, one rung at 0.3 of the steps), the watchdog off so that only ASHA decides:
    RUNNING_MEAN reaches the rung ahead of the reference and continues; DELTANET_COPY reaches it as the third,
    behind RUNNING_MEAN, is outside the best max(1, 3 // 3) = 1 and stops there with its checkpoint. Promoted
    (Search.promote, what the watchdog calls when later arrivals bring an attempt within the best n // eta),
    it resumes from the checkpoint, is not judged at its rung again, and trains to the end."""
    cfg = watched_config("asha", 2)
    cfg.train.steps = 200
    cfg.watchdog.enabled = False
    e = cfg.early_stopping
    e.enabled, e.eta, e.rungs = True, 3.0, [0.3]
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
    checkpoint = exp.layer_file(cand.id, cand.name).parent / "checkpoint.pt"
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
