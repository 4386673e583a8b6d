"""The early-stopping benchmark: ``asiarch bench early-stopping [DIR] [--live N] [--json]``.

**Replay.** The recorded full curves of an experiment's exploration stage (every candidate trained to
the end, read from its result file) are replayed under the experiment's ``[early_stopping]`` policy,
with the candidates arriving in the order they were submitted and ``cluster.max_in_flight`` of them
training at once (asiarch.search.early_stopping.replay), and the figures say what the policy would
have saved and whether it keeps the best:

    {"candidates": N, "compute_saved": fraction, "k": 3, "topk_recall": fraction, "rank_spearman": rho}

compute_saved is 1 - the device-seconds the policy spends on the candidates / what training them all to
the end took (baselines are trained to the end either way and are not counted); topk_recall is the share
of the k best by final evaluation loss that the policy trains to the end; rank_spearman compares the
policy's order (trained to the end by final loss, then the stopped ones by rung and loss there) with the
order by final loss. An asynchronous policy's figures depend on who reaches a rung first, and one search
is one arrival order: each setting is also replayed under ``ORDERS`` random orders of the same curves
(seeded), giving the mean and lowest compute saved and the share of orders that keep all k best. A table
follows: the default policy, the configured one where it differs, and one reduction factor at every rung
over a grid of eta and rungs, so a user can choose.

**Live.** Then the first ``--live`` candidates of the experiment (in submission order, the same layer
files) are trained again in a new experiment with the same settings and early stopping on under the same
policy, baselines first as in any search: the attempts it stopped and promoted, and the compute it spent
against what those candidates took trained to the end and against the replay's prediction for them (the
replay of their curves alone). Compute is counted twice: device-seconds (wall x ranks, which depend on
how loaded the machine is in each run) and steps trained (which do not).

Without DIR it first runs a real search (:func:`replay_search_config`: the demo's MQAR settings, 24
candidates, local scheduler) with early stopping off, so that every curve is whole.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

from asiarch.config import Config, EarlyStoppingConfig, demo_config, load_config, render_toml
from asiarch.analysis.stats import paired_difference, summarize
from asiarch.job import result as rf
from asiarch.job.contract import AttemptFiles
from asiarch.layout import ExperimentDir
from asiarch.search.early_stopping import ReplayCurve, replay, rung_fractions
from asiarch.store import Store, queries

__all__ = ["replay_search_config", "load_curves", "bench_early_stopping", "settings_table", "format_table",
           "over_orders", "live_search_config", "run_live_search", "live_figures", "format_live", "bench_live",
           "seeds_config", "seed_finals", "seed_figures", "format_seeds", "bench_seeds"]

#: The settings the table compares besides the default, each with one reduction factor at every rung (eta,
#: rungs as fractions of the steps). On the demo's MQAR curves the loss sits on a plateau until step ~100 of
#: 300 and the curves cross after it, so late rungs matter.
GRID = tuple((eta, rungs) for eta in (2.0, 3.0, 4.0)
             for rungs in ((1 / 9, 1 / 3), (1 / 3,), (1 / 2,), (2 / 3,), (1 / 3, 2 / 3), (0.2, 0.5)))

#: Random arrival orders each setting is replayed under, besides the submission order.
ORDERS = 100


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


# ---------------------------------------------------------------------------------- the replay and its table


def _fractions(rungs) -> str:
    return ",".join(str(Fraction(r).limit_denominator(12)) for r in rungs)


def _etas(policy: EarlyStoppingConfig) -> str:
    """'3' for one reduction factor at every rung, '2,3' for first_rung_eta 2 and eta 3 after."""
    first = policy.first_rung_eta
    return f"{first:g},{policy.eta:g}" if first and first != policy.eta else f"{policy.eta:g}"


def _drop(policy: EarlyStoppingConfig) -> str:
    """The fall rule's window as a fraction of the steps ('1/12'), or '0' where the loss alone decides."""
    return str(Fraction(policy.drop_window).limit_denominator(24)) if policy.drop_window else "0"


def _same_policy(a: EarlyStoppingConfig, b: EarlyStoppingConfig) -> bool:
    return (_etas(a), rung_fractions(a), _drop(a)) == (_etas(b), rung_fractions(b), _drop(b))


def over_orders(curves: list[ReplayCurve], policy: EarlyStoppingConfig, *, parallel: int, k: int = 3,
                orders: int = ORDERS, seed: int = 0) -> dict:
    """The replay under ``orders`` random arrival orders of the candidates (the baselines first, as in a
    search): the mean and lowest compute saved, and the share of orders that keep all k best."""
    base = [c for c in curves if c.baseline]
    cands = [c for c in curves if not c.baseline]
    rng = random.Random(seed)
    saved, kept = [], 0
    for _ in range(orders):
        rng.shuffle(cands)
        o = replay(base + cands, policy, parallel=parallel, k=k)
        saved.append(o.compute_saved)
        kept += o.topk_recall == 1.0
    return {"orders": orders, "saved_mean": statistics.fmean(saved) if saved else math.nan,
            "saved_min": min(saved, default=math.nan), "all_k_kept": kept / orders if orders else math.nan}


def _row(curves, policy: EarlyStoppingConfig, *, parallel: int, k: int, orders: int, label: str = "") -> dict:
    o = replay(curves, policy, parallel=parallel, k=k)
    return {"eta": _etas(policy), "rungs": _fractions(rung_fractions(policy)), "drop": _drop(policy),
            "compute_saved": o.compute_saved,
            "topk_recall": o.topk_recall, "rank_spearman": o.rank_spearman, "stopped": len(o.stopped),
            "promoted": o.promoted, **over_orders(curves, policy, parallel=parallel, k=k, orders=orders),
            "policy": label}


def settings_table(curves: list[ReplayCurve], policy: EarlyStoppingConfig, *, parallel: int, k: int = 3,
                   orders: int = ORDERS) -> list[dict]:
    """The replay's figures for the default policy, the configured ``policy`` where it differs, the default
    with the loss alone deciding (drop_window 0: what the fall rule buys), then each (eta, rungs) of
    :data:`GRID` with that eta at every rung, with and without the fall rule (the default's window, or the
    configured one where it has one); ``policy`` names the first rows."""
    default = EarlyStoppingConfig()
    same = _same_policy(policy, default)
    rows = [_row(curves, default, parallel=parallel, k=k, orders=orders,
                 label="default, configured" if same else "default")]
    if not same:
        rows.append(_row(curves, policy, parallel=parallel, k=k, orders=orders, label="configured"))
    plain = dataclasses.replace(default, drop_window=0.0)
    rows.append(_row(curves, plain, parallel=parallel, k=k, orders=orders,
                     label="default by the loss alone" + (", configured" if _same_policy(policy, plain) else "")))
    windows = (0.0, policy.drop_window or default.drop_window)
    for eta, rungs in GRID:
        for window in windows:
            grid = dataclasses.replace(default, eta=float(eta), first_rung_eta=0.0, rungs=list(rungs),
                                       drop_window=window)
            rows.append(_row(curves, grid, parallel=parallel, k=k, orders=orders))
    return rows


def format_table(rows: list[dict], k: int = 3) -> str:
    """The table of :func:`settings_table` as text, with a line saying what its columns are."""
    orders = rows[0]["orders"] if rows else ORDERS
    lines = [f"eta 'a,b': a at the first rung, b at the others; drop: the fall rule's window (0: the loss alone); "
             f"in submission order, then over {orders} random arrival orders: mean and lowest saved, share keeping "
             f"all {k} best",
             f"{'eta':>5} {'rungs':<10} {'drop':>5} {'saved':>6} {f'top-{k}':>6} {'rho':>6} {'stopped':>8} "
             f"{'promoted':>9} {'mean':>6} {'lowest':>7} {f'all-{k}':>6}  policy"]
    for r in rows:
        rho = "nan" if math.isnan(r["rank_spearman"]) else f"{r['rank_spearman']:+.2f}"
        lines.append(f"{r['eta']:>5} {r['rungs']:<10} {r['drop']:>5} {100 * r['compute_saved']:>5.1f}% "
                     f"{r['topk_recall']:>6.2f} {rho:>6} {r['stopped']:>8} {r['promoted']:>9} "
                     f"{100 * r['saved_mean']:>5.1f}% "
                     f"{100 * r['saved_min']:>6.1f}% {r['all_k_kept']:>6.2f}  {r['policy']}".rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- running searches


def _run_search(root: Path, python: str | None = None) -> float:
    """`asiarch run ROOT --quiet`, its output in ROOT/search.log; returns its wall seconds."""
    t0 = time.time()
    with open(root / "search.log", "ab") as log:
        code = subprocess.run([python or sys.executable, "-m", "asiarch", "run", str(root), "--quiet"],
                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if code != 0:
        raise RuntimeError(f"the benchmark's search in {root} ended with exit code {code}; see {root / 'search.log'}")
    return time.time() - t0


def run_replay_search(root: Path, *, candidates: int = 24, python: str | None = None, progress=print) -> float:
    """Run the benchmark's search (:func:`replay_search_config`) in ``root`` (created) as `asiarch run`,
    its output in ``root``/search.log; returns its wall seconds."""
    root.mkdir(parents=True)
    (root / "config.toml").write_text(render_toml(replay_search_config(candidates=candidates)))
    progress(f"running a search of {candidates} candidates trained to the end in {root} (log: search.log)")
    return _run_search(root, python)


def live_search_config(cfg: Config, candidates: int) -> Config:
    """The live half's search: the replayed experiment's settings, early stopping on under its policy,
    ``candidates`` of them (the layers added by hand; nothing else is proposed)."""
    live = copy.deepcopy(cfg)
    live.experiment.name = f"{cfg.experiment.name}-live"
    live.budget.candidates = candidates
    live.early_stopping.enabled = True
    return live


def run_live_search(source: Path, root: Path, cfg: Config, keys: list[int], *, python: str | None = None,
                    progress=print) -> float:
    """Train the candidates ``keys`` of the experiment in ``source`` again in a new experiment in ``root``
    under :func:`live_search_config`; returns the search's wall seconds."""
    return _rerun(source, root, live_search_config(cfg, len(keys)), keys, python=python, progress=progress,
                  what=f"training {len(keys)} of them again with early stopping on")


def _rerun(source: Path, root: Path, cfg: Config, keys: list[int], *, what: str, python: str | None = None,
           progress=print) -> float:
    """Train the candidates ``keys`` of the experiment in ``source`` again (their layer files, added with
    `asiarch add` in this order) in a new experiment in ``root`` under ``cfg``; returns the search's wall
    seconds."""
    src = ExperimentDir(source)
    with Store.open_readonly(src.db) as store:
        names = [store.candidate(key).name for key in keys]
    root.mkdir(parents=True)
    (root / "config.toml").write_text(render_toml(cfg))
    for key, name in zip(keys, names):
        done = subprocess.run([python or sys.executable, "-m", "asiarch", "add", str(root),
                               str(src.layer_file(key, name)), "--name", name],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"`asiarch add` of {name} to the experiment in {root} failed: {done.stderr.strip()}")
    progress(f"{what} in {root} (log: search.log)")
    return _run_search(root, python)


# ---------------------------------------------------------------------------------- seed noise


def seeds_config(cfg: Config, candidates: int, seeds: int) -> Config:
    """The seed-noise search: the experiment's settings with ``seeds`` training seeds per candidate, after
    the ones it used (train.seed + train.seeds onwards), nothing stopped (early stopping and the watchdog
    off: every run's final loss is needed), ``candidates`` of them (added by hand)."""
    again = copy.deepcopy(cfg)
    again.experiment.name = f"{cfg.experiment.name}-seeds"
    again.budget.candidates = candidates
    again.train.seed = cfg.train.seed + cfg.train.seeds
    again.train.seeds = seeds
    again.early_stopping.enabled = False
    again.watchdog.enabled = False
    return again


def seed_finals(exp: ExperimentDir) -> dict[str, dict[int, float]]:
    """Candidate name -> {training seed: final evaluation loss} of the experiment's exploration attempts
    trained to the end (the first one of each seed)."""
    cfg, _ = experiment_config(exp)
    with Store.open_readonly(exp.db) as store:
        rows = queries.finished_explore_results(store)
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        if r["eval_loss"] is not None and math.isfinite(r["eval_loss"]):
            out.setdefault(r["name"], {}).setdefault(cfg.train.seed + int(r["seed"] or 0), float(r["eval_loss"]))
    return out


def seed_figures(finals: dict[str, dict[int, float]], curves: list[ReplayCurve], names: dict[int, str],
                 policy: EarlyStoppingConfig, *, parallel: int, k: int = 3) -> dict:
    """How the replay's top-k recall stands against seed noise. ``finals``: name -> {seed: final loss} of
    the attempts ``names`` (replayed key -> name: the candidates retrained and the baselines) over every
    seed run; ``curves``: the replayed experiment's (one seed). The candidates are ranked by their mean
    over the seeds; the policy's verdict on each is the replay's in submission order, and over random
    arrival orders the share that keep all k best by the mean (the candidates not trained again ranked
    behind those that were). Says whether the k-th and the (k+1)-th by the mean are apart beyond the seed
    noise (a paired t interval over their common seeds excludes 0)."""
    outcome = replay(curves, policy, parallel=parallel, k=k)
    by_key = {c.key: c for c in curves}
    rows = []
    for key, c in ((c.key, c) for c in curves if c.key in names):
        name = names[key]
        seeds = finals.get(name, {})
        if not seeds:
            continue
        iv = summarize(list(seeds.values()))
        verdict = ("baseline" if c.baseline else f"stopped at rung {outcome.stopped[key]}" if key in outcome.stopped
                   else "kept")
        rows.append({"key": key, "name": name, "baseline": c.baseline, "finals": dict(sorted(seeds.items())),
                     "mean": iv.mean, "sd": iv.sd, "policy": verdict, "replayed_final": by_key[key].final_loss})
    cands = sorted((r for r in rows if not r["baseline"]), key=lambda r: r["mean"])
    for rank, r in enumerate(cands, 1):
        r["rank"] = rank
    top = cands[:k]
    out = {"k": min(k, len(cands)), "rows": rows, "top_by_mean": [r["name"] for r in top],
           "topk_recall_by_mean": sum(r["policy"] == "kept" for r in top) / len(top) if top else math.nan,
           "topk_recall": outcome.topk_recall, "seeds": sorted({s for r in rows for s in r["finals"]})}
    # the same question over random arrival orders: the candidates not trained again ranked behind those that were
    means = {r["key"]: r["mean"] for r in cands}
    behind = max(means.values(), default=0.0) + 1.0   # finite: the replay's Spearman ranks them, in their order
    ranked = [c if c.baseline else dataclasses.replace(c, final_loss=means.get(c.key, behind + c.final_loss))
              for c in curves]
    out["orders_by_mean"] = over_orders(ranked, policy, parallel=parallel, k=k)
    if len(cands) > k:
        gap = paired_difference(cands[k - 1]["finals"], cands[k]["finals"], higher_is_better=False)
        iv = gap.interval
        out["gap"] = {"between": [cands[k - 1]["name"], cands[k]["name"]], "mean": iv.mean, "low": iv.low,
                      "high": iv.high, "seeds": len(gap.seeds), "separated": bool(iv.low > 0), "note": gap.note}
    return out


def format_seeds(out: dict) -> str:
    """The seed-noise figures as a table and two lines of verdict."""
    k = out["k"]
    lines = [f"seed noise: final loss over seeds {', '.join(map(str, out['seeds']))} (the replay is of the first); "
             f"policy: its verdict in the replay, submission order",
             f"{'candidate':<36} {'finals':<24} {'mean':>7} {'sd':>7} {'rank':>5}  policy"]
    for r in sorted(out["rows"], key=lambda r: (r["baseline"], r["mean"])):
        finals = " ".join(f"{v:.3f}" for v in r["finals"].values())
        sd = "-" if math.isnan(r["sd"]) else f"{r['sd']:.3f}"
        lines.append(f"{r['name'][:36]:<36} {finals:<24} {r['mean']:>7.3f} {sd:>7} {r.get('rank', '-'):>5}  "
                     f"{r['policy']}")
    lines.append(f"top {k} by the mean: {', '.join(out['top_by_mean'])}: the policy kept "
                 f"{100 * out['topk_recall_by_mean']:.0f} % of them (of the top {k} by the first seed alone: "
                 f"{100 * out['topk_recall']:.0f} %); over {out['orders_by_mean']['orders']} random arrival orders "
                 f"all {k} kept in {100 * out['orders_by_mean']['all_k_kept']:.0f} %")
    gap = out.get("gap")
    if gap:
        a, b = gap["between"]
        if math.isnan(gap["low"]):
            lines.append(f"#{k} {a} against #{k + 1} {b}: {gap['note']}")
        else:
            lines.append(f"#{k} {a} against #{k + 1} {b}: {gap['mean']:.3f} apart by the mean, 95 % interval "
                         f"[{gap['low']:.3f}, {gap['high']:.3f}] over {gap['seeds']} seeds: "
                         + ("separated beyond the seed noise" if gap["separated"] else
                            "not separated by these seeds (which of them is the top-k is noise here)"))
    return "\n".join(lines)


def _retrain_source(root: Path, what: str, off: str) -> tuple[ExperimentDir, Config, list[ReplayCurve]]:
    """The experiment in ``root`` that ``what`` trains candidates of again, its config (which must load: the
    new runs take its settings; else RuntimeError naming ``off``, the option that skips it) and its curves."""
    exp = ExperimentDir(Path(root))
    cfg, note = experiment_config(exp)
    if note:
        raise RuntimeError(f"{what} trains under the experiment's own settings, and its config does not load: "
                           f"{note.split(';')[0]}; fix {exp.config}, or give {off}")
    return exp, cfg, load_curves(exp)


def bench_seeds(root: Path, seeds_root: Path, *, seeds: int, top: int, k: int = 3, progress=print) -> dict:
    """The seed-noise half for the experiment in ``root``: its ``top`` best candidates by final loss and its
    baselines trained again with ``seeds`` more seeds in ``seeds_root`` (:func:`seeds_config`), and
    :func:`seed_figures` over every seed."""
    exp, cfg, curves = _retrain_source(root, "the seed-noise search", "--seeds 0")
    keys = [c.key for c in sorted((c for c in curves if not c.baseline), key=lambda c: c.final_loss)[:top]]
    with Store.open_readonly(exp.db) as store:
        names = {c.key: store.candidate(c.key).name for c in curves if c.baseline or c.key in keys}
    wall = _rerun(exp.root, seeds_root, seeds_config(cfg, len(keys), seeds), keys, progress=progress,
                  what=f"training the {len(keys)} best candidates and the baselines with {seeds} more seed(s)")
    finals = seed_finals(exp)
    for name, more in seed_finals(ExperimentDir(seeds_root)).items():
        finals.setdefault(name, {}).update(more)
    out = seed_figures(finals, curves, names, cfg.early_stopping, parallel=max(1, cfg.cluster.max_in_flight), k=k)
    return {**out, "wall_s": wall, "dir": str(seeds_root)}


# ---------------------------------------------------------------------------------- live figures


def _trained_steps(exp: ExperimentDir, store: Store, cid: int) -> int:
    """Steps a candidate's exploration attempts trained, a resumed one counted from its checkpoint."""
    total = 0
    for a in store.attempts(cid):
        if a.stage != "explore":
            continue
        try:
            rec = rf.read_result(AttemptFiles(exp.root / a.dir).result)
        except rf.ResultFileError:
            continue
        total += max(0, int(rec.steps_done or 0) - int(rec.env.get("resumed_from_step") or 0))
    return total


def _step_seconds(exp: ExperimentDir) -> dict[str, float]:
    """Candidate name -> seconds per training step of its first exploration attempt with a curve (the
    time of its last logged point over that step)."""
    out: dict[str, float] = {}
    with Store.open_readonly(exp.db) as store:
        for cand in store.candidates():
            for a in store.attempts(cand.id):
                try:
                    rec = rf.read_result(AttemptFiles(exp.root / a.dir).result)
                except rf.ResultFileError:
                    continue
                if a.stage == "explore" and rec.curve.step:
                    out[cand.name] = rec.curve.time[-1] / rec.curve.step[-1]
                    break
    return out


def live_figures(source: Path, live_root: Path, curves: list[ReplayCurve], names: dict[int, str],
                 policy: EarlyStoppingConfig, *, parallel: int, k: int = 3) -> dict:
    """What the live search in ``live_root`` spent on the candidates ``names`` (replayed key -> name, the
    same names live) of the experiment in ``source``, against those candidates trained to the end there
    and the replay's prediction for them (their curves alone, the baselines' as peers, under ``policy``).

    Device-seconds are wall x ranks, so they depend on how loaded the machine was in each run: the same
    code with the same seed trains the same steps in both, so the median ratio of their seconds per step
    (``load``, over the candidates and baselines) scales the replayed figures. Steps trained need no such
    scaling. Top-k: of the k best among the candidates by the replayed final losses, the share the live
    search trained to the end."""
    base = [c for c in curves if c.baseline]
    chosen = [c for c in curves if c.key in names and not c.baseline]
    predicted = replay(base + chosen, policy, parallel=parallel, k=k)
    by_steps = replay([dataclasses.replace(c, cost=float(c.steps)) for c in base + chosen], policy,
                      parallel=parallel, k=k)
    exp = ExperimentDir(live_root)
    with Store.open_readonly(exp.db) as store:
        spent = queries.compute_by_candidate(store)
        live = {}
        for key, name in names.items():
            cand = store.find_candidate(name)
            live[key] = (cand.status, "promoted_from" in cand.scores, spent.get(cand.id) or 0.0,
                         _trained_steps(exp, store, cand.id))
    before, now = _step_seconds(ExperimentDir(source)), _step_seconds(exp)
    ratios = [now[n] / before[n] for n in now.keys() & before.keys() if before[n] > 0]
    load = statistics.median(ratios) if ratios else math.nan
    ours = [live[c.key] for c in chosen]
    full_s, full_steps = sum(c.cost for c in chosen) * load, sum(c.steps for c in chosen)
    device_s, steps = sum(v[2] for v in ours), sum(v[3] for v in ours)
    best = sorted(chosen, key=lambda c: c.final_loss)[:k]
    return {"candidates": len(chosen), "stopped": sum(v[0] == "stopped" for v in ours),
            "promoted": sum(v[1] for v in ours), "trained_to_end": sum(v[0] == "done" for v in ours),
            "device_s": device_s, "load": load, "full_device_s": full_s,
            "compute_saved": 1 - device_s / full_s if full_s else math.nan,
            "steps": steps, "full_steps": full_steps, "steps_saved": 1 - steps / full_steps if full_steps else math.nan,
            "k": len(best),
            "topk_recall": sum(live[c.key][0] == "done" for c in best) / len(best) if best else math.nan,
            "predicted": {"compute_saved": predicted.compute_saved, "steps_saved": by_steps.compute_saved,
                          "stopped": len(predicted.stopped), "promoted": predicted.promoted,
                          "topk_recall": predicted.topk_recall}}


def format_live(live: dict) -> str:
    """The live half's figures as text, beside the replay's prediction for the same candidates."""
    p = live["predicted"]
    return (f"live: {live['candidates']} candidates, {live['stopped']} stopped, {live['promoted']} promoted, "
            f"{live['trained_to_end']} trained to the end; top-{live['k']} kept {live['topk_recall']:.2f} "
            f"(replay {p['topk_recall']:.2f}); {live['wall_s']:.0f} s\n"
            f"live: steps {live['steps']} of {live['full_steps']}: {100 * live['steps_saved']:.1f} % saved (replay of "
            f"the same curves {100 * p['steps_saved']:.1f} %, {p['stopped']} stopped, {p['promoted']} promoted)\n"
            f"live: {live['device_s']:.0f} device-s against {live['full_device_s']:.0f} trained to the end: "
            f"{100 * live['compute_saved']:.1f} % saved (replay {100 * p['compute_saved']:.1f} %; the replayed "
            f"run's device-s x {live['load']:.2f}, the median live/replayed seconds per step)")


def bench_early_stopping(root: Path, *, k: int = 3, orders: int = ORDERS) -> dict:
    """The replay's figures for the experiment in ``root`` (see the module docstring): the configured
    policy's at the top level, its figures over random arrival orders under "orders", the table under
    "table"."""
    exp = ExperimentDir(Path(root))
    if not exp.exists():
        raise FileNotFoundError(f"{root}: no experiment store here (asiarch.db); name an experiment directory")
    cfg, note = experiment_config(exp)
    curves = load_curves(exp)
    parallel = max(1, cfg.cluster.max_in_flight)
    policy = cfg.early_stopping
    o = replay(curves, policy, parallel=parallel, k=k)
    return {"candidates": o.candidates, "compute_saved": o.compute_saved, "k": o.k, "topk_recall": o.topk_recall,
            "rank_spearman": o.rank_spearman, "eta": _etas(policy), "rungs": _fractions(rung_fractions(policy)),
            "drop": _drop(policy),
            "parallel": parallel, "baselines": sum(1 for c in curves if c.baseline), "stopped": len(o.stopped),
            "promoted": o.promoted, "orders": over_orders(curves, policy, parallel=parallel, k=k, orders=orders),
            "table": settings_table(curves, policy, parallel=parallel, k=k, orders=orders), "config_note": note}


def experiment_config(exp: ExperimentDir) -> tuple[Config, str]:
    """The experiment's config, and "" or why it could not be read; then the defaults stand in for it (the
    replay needs only the policy and max_in_flight; an experiment of an older asiarch may not load)."""
    try:
        return load_config(exp.config), ""
    except Exception as exc:  # noqa: BLE001 -- said to the user, who may edit the file
        return Config(), f"{exc}; replayed under the default [early_stopping] and cluster.max_in_flight"


def bench_live(root: Path, live_root: Path, *, candidates: int, k: int = 3, progress=print) -> dict:
    """The live half for the experiment in ``root``: its first ``candidates`` candidates (submission
    order) trained again in ``live_root`` with early stopping on (:func:`run_live_search`), and
    :func:`live_figures`."""
    exp, cfg, curves = _retrain_source(root, "the live search", "--live 0")
    keys = [c.key for c in curves if not c.baseline][:candidates]
    with Store.open_readonly(exp.db) as store:
        names = {key: store.candidate(key).name for key in keys}
    wall = run_live_search(exp.root, live_root, cfg, keys, progress=progress)
    out = live_figures(exp.root, live_root, curves, names, cfg.early_stopping,
                       parallel=max(1, cfg.cluster.max_in_flight), k=k)
    return {**out, "wall_s": wall, "dir": str(live_root)}
