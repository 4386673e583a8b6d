"""Tasks: MQAR structure and determinism, masked accuracy, token files, LM windows, errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from asiarch.job.tasks import (
    IGNORE_INDEX,
    MQARTask,
    TokenFileTask,
    decode_bytes,
    encode_bytes,
    make_task,
    masked_accuracy,
    write_token_file,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- MQAR


@pytest.mark.parametrize(
    "vocab_size,seq_len,num_kv_pairs,random_non_queries",
    [(8192, 64, 4, True), (8192, 128, 8, False), (8192, 256, 16, True), (64, 67, 16, True), (8, 4, 1, False)],
)
def test_mqar_structure(vocab_size, seq_len, num_kv_pairs, random_non_queries):
    task = MQARTask(vocab_size, seq_len, num_kv_pairs, random_non_queries=random_non_queries)
    x, y = task.batch(64, gen(0))
    assert x.shape == y.shape == (64, seq_len) and x.dtype == y.dtype == torch.long
    assert task.vocab_size == vocab_size and task.seq_len == seq_len
    assert int(x.min()) >= 0 and int(x.max()) < vocab_size
    half, ctx = vocab_size // 2, 2 * num_kv_pairs
    keys, values = x[:, 0:ctx:2], x[:, 1:ctx:2]
    assert bool(((keys >= 1) & (keys < half)).all())  # 0 is reserved for filler
    assert bool(((values >= half) & (values < vocab_size)).all())
    assert (y[:, :ctx] == IGNORE_INDEX).all()
    for b in range(x.shape[0]):
        row_keys = keys[b].tolist()
        assert len(set(row_keys)) == num_kv_pairs  # each key once in the context
        pairs = dict(zip(row_keys, values[b].tolist()))
        scored = (y[b] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert len(scored) == num_kv_pairs
        queried = [x[b, t].item() for t in scored]
        assert sorted(queried) == sorted(row_keys)  # every key queried exactly once
        for t in scored:
            assert t >= ctx and (t - ctx) % 2 == 0
            assert y[b, t].item() == pairs[x[b, t].item()]
        if not random_non_queries:
            filler = torch.ones(seq_len, dtype=torch.bool)
            filler[:ctx] = False
            filler[scored] = False
            assert (x[b, filler] == 0).all()


def test_mqar_queries_favour_short_gaps():
    task = MQARTask(seq_len=512, num_kv_pairs=16)
    _, y = task.batch(512, gen(0))
    pos = (y != IGNORE_INDEX).nonzero()[:, 1].float()
    first, last = (pos < 32 + 120).sum(), (pos >= 512 - 120).sum()
    assert first > 2 * last  # power law: early slots are drawn far more often


def test_mqar_deterministic_and_seeded():
    task = MQARTask()
    a, b = task.batch(16, gen(7)), task.batch(16, gen(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = task.batch(16, gen(8))
    assert not torch.equal(a[0], c[0])
    g = gen(7)
    first, second = task.batch(16, g), task.batch(16, g)
    assert not torch.equal(first[0], second[0])  # the generator advances


def test_mqar_eval_batches_fixed_and_independent_of_training():
    task = MQARTask()
    e1 = task.eval_batches(3, 8)
    g = gen(0)
    task.batch(8, g)
    e2 = task.eval_batches(3, 8)
    assert len(e1) == 3 and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(e1, e2))
    assert not torch.equal(e1[0][0], e1[1][0])
    assert not torch.equal(task.eval_batches(1, 8, seed=99)[0][0], e1[0][0])


def test_mqar_fast_enough():
    task = MQARTask(vocab_size=8192, seq_len=256, num_kv_pairs=16)
    g = gen(0)
    task.batch(256, g)
    best = min(_timed(lambda: task.batch(256, g)) for _ in range(5))
    assert best < 0.050, f"256 x 256 MQAR batch took {best * 1e3:.1f} ms"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        (dict(seq_len=15, num_kv_pairs=4), "seq_len"),
        (dict(vocab_size=64, seq_len=128, num_kv_pairs=17), "num_kv_pairs"),
        (dict(num_kv_pairs=0), "num_kv_pairs"),
        (dict(vocab_size=4), "vocab_size"),
        (dict(vocab_size=64.0), "vocab_size"),
        (dict(power_a=0), "power_a"),
    ],
)
def test_mqar_validates_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        MQARTask(**kwargs)


def test_mqar_validates_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        MQARTask().batch(0, gen(0))


# --------------------------------------------------------------------------- accuracy


def oracle_logits(x: torch.Tensor, num_kv_pairs: int, vocab_size: int) -> torch.Tensor:
    """Perfect associative recall read off the inputs: at each token, the value after its key."""
    B, T = x.shape
    logits = torch.zeros(B, T, vocab_size)
    for b in range(B):
        table = {x[b, 2 * i].item(): x[b, 2 * i + 1].item() for i in range(num_kv_pairs)}
        for t in range(T):
            if x[b, t].item() in table:
                logits[b, t, table[x[b, t].item()]] = 1.0
    return logits


def test_oracle_scores_perfectly():
    task = MQARTask(vocab_size=256, seq_len=64, num_kv_pairs=8)
    x, y = task.batch(32, gen(3))
    assert masked_accuracy(oracle_logits(x, 8, 256), y) == 1.0
    assert masked_accuracy(torch.zeros(32, 64, 256), y) == 0.0  # always predicts token 0, never a value


def test_masked_accuracy_counts_only_scored_positions():
    logits = torch.zeros(1, 4, 5)
    logits[0, 0, 1] = logits[0, 1, 2] = logits[0, 2, 3] = logits[0, 3, 4] = 1
    y = torch.tensor([[1, 2, IGNORE_INDEX, 0]])
    assert masked_accuracy(logits, y) == pytest.approx(2 / 3)
    assert np.isnan(masked_accuracy(logits, torch.full((1, 4), IGNORE_INDEX)))


# --------------------------------------------------------------------------- bytes and token files

TEXT = "In the beginning — ünïcode, 漢字 and 🙂.\n" * 200


def test_bytes_round_trip(tmp_path):
    tokens = encode_bytes(TEXT)
    assert tokens.dtype == np.uint16 and tokens.max() < 256 and len(tokens) == len(TEXT.encode())
    assert decode_bytes(tokens) == TEXT
    path = write_token_file(tmp_path / "train.bin", TEXT)
    assert decode_bytes(np.fromfile(path, dtype=np.uint16)) == TEXT
    assert [p.name for p in tmp_path.iterdir()] == ["train.bin"]  # no temp file left
    with pytest.raises(ValueError, match="255"):
        decode_bytes(np.array([300]))


def test_write_token_file_checks_dtype_range(tmp_path):
    with pytest.raises(ValueError, match="uint32"):
        write_token_file(tmp_path / "t.bin", np.array([70000]), dtype="uint16")
    write_token_file(tmp_path / "t.bin", np.array([70000]), dtype="uint32")
    assert np.fromfile(tmp_path / "t.bin", dtype=np.uint32).tolist() == [70000]


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "tokens with space.bin"
    write_token_file(path, np.arange(1000) % 500)  # token i sits at position i (mod 500)
    return path


def test_lm_windows_shift_by_one(token_file):
    task = make_task("lm", path=token_file, seq_len=16)
    assert task.vocab_size == 500 and task.seq_len == 16
    x, y = task.batch(32, gen(0))
    assert x.shape == y.shape == (32, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y, (x + 1) % 500)  # consecutive file positions


def test_lm_deterministic_per_generator(token_file):
    task = TokenFileTask(token_file, seq_len=16)
    assert torch.equal(task.batch(8, gen(1))[0], task.batch(8, gen(1))[0])
    assert not torch.equal(task.batch(8, gen(1))[0], task.batch(8, gen(2))[0])


def test_lm_eval_windows_disjoint_from_training(tmp_path):
    path = write_token_file(tmp_path / "t.bin", np.arange(2000, dtype=np.uint16))  # token == position
    task = TokenFileTask(path, seq_len=16, vocab_size=2000)
    assert task.split == 1800
    g = gen(0)
    for _ in range(20):
        x, y = task.batch(64, g)
        assert int(y.max()) < task.split  # every training window ends before the held-out tail
    evals = task.eval_batches(4, 8)
    assert len(evals) == 4
    for x, y in evals:
        assert int(x.min()) >= task.split and int(y.max()) < 2000
        assert torch.equal(y, x + 1)
    again = task.eval_batches(4, 8)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(evals, again))
    starts = task.eval_starts(8)
    assert np.all(np.diff(starts) >= 17)  # 200 tail tokens hold 8 windows of 17 without overlap


def test_lm_errors(tmp_path, token_file):
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        TokenFileTask(tmp_path / "nope.bin", seq_len=16)
    short = write_token_file(tmp_path / "short.bin", np.arange(10))
    with pytest.raises(ValueError, match="shorter than seq_len"):
        TokenFileTask(short, seq_len=16)
    tiny = write_token_file(tmp_path / "tiny.bin", np.arange(20))
    with pytest.raises(ValueError, match="held-out"):
        TokenFileTask(tiny, seq_len=16)
    with pytest.raises(ValueError, match="vocab_size 256"):
        TokenFileTask(token_file, seq_len=16, vocab_size=256)
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x00" * 101)
    with pytest.raises(ValueError, match="multiple of 2"):
        TokenFileTask(odd, seq_len=16)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="0 tokens"):
        TokenFileTask(empty, seq_len=16)


def test_lm_memmap_is_read_only(token_file):
    task = TokenFileTask(token_file, seq_len=16)
    with pytest.raises((ValueError, TypeError)):
        task.tokens[0] = 1


# --------------------------------------------------------------------------- factory


def test_make_task():
    task = make_task("mqar", seq_len=128, num_kv_pairs=8)
    assert isinstance(task, MQARTask) and task.seq_len == 128 and task.vocab_size == 8192
    with pytest.raises(ValueError, match="valid tasks: lm, mqar"):
        make_task("wikitext")
    with pytest.raises(ValueError, match=r"unknown parameter.*num_pairs.*valid parameters: vocab_size=8192"):
        make_task("mqar", num_pairs=8)
    with pytest.raises(ValueError, match="missing parameter.*path"):
        make_task("lm", seq_len=16)
