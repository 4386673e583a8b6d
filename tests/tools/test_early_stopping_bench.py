"""`asiarch bench early-stopping DIR`: the replay of an experiment's recorded curves (real store, real HDF5)."""

import json
import tempfile
from pathlib import Path

import pytest

from asiarch.cli.main import main as cli_main
from asiarch.config import Config, load_config, render_toml
from asiarch.dispatch.base import JobState
from asiarch.job import result as rf
from asiarch.job.tasks import write_token_file
from asiarch.layout import ExperimentDir
from asiarch.search.ingest import ingest_attempt
from asiarch.store import Store
from asiarch.tools.early_stopping import format_seeds, load_curves, seed_figures, seed_finals, seeds_config


def _trained(exp, store, cfg, name, origin, at50, *, seeds=(None,)):
    """A candidate trained to the end: loss at50 at step 50, falling 0.01 a step; final eval loss at50 - 0.5;
    10 s on 2 ranks (20 device-seconds). ``seeds``: its final eval loss at each seed index (None: at50 - 0.5),
    an attempt each."""
    cid = store.add_candidate(name=name, origin=origin, code=f"# {name}", code_sha256=f"sha-{name}")
    for seed, final in enumerate(seeds):
        _attempt(exp, store, cfg, cid, name, at50, seed, at50 - 0.5 if final is None else final)


def _attempt(exp, store, cfg, cid, name, at50, seed, final):
    paths = exp.attempt(cid, name, seed + 1)
    paths.dir.mkdir(parents=True)
    aid = store.add_attempt(cid, seed + 1, f"e-c{cid:05d}-a{seed + 1}", exp.relative(paths.dir), f"sha-{name}",
                            seed=seed)
    store.mark_submitted(aid, "local", str(aid))
    curve = rf.Curve()
    for s in range(10, 101, 10):
        curve.append(s, s * 100, at50 + (50 - s) * 0.01, 1e-3, s * 0.1)
    rec = rf.ResultRecord(experiment="e", candidate_id=cid, attempt=seed + 1, run_key=f"e-c{cid:05d}-a{seed + 1}",
                          code_sha256=f"sha-{name}", status="ok", config={"steps": 100}, env={"world_size": 2},
                          curve=curve, steps_done=100, started_at=1.0, finished_at=11.0,
                          metrics={"eval/loss": final, "mqar/accuracy": 0.5}, eval_loss=final)
    rf.write_result(paths.result, rec)
    ingest_attempt(store, exp, cfg, store.attempt(aid), JobState.COMPLETED)


@pytest.fixture
def experiment(tmp_path):
    exp = ExperimentDir(tmp_path / "exp")
    exp.root.mkdir()
    cfg = Config()
    # eta 3 at one rung at 1/2, the loss alone deciding (these curves all fall at one rate: by their fall all tie)
    cfg.early_stopping.rungs, cfg.early_stopping.first_rung_eta, cfg.early_stopping.drop_window = [0.5], 0.0, 0.0
    exp.config.write_text(render_toml(cfg))
    with Store.open(exp.db) as store:
        _trained(exp, store, cfg, "deltanet", "baseline", 2.0)
        for name, at50 in (("A", 1.0), ("B", 3.0), ("C", 2.5), ("D", 0.8)):
            _trained(exp, store, cfg, name, "offline", at50)
    return exp


def test_curves_come_from_the_result_files_in_submission_order(experiment):
    curves = load_curves(experiment)
    assert [c.baseline for c in curves] == [True, False, False, False, False]
    assert [c.final_loss for c in curves] == pytest.approx([1.5, 0.5, 2.5, 2.0, 0.3])
    assert all(c.cost == pytest.approx(20.0) and c.steps == 100 and len(c.curve) == 10 for c in curves)


def test_the_replay_prints_the_compute_saved_and_the_best_kept(experiment, capsys):
    assert cli_main(["bench", "early-stopping", str(experiment.root), "--json", "--live", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    # at the rung (step 50): A leads the reference, B and C trail A and stop there, D leads all
    assert out["candidates"] == 4 and out["k"] == 3 and out["stopped"] == 2
    assert out["compute_saved"] == pytest.approx(1 - (20 + 10 + 10 + 20) / 80)
    assert out["topk_recall"] == pytest.approx(2 / 3)       # the best 3: D, A, C; C was stopped
    assert out["rungs"] == "1/2" and out["eta"] == "3" and out["drop"] == "0" and out["parallel"] == 1
    assert out["config_note"] == ""
    # the default first, then the configured policy (it differs), the default by the loss alone, then one eta
    # at every rung over the grid, by the loss alone and with the default's fall rule
    table = out["table"]
    assert [(r["eta"], r["rungs"], r["drop"], r["policy"]) for r in table[:3]] == [
        ("2.5,3", "3/10,2/3", "1/12", "default"), ("3", "1/2", "0", "configured"),
        ("2.5,3", "3/10,2/3", "0", "default by the loss alone")]
    assert len(table) == 3 + 2 * 18 and {r["eta"] for r in table[3:]} == {"2", "3", "4"}
    assert [r["drop"] for r in table[3:5]] == ["0", "1/12"]
    assert {k: table[1][k] for k in ("compute_saved", "topk_recall", "stopped")} == {
        k: out[k] for k in ("compute_saved", "topk_recall", "stopped")}
    # over random arrival orders: the same four candidates, so the figures are bounded by the order's
    orders = out["orders"]
    assert orders["orders"] == 100 and 0 <= orders["saved_min"] <= orders["saved_mean"] <= 1
    assert 0 <= orders["all_k_kept"] <= 1 and table[1]["saved_mean"] == orders["saved_mean"]
    assert "live" not in out                                   # --live 0
    assert cli_main(["bench", "early-stopping", str(experiment.root), "--live", "0"]) == 0
    text = capsys.readouterr().out
    assert json.loads(text.splitlines()[0]) == {k: out[k] for k in ("candidates", "compute_saved", "k",
                                                                     "topk_recall", "rank_spearman")}
    assert "eta rungs" in text and "1/9,1/3" in text and text.count("default") == 2  # and "by the loss alone"
    assert "over 100 random arrival orders" in text


def test_an_unreadable_config_replays_under_the_defaults_and_says_so(experiment, capsys):
    experiment.config.write_text("[train]\nlm_eval = []\n")  # a key an older asiarch wrote
    assert cli_main(["bench", "early-stopping", str(experiment.root), "--live", "0", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert "replayed under the default [early_stopping]" in captured.err and "train.lm_eval" in captured.err
    assert out["eta"] == "2.5,3" and out["table"][0]["policy"] == "default, configured"
    # the live half needs the experiment's own settings: a clear error, not a search under others
    assert cli_main(["bench", "early-stopping", str(experiment.root), "--live", "2"]) == 2
    assert "its config does not load" in capsys.readouterr().err


def test_seed_noise_ranks_by_the_mean_over_seeds_and_says_whether_the_kth_is_apart(experiment, tmp_path):
    """The experiment's 4 candidates (seed 0; the replay stops B and C at the rung) and its reference, trained
    again with seeds 1 and 2 in a second experiment (as seeds_config sets it: train.seed 1): ranked by the
    mean over the three seeds, C is third, and the policy stopped it; C against B is apart on every seed."""
    cfg = load_config(experiment.config)
    again = seeds_config(cfg, 4, 2)
    assert (again.train.seed, again.train.seeds, again.budget.candidates) == (1, 2, 4)
    assert not again.early_stopping.enabled and not again.watchdog.enabled
    more = ExperimentDir(tmp_path / "more")
    more.root.mkdir()
    more.config.write_text(render_toml(again))
    with Store.open(more.db) as store:
        for name, at50, finals in (("deltanet", 2.0, (1.4, 1.6)), ("D", 0.8, (0.35, 0.32)), ("A", 1.0, (0.55, 0.52)),
                                   ("C", 2.5, (1.9, 2.1)), ("B", 3.0, (2.4, 2.6))):
            _trained(more, store, again, name, "baseline" if name == "deltanet" else "manual", at50, seeds=finals)
    finals = seed_finals(experiment)
    assert finals["C"] == {0: pytest.approx(2.0)}
    for name, runs in seed_finals(more).items():
        finals[name].update(runs)
    assert finals["C"] == pytest.approx({0: 2.0, 1: 1.9, 2: 2.1})
    curves = load_curves(experiment)
    names = {c.key: n for c, n in zip(curves, ("deltanet", "A", "B", "C", "D"))}
    out = seed_figures(finals, curves, names, cfg.early_stopping, parallel=1, k=3)
    assert out["top_by_mean"] == ["D", "A", "C"] and out["seeds"] == [0, 1, 2]
    assert out["topk_recall_by_mean"] == pytest.approx(2 / 3) and out["topk_recall"] == pytest.approx(2 / 3)
    policy = {r["name"]: r["policy"] for r in out["rows"]}
    assert policy == {"deltanet": "baseline", "A": "kept", "B": "stopped at rung 1", "C": "stopped at rung 1",
                      "D": "kept"}
    assert out["orders_by_mean"]["orders"] == 100 and 0 <= out["orders_by_mean"]["all_k_kept"] <= 1
    assert out["gap"]["between"] == ["C", "B"] and out["gap"]["separated"] and out["gap"]["mean"] == pytest.approx(0.5)
    text = format_seeds(out)
    assert "top 3 by the mean: D, A, C: the policy kept 67 %" in text and "separated beyond the seed noise" in text
    # a candidate not trained again (B) is ranked behind those that were, over the orders too
    partial = seed_figures(finals, curves, {key: n for key, n in names.items() if n != "B"}, cfg.early_stopping,
                           parallel=1, k=3)
    assert partial["top_by_mean"] == ["D", "A", "C"] and "gap" not in partial
    assert 0 <= partial["orders_by_mean"]["all_k_kept"] <= 1
    # B better than C on seed 1 only: the mean still ranks C third, and the interval says it is noise
    finals["B"][1] = 1.0
    out = seed_figures(finals, curves, names, cfg.early_stopping, parallel=1, k=3)
    assert out["top_by_mean"] == ["D", "A", "C"] and not out["gap"]["separated"] and out["gap"]["low"] < 0
    assert "not separated by these seeds" in format_seeds(out)


def test_a_directory_without_a_store_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["bench", "early-stopping", str(tmp_path)]) != 0
    assert "no experiment store here" in capsys.readouterr().err


@pytest.mark.slow
def test_the_live_half_trains_the_first_candidates_again_and_agrees_with_the_replay(tmp_path, capsys, monkeypatch):
    """A real search trains the reference and two candidates to the end (the LM text of the watchdog's tests,
    200 steps, early stopping off); the live half trains both again with the experiment's policy on (rungs at
    1/3 and 2/3, the best half going on at the first, the loss alone deciding): 'late' (DeltaNet that starts mixing after 20 steps)
    reaches the first rung behind the reference, 'mean' (a causal running mean) behind both, so both stop
    there, live as in the replay of their curves."""
    from tests.search.test_watchdog_live import DELTANET_LATE_BY_20_STEPS, SLOW_RUNNING_MEANS, run_search, \
        watched_config

    tokens = write_token_file(tmp_path / "tokens.bin", "the quick brown fox jumps over the lazy dog. " * 400)
    cfg = watched_config("esl", 2, task="lm", token_file=str(tokens), vocab_size=256)
    cfg.train.steps = 200
    cfg.watchdog.enabled = False
    # the policy the live half runs under: rungs at 1/3 and 2/3, the best half at the first, the loss alone
    e = cfg.early_stopping
    e.rungs, e.first_rung_eta, e.drop_window = [1 / 3, 2 / 3], 2.0, 0.0
    root = tmp_path / "exp"
    run_search(root, cfg, {"late": DELTANET_LATE_BY_20_STEPS, "mean": SLOW_RUNNING_MEANS[0]})
    capsys.readouterr()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the live experiment's directory
    assert cli_main(["bench", "early-stopping", str(root), "--live", "2", "--json"]) == 0
    live = json.loads(capsys.readouterr().out)["live"]
    assert Path(live["dir"]).parent.parent == tmp_path
    assert live["candidates"] == 2 and live["stopped"] == live["predicted"]["stopped"] == 2, live
    assert live["trained_to_end"] == 0 and live["promoted"] == live["predicted"]["promoted"] == 0
    assert live["full_steps"] == 400 and 2 * 67 <= live["steps"] < live["full_steps"]  # stopped past the rung
    assert live["steps_saved"] == pytest.approx(1 - live["steps"] / 400)
    assert live["predicted"]["steps_saved"] == pytest.approx(1 - 2 * 67 / 400)
    assert live["load"] > 0 and 0 < live["compute_saved"] < 1 and live["k"] == 2
    with Store.open_readonly(ExperimentDir(Path(live["dir"])).db) as store:
        added = [c for c in store.candidates() if c.origin != "baseline"]
        assert [(c.name, c.origin, c.status) for c in added] == [("late", "manual", "stopped"),
                                                                ("mean", "manual", "stopped")]
        assert {c.scores["stopped"]["rung"] for c in added} == {1}
    assert load_config(Path(live["dir"]) / "config.toml").early_stopping.enabled
