"""A result the head stopped early: ingested as 'stopped', ranked below every candidate trained to the end,
and shown as such by the leaderboard, show, export and the report (real SQLite store, real HDF5 results)."""

import json

import pytest

from asiarch.analysis.export import export_rows
from asiarch.analysis.report import write_report
from asiarch.analysis.show import show_text
from asiarch.analysis.views import leaderboard_rows, render_leaderboard
from asiarch.config import Config, render_toml
from asiarch.dispatch.base import JobState
from asiarch.job import result as rf
from asiarch.layout import ExperimentDir
from asiarch.search.ingest import ingest_attempt
from asiarch.store import Store


def _result(exp, store, cid, name, *, status, loss, steps_done, stop=None, acc=0.5, n=1):
    sha = store.candidate(cid).code_sha256
    paths = exp.attempt(cid, name, n)
    paths.dir.mkdir(parents=True)
    aid = store.add_attempt(cid, n, f"e-c{cid:05d}-a{n}", exp.relative(paths.dir), sha)
    curve = rf.Curve()
    for s in range(10, steps_done + 1, 10):
        curve.append(s, s * 100, loss + 1.0 / s, 1e-3, s * 0.1)
    rec = rf.ResultRecord(experiment="e", candidate_id=cid, attempt=n, run_key=f"e-c{cid:05d}-a{n}", code_sha256=sha,
                          status=status, config={"steps": 100},
                          env={"world_size": 2, **({"stop": stop} if stop else {})},
                          curve=curve, steps_done=steps_done, tokens_per_s=1000.0, started_at=1.0, finished_at=11.0,
                          error=f"stopped by the head at step {steps_done}: behind" if stop else "")
    if status == "ok":
        rec.metrics = {"eval/loss": loss, "mqar/accuracy": acc}
        rec.eval_loss = rec.final_loss = loss
    rf.write_result(paths.result, rec)
    return store.attempt(aid)


@pytest.fixture
def experiment(tmp_path):
    exp = ExperimentDir(tmp_path / "exp")
    exp.root.mkdir()
    cfg = Config()
    exp.config.write_text(render_toml(cfg))
    store = Store.open(exp.db)
    ids = {}
    for name, origin in (("deltanet", "baseline"), ("good", "offline"), ("worse", "offline"), ("early", "offline"),
                         ("later", "offline"), ("slowpoke", "offline")):
        ids[name] = store.add_candidate(name=name, origin=origin, code=f"# {name}", code_sha256=f"sha-{name}")
    outcomes = {}
    for name, loss in (("deltanet", 1.0), ("good", 0.9), ("worse", 1.5)):
        a = _result(exp, store, ids[name], name, status="ok", loss=loss, steps_done=100)
        outcomes[name] = ingest_attempt(store, exp, cfg, a, JobState.COMPLETED)
    # two stopped at rungs (the one at the later rung ranks higher although its loss there is worse), one by the
    # watchdog
    for name, stop, done, loss in (
            ("early", {"reason": "rung", "rung": 1, "step": 11, "message": "stopped at rung 1 of 2", "stopped_at": 12},
             12, 0.5),
            ("later", {"reason": "rung", "rung": 2, "step": 33, "message": "stopped at rung 2 of 2", "stopped_at": 40},
             40, 2.0),
            ("slowpoke", {"reason": "slow", "rung": None, "step": 20, "message": "slow: 100 tokens/s",
                          "stopped_at": 20}, 20, 0.1)):
        a = _result(exp, store, ids[name], name, status="stopped", loss=loss, steps_done=done, stop=stop)
        outcomes[name] = ingest_attempt(store, exp, cfg, a, JobState.COMPLETED)
    yield exp, store, ids, outcomes
    store.close()


def test_a_stopped_result_ends_its_candidate_stopped_with_where_and_why(experiment):
    exp, store, ids, outcomes = experiment
    out = outcomes["later"]
    assert (out.attempt_status, out.candidate_status, out.retry) == ("stopped", "stopped", False)
    cand = store.candidate(ids["later"])
    assert cand.status == "stopped" and cand.fitness is None and cand.loss is None
    info = cand.scores["stopped"]
    assert info["reason"] == "rung" and info["rung"] == 2 and info["step"] == 40 and info["steps"] == 100
    assert info["loss"] == pytest.approx(2.0 + 1 / 40)
    assert "stopped (rung 2) at step 40 of 100: stopped at rung 2 of 2" == cand.reason
    assert store.candidate(ids["slowpoke"]).scores["stopped"]["rung"] is None
    assert [e["kind"] for e in store.candidate_events(ids["early"])] == ["stopped"]
    assert store.results(ids["early"])[0]["status"] == "stopped"


def test_promoted_and_stopped_again_keeps_where_it_was_first_stopped(experiment):
    """'early', stopped at rung 1, promoted (a new attempt resumes it) and stopped at rung 2: its scores say
    both, so that the promotion is not lost (the live bench counts promotions from them)."""
    exp, store, ids, _ = experiment
    stop = {"reason": "rung", "rung": 2, "step": 33, "message": "stopped at rung 2 of 2", "stopped_at": 35}
    store.set_candidate_status(ids["early"], "checked", event="promoted past the rung")  # as Search.promote does
    a = _result(exp, store, ids["early"], "early", status="stopped", loss=0.7, steps_done=35, stop=stop, n=2)
    ingest_attempt(store, exp, Config(), a, JobState.COMPLETED)
    cand = store.candidate(ids["early"])
    assert cand.status == "stopped" and cand.scores["stopped"]["rung"] == 2 and cand.scores["stopped"]["attempt"] == 2
    assert cand.scores["promoted_from"]["rung"] == 1 and cand.scores["promoted_from"]["attempt"] == 1
    # the same attempt ingested again is not a promotion
    assert "promoted_from" not in store.candidate(ids["later"]).scores


def test_stopped_candidates_rank_below_every_candidate_trained_to_the_end(experiment):
    exp, store, ids, _ = experiment
    assert [c.name for c in store.ranked()] == ["good", "deltanet", "worse"]  # the pool: trained ones only
    assert [c.name for c in store.ranked(include_stopped=True)] == \
        ["good", "deltanet", "worse", "later", "early", "slowpoke"]
    assert [c.name for c in store.ranked(2, include_baselines=False, include_stopped=True)] == ["good", "worse"]
    rows = leaderboard_rows(store)
    assert [(r["name"], r["rank"], r["status"], r["rung"]) for r in rows] == [
        ("good", 1, "done", None), ("deltanet", 2, "done", None), ("worse", 3, "done", None),
        ("later", 4, "stopped", 2), ("early", 5, "stopped", 1), ("slowpoke", 6, "stopped", None)]
    assert rows[3]["stopped_step"] == 40 and rows[3]["fitness"] is None
    table = render_leaderboard(rows)
    line = next(x for x in table.splitlines() if " later " in x)
    assert "stopped" in line and "stopped (rung 2) at step 40 of 100" in line


def test_show_export_and_report_say_stopped_and_where(experiment):
    exp, store, ids, _ = experiment
    text = show_text(store, exp, "later", code=False)
    assert "stopped    at rung 2, step 40 of 100" in text and "ranked below every candidate trained" in text
    assert "stopped (rung 2) at step 40 of 100" in text.splitlines()[0]
    assert "by the watchdog (slow)" in show_text(store, exp, "slowpoke", code=False)
    rows = {r["name"]: r for r in export_rows(store)}
    assert rows["early"]["status"] == "stopped" and rows["early"]["rung"] == 1 and rows["early"]["stopped_step"] == 12
    assert rows["early"]["result_path"].endswith("result.h5")
    json.dumps(list(rows.values()))  # JSON-ready
    report = write_report(exp, exp.root / "reports", plots=False)
    html = report.html.read_text()
    assert "stopped early" in html and "1 at rung 1, 1 at rung 2, 1 at the watchdog" in html
    assert "stopped at rung 2" in html
