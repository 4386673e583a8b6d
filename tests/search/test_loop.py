"""The whole loop against the real pieces: SQLite store, submitit local jobs, torchrun with 2 gloo
ranks, HDF5 results. Small models and few steps so that each job takes seconds."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asiarch.cli import main as cli_main
from asiarch.config import render_toml
from asiarch.cli.console import Console
from asiarch.dispatch.local import LocalScheduler
from asiarch.tools.kill_head import stress_config
from asiarch.job import result as rf
from asiarch.layout import ExperimentDir
from asiarch.search.loop import Search, SearchError
from asiarch.store import Store

pytestmark = pytest.mark.slow
LAYERS = Path(__file__).resolve().parents[1] / "layers"

RAISES_IN_TRAINING = '''
import torch
from torch import nn


class DeltaNet(nn.Module):
    """Passes the checks (batches of 1, 2, 3 and 8) but breaks on the training batch of 4."""

    def __init__(self, hidden_size=32, num_heads=2, layer_idx=None, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x, **kwargs):
        if x.shape[0] == 4:
            raise RuntimeError("index out of range in my fancy gather")
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
        return self.proj(x.cumsum(1) / steps), None, None
'''


def small_config(name="t", candidates=3, **train):
    """The stress run's small search, with 2 gloo ranks per job, one job at a time, rounds of 2."""
    cfg = stress_config(name, candidates)
    cfg.train.nproc, cfg.cluster.max_in_flight, cfg.search.round_size = 2, 1, 2
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def offline_in_flight(db: Path) -> int:
    """Offline candidates' attempts a head has submitted and not yet seen end (0 before the store exists)."""
    if not db.exists():
        return 0
    s = Store.open_readonly(db)
    try:
        return s.conn.execute("SELECT COUNT(*) FROM attempts a JOIN candidates c ON c.id = a.candidate_id"
                              " WHERE c.origin = 'offline' AND a.status IN ('submitted', 'running')").fetchone()[0]
    except Exception:  # the head is still creating the schema
        return 0
    finally:
        s.close()


def add_layer(root: Path, source: str, name: str) -> None:
    f = root / f"{name}.py"
    f.write_text(source)
    assert cli_main(["add", str(root), str(f), "--name", name]) == 0


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One small search: a baseline, offline proposals, a layer that fails in training, a leaky one."""
    root = tmp_path_factory.mktemp("loop") / "exp dir"
    root.mkdir()
    cfg = small_config(candidates=4)
    (root / "config.toml").write_text(render_toml(cfg))
    add_layer(root, RAISES_IN_TRAINING, "raises_in_training")
    add_layer(root, (LAYERS / "leak_flip.py").read_text(), "leaky")
    search = Search.open(ExperimentDir(root), cfg, console=Console(verbose=False))
    summary = search.run()
    search.close()
    return root, cfg, summary


def test_every_candidate_is_recorded_with_status_fitness_and_lineage(finished):
    root, cfg, summary = finished
    store = Store.open_readonly(root / "asiarch.db")
    cands = {c.name: c for c in store.candidates()}
    base = cands["deltanet"]
    assert base.status == "done" and base.fitness == pytest.approx(0.5)
    offline = [c for c in cands.values() if c.origin == "offline"]
    trained = [c for c in cands.values() if c.origin != "baseline" and c.status in ("done", "failed")]
    assert len(trained) == cfg.budget.candidates  # the budget counts trained candidates, no more
    assert offline and all(c.status == "done" and c.fitness is not None for c in offline)
    ids = {c.id for c in cands.values()}
    assert all(c.parent_id in ids for c in offline)  # lineage points at stored candidates
    assert len({c.code_sha256 for c in cands.values()}) == len(cands)  # nothing proposed twice
    assert summary.trained == len([c for c in cands.values() if c.status == "done" and c.origin != "baseline"])


def test_bad_layers_fail_with_their_reason_and_the_loop_goes_on(finished):
    root, cfg, _ = finished
    store = Store.open_readonly(root / "asiarch.db")
    leaky = store.find_candidate("leaky")
    assert leaky.status == "rejected" and "causality" in leaky.reason
    assert store.attempts(leaky.id) == []  # never submitted
    bad = store.find_candidate("raises_in_training")
    assert bad.status == "failed" and "index out of range in my fancy gather" in bad.reason
    attempts = store.attempts(bad.id)
    assert len(attempts) == 1 and attempts[0].status == "failed"  # a candidate bug is not retried as is
    rec = rf.read_result(root / attempts[0].dir / "result.h5")
    assert rec.status == "failed" and "Traceback" in rec.traceback


def test_result_files_read_back_and_match_the_store(finished):
    root, _, _ = finished
    store = Store.open_readonly(root / "asiarch.db")
    ok = [a for a in store.attempts() if a.status == "ok"]
    assert len(ok) >= 3
    for a in ok:
        rec = rf.read_result(root / a.dir / "result.h5")
        cand = store.candidate(a.candidate_id)
        assert rec.status == "ok" and rec.candidate_id == cand.id and rec.code_sha256 == cand.code_sha256
        assert rec.run_key == a.run_key and rec.env["world_size"] == 2
        assert cand.loss == pytest.approx(rec.eval_loss)
        assert (root / a.dir / "job.sh").read_text().startswith("#!/usr/bin/env bash")
        assert (root / a.dir).parent.joinpath("layer.py").read_text() == cand.code


def test_leaderboard_json_best_first(finished, capsys):
    root, _, _ = finished
    assert cli_main(["leaderboard", str(root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"id", "name", "parent", "status", "fitness"} <= set(rows[0])
    scored = [r["fitness"] for r in rows if r["fitness"] is not None]
    assert scored == sorted(scored, reverse=True) and len(scored) >= 3
    assert rows[: len(scored)] == [r for r in rows if r["fitness"] is not None]
    assert {r["status"] for r in rows[len(scored):]} <= {"failed", "rejected"}
    assert cli_main(["leaderboard", str(root), "--csv"]) == 0
    assert capsys.readouterr().out.startswith("rank,id,name")


def test_status_shows_counts_failures_and_events(finished, capsys):
    root, _, _ = finished
    assert cli_main(["status", str(root)]) == 0
    out = capsys.readouterr().out
    assert "done" in out and "rejected" in out and "failures:" in out and "last events:" in out
    assert "index out of range" in out
    # what only the head knows, as the steady pipeline last wrote it: slots, proposals and checks in flight
    m = re.search(r"pipeline: +slots (\d+)/(\d+) busy, proposing (\d+), checking (\d+), ready (\d+)", out)
    assert m, out
    assert int(m.group(2)) == 1 and int(m.group(1)) <= 1  # this run's cluster.max_in_flight


class BreakingScheduler(LocalScheduler):
    """Fault injection at the file boundary: delete or truncate the result of chosen jobs as they end."""

    def __init__(self, *a, damage: dict[int, str], root: Path, **kw):
        super().__init__(*a, **kw)
        self.damage, self.root, self.done = damage, root, set()
        self.order: list[str] = []

    def submit(self, requests):
        ids = super().submit(requests)
        self.order += [r.script.parent for r in requests]
        self.id_dir = dict(getattr(self, "id_dir", {}), **dict(zip(ids, [r.script.parent for r in requests])))
        return ids

    def states(self, job_ids):
        out = super().states(job_ids)
        for jid, st in out.items():
            if st.finished and jid not in self.done:
                self.done.add(jid)
                n = list(self.id_dir).index(jid)
                result = self.id_dir[jid] / "result.h5"
                if self.damage.get(n) == "delete":
                    result.unlink()
                elif self.damage.get(n) == "truncate":
                    data = result.read_bytes()
                    result.write_bytes(data[: len(data) // 2])
        return out


def test_missing_and_truncated_results_are_failed_quarantined_and_the_loop_goes_on(tmp_path):
    cfg = small_config(candidates=3)
    cfg.search.max_attempts = 1
    exp = ExperimentDir(tmp_path)
    sched = BreakingScheduler(exp.jobs, max_in_flight=1, damage={1: "delete", 2: "truncate"}, root=tmp_path)
    search = Search.open(exp, cfg, scheduler=sched, console=Console(verbose=False))
    search.run()
    store = search.store
    cands = [c for c in store.candidates() if c.origin == "offline"]
    assert len(cands) == 3
    by_reason = {c.status + ":" + c.reason.split(":")[0] for c in cands}
    missing = [c for c in cands if "without writing result.h5" in c.reason]
    truncated = [c for c in cands if c.reason.startswith("result file truncated")]
    assert len(missing) == 1 and len(truncated) == 1, by_reason
    assert all(c.status == "failed" for c in missing + truncated)
    quarantined = list(tmp_path.glob("candidates/*/attempt-1/result.h5.quarantined-*"))
    assert len(quarantined) == 1
    assert [c.status for c in cands if c not in missing + truncated] == ["done"]
    search.close()


def test_reference_baseline_failure_stops_with_a_clear_message(tmp_path):
    cfg = small_config(candidates=1, lr=0.9, steps=30)  # lr 0.9 diverges the baseline
    cfg.search.max_attempts = 1
    search = Search.open(ExperimentDir(tmp_path), cfg, console=Console(verbose=False))
    with pytest.raises(SearchError, match="reference baseline 'deltanet' has no result.*diverge"):
        search.run()
    assert search.store.candidate(1).status == "failed"
    search.close()


def test_bad_config_refused_before_anything_runs(tmp_path, capsys):
    (tmp_path / "config.toml").write_text("[train]\nstepz = 3\n")
    assert cli_main(["run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key train.stepz" in err and "valid keys" in err
    assert not (tmp_path / "asiarch.db").exists()


def test_init_writes_a_config_that_runs(tmp_path, capsys):
    assert cli_main(["init", str(tmp_path / "exp")]) == 0
    from asiarch.config import load_config
    cfg = load_config(tmp_path / "exp" / "config.toml")
    assert cfg.experiment.name == "exp"
    assert cli_main(["init", str(tmp_path / "exp")]) == 2  # never overwrites silently


def test_killed_head_resumes_without_losing_or_duplicating_candidates(tmp_path):
    """kill -9 the head while a round is in flight, run again: the budget is met exactly, nothing twice."""
    cfg = small_config(candidates=4, steps=40)
    root = tmp_path / "exp"
    root.mkdir()
    (root / "config.toml").write_text(render_toml(cfg))
    env = {k: v for k, v in os.environ.items()}
    head = subprocess.Popen([sys.executable, "-m", "asiarch", "run", str(root), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline:
        if offline_in_flight(root / "asiarch.db"):
            break
        time.sleep(0.3)
    else:
        head.kill()
        pytest.fail("the head never submitted a candidate: " + head.stderr.read().decode()[-2000:])
    head.send_signal(signal.SIGKILL)
    head.wait()
    assert cli_main(["run", str(root), "--quiet"]) == 0
    store = Store.open_readonly(root / "asiarch.db")
    offline = [c for c in store.candidates() if c.origin == "offline"]
    assert len(offline) == cfg.budget.candidates
    assert all(c.status == "done" for c in offline), [(c.name, c.status, c.reason) for c in offline]
    assert len({c.code_sha256 for c in offline}) == len(offline)
    for c in offline:  # exactly one scored result per candidate
        assert sum(1 for a in store.attempts(c.id) if a.status == "ok") == 1
