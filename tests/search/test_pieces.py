"""The loop's pure pieces, fast: the budget predicates, the console lines composed from an ingested
attempt's data, and a constructor that only wires (Search.open does the opening)."""

from __future__ import annotations

import io
import sys

import pytest

from asiarch.cli.console import Console
from asiarch.config import Config
from asiarch.dispatch.local import LocalScheduler
from asiarch.layout import ExperimentDir
from asiarch.search.budget import Spend, budget_reason, candidates_left, proposals_exhausted, trained_count
from asiarch.search.ingest import Outcome
from asiarch.search.loop import Search, make_proposer
from asiarch.search.messages import Silent, Sink, outcome_line, progress_line
from asiarch.store import Store


# ----------------------------------------------------------------------------- budget


def test_the_candidate_budget_counts_trained_and_in_flight_candidates():
    cfg = Config()
    cfg.budget.candidates = 8
    assert trained_count({"done": 3, "failed": 2, "rejected": 7, "checked": 1}) == 5
    assert candidates_left(cfg, Spend(trained=5)) == 3
    assert candidates_left(cfg, Spend(trained=5, in_flight=3)) == 0  # what runs now counts too


def test_the_compute_budget_stops_at_the_cap_counting_work_in_flight():
    cfg = Config()
    cfg.budget.gpu_hours = 2
    assert budget_reason(cfg, Spend(trained=0, compute_s=7199)) is None
    assert budget_reason(cfg, Spend(trained=0, compute_s=7200)) == "2 compute-hours spent"
    assert budget_reason(cfg, Spend(trained=0, compute_s=3600, in_flight_compute_s=3600)) == "2 compute-hours spent"
    cfg.budget.gpu_hours = 0  # no cap
    assert budget_reason(cfg, Spend(trained=0, compute_s=1e9)) is None


def test_the_dollar_cap_stops_the_search_only_with_the_llm_proposer():
    cfg = Config()
    cfg.budget.llm_dollars = 0.5
    spent = Spend(trained=0, llm_dollars=0.5012, llm_exhausted=True)
    cfg.search.proposer = "llm"
    assert budget_reason(cfg, spent) == "$0.5012 of LLM spent (budget.llm_dollars = 0.5)"
    assert budget_reason(cfg, Spend(trained=0, llm_dollars=0.2)) is None
    cfg.search.proposer = "mixed"  # the offline proposer takes the LLM's share
    assert budget_reason(cfg, spent) is None


def test_proposals_are_exhausted_after_four_rejections_per_budgeted_candidate():
    cfg = Config()
    cfg.budget.candidates = 3
    assert not proposals_exhausted(cfg, 11) and proposals_exhausted(cfg, 12)


# ----------------------------------------------------------------------------- console lines

SEEN = dict(candidate_id=12, name="delta_datadecay_75b8", has_result=True, tokens_per_s=9729.4, wall_s=35.6)
LABEL = "#12   delta_datadecay_75b8              "


def test_a_trained_candidates_line_shows_its_figures():
    out = Outcome("ok", "done", loss=0.37468, acc=0.9104, fitness=0.2187, averaged=1, **SEEN)
    assert outcome_line(out) == LABEL + " OK        loss 0.3747 acc 0.910  fitness 0.219  (9,729 tok/s, 36 s)"
    means = Outcome("ok", "done", loss=0.37468, acc=None, fitness=None, averaged=3, **SEEN)
    assert outcome_line(means) == LABEL + " OK        loss 0.3747   fitness - (mean of 3 seeds)  (9,729 tok/s, 36 s)"


def test_a_seeds_line_names_the_stage_and_seed():
    out = Outcome("ok", "verify", loss=0.5, acc=None, stage="verify", seed=1, seeds=3, **SEEN)
    assert outcome_line(out) == LABEL + " OK        verify seed 2/3 loss 0.5000 acc -  (9,729 tok/s, 36 s)"


def test_a_failed_attempts_line_gives_the_first_line_of_the_error_within_160_characters():
    out = Outcome("failed", "failed", error="failed: boom\nTraceback", message="RuntimeError: boom\nmore",
                  **SEEN)
    assert outcome_line(out) == LABEL + " FAILED    RuntimeError: boom"
    long = Outcome("diverged", "failed", message="x" * 300, **SEEN)
    assert len(outcome_line(long)) == 160
    leak = Outcome("leak", "rejected", message="the leak probe at training step 4 saw ...", **SEEN)
    assert outcome_line(leak) == LABEL + " LEAK      the leak probe at training step 4 saw ..."


def test_a_job_without_a_result_and_a_stale_result_say_so():
    gone = Outcome("timeout", "queued", retry=True, message="job ended TIMEOUT without writing result.h5; log "
                   "tail:\n...", **{**SEEN, "has_result": False})
    assert outcome_line(gone) == LABEL + " TIMEOUT   job ended TIMEOUT without writing result.h5; log tail:"
    stale = Outcome("ok", "stale", **SEEN)
    assert outcome_line(stale) == LABEL + (" OK        (kept; the candidate has moved on: its code was repaired or "
                                           "it is settled)")


def test_the_progress_line():
    text = progress_line(trained=3, budget=8, running=1, queued=2, verifying=2,
                         progress=[(5, {"step": 120, "steps": 300, "loss": 1.23456})])
    assert text == "trained 3/8 | verification: 2 job(s) left | 1 running, 2 queued | #5 step 120/300 loss 1.235"


# ----------------------------------------------------------------------------- wiring


def test_the_clis_console_is_a_sink():
    sink: Sink = Console(io.StringIO())
    sink.line("x")
    sink.status("y")
    Silent().line("shown nowhere")


def test_the_constructor_only_wires_and_open_opens(tmp_path):
    cfg = Config()
    exp = ExperimentDir(tmp_path / "exp")
    store = Store.open(tmp_path / "elsewhere.db")
    search = Search(exp, cfg, store=store, scheduler=LocalScheduler(tmp_path / "jobs"), proposer=make_proposer(cfg))
    assert not exp.root.exists() and store.get_meta("experiment") is None  # nothing written
    assert search.submitter.python == sys.executable and search.active is search.poller.active
    search.close()

    opened = Search.open(exp, cfg)
    try:
        assert "[experiment]" in exp.config.read_text()  # the resolved config, as run
        assert opened.store.get_meta("experiment") == cfg.experiment.name
        assert opened.scheduler.name == "local" and opened.agents is None
    finally:
        opened.close()


def test_open_refuses_a_scheduler_that_cannot_run_before_writing_the_config(tmp_path):
    from asiarch.search.errors import SearchError

    cfg = Config()
    cfg.cluster.scheduler = "slurm"
    cfg.cluster.partition = "no-such-partition"

    exp = ExperimentDir(tmp_path / "exp")
    with pytest.raises(SearchError):
        Search.open(exp, cfg)  # no controller here: the Slurm check refuses
    assert not exp.config.exists()


@pytest.mark.parametrize("early_stopping, stage, expected", [(True, "explore", [90, 200]), (False, "explore", []),
                                                             (True, "verify", [])])
def test_an_attempt_asks_for_a_progress_record_at_each_rung_of_its_stage(tmp_path, early_stopping, stage, expected):
    """The job writes its progress record on reaching each rung (asiarch.job.train.ProgressClock) only where early
    stopping judges the stage: the submitter puts the rung steps in the spec."""
    import json

    cfg = Config()
    cfg.train.steps = 300
    cfg.early_stopping.enabled = early_stopping
    search = Search.open(ExperimentDir(tmp_path / "exp"), cfg)
    try:
        search.register_baselines()
        base = search.store.candidates(origin="baseline")[0]
        _, request = search.submitter.prepare_attempt(base, 1, stage=stage)
        assert json.loads((request.script.parent / "spec.json").read_text())["report_steps"] == expected
    finally:
        search.close()
