"""The job side of a prepared directory: the manifest reader (asiarch.job.data) and the LM task over
its shards (asiarch.job.tasks.PreparedDataTask). Directories are written here by hand, in the format
`asiarch data prepare` writes (tests/data test that command)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from asiarch.job.data import DataError, Manifest, Shard, Split, read_manifest, verify_shards, write_manifest
from asiarch.job.tasks import PreparedDataTask


def make_dir(path, train: list[np.ndarray], val: list[np.ndarray], *, vocab_size=1000, eot=999, dtype="uint16"):
    """A prepared directory holding the given shards (token arrays)."""
    path.mkdir(parents=True, exist_ok=True)
    splits = {}
    for name, arrays in (("train", train), ("val", val)):
        shards = []
        for i, a in enumerate(arrays):
            data = np.asarray(a, dtype=dtype).tobytes()
            (path / f"{name}_{i:06d}.bin").write_bytes(data)
            shards.append(Shard(f"{name}_{i:06d}.bin", len(a), hashlib.sha256(data).hexdigest()))
        splits[name] = Split(sum(s.tokens for s in shards), tuple(shards))
    write_manifest(path, Manifest("bytes", vocab_size, eot, dtype, splits, ("test",)))
    return path


@pytest.fixture
def prepared(tmp_path):
    # token value = 100 * shard + position: a window tells which shard and where it came from
    train = [100 * k + np.arange(50 + 10 * k) for k in range(3)]  # 50, 60, 70 tokens
    val = [900 + np.arange(41), 950 + np.arange(20)]
    return make_dir(tmp_path / "d", train, val)


def test_manifest_round_trip_and_sha256(prepared):
    m = read_manifest(prepared)
    assert m.splits["train"].tokens == 180 and [s.tokens for s in m.splits["val"].shards] == [41, 20]
    assert verify_shards(prepared) == m
    assert Manifest.from_dict(json.loads(m.to_json())) == m


def test_manifest_errors_name_the_file_and_the_fix(prepared, tmp_path):
    shard = prepared / "train_000001.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:-2])
    with pytest.raises(DataError, match=r"train_000001.bin: 118 bytes, but .* lists 60 uint16 tokens"):
        read_manifest(prepared)
    shard.write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, one bit changed
    read_manifest(prepared)  # the cheap check cannot see it ...
    with pytest.raises(DataError, match=r"train_000001.bin: sha256 .* differs .*split 'train'"):
        verify_shards(prepared)  # ... the sha256 does
    shard.unlink()
    with pytest.raises(DataError, match=r"train_000001.bin: shard of split 'train' .* is missing"):
        read_manifest(prepared)
    with pytest.raises(DataError, match="no such directory.*asiarch data prepare"):
        read_manifest(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no manifest.*run it again to resume"):
        read_manifest(tmp_path / "empty")
    bad = json.loads((prepared / "manifest.json").read_text())
    for change, needle in ((dict(eot=1000), "eot 1000 is outside the vocabulary"),
                           (dict(dtype="uint16", vocab_size=70000, eot=5), "cannot hold a vocabulary of 70000"),
                           (dict(extra=1), r"unknown key\(s\) \['extra'\]"),
                           (dict(format=2), "format 2")):
        (prepared / "manifest.json").write_text(json.dumps({**bad, **change}))
        with pytest.raises(DataError, match=needle):
            read_manifest(prepared, check_files=False)


def test_training_windows_stay_in_one_shard_and_follow_the_generator(prepared):
    task = PreparedDataTask(prepared, seq_len=16)
    x, y = task.batch(512, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (512, 16) and torch.equal(x[:, 1:], y[:, :-1])
    # within one shard: consecutive tokens, one shard's values (100k + position)
    w = torch.cat([x, y[:, -1:]], 1)
    assert torch.all(w[:, 1:] - w[:, :-1] == 1) and torch.all(w[:, 0] // 100 == w[:, -1] // 100)
    shards = (w[:, 0] // 100).tolist()
    assert set(shards) == {0, 1, 2}  # every shard is drawn from, ...
    assert shards.count(2) > shards.count(0)  # ... by its number of windows (55 vs 35)
    again, _ = task.batch(512, torch.Generator().manual_seed(0))
    other, _ = task.batch(512, torch.Generator().manual_seed(1))
    assert torch.equal(x, again) and not torch.equal(x, other)


def test_eval_windows_are_shared_out_over_ranks(prepared):
    task = PreparedDataTask(prepared, seq_len=10)
    assert task.num_eval_windows == 4 + 1  # (41 - 1) // 10 + (20 - 1) // 10: non-overlapping windows
    everything = torch.cat([x for x, _ in task.eval_shard(0, 1, 100, 3)])
    assert everything[:, 0].tolist() == [900, 910, 920, 930, 950]  # stride seq_len within each shard
    for world in (2, 3):
        parts = [torch.cat([x for x, _ in task.eval_shard(r, world, 100, 2)] or [torch.zeros(0, 10, dtype=torch.long)])
                 for r in range(world)]
        starts = sorted(v for p in parts for v in p[:, 0].tolist())
        assert starts == everything[:, 0].tolist()  # disjoint, and together every window once
    assert [len(x) for x, _ in task.eval_batches(1, 3)] == [3]  # the probe's first batch
    assert len(torch.cat([x for x, _ in task.eval_shard(0, 2, 3, 8)])) == 2  # windows 0 and 2 of the first 3


def test_vocabulary_comes_from_the_manifest(prepared):
    assert PreparedDataTask(prepared, seq_len=8).vocab_size == 1000
    assert PreparedDataTask(prepared, seq_len=8, vocab_size=64).vocab_size == 1000  # MQAR's default: ignored
    assert PreparedDataTask(prepared, seq_len=8, vocab_size=1024).vocab_size == 1024  # padding


def test_windows_longer_than_the_shards_are_refused(prepared):
    with pytest.raises(DataError, match="no train shard holds seq_len \\+ 1 = 71 tokens"):
        PreparedDataTask(prepared, seq_len=70)
    with pytest.raises(DataError, match="val split .* larger --val-tokens"):
        PreparedDataTask(prepared, seq_len=45)
