"""Training on a prepared directory through the real job path: `asiarch train --task lm --data DIR`,
torchrun with 2 gloo ranks on CPU, in the sandbox the loop uses (the directory bound read-only)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from asiarch.cli import main
from asiarch.job import result as rf
from asiarch.job.tasks import write_token_file
from tests.job.test_train_job import CUMSUM

pytestmark = pytest.mark.slow


def test_two_ranks_train_on_a_prepared_directory(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    root = Path(__file__).resolve().parents[2]
    corpus.write_text((root / "README.md").read_text())  # real English text, ~40 kB
    d = tmp_path / "data"
    assert main(["data", "prepare", str(corpus), str(root / "setup.cfg"), "--tokenizer", "bytes", "--out", str(d),
                 "--val-tokens", "6k", "--quiet", "--workers", "1"]) == 0
    layer = tmp_path / "layer.py"
    layer.write_text(CUMSUM.format(extra=""))
    out = tmp_path / "r.h5"
    code = main(["train", str(layer), "--out", str(out), "--task", "lm", "--data", str(d), "--steps", "12",
                 "--nproc", "2", "--batch-size", "8", "--seq-len", "64", "--hidden-size", "32", "--lr", "0.01"])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    rec = rf.read_result(out)
    assert rec.status == "ok" and rec.env["world_size"] == 2
    assert rec.config["data"] == str(d.resolve()) and rec.config["task"] == "lm"
    # the manifest set the model's vocabulary (bytes + end-of-text), not train.vocab_size (64)
    assert rec.env["data"]["vocab_size"] == 257 and rec.env["data"]["eot"] == 256
    assert rec.env["data"]["eval_windows"] == 8 * 8  # train.eval_batches x batch_size, shared by the ranks
    assert rec.curve.tokens[-1] == 12 * 8 * 64
    assert 0 < rec.eval_loss < math.log(257)  # below a uniform guess over the vocabulary: it learned


def test_a_relative_token_file_is_found_by_the_job(tmp_path, monkeypatch, capsys):
    """`asiarch train --token-file tok.bin`, run from the file's directory: the job (which runs in its attempt
    directory) trains on that file."""
    write_token_file(tmp_path / "tok.bin", "the quick brown fox jumps over the lazy dog. " * 200)
    layer = tmp_path / "layer.py"
    layer.write_text(CUMSUM.format(extra=""))
    monkeypatch.chdir(tmp_path)
    code = main(["train", "layer.py", "--out", "r.h5", "--task", "lm", "--token-file", "tok.bin", "--steps", "2",
                 "--nproc", "1", "--batch-size", "2", "--seq-len", "32", "--hidden-size", "16", "--vocab-size", "256"])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    rec = rf.read_result(tmp_path / "r.h5")
    assert rec.status == "ok" and rec.config["token_file"] == str(tmp_path.resolve() / "tok.bin")
