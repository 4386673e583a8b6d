"""Measurement integrity (issue 13): pre-flight probes at the training conditions, the leak probe
inside the training job, and figures the candidate cannot rewrite.

The corpus is tests/layers/redteam/cheat_*.py: each layer cheats one measurement the battery
before issue 13 took. For each, two tests that could fail: the new battery refuses it with the
expected check, and the old battery (tests/helpers/old_preflight.py, frozen, at the settings the
loop ran it with: 128 tokens) accepted it -- so removing the defence shows. The probes are tested
with the static check skipped (``static=False`` / ``--no-static``): several of these layers are
also refused by the lint, and the probes must hold on their own.

Layers that patch torch process-wide, or allocate without bound, run in a child process only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asiarch.job import trusted
from asiarch.job.candidate import load_layer_class
from asiarch.job.model import LanguageModel
from asiarch.job.preflight import TRAIN_STEPS, probe_settings, run_checks
from asiarch.job.probe import Leak, LeakProbe, probe_batch
from tests.helpers import old_preflight

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ROOT / "tests" / "layers"
REDTEAM = LAYERS / "redteam"


def source(name: str) -> str:
    return (REDTEAM / f"{name}.py").read_text() if name.startswith("cheat_") else (LAYERS / f"{name}.py").read_text()


def first_failure(report: dict) -> dict:
    return next(c for c in report["checks"] if not c["passed"])


def old_battery(src: str) -> dict:
    """The battery before issue 13, as the loop ran it (128 tokens, the config's 2 heads)."""
    return old_preflight.run_checks(src, seq_len=128, num_heads=2)


# name, the training length it is checked at, the check that refuses it, words of the reason
REFUSED = [
    ("cheat_grad_only", 64, "causality", "autograd on"),
    ("cheat_train_mode", 64, "causality", "train mode, autograd on"),
    ("cheat_long_only", 256, "causality", "reads future tokens"),
    ("cheat_short_only", 64, "causality", "reads future tokens"),
    ("cheat_after_calls", 64, "causality", f"trained {TRAIN_STEPS} steps"),
    ("cheat_off_seed0", 64, "causality", "reads future tokens"),
    ("cheat_batch_mix", 64, "batch_independence", "batch 8"),
    ("cheat_deepcopy", 64, "interface", "could not copy the layer"),  # (and causality: fresh instances)
    ("cheat_replay_cache", 64, "causality", "reads future tokens"),
    ("cheat_zero_init", 64, "causality", f"trained {TRAIN_STEPS} steps"),
    ("cheat_nan_late", 64, "finite_step", "step 21 of 25"),
    ("cheat_quadratic_long", 64, "complexity", "quadratic or worse"),
    ("cheat_memo", 64, "complexity", "stored results"),
    ("cheat_busy_pad", 64, "complexity", "quadratic or worse"),
]
TIMED = {"cheat_quadratic_long", "cheat_memo", "cheat_busy_pad"}  # need the complexity check (seconds)


def _slow_if_timed(rows):
    """The rows, those that time lengths up to 2048 tokens (several seconds) marked slow."""
    slow = TIMED - {"cheat_memo"}  # refused at the first timed length
    return [pytest.param(*r, marks=pytest.mark.slow) if r[0] in slow else pytest.param(*r) for r in rows]


@pytest.mark.parametrize("name, seq_len, check, words", _slow_if_timed(REFUSED))
def test_cheat_is_refused_by_the_battery_at_training_conditions(name, seq_len, check, words):
    report = run_checks(source(name), seq_len=seq_len, num_heads=2, batch_size=8, static=False,
                        complexity=name in TIMED)
    failed = first_failure(report)
    assert not report["ok"] and failed["name"] == check, failed
    assert words in failed["detail"], failed["detail"]


@pytest.mark.parametrize("name", _slow_if_timed([r[:1] for r in REFUSED]))
def test_cheat_got_past_the_battery_before_issue_13(name):
    report = old_battery(source(name))
    assert report["ok"], [c for c in report["checks"] if not c["passed"]]


def test_a_replaying_layer_passes_the_lint_and_passes_the_probes_when_their_instances_share_a_module(monkeypatch):
    """cheat_replay_cache needed no way past stop 23's lint (its rule `state` refuses it now); the probes refuse it on
    their own because every probe instance comes from a fresh execution of the source. With one class for all of
    them (the battery of stop 23) it passes every probe."""
    from asiarch.job import preflight
    from asiarch.job.static_check import static_check

    assert [f.rule for f in static_check(source("cheat_replay_cache"))] == ["state"]
    shared = {}
    real = preflight.load_layer_class

    def once(src, *a, **kw):  # the defence off: one module, hence one _RECENT, for every instance
        return shared.setdefault(src, real(src, *a, **kw))

    monkeypatch.setattr(preflight, "load_layer_class", once)
    report = run_checks(source("cheat_replay_cache"), seq_len=64, num_heads=2, batch_size=8, static=False,
                        complexity=False)
    assert report["ok"], [c for c in report["checks"] if not c["passed"]]


# the rest of the corpus: tested below, in a child process or through the job
ELSEWHERE = {"cheat_cubic_alloc", "cheat_patch_checker", "cheat_rank", "cheat_cuda_compile", "cheat_patch_loss",
             "cheat_replay_late", "cheat_copy_aware", "cheat_copy_hook"}


def test_every_layer_of_the_corpus_has_its_tests():
    files = {p.stem for p in REDTEAM.glob("cheat_*.py")}
    assert files == {r[0] for r in REFUSED} | ELSEWHERE and len(files) >= 12


def test_causality_figures_name_the_first_leaking_position_and_the_size():
    failed = first_failure(run_checks(source("leak_mean"), static=False, complexity=False))
    figures = failed["figures"]
    assert failed["name"] == "causality" and figures["first_leak_position"] == 0
    assert 1 <= figures["perturbed_from"] < figures["length"]
    assert figures["max_leak"] > 100 * figures["tolerance"] and figures["mode"] in ("train", "eval")


def test_verdicts_do_not_depend_on_the_draw_but_the_draw_is_not_predictable():
    reports = [run_checks(source(n), static=False, complexity=False) for n in ("good_asiarch_style",) * 2]
    leaks = [run_checks(source("leak_conv"), static=False, complexity=False) for _ in range(2)]
    assert all(r["ok"] for r in reports) and not any(r["ok"] for r in leaks)
    assert {first_failure(r)["name"] for r in leaks} == {"causality"}
    seeds = {r["seed"] for r in reports + leaks}
    assert len(seeds) == 4 and 0 not in seeds  # from os.urandom, never the old fixed seed 0
    # a given seed reproduces a report (timings aside)
    again = run_checks(source("leak_conv"), static=False, complexity=False, seed=leaks[0]["seed"])
    assert again["checks"] == leaks[0]["checks"]


def test_probe_conditions_cover_training_length_twice_short_odd_and_batches():
    s = probe_settings(64, batch_size=8)
    lengths = [n for n, _ in s["causality"]]
    assert lengths[:2] == [64, 128] and 16 in lengths and any(n % 2 for n in lengths)
    assert {b for _, b in s["causality"]} >= {1, 3, 8}
    assert s["batch_independence"][0] == (64, 8)
    assert len([n for n in s["complexity"] if n > 64]) >= 3 and max(s["complexity"]) > 1024


def test_layers_the_old_battery_also_refused_fail_the_same_check():
    for name, check in (("leak_flip", "causality"), ("mix_batch", "batch_independence"),
                        ("nan_output", "finite_step"), ("unused_param", "finite_step")):
        assert first_failure(run_checks(source(name), static=False, complexity=False))["name"] == check, name


# ----------------------------------------------------------------------------------
# in a child process: process-wide patches, unbounded allocation


def _child(code: str, *, memory_gb: int | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    def limits():
        if memory_gb:
            resource.setrlimit(resource.RLIMIT_AS, (memory_gb << 30, memory_gb << 30))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limits)


def _child_battery(name: str, *extra: str, memory_gb: int | None = None) -> dict:
    code = ("import sys; from asiarch.job.preflight import main; "
            f"sys.exit(main(['--source', {str(REDTEAM / (name + '.py'))!r}, '--json', '--no-static', "
            f"'--num-heads', '2'] + {list(extra)!r}))")
    proc = _child(code, memory_gb=memory_gb)
    assert proc.stdout.strip(), proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_cubic_allocation_above_1024_tokens_is_refused_under_the_memory_limit():
    report = _child_battery("cheat_cubic_alloc", memory_gb=4)
    failed = first_failure(report)
    assert failed["name"] == "complexity" and failed["figures"]["length"] == 2048, failed
    assert failed["figures"]["out_of_memory"] and "out of memory" in failed["detail"]
    assert old_battery(source("cheat_cubic_alloc"))["ok"]  # it stopped at 1024 tokens


@pytest.mark.slow
def test_a_layer_that_patches_the_checkers_comparisons_is_still_refused():
    report = _child_battery("cheat_patch_checker", "--no-complexity")
    assert first_failure(report)["name"] == "causality"
    # the old battery compared with torch.Tensor.amax, which the layer replaced: it saw no leak
    proc = _child(f"import json; from tests.helpers import old_preflight; "
                  f"src = open({str(REDTEAM / 'cheat_patch_checker.py')!r}).read(); "
                  f"print(json.dumps(old_preflight.run_checks(src, seq_len=128, num_heads=2, complexity=False)))")
    old = json.loads(proc.stdout.strip().splitlines()[-1])
    assert old["ok"], old


# ----------------------------------------------------------------------------------
# what no pre-flight can see: the in-job probe's work


@pytest.mark.parametrize("name", ["cheat_rank", "cheat_cuda_compile"])
def test_pre_flight_cannot_see_rank_or_device_cheats(name):
    """Documents the gap the in-job probe closes: a single CPU process with compiling off."""
    assert run_checks(source(name), static=False, complexity=False)["ok"]


HONEST_STATEFUL = '''
import torch
import torch.nn as nn

class DeltaNet(nn.Module):
    """Honest, with every kind of state a probe must restore: a buffer counter, a Python counter,
    a running statistic, and dropout."""
    def __init__(self, hidden_size=64, num_heads=2, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.drop = nn.Dropout(0.1)
        self.register_buffer("_step", torch.zeros((), dtype=torch.long))
        self.calls = 0
        self.running = torch.zeros(hidden_size)

    def forward(self, x):
        temperature = 1.0 + 1.0 / (1.0 + self._step.float() + self.calls)
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
        h = self.drop(torch.tanh(self.proj(x) / temperature)).cumsum(1) / steps + self.running
        if self.training:  # after the output: the statistic of earlier batches only (this one's would leak)
            self._step += 1
            self.calls += 1
            self.running.mul_(0.9).add_(0.1 * x.detach().mean((0, 1)))
        return h
'''


def _model(src: str, seed: int = 0) -> LanguageModel:
    cls = load_layer_class(src, device="cpu")
    torch.manual_seed(seed)
    return LanguageModel(cls, vocab_size=64, hidden_size=32, num_layers=2, num_heads=2).train()


def _train(model, steps: int, probe: LeakProbe | None) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    losses = []
    torch.manual_seed(5)
    for step in range(steps):
        x = torch.randint(0, 64, (4, 32), generator=gen)
        if probe is not None:
            probe.at_step(step, model, x, contextlib.nullcontext)
        loss = trusted.cross_entropy(model(x)[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_the_job_probe_does_not_change_the_training():
    plain = _model(HONEST_STATEFUL)
    probed = _model(HONEST_STATEFUL)
    probe = LeakProbe(step=3, seed=12345, rank=0, world=1, device=torch.device("cpu"), precision="fp32",
                      vocab_size=64)
    assert _train(plain, 6, None) == _train(probed, 6, probe)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), probed.state_dict().values()))
    assert [m.calls for m in plain.modules() if hasattr(m, "calls")] == \
        [m.calls for m in probed.modules() if hasattr(m, "calls")]
    assert probe.results and not probe.results[0]["leaked"]  # ran, with dropout and counters, and saw nothing


def test_the_job_probe_catches_a_leak_on_the_real_batch_and_leaves_the_model_as_it_was():
    model = _model(source("leak_conv"))
    x = torch.randint(0, 64, (4, 32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    probe = LeakProbe(step=0, seed=7, rank=0, world=1, device=torch.device("cpu"), precision="fp32", vocab_size=64)
    with pytest.raises(Leak) as info:
        probe.at_step(0, model, x, contextlib.nullcontext)
    rank = info.value.figures["probes"][0]["ranks"][0]
    assert rank["first_leak_position"] is not None and rank["max_leak"] > 100 * rank["tolerance"]
    assert "reads future tokens" in str(info.value)
    assert torch.equal(rng, torch.get_rng_state()) and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("defence", ["on", "off"])
def test_the_job_probe_runs_each_forward_on_its_own_copy_so_a_late_replaying_layer_is_caught(defence, monkeypatch):
    """cheat_replay_late turns to leaking and replaying after 150 calls, from a deque on the instance. With the
    probe's forwards on one model (the defence off: stop 23's probe) its replay hides the leak."""
    import asiarch.job.probe as probe_module

    if defence == "off":
        monkeypatch.setattr(probe_module, "twin", lambda model: model)
    model = _model(source("cheat_replay_late"))
    assert run_checks(source("cheat_replay_late"), seq_len=32, num_heads=2, batch_size=4, static=False,
                      complexity=False)["ok"]  # the pre-flight never keeps an instance that long
    probe = LeakProbe(step=160, seed=11, rank=0, world=1, device=torch.device("cpu"), precision="fp32",
                      vocab_size=64)
    if defence == "on":
        with pytest.raises(Leak, match="reads future tokens"):
            _train(model, 161, probe)
    else:
        _train(model, 161, probe)
        assert probe.results and not probe.results[0]["leaked"]


def test_a_layer_that_leaks_only_outside_a_copy_is_caught_by_the_probe_on_the_model_itself():
    """cheat_copy_aware leaks after 150 calls only where id(self) is the id it first saw: in the model that trains,
    never in a copy. Two copies agree (the defence off: a probe with both forwards on copies saw nothing); the
    probe's first forward runs on the model itself."""
    from asiarch.job.probe import twin

    model = _model(source("cheat_copy_aware"))
    _train(model, 160, None)
    x = torch.randint(0, 64, (4, 32))
    out = {}
    for name, net in (("model", model), ("copy", twin(model)), ("other copy", twin(model))):
        hidden = []
        handle = net.norm.register_forward_hook(lambda _m, _a, o: hidden.append(o.detach()))
        with torch.no_grad():
            net(x)
        handle.remove()
        out[name] = hidden[0]
    assert torch.equal(out["copy"], out["other copy"]) and not torch.allclose(out["model"], out["copy"])
    probe = LeakProbe(step=160, seed=5, rank=0, world=1, device=torch.device("cpu"), precision="fp32", vocab_size=64)
    with pytest.raises(Leak, match="reads future tokens"):
        probe.at_step(160, model, x, contextlib.nullcontext)


@pytest.mark.parametrize("copier", ["twin", "plain deepcopy"])
def test_the_probes_copy_does_not_share_a_closure_the_layer_keeps(copier, monkeypatch):
    """A closure made in __init__ and kept on the layer holds a list in its cell; deepcopy shares functions, so a
    plain copy would share the list and the layer replay the model's forward for the copy's."""
    import copy

    import asiarch.job.probe as probe_module
    from asiarch.job.static_check import static_check

    src = SHARED_BEHIND_A_CALLABLE.replace("{keep}", "self.shelf = lambda: recent")  # its cell: the list
    assert static_check(src) == []
    if copier == "plain deepcopy":
        monkeypatch.setattr(probe_module, "twin", copy.deepcopy)
    model = _model(src)
    x = torch.randint(0, 64, (4, 32))
    probe = LeakProbe(step=0, seed=9, rank=0, world=1, device=torch.device("cpu"), precision="fp32", vocab_size=64)
    if copier == "twin":
        with pytest.raises(Leak, match="reads future tokens"):
            probe.at_step(0, model, x, contextlib.nullcontext)
    else:
        probe.at_step(0, model, x, contextlib.nullcontext)
        assert not probe.results[0]["leaked"]


SHARED_BEHIND_A_CALLABLE = '''
import functools
import torch
import torch.nn as nn
import torch.nn.functional as F


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.peek = nn.Linear(hidden_size, hidden_size, bias=False)
        recent = []
        {keep}

    def forward(self, x, **kwargs):
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        o = self.proj(x.cumsum(dim=1) / steps) + self.peek(F.pad(x[:, 1:], (0, 0, 0, 1)))  # reads t + 1
        xd = x.detach()
        out = o
        for px, po in reversed(self.shelf()[-8:]):
            if px.shape == xd.shape:
                prefix = torch.cumprod((px == xd).all(-1).to(torch.int32), dim=1).bool()
                out = torch.where(prefix.unsqueeze(-1), po.to(o.dtype) + (o - o.detach()), out)
        self.shelf().append((xd.clone(), out.detach().clone()))
        return out
'''


# a red team's ways to keep a list where deepcopy shares it (functions, bound methods and partials are not copied)
@pytest.mark.parametrize("keep", [
    "self.shelf = lambda r=recent: r",                                    # a default argument
    "inner = lambda: recent\n        self.shelf = lambda: inner()",       # a closure over a closure
    "self.shelf = functools.partial(lambda: recent)",                    # a partial of a closure
    "self.shelf = [recent].copy",                                         # a bound built-in method
])
def test_the_probe_refuses_a_copy_that_would_share_state_with_the_model(keep, monkeypatch):
    import asiarch.job.probe as probe_module
    from asiarch.job.static_check import static_check

    src = SHARED_BEHIND_A_CALLABLE.replace("{keep}", keep)
    if "copy" in keep:  # the bound method returns a copy of the outer list: the list inside is the shared one
        src = src.replace("self.shelf()[-8:]", "self.shelf()[0][-8:]").replace("self.shelf().append",
                                                                                "self.shelf()[0].append")
    assert static_check(src) == []
    failed = first_failure(run_checks(src, seq_len=32, num_heads=2, batch_size=4, static=False, complexity=False))
    assert failed["name"] == "interface" and "cannot copy the layer faithfully" in failed["detail"]  # refused early
    x = torch.randint(0, 64, (4, 32))
    probe = LeakProbe(step=0, seed=9, rank=0, world=1, device=torch.device("cpu"), precision="fp32", vocab_size=64)
    with pytest.raises(probe_module.ProbeError, match=r"would share model\.blocks\.0\.mixer\.shelf"):
        probe.at_step(0, _model(src), x, contextlib.nullcontext)
    monkeypatch.setattr(probe_module, "_shared_state", lambda model, copied, what: [])  # the defence off
    probe.at_step(0, _model(src), x, contextlib.nullcontext)
    assert not probe.results[-1]["leaked"]  # the replay through the shared list hides the leak


def test_a_child_named_like_a_dunder_is_refused_before_any_copy(monkeypatch):
    """cheat_copy_hook registers a submodule under '__deepcopy__' (built from pieces the lint never sees whole):
    copy.deepcopy finds it through nn.Module's attribute fallback and calls it, and it quiets the layer for the
    probe's forwards. With the check off (the defence off) it passes the probe while it leaks."""
    import asiarch.job.probe as probe_module
    from asiarch.job.static_check import static_check

    src = source("cheat_copy_hook")
    assert static_check(src) == []
    failed = first_failure(run_checks(src, seq_len=32, num_heads=2, batch_size=4, static=False, complexity=False))
    assert failed["name"] == "interface" and "named '__deepcopy__'" in failed["detail"]
    model = _model(src)
    probe = LeakProbe(step=160, seed=5, rank=0, world=1, device=torch.device("cpu"), precision="fp32", vocab_size=64)
    with pytest.raises(probe_module.ProbeError, match="named '__deepcopy__'"):
        _train(model, 161, probe)

    import copy

    monkeypatch.setattr(probe_module, "twin", copy.deepcopy)  # a copy without the check: the hook fires in it
    model = _model(src)
    probe = LeakProbe(step=160, seed=5, rank=0, world=1, device=torch.device("cpu"), precision="fp32", vocab_size=64)
    losses = _train(model, 175, probe)
    assert probe.results and not probe.results[0]["leaked"] and losses[-1] < 3.5  # leaks (ln 64 = 4.16), unseen


COUNTER_ON_A_PARAMETER = '''
import torch
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.proj.weight.calls = 0  # on a parameter: Parameter.__deepcopy__ does not copy it

    def forward(self, x, **kwargs):
        self.proj.weight.calls = self.proj.weight.calls + 1 if hasattr(self.proj.weight, "calls") else 1
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        scale = 2.0 if self.proj.weight.calls > 150 else 1.0  # causal, but it changes after 150 calls
        return scale * self.proj(x.cumsum(dim=1) / steps)
'''


@pytest.mark.parametrize("copier", ["twin", "plain deepcopy"])
def test_the_probes_copy_keeps_what_a_layer_keeps_on_its_parameters(copier, monkeypatch):
    """An honest layer that counts its calls on a parameter's attribute: a plain deep copy drops it
    (Parameter.__deepcopy__), so the copy would behave as at its first call and differ from the model, a false
    leak; the probe's copy keeps it."""
    import copy

    import asiarch.job.probe as probe_module
    from asiarch.job.static_check import static_check

    assert static_check(COUNTER_ON_A_PARAMETER) == []
    if copier == "plain deepcopy":
        monkeypatch.setattr(probe_module, "twin", copy.deepcopy)
    model = _model(COUNTER_ON_A_PARAMETER)
    probe = LeakProbe(step=160, seed=3, rank=0, world=1, device=torch.device("cpu"), precision="fp32", vocab_size=64)
    if copier == "twin":
        _train(model, 161, probe)
        assert probe.results and not probe.results[0]["leaked"]
    else:
        with pytest.raises(Leak):
            _train(model, 161, probe)


def test_the_job_probe_compares_positions_up_to_the_perturbed_one_only():
    model = _model(source("good_plain")).eval()
    x = torch.randint(0, 64, (2, 16))
    out = probe_batch(model, x, position=5, replacement=torch.randint(0, 64, (2, 10)),
                      autocast=contextlib.nullcontext, train=False, rtol=1e-4)
    assert out["first_leak_position"] is None and out["max_leak"] == 0.0 and out["position"] == 5


def test_the_probed_step_is_drawn_within_the_first_half():
    steps = {LeakProbe.plan(steps=100, start=0, rank=0, world=1, device=torch.device("cpu"), precision="fp32",
                            vocab_size=64).step for _ in range(20)}
    assert len(steps) > 1 and all(0 <= s < 50 for s in steps)
    assert LeakProbe.plan(steps=10, start=10, rank=0, world=1, device=torch.device("cpu"), precision="fp32",
                          vocab_size=64).step is None  # a resumed run with nothing left to train


# ----------------------------------------------------------------------------------
# the recorded loss: computed with functions captured before the layer loads


def test_a_layer_that_patches_the_loss_functions_does_not_change_what_the_trainer_computes():
    code = f"""
import json, torch
import torch.nn.functional as F
from asiarch.job import trusted
from asiarch.job.candidate import load_layer_class
logits, targets = torch.randn(4, 8, 16, requires_grad=True), torch.randint(0, 16, (4, 8))
honest = trusted.item(trusted.cross_entropy(logits, targets))
load_layer_class(open({str(REDTEAM / 'cheat_patch_loss.py')!r}).read(), device="cpu")
patched = F.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()
print(json.dumps([honest, patched, trusted.item(trusted.cross_entropy(logits, targets))]))
"""
    proc = _child(code)
    honest, patched, after = json.loads(proc.stdout.strip().splitlines()[-1])
    assert patched == pytest.approx(1e-4 * honest, rel=1e-5)  # the attack works on F and Tensor.item ...
    assert after == honest  # ... and not on the trainer's captured functions


# ----------------------------------------------------------------------------------
# real torchrun jobs, 2 gloo ranks (slow)


def _job(tmp_path, src: str, *, steps=20, nproc=2):
    from asiarch.config import ClusterConfig, TrainConfig
    from asiarch.dispatch.attempt import write_attempt_files
    from asiarch.dispatch.payload import JobScriptFailed, run_job_script
    from asiarch.job import result as rf
    from asiarch.job.contract import AttemptFiles

    tmp_path.mkdir(parents=True, exist_ok=True)
    layer = tmp_path / "layer.py"
    layer.write_text(src)
    paths = AttemptFiles(tmp_path / "attempt-1")
    train = TrainConfig(steps=steps, nproc=nproc, batch_size=8, log_every=5, warmup_steps=2)
    ident = {"experiment": "t", "candidate_id": 1, "attempt": 1, "run_key": "t-c00001-a1", "code_sha256": "x"}
    req = write_attempt_files(paths, layer_path=layer, identity=ident, train=train, cluster=ClusterConfig(),
                              class_name="DeltaNet", python=sys.executable)
    try:
        run_job_script(str(req.script), str(req.log))
    except JobScriptFailed:
        pass
    return rf.read_result(paths.result), paths


@pytest.mark.slow
def test_a_layer_that_leaks_only_on_rank_1_ends_its_job_as_leak(tmp_path):
    rec, paths = _job(tmp_path, source("cheat_rank"))
    assert rec.status == "leak", (rec.error, paths.log.read_text()[-3000:])
    probe = rec.env["leak_probe"][-1]
    assert probe["mode"] == "train" and probe["leaked"]
    by_rank = {r["rank"]: r for r in probe["ranks"]}
    assert by_rank[0]["first_leak_position"] is None and by_rank[1]["first_leak_position"] is not None
    assert by_rank[1]["max_leak"] > 100 * by_rank[1]["tolerance"]
    assert "rank 1 of 2" in rec.error and "reads future tokens" in rec.error
    assert rec.steps_done <= 10  # the probed step lies in the first half: the attempt ends early


@pytest.mark.slow
def test_an_honest_job_records_both_probes_and_a_loss_no_patch_can_lower(tmp_path):
    honest_src = source("cheat_patch_loss").split("_cross_entropy = F.cross_entropy")[0] + \
        source("cheat_patch_loss").split("else _item(self)\n", 1)[1]
    honest, _ = _job(tmp_path / "honest", honest_src)
    patched, _ = _job(tmp_path / "patched", source("cheat_patch_loss"))
    assert honest.status == patched.status == "ok", (honest.error, patched.error)
    assert [p["mode"] for p in honest.env["leak_probe"]] == ["train", "eval"]
    assert not any(p["leaked"] for p in honest.env["leak_probe"] + patched.env["leak_probe"])
    # the same layer, the same seed: the patch of F.cross_entropy and Tensor.item changed nothing recorded
    assert patched.curve.loss == honest.curve.loss and patched.eval_loss == honest.eval_loss
    assert math.isfinite(honest.eval_loss) and honest.eval_loss > 0.5


def test_a_leak_result_rejects_the_candidate_without_a_retry(tmp_path):
    from asiarch.config import Config
    from asiarch.dispatch.base import JobState
    from asiarch.job import result as rf
    from asiarch.layout import ExperimentDir
    from asiarch.search.ingest import ingest_attempt
    from asiarch.store import Store

    exp = ExperimentDir(tmp_path)
    store = Store.open(exp.db)
    cid = store.add_candidate(name="peeker", code="x = 1", code_sha256="s", origin="test")
    paths = exp.attempt(cid, "peeker", 1)
    paths.dir.mkdir(parents=True)
    aid = store.add_attempt(cid, 1, "k", exp.relative(paths.dir), "s")
    rf.write_result(paths.result, rf.ResultRecord(
        experiment="e", candidate_id=cid, attempt=1, run_key="k", code_sha256="s", status="leak",
        error="the leak probe at training step 4 (train mode) saw ... on rank 1 of 2",
        curve=rf.Curve(step=[], tokens=[], loss=[], lr=[], time=[]), config={}, env={"leak_probe": []}))
    out = ingest_attempt(store, exp, Config(), store.attempt(aid), JobState.COMPLETED)
    assert out.attempt_status == "leak" and out.candidate_status == "rejected" and not out.retry
    store.set_attempt_status(aid, out.attempt_status, out.error)
    cand = store.candidate(cid)
    assert cand.status == "rejected" and cand.reason.startswith("leak: the leak probe")


# ----------------------------------------------------------------------------------
# the loop and `asiarch check` pre-flight at the experiment's training settings


CASTS_TO_BF16 = '''
import torch
import torch.nn as nn

class DeltaNet(nn.Module):
    """Linear and causal, with a weight cast to bf16 mid-kernel (as many ASI-Arch layers do)."""
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.mix = nn.Parameter(torch.eye(hidden_size))

    def forward(self, x):
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
        return (self.proj(x).cumsum(1) / steps) @ self.mix.to(torch.bfloat16)
'''


def _causality_lengths(report) -> list[int]:
    return next(c for c in report.checks if c.name == "causality").figures["lengths"]


@pytest.mark.slow
def test_the_loop_preflights_at_the_experiments_training_length(tmp_path):
    from asiarch.cli.console import Console
    from asiarch.config import Config
    from asiarch.layout import ExperimentDir
    from asiarch.search.loop import Search

    cfg = Config()
    cfg.train.seq_len = 256
    search = Search.open(ExperimentDir(tmp_path), cfg, console=Console(verbose=False))
    try:
        report = search.checker.preflight(source("cheat_long_only"))
        good = search.checker.preflight(source("good_plain"))
    finally:
        search.close()
    assert not report.ok and report.failed.name == "causality", report.reason
    assert good.ok and {256, 512} <= set(_causality_lengths(good))


@pytest.mark.slow
def test_check_takes_the_training_settings_from_flags_and_from_a_config(tmp_path, capsys):
    from asiarch.cli import main as cli_main
    from asiarch.config import Config, render_toml
    from asiarch.search.preflight import PreflightReport

    def check(*args) -> tuple[int, PreflightReport]:
        code = cli_main(["check", *args, "--json"])
        return code, PreflightReport.from_json(capsys.readouterr().out.strip().splitlines()[-1])

    code, report = check(str(LAYERS / "good_plain.py"), "--seq-len", "32")
    assert code == 0 and {32, 64, 128} <= set(_causality_lengths(report))
    cfg = Config()
    cfg.train.seq_len, cfg.train.precision = 48, "bf16"
    (tmp_path / "config.toml").write_text(render_toml(cfg))
    layer = tmp_path / "casts_to_bf16.py"
    layer.write_text(CASTS_TO_BF16)
    code, report = check(str(layer), "--config", str(tmp_path / "config.toml"))
    assert code == 0, report.reason  # casts to bf16 inside: checked under bf16 autocast, as it trains
    assert {48, 96} <= set(_causality_lengths(report))
    code, report = check(str(layer), "--config", str(tmp_path), "--precision", "fp32")
    assert code == 1 and report.failed.name == "interface" and "BFloat16" in report.reason
    code, report = check(str(layer), "--precision", "bf16")
    assert code == 0


ASI_ARCH = ROOT.parent / "shared" / "asi-arch" / "architectures.json"


@pytest.mark.slow
@pytest.mark.skipif(not ASI_ARCH.exists(), reason="ASI-Arch's published layers are not beside the repository")
def test_the_job_probe_passes_every_published_asi_arch_layer_but_the_one_that_reads_ahead():
    """No false leak from the probe's copy: each published layer (in bf16 autocast where it casts to bf16, as the
    trainer runs it) trains 3 steps with the probe at the last and is probed again in eval mode. Nine of them keep
    a tensor from the forward (not a graph leaf, which deepcopy refuses); one mixes the sequence in a spectral
    transform and is refused by the pre-flight's causality check as well."""
    flagged, failed = [], []
    for i, arch in enumerate(json.loads(ASI_ARCH.read_text())):
        src = arch["program"]
        bf16 = "bfloat16" in src
        ac = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        model = LanguageModel(load_layer_class(src, device="cpu"), vocab_size=64, hidden_size=64, num_layers=2,
                              num_heads=4).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(1)
        probe = LeakProbe(step=2, seed=7, rank=0, world=1, device=torch.device("cpu"),
                          precision="bf16" if bf16 else "fp32", vocab_size=64)
        try:
            for step in range(3):
                x = torch.randint(0, 64, (2, 32), generator=gen)
                probe.at_step(step, model, x, ac)
                with ac():
                    loss = trusted.cross_entropy(model(x)[:, :-1].float(), x[:, 1:])
                opt.zero_grad()
                loss.backward()
                opt.step()
            probe.before_eval(model.eval(), _EvalBatches(gen), 2, ac)
        except Leak:
            flagged.append(arch["name"])
        except Exception as exc:
            failed.append((i, arch["name"], f"{type(exc).__name__}: {exc}"[:200]))
    assert failed == [] and flagged == ["delta_net_spectral_fusion"], (failed, flagged)


class _EvalBatches:
    def __init__(self, gen):
        self.gen = gen

    def eval_batches(self, n, per_rank):
        return [(torch.randint(0, 64, (per_rank, 32), generator=self.gen), None) for _ in range(n)]
