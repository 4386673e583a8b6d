"""lm-eval tasks a job could not run (the result's ``env["lm_eval_errors"]``): kept by the ingest in the
candidate's scores, one event each, redacted, and said by `asiarch show` (real SQLite store, real HDF5 results)."""

import pytest

from asiarch.analysis.show import show_text
from asiarch.config import Config, render_toml
from asiarch.dispatch.base import JobState
from asiarch.job import result as rf
from asiarch.layout import ExperimentDir
from asiarch.search.ingest import ingest_attempt
from asiarch.store import Store

SECRET = "sk-test-0123456789abcdef"


def _result(exp, store, cid, name, n, seed, errors, metrics=None):
    """An ok LM result of attempt ``n`` (exploration seed ``seed``), written with the project's writer."""
    sha = store.candidate(cid).code_sha256
    paths = exp.attempt(cid, name, n)
    paths.dir.mkdir(parents=True)
    key = f"e-c{cid:05d}-a{n}"
    aid = store.add_attempt(cid, n, key, exp.relative(paths.dir), sha, seed=seed)
    curve = rf.Curve()
    for s in range(10, 101, 10):
        curve.append(s, s * 100, 3.0 + 1.0 / s, 1e-3, s * 0.1)
    rec = rf.ResultRecord(experiment="e", candidate_id=cid, attempt=n, run_key=key, code_sha256=sha, status="ok",
                          config={"task": "lm", "steps": 100},
                          env={"world_size": 1, **({"lm_eval_errors": errors} if errors else {})},
                          curve=curve, steps_done=100, tokens_per_s=1000.0, started_at=1.0, finished_at=11.0,
                          metrics=metrics or {"eval/loss": 3.0, "lm_eval/piqa/acc": 0.6}, eval_loss=3.0,
                          final_loss=3.0)
    rf.write_result(paths.result, rec)
    return store.attempt(aid)


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # llm.api_key_env: never in what the store keeps or show says
    exp = ExperimentDir(tmp_path / "exp")
    exp.root.mkdir()
    cfg = Config()
    cfg.train.seeds = 2
    exp.config.write_text(render_toml(cfg))
    store = Store.open(exp.db)
    yield exp, store, cfg
    store.close()


def test_lm_eval_errors_are_kept_logged_redacted_and_shown(experiment):
    exp, store, cfg = experiment
    cid = store.add_candidate(name="lossy", origin="offline", code="# lossy", code_sha256="sha-lossy")
    clean = store.add_candidate(name="clean", origin="offline", code="# clean", code_sha256="sha-clean")
    missing = f"FileNotFoundError: /data/arc_easy.jsonl does not exist (token {SECRET})\nsecond line"
    first = ingest_attempt(store, exp, cfg, _result(exp, store, cid, "lossy", 1, 0, {"arc_easy": missing}),
                           JobState.COMPLETED)
    assert first.candidate_status == "partial"
    last = ingest_attempt(store, exp, cfg, _result(exp, store, cid, "lossy", 2, 1, {"hellaswag": "ValueError: no"}),
                          JobState.COMPLETED)
    assert last.candidate_status == "done"
    for n, seed in ((1, 0), (2, 1)):
        ingest_attempt(store, exp, cfg, _result(exp, store, clean, "clean", n, seed, None), JobState.COMPLETED)

    cand = store.candidate(cid)
    redacted = "FileNotFoundError: /data/arc_easy.jsonl does not exist (token [redacted])\nsecond line"
    assert cand.status == "done" and cand.scores["metrics"]["lm_eval/piqa/acc"] == pytest.approx(0.6)
    assert cand.scores["lm_eval_errors"] == {"arc_easy": redacted, "hellaswag": "ValueError: no"}
    events = [(e["kind"], e["message"]) for e in store.candidate_events(cid)]
    assert events == [("lm-eval-failed", f"attempt 1 (explore seed 0): lm-eval arc_easy did not run: {redacted}"),
                      ("lm-eval-failed", "attempt 2 (explore seed 1): lm-eval hellaswag did not run: ValueError: no")]
    text = show_text(store, exp, "lossy", code=False)
    lines = text.splitlines()
    at = lines.index("lm-eval arc_easy did not run: FileNotFoundError: /data/arc_easy.jsonl does not exist "
                     "(token [redacted])")  # under the candidate's scores, the first line of each message
    assert lines[at - 1].startswith("params ") and lines[at + 1] == "lm-eval hellaswag did not run: ValueError: no"
    assert SECRET not in text

    other = store.candidate(clean)
    assert other.status == "done" and "lm_eval_errors" not in other.scores
    assert store.candidate_events(clean) == []
    assert "did not run" not in show_text(store, exp, "clean", code=False)


def test_an_attempt_ingested_again_logs_its_lm_eval_errors_once(experiment):
    """A restarted head may ingest an attempt again: its lm-eval events are not logged a second time."""
    from asiarch.job import result as rf
    from asiarch.search.ingest import record_lm_eval_errors

    exp, store, cfg = experiment
    cid = store.add_candidate(name="again", origin="offline", code="# again", code_sha256="sha-again")
    attempt = _result(exp, store, cid, "again", 1, 0, {"arc_easy": "ValueError: no"})
    rec = rf.read_result(exp.root / attempt.dir / "result.h5")
    for _ in range(2):
        kept = record_lm_eval_errors(store, store.candidate(cid), attempt, rec, (SECRET,))
    assert kept == {"arc_easy": "ValueError: no"}
    assert [e["kind"] for e in store.candidate_events(cid)] == ["lm-eval-failed"]


def _done(exp, store, cfg, name, errors, metrics=None, origin="offline"):
    """A candidate trained with both exploration seeds, its jobs unable to run the lm-eval tasks ``errors``."""
    cid = store.add_candidate(name=name, origin=origin, code=f"# {name}", code_sha256=f"sha-{name}")
    for n, seed in ((1, 0), (2, 1)):
        out = ingest_attempt(store, exp, cfg, _result(exp, store, cid, name, n, seed, errors, metrics),
                             JobState.COMPLETED)
    assert out.candidate_status == "done"
    return cid


def test_leaderboard_export_and_report_say_which_lm_eval_tasks_did_not_run(experiment):
    """The leaderboard (table, JSON, CSV), the export and the HTML report name the tasks lm-eval could not
    run; a task column says "not run" where the candidate's figure is missing for that reason."""
    import csv
    import io
    import json

    from asiarch.analysis.export import export_text
    from asiarch.analysis.report import write_report
    from asiarch.analysis.views import leaderboard_rows, render_leaderboard

    exp, store, cfg = experiment
    ref = cfg.baselines.reference  # trained first: the others get a fitness and a rank in the report's table
    _done(exp, store, cfg, ref, None, origin="baseline")
    _done(exp, store, cfg, "lossy", {"hellaswag": f"ValueError: no ({SECRET})", "arc_easy": "FileNotFoundError"})
    _done(exp, store, cfg, "clean", None)
    _done(exp, store, cfg, "nopiqa", {"piqa": "KeyError: piqa"}, metrics={"eval/loss": 3.0})

    rows = {r["name"]: r for r in leaderboard_rows(store)}
    assert rows["lossy"]["lm_eval_not_run"] == ["arc_easy", "hellaswag"]
    assert rows["clean"]["lm_eval_not_run"] == [] and rows["nopiqa"]["lm_eval_not_run"] == ["piqa"]
    assert rows["nopiqa"]["lm_eval/piqa/acc"] is None and rows["clean"]["lm_eval/piqa/acc"] == pytest.approx(0.6)

    listed = {r["name"]: r for r in json.loads(render_leaderboard(list(rows.values()), "json"))}
    assert listed["lossy"]["lm_eval_not_run"] == ["arc_easy", "hellaswag"]
    cells = {r["name"]: r for r in csv.DictReader(io.StringIO(render_leaderboard(list(rows.values()), "csv")))}
    assert cells["lossy"]["lm_eval_not_run"] == "arc_easy;hellaswag" and cells["clean"]["lm_eval_not_run"] == ""

    table = render_leaderboard(list(rows.values())).splitlines()
    header = table[0].split()
    line = {ln.split()[2]: ln for ln in table[2:]}
    assert "piqa" in header
    assert "not run" in line["nopiqa"] and line["nopiqa"].endswith("lm-eval did not run: piqa")
    assert line["lossy"].endswith("lm-eval did not run: arc_easy, hellaswag") and "not run" not in line["clean"]
    assert "0.600" in line["lossy"] and "0.600" not in line["nopiqa"]

    exported = {r["name"]: r for r in csv.DictReader(io.StringIO(export_text(store, "csv")))}
    assert exported["lossy"]["lm_eval_not_run"] == "arc_easy;hellaswag"
    jsonl = [json.loads(x) for x in export_text(store, "jsonl").splitlines()]
    assert {r["name"]: r["lm_eval_not_run"] for r in jsonl} == {"lossy": ["arc_easy", "hellaswag"], "clean": [],
                                                               "nopiqa": ["piqa"], ref: []}

    html = write_report(exp, exp.root / "reports", plots=False).html.read_text()
    assert "lm-eval not run" in html
    assert "arc_easy for 1 candidate, hellaswag for 1 candidate, piqa for 1 candidate" in html
    assert html.count(">not run<") == 1  # nopiqa's piqa cell
    assert SECRET not in html
