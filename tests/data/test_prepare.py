"""`asiarch data prepare` (asiarch.data.prepare) on real text with real tokenizers: the stream, its
splits and shards, workers, resuming, and every bad input's error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from asiarch.data.prepare import STATE_NAME, PrepareError, prepare
from asiarch.data.sources import InputError
from asiarch.job.data import open_shard, read_manifest, sha256_file, verify_shards
from tests.data.conftest import verses

ROOT = Path(__file__).resolve().parents[2]


def stream(directory: Path, split: str | None = None) -> np.ndarray:
    m = read_manifest(directory)
    names = (split,) if split else ("val", "train")
    return np.concatenate([open_shard(directory, m, s) for n in names for s in m.splits[n].shards])


def test_gpt2_stream_is_tiktokens_ids_with_an_eot_after_each_document(kjv_small, gpt2, tmp_path):
    r = prepare([str(kjv_small)], tokenizer="gpt2", out=tmp_path / "d", val_tokens=3000, shard_tokens=10_000)
    m = r.manifest
    assert (m.tokenizer, m.vocab_size, m.eot, m.dtype) == ("gpt2", 50257, 50256, "uint16")
    expected = np.concatenate([np.append(ids, 50256) for ids in gpt2.encoding.encode_ordinary_batch(
        verses(kjv_small), num_threads=1)])
    assert stream(tmp_path / "d").tolist() == expected.tolist()
    # val: the first 3,000 tokens rounded up to the end of a verse; train: the rest, in shards of 10,000
    val = stream(tmp_path / "d", "val")
    assert 3000 <= len(val) < 3000 + 100 and val[-1] == 50256 and 50256 not in val[3000 - 1:-1].tolist()
    assert [s.tokens for s in m.splits["train"].shards][:-1] == [10_000] * (len(m.splits["train"].shards) - 1)
    assert r.encoded_tokens == len(expected) and r.tokens_per_s > 0
    verify_shards(tmp_path / "d")
    assert m.sources == (str(kjv_small),)


def test_workers_give_the_same_output(kjv_small, tmp_path):
    one = prepare([str(kjv_small)], tokenizer="gpt2", out=tmp_path / "1", val_tokens=3000, shard_tokens=10_000,
                  unit_chars=20_000)
    two = prepare([str(kjv_small)], tokenizer="gpt2", out=tmp_path / "2", val_tokens=3000, shard_tokens=10_000,
                  unit_chars=20_000, workers=2)
    assert one.manifest == two.manifest
    assert (tmp_path / "1" / "manifest.json").read_text() == (tmp_path / "2" / "manifest.json").read_text()


def test_text_files_are_documents_and_long_ones_are_cut_exactly(gpt2, tmp_path):
    """Each text file is one document; a long one is encoded in pieces by several workers, and the
    stream is still the whole file's ids."""
    files = [ROOT / "README.md", ROOT / "setup.cfg"]
    r = prepare([str(f) for f in files], tokenizer="gpt2", out=tmp_path / "d", val_tokens=100,
                unit_chars=2_000, workers=2)
    expected = np.concatenate([np.append(gpt2.encoding.encode_ordinary(f.read_text()), 50256) for f in files])
    assert stream(tmp_path / "d").tolist() == expected.tolist()
    assert r.manifest.splits["val"].tokens == len(gpt2.encoding.encode_ordinary(files[0].read_text())) + 1


def test_bytes_and_jsonl_field(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"body": t, "id": i}) for i, t in enumerate(["ab", "", "é" * 3, "cd"])) +
                   "\n\n")
    r = prepare([str(src)], tokenizer="bytes", out=tmp_path / "d", val_tokens=2, field="body")
    assert (r.manifest.vocab_size, r.manifest.eot, r.manifest.dtype) == (257, 256, "uint16")
    # the empty document is skipped; 'ab' + EOT is the val split (whole documents)
    assert stream(tmp_path / "d", "val").tolist() == [97, 98, 256]
    assert stream(tmp_path / "d", "train").tolist() == list("é".encode() * 3) + [256, 99, 100, 256]


def test_a_vocabulary_beyond_uint16_writes_uint32(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {f"w{i}": i for i in range(70_000)} | {"<|endoftext|>": 70_000}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tk.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "a.txt").write_text("w1 w69999 w65536")
    (tmp_path / "b.txt").write_text("w7")
    r = prepare([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], tokenizer=str(tmp_path / "tokenizer.json"),
                out=tmp_path / "d", val_tokens=1)
    assert (r.manifest.dtype, r.manifest.vocab_size, r.manifest.eot) == ("uint32", 70_001, 70_000)
    assert r.manifest.tokenizer == str((tmp_path / "tokenizer.json").resolve())
    assert stream(tmp_path / "d").tolist() == [1, 69999, 65536, 70_000, 7, 70_000]


def test_parquet_rows_are_documents(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["ab", "cd", None], "n": [1, 2, 3]}), tmp_path / "t.parquet")
    prepare([str(tmp_path / "t.parquet")], tokenizer="bytes", out=tmp_path / "d", val_tokens=1)
    assert stream(tmp_path / "d").tolist() == [97, 98, 256, 99, 100, 256]
    with pytest.raises(InputError, match=r"t.parquet: no column 'body' \(columns: text, n\).*--field"):
        prepare([str(tmp_path / "t.parquet")], tokenizer="bytes", out=tmp_path / "e", val_tokens=1, field="body")


def test_parquet_without_pyarrow_says_to_install_it(tmp_path, monkeypatch):
    """Where pyarrow cannot be imported (None in sys.modules: Python's own way to block an import),
    the error names the package and the extra."""
    for name in ("pyarrow", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, name, None)
    (tmp_path / "t.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"t.parquet: reading Parquet needs pyarrow: pip install 'asiarch\[data\]'"):
        prepare([str(tmp_path / "t.parquet")], tokenizer="bytes", out=tmp_path / "d", val_tokens=1)


def test_hf_dataset_needs_the_library_and_its_cache(tmp_path):
    from importlib.util import find_spec

    needle = "cannot load it from the local datasets cache" if find_spec("datasets") else "need the `datasets` library"
    with pytest.raises(InputError, match=needle):
        prepare(["hf:surely-not-cached/none"], tokenizer="bytes", out=tmp_path / "d", val_tokens=1)


def test_hf_input_from_a_local_directory_of_jsonl_files(kjv_small, tmp_path):
    """hf:DIR, a local directory of JSON-lines files that datasets.load_dataset reads offline (a real
    `asiarch data prepare` run with HF_HOME in tmp_path, so neither the network nor the user's cache is
    touched): the same tokens, splits and shards as the file given as plain JSONL."""
    pytest.importorskip("datasets")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.jsonl").write_bytes(kjv_small.read_bytes())
    hf_home = tmp_path / "hf"
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "bin" / "asiarch"), "data", "prepare", f"hf:{corpus}",
                          "--tokenizer", "bytes", "--val-tokens", "3000", "--shard-tokens", "20000", "--workers",
                          "1", "--quiet", "--out", str(tmp_path / "hf-out")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    ref = prepare([str(corpus / "train.jsonl")], tokenizer="bytes", out=tmp_path / "jsonl-out", val_tokens=3000,
                  shard_tokens=20_000).manifest
    m = read_manifest(tmp_path / "hf-out")
    assert m.sources == (f"hf:{corpus}",)
    assert m.to_dict() == {**ref.to_dict(), "sources": [f"hf:{corpus}"]}  # every split, shard and sha256
    # bytes: one token a byte of each verse, and the end-of-text after each
    assert sum(s.tokens for _, s in m.shards()) == sum(len(v.encode()) + 1 for v in verses(kjv_small))
    verify_shards(tmp_path / "hf-out")
    assert (hf_home / "datasets").is_dir()  # datasets' cache went to the HF_HOME given


def test_bad_inputs_are_named_and_nothing_is_lost(kjv_small, tmp_path):
    with pytest.raises(InputError, match="missing.txt: no such input file"):
        prepare([str(kjv_small), str(tmp_path / "missing.txt")], tokenizer="bytes", out=tmp_path / "d")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InputError, match="empty.jsonl: empty input file"):
        prepare([str(tmp_path / "empty.jsonl")], tokenizer="bytes", out=tmp_path / "d")
    assert not (tmp_path / "d").exists()  # checked before anything is written
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n\n')
    with pytest.raises(InputError, match="blank.jsonl: no documents"):
        prepare([str(tmp_path / "blank.jsonl")], tokenizer="bytes", out=tmp_path / "b", val_tokens=1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"content": "no text field", "id": 2}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: no 'text' field \(the line has 'content', 'id'\).*--field"):
        prepare([str(bad)], tokenizer="bytes", out=tmp_path / "e", val_tokens=1)
    bad.write_text('{"text": "fine"}\n{"text": 3}\nnot json\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: field 'text' is int, not a string"):
        prepare([str(bad)], tokenizer="bytes", out=tmp_path / "f", val_tokens=1)
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: not JSON"):
        prepare([str(bad)], tokenizer="bytes", out=tmp_path / "g", val_tokens=1)
    bad.write_bytes('{"text": "fine"}\n{"text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(InputError, match=r"bad.jsonl:2: not UTF-8 \(byte 13 of the line.*iconv"):
        prepare([str(bad)], tokenizer="bytes", out=tmp_path / "g2", val_tokens=1)
    # a byte-order mark before the first line and a "\r" between JSON tokens are read as JSON reads them
    odd = tmp_path / "odd.jsonl"
    odd.write_bytes(b'\xef\xbb\xbf{"text": "one"}\n{"text": "two",\r "id": 2}\n')
    r = prepare([str(odd)], tokenizer="bytes", out=tmp_path / "odd", val_tokens=4)
    assert sum(s.tokens for _, s in r.manifest.shards()) == len("one") + len("two") + 2
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match="latin1.txt: not UTF-8 text .byte 3"):
        prepare([str(tmp_path / "latin1.txt")], tokenizer="bytes", out=tmp_path / "h", val_tokens=1)
    with pytest.raises(InputError, match="no inputs"):
        prepare([], tokenizer="bytes", out=tmp_path / "i")
    with pytest.raises(PrepareError, match="took all of them: none are left for training; lower --val-tokens"):
        prepare([str(kjv_small)], tokenizer="bytes", out=tmp_path / "j", val_tokens=10**9)


def test_the_output_directory_is_guarded(kjv_small, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(PrepareError, match=r"not empty and not an asiarch data prepare directory \(holds notes.txt\)"):
        prepare([str(kjv_small)], tokenizer="bytes", out=other, val_tokens=100)
    assert (other / "notes.txt").read_text() == "mine"
    prepare([str(kjv_small)], tokenizer="bytes", out=tmp_path / "d", val_tokens=100, shard_tokens=50_000)
    again = prepare([str(kjv_small)], tokenizer="bytes", out=tmp_path / "d", val_tokens=100, shard_tokens=50_000)
    assert again.already_done and again.encoded_tokens == 0
    with pytest.raises(PrepareError, match=r"other settings: val_tokens \(was 100, now 200\).*give a new --out"):
        prepare([str(kjv_small)], tokenizer="bytes", out=tmp_path / "d", val_tokens=200, shard_tokens=50_000)


def test_resume_keeps_verified_shards_and_redoes_the_rest(kjv_small, tmp_path):
    """An interrupted run (the state of a run that stopped after shard 3, shard 2 since damaged):
    shards 0-1 are kept as they are, the rest encoded again; the result is the uninterrupted run's."""
    kw = dict(tokenizer="gpt2", val_tokens=3000, shard_tokens=5_000, unit_chars=8_000)
    full = prepare([str(kjv_small)], out=tmp_path / "full", **kw)
    d = tmp_path / "d"
    prepare([str(kjv_small)], out=d, **kw)
    state = json.loads((d / STATE_NAME).read_text())
    files = [r["file"] for r in state["shards"]]
    (d / "manifest.json").unlink()
    for f in files[4:]:
        (d / f).unlink()
    (d / f".{files[4]}.1234.5678abcd.tmp").write_bytes(b"half a shard")  # what a killed atomic write leaves
    (d / "notes.txt").write_text("the user's")  # not prepare's: left alone
    state["done"], state["shards"] = False, state["shards"][:4]
    (d / STATE_NAME).write_text(json.dumps(state))
    raw = (d / files[2]).read_bytes()
    (d / files[2]).write_bytes(raw[:10] + bytes([raw[10] ^ 1]) + raw[11:])
    before = {f: os.stat(d / f) for f in files[:2]}
    r = prepare([str(kjv_small)], out=d, **kw)
    assert r.kept_shards == 2 and 0 < r.encoded_tokens < full.encoded_tokens
    assert r.manifest == full.manifest
    assert {f: (os.stat(d / f).st_ino, os.stat(d / f).st_mtime_ns) for f in files[:2]} == \
        {f: (s.st_ino, s.st_mtime_ns) for f, s in before.items()}  # not rewritten
    assert sorted(p.name for p in d.iterdir()) == sorted(files + ["manifest.json", "notes.txt", STATE_NAME])


@pytest.mark.slow
def test_a_killed_prepare_resumes_to_the_same_manifest(kjv, tmp_path):
    """SIGKILL a real `asiarch data prepare` once it has written a few shards; run it again: the
    shards already written are kept (not rewritten) and the manifest and every sha256 equal an
    uninterrupted run's."""
    src = tmp_path / "kjv.jsonl"
    lines = kjv.read_bytes().splitlines(keepends=True)
    src.write_bytes(b"".join(lines[:8_000]))  # ~250k GPT-2 tokens
    args = ["data", "prepare", str(src), "--tokenizer", "gpt2", "--val-tokens", "10k", "--shard-tokens", "10k",
            "--workers", "2", "--quiet"]
    cmd = [sys.executable, str(ROOT / "bin" / "asiarch")]
    d = tmp_path / "killed"
    proc = subprocess.Popen(cmd + args + ["--out", str(d)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = d / STATE_NAME
    deadline = time.time() + 60
    records = []
    while time.time() < deadline and proc.poll() is None:
        try:
            records = json.loads(state.read_text())["shards"]
        except (OSError, ValueError):
            records = []
        if len(records) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (d / "manifest.json").exists()
    kept = {r["file"]: os.stat(d / r["file"]).st_mtime_ns for r in json.loads(state.read_text())["shards"]}
    again = subprocess.run(cmd + args + ["--out", str(d)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"{len(kept)} shard(s) of the interrupted run verified and kept" in again.stdout
    assert {f: os.stat(d / f).st_mtime_ns for f in kept} == kept
    ref = subprocess.run(cmd + args + ["--out", str(tmp_path / "ref")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert ref.returncode == 0, ref.stderr
    assert (d / "manifest.json").read_text() == (tmp_path / "ref" / "manifest.json").read_text()
    m = read_manifest(d)
    assert all(sha256_file(d / s.file) == s.sha256 for _, s in m.shards()) and len(m.shards()) > len(kept)


def test_a_tokenizer_json_travels_with_the_data_and_jobs_load_that_copy(tmp_path, hf_gpt2_json, kjv_small):
    """A job's sandbox or a compute node may not see the tokenizer.json's original path: prepare copies it into
    the directory and prepared_tokenizer loads the copy (and refuses one whose vocabulary is not the manifest's)."""
    import shutil

    from asiarch.data.prepare import prepare
    from asiarch.data.tokenizers import TokenizerError, prepared_tokenizer
    from asiarch.job.data import read_manifest

    own = tmp_path / "mine" / "tokenizer.json"
    own.parent.mkdir()
    shutil.copy(hf_gpt2_json, own)
    out = tmp_path / "d"
    prepare([str(kjv_small)], tokenizer=str(own), out=out, val_tokens=2000)
    assert (out / "tokenizer.json").read_bytes() == own.read_bytes()
    own.unlink()  # the original is gone: the copy serves
    m = read_manifest(out)
    tok = prepared_tokenizer(out, m)
    assert tok.eot == m.eot == 50256 and tok.encode_batch(["In the beginning"])[0] == [818, 262, 3726]
    (out / "tokenizer.json").write_text((tmp_path / "x").as_posix())  # not a tokenizer any more
    with pytest.raises(TokenizerError):
        prepared_tokenizer(out, m)
    bytes_dir = tmp_path / "b"
    prepare([str(kjv_small)], tokenizer="bytes", out=bytes_dir, val_tokens=2000)
    assert not (bytes_dir / "tokenizer.json").exists()
    assert prepared_tokenizer(bytes_dir, read_manifest(bytes_dir)).vocab_size == 257


def test_cloze_task_from_held_out_documents(tmp_path, kjv_small):
    """`asiarch data cloze`: one question per document of enough words, its own ending among others', with a
    fixed draw; a corpus too small for a question, or a name lm-eval cannot use, is refused with the reason."""
    import json

    from asiarch.cli import main
    from asiarch.data.cloze import make_cloze
    from asiarch.data.sources import InputError
    from tests.data.conftest import verses

    yaml, n = make_cloze([str(kjv_small)], tmp_path / "t", count=30, choices=4)
    assert n == 30 and yaml.name == "cloze.yaml" and "test: cloze.jsonl" in yaml.read_text()
    qs = [json.loads(line) for line in (tmp_path / "t" / "cloze.jsonl").read_text().splitlines()]
    texts = [v for v in verses(kjv_small) if len(v.split()) >= 8]
    for q, verse in zip(qs, texts):
        assert len(q["choices"]) == 4 and len(set(q["choices"])) == 4
        right = q["choices"][q["label"]]
        assert verse.startswith(q["context"] + " " + right)  # the document's own words continue the context
    assert len({q["label"] for q in qs}) > 1  # the right ending is not always in the same place
    again, _ = make_cloze([str(kjv_small)], tmp_path / "u", count=30, choices=4)
    assert (tmp_path / "u" / "cloze.jsonl").read_text() == (tmp_path / "t" / "cloze.jsonl").read_text()
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text('{"text": "one two three four five six seven eight"}\n{"text": "too short"}\n')
    with pytest.raises(InputError, match="1 document.*needs 4"):
        make_cloze([str(tiny)], tmp_path / "v")
    assert main(["data", "cloze", str(kjv_small), "--out", str(tmp_path / "w"), "--name", "bad-name"]) == 2


def test_the_head_refuses_to_search_on_altered_shards(tmp_path, kjv_small, capsys):
    """A shard altered in place (same size, so only its sha256 tells): `asiarch run` stops before any job, naming
    the shard; nothing is trained on it."""
    from asiarch.cli import main
    from asiarch.data.prepare import prepare
    from asiarch.job.data import read_manifest

    exp = tmp_path / "exp"
    prepare([str(kjv_small)], tokenizer="bytes", out=exp / "data", val_tokens=2000)
    shard = exp / "data" / read_manifest(exp / "data").splits["train"].shards[0].file
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 1
    shard.write_bytes(bytes(raw))
    (exp / "config.toml").write_text('[train]\ntask = "lm"\ndata = "data"\nseq_len = 32\n[cluster]\nsandbox = "none"\n')
    capsys.readouterr()
    assert main(["run", str(exp), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert shard.name in err and "sha256" in err, err
    assert not (exp / "jobs").exists() and not list(exp.glob("**/attempt-*"))
