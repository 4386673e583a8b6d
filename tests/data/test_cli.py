"""`asiarch data prepare | verify`, and the commands that read a prepared directory (`asiarch train
--data`, `asiarch check --config`, the config's train.data), through the real command line."""

from __future__ import annotations

import re

import pytest

from asiarch.cli import main
from asiarch.config import Config, ConfigError, validate


@pytest.fixture(scope="module")
def prepared(kjv_small, tmp_path_factory):
    d = tmp_path_factory.mktemp("prep") / "kjv-bytes"
    assert main(["data", "prepare", str(kjv_small), "--tokenizer", "bytes", "--out", str(d), "--val-tokens", "20k",
                 "--shard-tokens", "50k", "--workers", "1", "--quiet"]) == 0
    return d


def test_prepare_prints_the_splits_and_its_throughput(kjv_small, tmp_path, capsys):
    d = tmp_path / "d"
    assert main(["data", "prepare", str(kjv_small), "--tokenizer", "gpt2", "--out", str(d), "--val-tokens", "3k",
                 "--workers", "2"]) == 0
    out, err = capsys.readouterr()
    assert "gpt2 (vocabulary 50,257, end-of-text 50256, uint16); train " in out and "val 3,0" in out
    assert "tokens/s" in out and "with 2 worker(s)" in out and f"--data {d}" in out
    assert "prepare [##############################] 100.0%" in err  # the progress bar's last line
    # against tiktoken alone on the same text, one thread: its rate and the run's multiple of it
    alone = re.search(r"against the tokenizer alone \(tiktoken encode_ordinary, 1 thread, on the first 1,500 "
                      r"documents, [\d,]+ characters, in memory\): ([\d,]+) tokens/s; this run ([\d.]+)x", out)
    assert alone and int(alone[1].replace(",", "")) > 0 and float(alone[2]) > 0, out
    assert main(["data", "prepare", str(kjv_small), "--tokenizer", "gpt2", "--out", str(d), "--val-tokens", "3k",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "already prepared with these inputs and settings" in out and "against the tokenizer alone" not in out
    assert main(["data", "prepare", str(kjv_small), "--tokenizer", "bytes", "--out", str(tmp_path / "b"),
                 "--val-tokens", "3k", "--quiet", "--no-compare"]) == 0
    assert "against the tokenizer alone" not in capsys.readouterr().out


def test_prepare_notes_a_validation_split_larger_than_the_training_split(kjv_small, tmp_path, capsys):
    assert main(["data", "prepare", str(kjv_small), "--tokenizer", "bytes", "--out", str(tmp_path / "d"),
                 "--val-tokens", "120k", "--quiet", "--no-compare"]) == 0
    assert "the validation split holds more tokens than the training split" in capsys.readouterr().err
    assert main(["data", "prepare", str(kjv_small), "--tokenizer", "bytes", "--out", str(tmp_path / "e"),
                 "--val-tokens", "50k", "--quiet", "--no-compare"]) == 0
    assert "validation split" not in capsys.readouterr().err


def test_bench_data_prepare_prints_prepare_against_tiktoken_on_the_same_text(kjv_small, capsys):
    """`asiarch bench data-prepare` on a small corpus: a row per method, every one of the same tokens (prepare's
    with one end-of-text per document more), each rate as a multiple of the faster tiktoken row."""
    assert main(["bench", "data-prepare", "--input", str(kjv_small), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    rows = {m[1].strip(): (int(m[2].replace(",", "")), float(m[3]))
            for m in re.finditer(r"^((?:tiktoken|asiarch)[^\n]*?)\s+([\d,]+)\s+[\d.]+\s+[\d,]+\s+([\d.]+)$", out, re.M)}
    assert len(rows) == 4, out
    loop, batch = rows["tiktoken encode_ordinary loop"], rows["tiktoken encode_ordinary_batch, 1 thread"]
    assert loop[0] == batch[0] and max(loop[1], batch[1]) == 1.0, out
    assert rows["asiarch data prepare, 2 worker(s), end to end"][0] == loop[0] + 1500, out


def test_prepare_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["data", "prepare", str(tmp_path / "none.jsonl"), "--tokenizer", "gpt2", "--out", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.startswith("asiarch: data prepare: ") and not (tmp_path / "d").exists()
    (tmp_path / "a.txt").write_text("text")
    assert main(["data", "prepare", str(tmp_path / "a.txt"), "--tokenizer", str(tmp_path / "tok.json"),
                 "--out", str(tmp_path / "d")]) == 2
    assert "tok.json': no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "prepare", str(tmp_path / "a.txt"), "--tokenizer", "bytes", "--out", "d", "--val-tokens", "x"])
    assert "'x' is not a count" in capsys.readouterr().err


def test_verify_checks_every_sha256(prepared, tmp_path, capsys):
    assert main(["data", "verify", str(prepared)]) == 0
    assert "sizes and sha256 match the manifest" in capsys.readouterr().out
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in prepared.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    raw = bytearray((bad / "train_000001.bin").read_bytes())
    raw[100] ^= 1
    (bad / "train_000001.bin").write_bytes(bytes(raw))
    assert main(["data", "verify", str(bad)]) == 1
    assert "train_000001.bin: sha256" in capsys.readouterr().err
    # the head refuses to train on it, before any job starts
    layer = tmp_path / "layer.py"
    layer.write_text("import torch\nclass DeltaNet(torch.nn.Module):\n    pass\n")
    assert main(["train", str(layer), "--out", str(tmp_path / "r.h5"), "--task", "lm", "--data", str(bad)]) == 2
    assert "train.data: " in (err := capsys.readouterr().err) and "train_000001.bin: sha256" in err
    assert not list(tmp_path.glob("asiarch-train-*"))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[train]\ntask = "lm"\ndata = "{bad}"\nseq_len = 32\n')
    assert main(["check", str(layer), "--config", str(cfg), "--sandbox", "none"]) == 1
    assert "check: train.data: " in capsys.readouterr().err


def test_config_train_data(prepared, tmp_path):
    cfg = Config()
    cfg.train.task, cfg.train.data = "lm", str(prepared)
    validate(cfg)  # vocabulary_size left at its default: the manifest's (257) is used
    cfg.train.vocab_size = 300
    validate(cfg)  # larger: padding
    cfg.train.vocab_size = 200
    with pytest.raises(ConfigError, match=r"train.vocab_size = 200 is smaller than the vocabulary of train.data \(257"):
        validate(cfg)
    cfg.train.vocab_size = 64
    cfg.train.seq_len = 30_000  # train shards hold 50k tokens, the val split 20k
    with pytest.raises(ConfigError, match="no val shard .* holds train.seq_len \\+ 1 = 30001"):
        validate(cfg)
    cfg.train.seq_len = 64
    cfg.train.token_file = str(tmp_path / "t.bin")
    with pytest.raises(ConfigError, match="train.data and train.token_file are both set"):
        validate(cfg)
    cfg.train.token_file, cfg.train.data = "", str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="train.data: .*nowhere: no such directory.*asiarch data prepare"):
        validate(cfg)
