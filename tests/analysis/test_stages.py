"""Stages, seeds, intervals, paired differences, promotion, stage agreement and the ablation arm:
first on constructed stores where the right answer is known, then one real two-stage search with
seeds (real torchrun jobs, real HDF5 results) in which a copy of the baseline under another name
must not beat it."""

import json
import math
import random

import pytest

from asiarch.cli import main as cli_main
from asiarch.config import demo_config, render_toml, stage_train
from asiarch.analysis.stages import arm_curves, promote, stage_agreement, stage_rows
from asiarch.store import Store
from asiarch.analysis.views import render_stage_leaderboard, stage_leaderboard_rows

BASE = {0: 2.00, 1: 2.10, 2: 1.95}  # the reference's evaluation loss per seed


def _add(store, name, origin, losses, *, stage="explore", accs=None, status="done", fitness=None, t0=0.0,
         device_s=100.0):
    """A candidate with one ok result per seed of ``stage``, with these losses (and accuracies)."""
    code = f"# {name}\n"
    existing = [c for c in store.candidates() if c.name == name]
    if existing:
        cid = existing[0].id
    else:
        cid = store.add_candidate(name=name, origin=origin, code=code, code_sha256=name, status=status)
        store.set_scores(cid, fitness=fitness, loss=sum(losses.values()) / len(losses), score=None, scores={},
                         num_params=1, status=status)
    for seed, loss in losses.items():
        n = 1 + len(store.attempts(cid))
        aid = store.add_attempt(cid, n, f"{name}-{stage}-{seed}-{n}", f"d/{name}/{n}", name, stage=stage, seed=seed)
        metrics = {"eval/loss": loss}
        if accs:
            metrics["mqar/accuracy"] = accs[seed]
        store.add_result(aid, cid, status="ok", result_path="r.h5", final_loss=loss, eval_loss=loss,
                         metrics=metrics, tokens_per_s=1.0, peak_memory_bytes=1, num_params=1, steps_done=1,
                         wall_s=device_s, world_size=1)
        store.set_attempt_status(aid, "ok")
        store.conn.execute("UPDATE attempts SET finished_at = ? WHERE id = ?", (t0 + n + seed / 10, aid))
    return cid


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "asiarch.db") as s:
        yield s


def test_the_baseline_under_another_name_never_beats_it(store):
    _add(store, "deltanet", "baseline", BASE)
    _add(store, "deltanet_again", "manual", dict(BASE))
    rows = {r.candidate.name: r for r in stage_rows(store, "explore", "deltanet")}
    clone = rows["deltanet_again"]
    assert clone.loss_vs_ref.interval.mean == 0 and clone.loss_vs_ref.interval.low == 0
    assert not clone.beats
    assert rows["deltanet"].loss_vs_ref is None  # the reference is not compared with itself
    assert clone.fitness == pytest.approx(rows["deltanet"].fitness)


def test_a_real_gain_beats_a_noisy_one_does_not_and_a_loss_is_worse(store):
    rng = random.Random(0)
    _add(store, "deltanet", "baseline", BASE)
    _add(store, "better", "offline", {s: v - 0.30 + rng.uniform(-0.01, 0.01) for s, v in BASE.items()})
    # a mean gain as large, but inconsistent across seeds: the paired interval straddles zero
    _add(store, "lucky", "offline", {0: BASE[0] - 1.2, 1: BASE[1] + 0.3, 2: BASE[2] + 0.0})
    _add(store, "worse", "offline", {s: v + 0.2 for s, v in BASE.items()})
    rows = {r.candidate.name: r for r in stage_rows(store, "explore", "deltanet")}
    assert rows["better"].beats and rows["better"].loss_vs_ref.interval.mean == pytest.approx(0.30, abs=0.02)
    assert rows["lucky"].loss_vs_ref.interval.mean > 0.29 and not rows["lucky"].beats
    assert rows["worse"].loss_vs_ref.worse and not rows["worse"].beats
    # the loss interval of each is the t interval over its three seeds
    iv = rows["worse"].loss
    assert iv.n == 3 and iv.low < iv.mean < iv.high


def test_promotion_rules(store):
    cfg = demo_config()
    cfg.baselines.names, cfg.baselines.reference = ["deltanet"], "deltanet"
    _add(store, "deltanet", "baseline", BASE)
    _add(store, "better", "offline", {s: v - 0.3 for s, v in BASE.items()})
    _add(store, "lucky", "offline", {0: BASE[0] - 1.3, 1: BASE[1] + 0.3, 2: BASE[2]})
    _add(store, "worse", "offline", {s: v + 0.2 for s, v in BASE.items()})
    _add(store, "failed_one", "offline", {0: 0.1}, status="failed")  # settled as failed: never promoted
    cfg.verify.top_k = 2
    cfg.verify.promote = "top_k"
    assert [c.name for c, _ in promote(store, cfg)] == ["lucky", "better"]  # best mean first, two of them
    cfg.verify.promote = "beats_baseline"
    chosen = promote(store, cfg)
    assert [c.name for c, _ in chosen] == ["better"]
    assert "beats deltanet" in chosen[0][1] and "over 3 seeds" in chosen[0][1]


def test_stage_agreement_is_spearman_over_candidates_in_both_stages(store):
    _add(store, "deltanet", "baseline", BASE)
    _add(store, "deltanet", "baseline", BASE, stage="verify")
    explore = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    for name, loss in explore.items():
        _add(store, name, "offline", {0: loss, 1: loss + 0.01})
    for name, loss in {"a": 0.5, "b": 0.9, "c": 1.7, "d": 2.5}.items():  # same order, other scale
        _add(store, name, "offline", {0: loss, 1: loss, 2: loss}, stage="verify")
    ag = stage_agreement(store, "deltanet")
    assert ag.n == 4 and ag.rho == pytest.approx(1.0)
    _add(store, "e", "offline", {0: 5.0, 1: 5.0})
    _add(store, "e", "offline", {0: 0.1, 1: 0.1, 2: 0.1}, stage="verify")  # cheap stage got e wrong
    ag = stage_agreement(store, "deltanet")
    assert ag.n == 5 and ag.rho == pytest.approx(0.0)  # ranks 1..5 against 2,3,4,5,1


def test_arm_curves_count_each_arm_its_own_compute_and_best(store):
    _add(store, "deltanet", "baseline", BASE)
    _add(store, "llm_a", "llm", {0: 1.0}, fitness=0.6, t0=10, device_s=3600)
    _add(store, "off_a", "offline", {0: 1.0}, fitness=0.4, t0=20, device_s=1800)
    _add(store, "llm_b", "llm", {0: 1.0}, fitness=0.5, t0=30, device_s=3600)
    _add(store, "off_b", "offline", {0: 1.0}, fitness=0.7, t0=40, device_s=1800)
    curves = arm_curves(store)
    assert curves["llm"] == ([1.0, 2.0], [0.6, 0.6])
    assert curves["offline"] == ([0.5, 1.0], [0.4, 0.7])
    assert "baseline" not in curves


def test_stage_leaderboard_table_json_and_csv(store):
    _add(store, "deltanet", "baseline", BASE, accs={0: 0.5, 1: 0.6, 2: 0.55})
    _add(store, "better", "offline", {s: v - 0.3 for s, v in BASE.items()}, accs={0: 0.7, 1: 0.8, 2: 0.75})
    rows = stage_leaderboard_rows(store, "explore", "deltanet")
    assert [r["name"] for r in rows] == ["better", "deltanet"]
    assert rows[0]["beats_ref"] is True and rows[0]["loss_vs_ref"]["mean"] == pytest.approx(0.3)
    assert rows[0]["score_vs_ref"]["mean"] == pytest.approx(0.2)
    assert rows[0]["seeds"] == 3 and rows[1]["beats_ref"] is None
    table = render_stage_leaderboard(rows, reference="deltanet")
    assert "+0.3000 [" in table and "yes" in table
    parsed = json.loads(render_stage_leaderboard(rows, "json"))
    assert parsed[0]["loss"]["n"] == 3
    csv_text = render_stage_leaderboard(rows, "csv")
    assert csv_text.splitlines()[0].startswith("rank,id,name,origin,stage,seeds,fitness,beats_ref,loss_mean")


def test_one_seed_gives_means_without_intervals(store):
    _add(store, "deltanet", "baseline", {0: 2.0})
    _add(store, "x", "offline", {0: 1.5})
    row = [r for r in stage_rows(store, "explore", "deltanet") if r.candidate.name == "x"][0]
    assert row.loss.mean == 1.5 and math.isnan(row.loss.low)
    assert not row.beats and "2" in row.loss_vs_ref.note
    assert "[n<2]" in render_stage_leaderboard(stage_leaderboard_rows(store, "explore", "deltanet"))


def test_stage_train_overrides_and_seeds():
    cfg = demo_config()
    cfg.verify.hidden_size, cfg.verify.steps = 128, 50
    t = stage_train(cfg, "verify", 2)
    assert (t.hidden_size, t.steps, t.seed, t.num_layers) == (128, 50, cfg.train.seed + 2, cfg.train.num_layers)
    assert stage_train(cfg, "explore", 1).hidden_size == cfg.train.hidden_size
    with pytest.raises(ValueError, match="stages are"):
        stage_train(cfg, "final")


# ------------------------------------------------------------------------------ end to end

@pytest.mark.slow
def test_two_stages_with_seeds_end_to_end(tmp_path, capsys):
    """Exploration with 2 seeds, verification of the top 3 with 3 seeds at a bigger width; the
    baseline's code added under another name trains to the same numbers and does not beat it."""
    cfg = demo_config("stages")
    cfg.baselines.names, cfg.baselines.reference = ["deltanet"], "deltanet"
    t = cfg.train
    t.hidden_size, t.num_heads, t.steps, t.batch_size, t.log_every, t.warmup_steps, t.eval_batches = \
        32, 2, 30, 8, 10, 2, 2
    t.nproc, t.seeds, t.mqar_eval = 1, 2, ["8x64"]
    cfg.cluster.max_in_flight, cfg.cluster.poll_interval_s = 2, 0.2
    cfg.budget.candidates, cfg.search.round_size = 3, 3
    cfg.verify.enabled, cfg.verify.seeds, cfg.verify.top_k, cfg.verify.hidden_size = True, 3, 3, 48
    root = tmp_path / "exp"
    root.mkdir()
    (root / "config.toml").write_text(render_toml(cfg))
    from asiarch.propose.offline import baseline_sources
    clone = root / "clone.py"
    clone.write_text(baseline_sources(("deltanet",))["deltanet"] + "\n# the baseline, under another name\n")
    assert cli_main(["add", str(root), str(clone), "--name", "deltanet_clone"]) == 0
    assert cli_main(["run", str(root)]) == 0

    with Store.open_readonly(root / "asiarch.db") as store:
        explore = {r.candidate.name: r for r in stage_rows(store, "explore", "deltanet")}
        verify = {r.candidate.name: r for r in stage_rows(store, "verify", "deltanet")}
        promoted = json.loads(store.get_meta("verify_promoted"))
        attempts = store.attempts()
        statuses = {c.name: c.status for c in store.candidates()}
    assert set(statuses.values()) == {"done"}, statuses  # verification leaves the explored status alone
    assert len(explore) == 4 and all(r.seeds == [0, 1] for r in explore.values())  # 3 new + the reference
    assert len(promoted) == 3 and "deltanet" in verify and len(verify) == 4
    assert all(r.seeds == [0, 1, 2] for r in verify.values())
    # the clone: identical numbers seed by seed in both stages, so no gain and no "beats"
    for stage in (explore, verify):
        if "deltanet_clone" in stage:
            d = stage["deltanet_clone"].loss_vs_ref.interval
            assert d.mean == pytest.approx(0.0, abs=1e-9) and not stage["deltanet_clone"].beats
    # each (candidate, stage, seed) trained once; verification at the verification width
    runs = [(a.candidate_id, a.stage, a.seed) for a in attempts if a.status == "ok"]
    assert len(runs) == len(set(runs)) == 4 * 2 + 4 * 3
    spec = json.loads(next(p for p in (root / "candidates").glob("*/attempt-*/spec.json")
                           if json.loads(p.read_text())["identity"]["stage"] == "verify").read_text())
    assert spec["train"]["hidden_size"] == 48
    # the harder MQAR difficulty is measured and part of the metrics
    assert "mqar_8x64/accuracy" in explore["deltanet"].metrics

    out = capsys.readouterr().out
    assert "verification: " in out and "beat deltanet" in out
    assert cli_main(["leaderboard", str(root), "--stage", "verify", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(verify) and all(r["seeds"] == 3 for r in rows)
    assert cli_main(["show", str(root), "deltanet_clone", "--no-code"]) == 0
    shown = capsys.readouterr().out
    assert "stage explore+verify" in shown and "verify     3 seeds" in shown and "does not beat it" in shown
    assert "promoted to verification: top 3 by exploration fitness" in shown
    assert cli_main(["report", str(root)]) == 0
    html = next((root / "reports").glob("*.html")).read_text()
    assert "Stage agreement" in html and "verify" in html
