"""The `asiarch bench` command line: the value given is the value run (no Slurm needed)."""

import pytest

from asiarch.cli.main import build_parser
from asiarch.tools.bench import bench_slurm


def test_bench_slurm_candidates_reaches_bench_slurm(monkeypatch):
    parser = build_parser()
    assert parser.parse_args(["bench", "slurm"]).candidates == 64
    assert parser.parse_args(["bench", "overhead"]).candidates == 1000  # overhead keeps its own default
    seen = []
    monkeypatch.setattr("asiarch.tools.bench.bench_slurm", lambda candidates: seen.append(candidates) or 0)
    for n in (1000, 64, 3):  # 1000 used to be swapped for 64 silently
        args = parser.parse_args(["bench", "slurm", "--candidates", str(n)])
        assert args.func(args) == 0
    assert seen == [1000, 64, 3]


@pytest.mark.parametrize("value, message", [("0", "at least 1 candidate"), ("-5", "at least 1 candidate"),
                                            ("many", "not a whole number")])
def test_bench_slurm_refuses_what_it_cannot_run(value, message, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench", "slurm", "--candidates", value])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_slurm_library_refuses_an_empty_round():
    with pytest.raises(ValueError, match="at least 1 job"):
        bench_slurm(candidates=0)
