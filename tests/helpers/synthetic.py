"""A synthetic experiment directory of any size, written through the project's own writers.

``make_experiment(root, n)`` fills ``root`` the way a long search would: the two baselines,
then ``n`` candidates whose parents are sampled as ASI-Arch does (the best ten of a pool of
the fifty best, rebuilt every fifty results), most of them trained (a real HDF5 result file
per attempt, written by :func:`asiarch.job.result.write_result`, and the same store rows the
loop writes), some rejected by pre-flight, some failed (with a failed result file and a
traceback), a few retried after a timeout, and the last ones still queued or running.

It uses the store's own methods, with ``synchronous = OFF`` on the generator's connection
(a test fixture, not an experiment: durability does not matter here) and ``os.fsync``
skipped while result files are written; 2,000 candidates take a few seconds.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import random
import time
import types
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np

from asiarch.config import demo_config, render_toml
from asiarch.search.fitness import Reference, bench_score, compute_fitness
from asiarch.job import result as rf
from asiarch.layout import ExperimentDir, run_key
from asiarch.store import Store

TASKS = ("mqar/accuracy", "recall/accuracy")
REJECT_REASONS = (
    "causality: output at position 0 changes when position 17 changes (leak 3.1e-01)",
    "shape: output has shape (1, 33, 64), expected (1, 33, 64, 2)",
    "complexity: time grows as T^1.9 over sequence length; quadratic layers are not allowed",
    "static: import of 'os' is not allowed",
)
FAIL_ERRORS = (
    ("failed", "IndexError: index out of range in self"),
    ("failed", "RuntimeError: The size of tensor a (64) must match the size of tensor b (32)"),
    ("diverged", "loss nan at step 140"),
)

_CODE = '''# -*- coding: utf-8 -*-
"""{name}: a synthetic token mixer #{cid} (generated for tests)."""
import torch
from torch import nn

ASIARCH_GENOME = {{"id": {cid}, "decay": {decay:.3f}, "conv": {conv}}}


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=2, layer_idx=None, **kwargs):
        super().__init__()
        self.q = nn.Linear(hidden_size, hidden_size)
        self.k = nn.Linear(hidden_size, hidden_size)
        self.v = nn.Linear(hidden_size, hidden_size)
        self.o = nn.Linear(hidden_size, hidden_size)
        self.decay = {decay:.3f}
        self.conv_size = {conv}

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False,
                output_attentions=False, **kwargs):
        q, k, v = self.q(hidden_states), self.k(hidden_states), self.v(hidden_states)
        scores = torch.einsum("btd,bsd->bts", q, k).tril() * self.decay
        return self.o(scores @ v), None, past_key_values
'''


@contextmanager
def _no_fsync():
    with mock.patch.object(os, "fsync", lambda fd: None):
        yield


def _curve(final_loss: float, steps: int, points: int, rng: np.random.Generator, tokens_per_step: int) -> rf.Curve:
    """A loss curve decaying from 4.2 to ``final_loss``, with a little noise; ``points`` logged steps."""
    step = (np.arange(1, points + 1) * steps) // points
    frac = step / steps
    loss = final_loss + (4.2 - final_loss) * np.exp(-5 * frac) + rng.normal(0, 0.01, points)
    return rf.Curve(step=step.tolist(), tokens=(step * tokens_per_step).tolist(), loss=loss.tolist(),
                    lr=(3e-3 * np.minimum(1.0, 10 * frac)).tolist(), time=(0.05 * step).tolist())


def _write(exp: ExperimentDir, store: Store, cfg, cid: int, name: str, n: int, code: str, *, status: str,
           rng: random.Random, nprng: np.random.Generator, write, loss: float | None = None, metrics: dict | None = None,
           error: str = "", points: int = 100, t0: float = 0.0) -> int:
    """One attempt: the store rows the loop writes; ``write(path, record)`` writes the job's result file."""
    key = run_key(cfg.experiment.name, cid, n)
    paths = exp.attempt(cid, name, n)
    paths.dir.parent.mkdir(exist_ok=True)
    paths.dir.mkdir()
    sha = hashlib.sha256(code.encode()).hexdigest()
    aid = store.add_attempt(cid, n, key, str(paths.dir.relative_to(exp.root)), sha)
    store.mark_submitted(aid, "slurm", str(100000 + aid))
    if status == "queued":
        return aid
    store.set_attempt_status(aid, "running")
    if status == "running":
        steps = cfg.train.steps
        rf.write_progress(paths.progress, step=steps // 2, steps=steps, loss=2.0, tokens_per_s=3e4,
                          curve=[[s, 4.0 - s / steps * 3] for s in range(20, steps // 2 + 1, 20)])
        return aid
    if status == "timeout":  # the job was killed before writing a result
        store.set_attempt_status(aid, "timeout", "job ended TIMEOUT without writing result.h5")
        return aid
    tps = rng.uniform(2.0e4, 4.0e4)
    wall = rng.uniform(600, 1800)  # s per attempt
    rec = rf.ResultRecord(
        experiment=cfg.experiment.name, candidate_id=cid, attempt=n, run_key=key, code_sha256=sha,
        job_id=str(100000 + aid), status=status, config={"task": "mqar", "steps": cfg.train.steps},
        env={"world_size": 2, "device": "cpu", "mixer_params": 34000 + cid},
        curve=_curve(loss if loss is not None else 3.5, cfg.train.steps, points if status == "ok" else points // 3,
                     nprng, 1024),
        metrics=dict(metrics or {}), final_loss=loss if loss is not None else math.nan,
        eval_loss=loss if loss is not None else math.nan, tokens_per_s=tps, peak_memory_bytes=3 * 2**30,
        num_params=92000 + cid, steps_done=cfg.train.steps, error=error,
        traceback=f"Traceback (most recent call last):\n  File \"layer.py\", line 20, in forward\n{error}"
        if error else "", started_at=t0, finished_at=t0 + wall)
    write(paths.result, rec)
    store.add_result(aid, cid, status=status, result_path=str(paths.result.relative_to(exp.root)), final_loss=rec.final_loss,
                     eval_loss=rec.eval_loss, metrics=rec.metrics, tokens_per_s=tps,
                     peak_memory_bytes=rec.peak_memory_bytes, num_params=rec.num_params, steps_done=rec.steps_done,
                     wall_s=wall, world_size=2)
    store.set_attempt_status(aid, "ok" if status == "ok" else status, "" if status == "ok" else f"{status}: {error}")
    return aid


def make_experiment(root: str | Path, n: int = 2000, *, seed: int = 0, points: int = 100,
                    in_flight: int = 6, gpu_hours: float = 2000.0) -> ExperimentDir:
    """Write an experiment directory with the two baselines and ``n`` candidates; see the module docstring."""
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    exp = ExperimentDir(Path(root))
    (exp.root / "candidates").mkdir(parents=True, exist_ok=True)
    cfg = demo_config(name="synth")
    cfg.budget.candidates = n
    cfg.budget.gpu_hours = gpu_hours
    cfg.train.steps = 2000
    exp.config.write_text(render_toml(cfg))
    store = Store.open(exp.db)
    # This connection only: no fsync, journal in memory, one lock for the whole generation.
    store.conn.execute("PRAGMA synchronous = OFF")
    store.conn.execute("PRAGMA journal_mode = MEMORY")
    store.conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    store.set_meta("experiment", cfg.experiment.name)
    t = time.time() - 60.0 * (n + 1)  # the search started n minutes ago and is still running
    # The store stamps rows with time.time(): give it a clock that moves a minute per proposal,
    # so rates, events and the discovery curve look like a search that ran for days.
    clock = types.SimpleNamespace(time=lambda: t)
    fitness_of: dict[int, float] = {}
    ref = None
    # Result files are written by two forked workers while this process writes the store.
    with _no_fsync(), mock.patch("asiarch.store.store.time", clock), \
            multiprocessing.get_context("fork").Pool(2) as workers:
        pending = []

        def write(path: Path, rec: rf.ResultRecord) -> None:
            pending.append(workers.apply_async(rf.write_result, (path, rec)))

        # Baselines: the reference (deltanet) first, fitness is measured against it.
        for name, loss, acc in (("deltanet", 0.40, 0.90), ("gated_deltanet", 0.39, 0.905)):
            code = _CODE.format(name=name, cid=0, decay=1.0, conv=4 if name == "deltanet" else 0)
            cid = store.add_candidate(name=name, origin="baseline", code=code,
                                      code_sha256=hashlib.sha256(code.encode()).hexdigest(),
                                      motivation=f"Baseline {name}.")
            metrics = {"eval/loss": loss, TASKS[0]: acc, TASKS[1]: acc - 0.1}
            _write(exp, store, cfg, cid, name, 1, code, status="ok", rng=rng, nprng=nprng, write=write, loss=loss,
                   metrics=metrics, points=points, t0=t)
            ref = ref or Reference(loss=loss, bench=bench_score(metrics))
            _score(store, cfg, cid, loss, metrics, ref)
            fitness_of[cid] = store.candidate(cid).fitness
        pool: list[int] = []
        for i in range(n):
            t += 60.0
            if i % 50 == 0 or len(pool) < 10:
                pool = sorted(fitness_of, key=lambda c: -fitness_of[c])[:50]
            parent = rng.choice(pool[:10])
            refs = rng.sample(pool[10:], min(4, len(pool[10:])))
            name = f"delta_{rng.choice(['gate', 'decay', 'conv', 'beta', 'norm'])}_{i:04x}"
            code = _CODE.format(name=name, cid=i + 3, decay=rng.random(), conv=rng.choice((0, 2, 4)))
            cid = store.add_candidate(name=name, origin="offline", code=code, parent_id=parent, round=1 + i // 4,
                                      code_sha256=hashlib.sha256(code.encode()).hexdigest(),
                                      motivation=f"Mutates #{parent}: {name.split('_')[1]} changed, because the "
                                                 f"parent's recall lagged at long gaps.", reference_ids=refs)
            roll = rng.random()
            if i >= n - in_flight:
                store.set_candidate_status(cid, "checked", event="pre-flight ok (1.5 s)")
                _write(exp, store, cfg, cid, name, 1, code, status="running" if i % 2 else "queued", rng=rng,
                       nprng=nprng, write=write)
                continue
            if roll < 0.08:
                reason = rng.choice(REJECT_REASONS)
                store.set_candidate_status(cid, "rejected", reason, event=f"pre-flight: {reason}")
                continue
            store.set_candidate_status(cid, "checked", event="pre-flight ok (1.5 s)")
            n_try = 1
            if roll < 0.11:  # lost to a timeout once, then trained
                _write(exp, store, cfg, cid, name, 1, code, status="timeout", rng=rng, nprng=nprng, write=write, t0=t)
                n_try = 2
            if roll > 0.93:
                kind, err = rng.choice(FAIL_ERRORS)
                _write(exp, store, cfg, cid, name, n_try, code, status=kind, rng=rng, nprng=nprng, write=write, error=err,
                       t0=t)
                store.set_candidate_status(cid, "failed", f"{kind}: {err}", event=f"attempt {n_try}: {kind}")
                continue
            p = store.candidate(parent)
            loss = max(0.05, (p.loss or 0.4) * math.exp(rng.gauss(0.012, 0.01)))
            acc = min(1.0, max(0.0, (p.score or 0.85) + rng.gauss(-0.003, 0.003)))
            metrics = {"eval/loss": loss, TASKS[0]: min(1.0, acc + 0.05), TASKS[1]: max(0.0, acc - 0.05)}
            _write(exp, store, cfg, cid, name, n_try, code, status="ok", rng=rng, nprng=nprng, write=write, loss=loss,
                   metrics=metrics, points=points, t0=t)
            _score(store, cfg, cid, loss, metrics, ref)
            fitness_of[cid] = store.candidate(cid).fitness
        for job in pending:
            job.get()
    store.close()
    return exp


def _score(store: Store, cfg, cid: int, loss: float, metrics: dict, ref: Reference) -> None:
    bench = bench_score(metrics)
    fit = compute_fitness(loss, bench, ref, scale=cfg.fitness.scale, sharpness=cfg.fitness.sharpness)
    store.set_scores(cid, fitness=fit.value, loss=loss, score=bench,
                     scores={"metrics": metrics, "tokens_per_s": 3e4, "peak_memory_bytes": 3 * 2**30,
                             "mixer_params": 34000 + cid, "terms": fit.terms}, num_params=92000 + cid)
    # The offline Analyst's wording, without its per-candidate queries (parent, siblings, baselines).
    text = (f"reached evaluation loss {loss:.4f} and task score {bench:.3f}, fitness {fit.value:.3f}. "
            f"Against its parent: the change {'helped' if fit.value > 0.5 else 'did not help'}.")
    store.add_analysis(cid, "offline", f"fitness {fit.value:.3f}", text)
