"""`asiarch bench early-stopping DIR`: the replay of an experiment's recorded curves (real store, real HDF5)."""

import json

import pytest

from asiarch.cli.main import main as cli_main
from asiarch.config import Config, render_toml
from asiarch.dispatch.base import JobState
from asiarch.job import result as rf
from asiarch.layout import ExperimentDir
from asiarch.search.ingest import ingest_attempt
from asiarch.store import Store
from asiarch.tools.early_stopping import load_curves


def _trained(exp, store, cfg, name, origin, at50):
    """A candidate trained to the end: loss at50 at step 50, falling 0.01 a step; final eval loss at50 - 0.5;
    10 s on 2 ranks (20 device-seconds)."""
    cid = store.add_candidate(name=name, origin=origin, code=f"# {name}", code_sha256=f"sha-{name}")
    paths = exp.attempt(cid, name, 1)
    paths.dir.mkdir(parents=True)
    aid = store.add_attempt(cid, 1, f"e-c{cid:05d}-a1", exp.relative(paths.dir), f"sha-{name}")
    store.mark_submitted(aid, "local", str(aid))
    curve = rf.Curve()
    for s in range(10, 101, 10):
        curve.append(s, s * 100, at50 + (50 - s) * 0.01, 1e-3, s * 0.1)
    rec = rf.ResultRecord(experiment="e", candidate_id=cid, attempt=1, run_key=f"e-c{cid:05d}-a1",
                          code_sha256=f"sha-{name}", status="ok", config={"steps": 100}, env={"world_size": 2},
                          curve=curve, steps_done=100, started_at=1.0, finished_at=11.0,
                          metrics={"eval/loss": at50 - 0.5, "mqar/accuracy": 0.5}, eval_loss=at50 - 0.5)
    rf.write_result(paths.result, rec)
    ingest_attempt(store, exp, cfg, store.attempt(aid), JobState.COMPLETED)


@pytest.fixture
def experiment(tmp_path):
    exp = ExperimentDir(tmp_path / "exp")
    exp.root.mkdir()
    cfg = Config()
    cfg.early_stopping.rungs = [0.5]
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
    assert cli_main(["bench", "early-stopping", str(experiment.root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # at the rung (step 50): A leads the reference, B and C trail A and stop there, D leads all
    assert out["candidates"] == 4 and out["k"] == 3 and out["stopped"] == 2
    assert out["compute_saved"] == pytest.approx(1 - (20 + 10 + 10 + 20) / 80)
    assert out["topk_recall"] == pytest.approx(2 / 3)       # the best 3: D, A, C; C was stopped
    assert out["rungs"] == "1/2" and out["eta"] == 3 and out["parallel"] == 1
    assert len(out["table"]) == 18 and {r["eta"] for r in out["table"]} == {2.0, 3.0, 4.0}
    assert cli_main(["bench", "early-stopping", str(experiment.root)]) == 0
    text = capsys.readouterr().out
    assert json.loads(text.splitlines()[0]) == {k: out[k] for k in ("candidates", "compute_saved", "k",
                                                                     "topk_recall", "rank_spearman")}
    assert "eta rungs" in text and "1/9,1/3" in text


def test_a_directory_without_a_store_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["bench", "early-stopping", str(tmp_path)]) != 0
    assert "no experiment store here" in capsys.readouterr().err
