"""The early-stopping replay: ``asiarch bench early-stopping [DIR] [--json]``.

Replays the recorded full curves of an experiment's exploration stage (every candidate trained to the
end, read from its result file) under the experiment's ``[early_stopping]`` policy, with the candidates
arriving in the order they were submitted and ``cluster.max_in_flight`` of them training at once
(asiarch.search.early_stopping.replay), and reports what the policy would have saved and whether it
keeps the best:

    {"candidates": N, "compute_saved": fraction, "k": 3, "topk_recall": fraction, "rank_spearman": rho}

compute_saved is 1 - the device-seconds the policy spends on the candidates / what training them all to
the end took (baselines are trained to the end either way and are not counted); topk_recall is the share
of the k best by final evaluation loss that the policy trains to the end; rank_spearman compares the
policy's order (trained to the end by final loss, then the stopped ones by rung and loss there) with the
order by final loss. A table over eta and rungs follows, so a user can choose.

Without DIR it first runs a real search (:func:`replay_search_config`: the demo's MQAR settings, 24
candidates, local scheduler) with early stopping off, so that every curve is whole.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

from asiarch.config import Config, EarlyStoppingConfig, demo_config, load_config, render_toml
from asiarch.job import result as rf
from asiarch.layout import ExperimentDir
from asiarch.search.early_stopping import ReplayCurve, replay, rung_fractions
from asiarch.store import Store, queries

__all__ = ["replay_search_config", "load_curves", "bench_early_stopping", "settings_table", "format_table"]

#: The settings the table compares: (eta, rungs as fractions of the steps). On the demo's MQAR curves the
#: loss sits on a plateau until step ~100 of 300 and the curves cross after it, so late rungs matter.
GRID = tuple((eta, rungs) for eta in (2.0, 3.0, 4.0)
             for rungs in ((1 / 9, 1 / 3), (1 / 3,), (1 / 2,), (2 / 3,), (1 / 3, 2 / 3), (0.2, 0.5)))


def replay_search_config(name: str = "esbench", candidates: int = 24) -> Config:
    """The search the benchmark runs without DIR: the demo's task and model (MQAR, 300 steps, where the
    recall of good mixers takes off after ~100 steps), curves logged every 10 steps, one rank per job and
    two jobs at once on 2 cores, early stopping off (every candidate trained to the end)."""
    cfg = demo_config(name)
    cfg.budget.candidates = candidates
    cfg.train.log_every = 10
    cfg.train.nproc = 1
    cfg.cluster.max_in_flight = 2
    cfg.early_stopping.enabled = False
    cfg.watchdog.enabled = False
    return cfg


def load_curves(exp: ExperimentDir) -> list[ReplayCurve]:
    """Every exploration candidate and baseline trained to the end, one curve each (its first such
    attempt), in submission order, from the result files the store names."""
    with Store.open_readonly(exp.db) as store:
        rows = queries.finished_explore_results(store)
    out, seen = [], set()
    for r in rows:
        if r["candidate_id"] in seen:
            continue
        path = Path(r["result_path"])
        try:
            rec = rf.read_result(path if path.is_absolute() else exp.root / path)
        except rf.ResultFileError:
            continue  # a broken file is the analysis views' to report; the replay skips it
        if not rec.curve.step:
            continue
        steps = int(rec.config.get("steps") or rec.steps_done)
        cost = r["device_s"] or (rec.curve.time[-1] * int(rec.env.get("world_size", 1) or 1)) or float(steps)
        final = r["eval_loss"] if r["eval_loss"] is not None else rec.curve.loss[-1]
        seen.add(r["candidate_id"])
        out.append(ReplayCurve(key=r["candidate_id"], steps=steps, final_loss=float(final), cost=float(cost),
                               curve=tuple(zip(rec.curve.step, rec.curve.loss)), baseline=r["origin"] == "baseline"))
    return out


def _policy(base: EarlyStoppingConfig, eta: float, rungs) -> EarlyStoppingConfig:
    return dataclasses.replace(base, eta=float(eta), rungs=list(rungs))


def _fractions(rungs) -> str:
    return ",".join(str(Fraction(r).limit_denominator(12)) for r in rungs)


def settings_table(curves: list[ReplayCurve], base: EarlyStoppingConfig, *, parallel: int, k: int = 3) -> list[dict]:
    """The replay's figures for each (eta, rungs) of :data:`GRID`."""
    rows = []
    for eta, rungs in GRID:
        o = replay(curves, _policy(base, eta, rungs), parallel=parallel, k=k)
        rows.append({"eta": eta, "rungs": _fractions(rungs), "compute_saved": o.compute_saved,
                     "topk_recall": o.topk_recall, "rank_spearman": o.rank_spearman, "stopped": len(o.stopped),
                     "promoted": o.promoted})
    return rows


def format_table(rows: list[dict], k: int = 3) -> str:
    """The table of :func:`settings_table` as text."""
    lines = [f"{'eta':>4} {'rungs':<10} {'saved':>6} {f'top-{k}':>6} {'rho':>6} {'stopped':>8} {'promoted':>9}"]
    for r in rows:
        rho = "nan" if math.isnan(r["rank_spearman"]) else f"{r['rank_spearman']:+.2f}"
        lines.append(f"{r['eta']:>4g} {r['rungs']:<10} {100 * r['compute_saved']:>5.1f}% {r['topk_recall']:>6.2f} "
                     f"{rho:>6} {r['stopped']:>8} {r['promoted']:>9}")
    return "\n".join(lines)


def run_replay_search(root: Path, *, candidates: int = 24, python: str | None = None, progress=print) -> float:
    """Run the benchmark's search (:func:`replay_search_config`) in ``root`` (created) as `asiarch run`,
    its output in ``root``/search.log; returns its wall seconds."""
    root.mkdir(parents=True)
    (root / "config.toml").write_text(render_toml(replay_search_config(candidates=candidates)))
    progress(f"running a search of {candidates} candidates trained to the end in {root} (log: search.log)")
    t0 = time.time()
    with open(root / "search.log", "wb") as log:
        code = subprocess.run([python or sys.executable, "-m", "asiarch", "run", str(root), "--quiet"],
                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if code != 0:
        raise RuntimeError(f"the benchmark's search ended with exit code {code}; see {root / 'search.log'}")
    return time.time() - t0


def bench_early_stopping(root: Path, *, k: int = 3) -> dict:
    """The replay's figures for the experiment in ``root`` (see the module docstring): the configured
    policy's under "policy" keys at the top level, the grid under "table"."""
    exp = ExperimentDir(Path(root))
    if not exp.exists():
        raise FileNotFoundError(f"{root}: no experiment store here (asiarch.db); name an experiment directory")
    try:
        cfg = load_config(exp.config)
    except Exception:  # an experiment without a readable config replays under the defaults
        cfg = Config()
    curves = load_curves(exp)
    parallel = max(1, cfg.cluster.max_in_flight)
    policy = cfg.early_stopping
    o = replay(curves, policy, parallel=parallel, k=k)
    return {"candidates": o.candidates, "compute_saved": o.compute_saved, "k": o.k, "topk_recall": o.topk_recall,
            "rank_spearman": o.rank_spearman, "eta": policy.eta, "rungs": _fractions(rung_fractions(policy)),
            "parallel": parallel, "baselines": sum(1 for c in curves if c.baseline), "stopped": len(o.stopped),
            "promoted": o.promoted, "table": settings_table(curves, policy, parallel=parallel, k=k)}
