"""The result file schema: round trip, broken files, atomicity, quarantine, progress."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import h5py
import numpy as np
import pytest

from asiarch.job import result as result_mod
from asiarch.job.result import (
    SCHEMA_VERSION,
    STATUSES,
    Curve,
    ResultFileError,
    ResultRecord,
    progress_path,
    quarantine,
    read_progress,
    read_result,
    summary,
    write_progress,
    write_result,
)


def _same(a, b) -> bool:
    """Equality that treats nan == nan, recursing through dicts and lists."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _assert_records_equal(a: ResultRecord, b: ResultRecord) -> None:
    for f in dataclasses.fields(ResultRecord):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "curve":
            x, y = dataclasses.asdict(x), dataclasses.asdict(y)
        assert _same(x, y), f"field {f.name}: wrote {x!r}, read {y!r}"


def full_record() -> ResultRecord:
    curve = Curve()
    for i in range(50):
        curve.append(step=i * 10, tokens=i * 10 * 4096, loss=10.0 / (i + 1), lr=3e-4 * min(1, i / 5), time=0.25 * i)
    return ResultRecord(
        experiment="exp 'quoted' ünïcode",
        candidate_id=42,
        attempt=3,
        run_key="exp-c42-a3",
        code_sha256="ab" * 32,
        job_id="123456_7",
        array_job_id="123456",
        array_task_id="7",
        status="diverged",
        config={"train": {"steps": 2000, "lr": 3e-4, "task": "mqar"}, "seeds": [0, 1, 2], "none": None},
        env={"torch": "2.13.0", "device": "cpu", "world_size": 2, "hostname": "node-01", "image_digest": ""},
        curve=curve,
        metrics={"mqar/accuracy": 0.93, "eval/loss": 1.2, "odd/nan": math.nan},
        final_loss=math.nan,
        eval_loss=1.25,
        tokens_per_s=123456.5,
        peak_memory_bytes=2**40 + 7,
        num_params=19_876_543,
        steps_done=490,
        error="RuntimeError: loss is nan at step 490",
        traceback="Traceback (most recent call last):\n" + "  File \"layer.py\", line 1, in <module> ∑∫ 漢字 🙂\n" * 5000,
        started_at=1_700_000_000.5,
        finished_at=1_700_003_600.25,
    )


@pytest.fixture
def written(tmp_path):
    path = tmp_path / "dir with space" / "result.h5"
    path.parent.mkdir()
    record = full_record()
    write_result(path, record)
    return path, record


def test_round_trip_every_field(written):
    path, record = written
    assert len(record.traceback) > 64 * 1024  # over HDF5's compact-attribute limit
    _assert_records_equal(record, read_result(path))


def test_round_trip_minimal_record_with_empty_curve(tmp_path):
    record = ResultRecord(experiment="e", candidate_id=0, attempt=1, run_key="e-c0-a1", code_sha256="")
    write_result(tmp_path / "r.h5", record)
    back = read_result(tmp_path / "r.h5")
    _assert_records_equal(record, back)
    assert back.curve.step == [] and back.metrics == {} and math.isnan(back.final_loss)
    assert isinstance(back.num_params, int) and isinstance(back.started_at, float)


def test_file_carries_marker_and_schema_version(written):
    path, _ = written
    with h5py.File(path, "r") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION
        assert f.attrs["asiarch_result"] == result_mod.MARKER
        assert f["curve/loss"].shape == (50,)


def test_overwrite_replaces(written):
    path, record = written
    record.status, record.attempt = "ok", 4
    write_result(path, record)
    assert read_result(path).attempt == 4


@pytest.mark.parametrize("status", ["", "OK", "crashed"])
def test_invalid_status_refused(tmp_path, status):
    record = ResultRecord("e", 1, 1, "k", "", status=status)
    with pytest.raises(ValueError, match="status"):
        write_result(tmp_path / "r.h5", record)
    assert list(tmp_path.iterdir()) == []


def test_ragged_curve_refused(tmp_path):
    record = ResultRecord("e", 1, 1, "k", "")
    record.curve.step.append(1)
    with pytest.raises(ValueError, match="curve"):
        write_result(tmp_path / "r.h5", record)


def test_statuses_all_round_trip(tmp_path):
    for status in STATUSES:
        write_result(tmp_path / "r.h5", ResultRecord("e", 1, 1, "k", "", status=status))
        assert read_result(tmp_path / "r.h5").status == status


# --------------------------------------------------------------------------- broken files


def _raises(path, reason):
    with pytest.raises(ResultFileError) as info:
        read_result(path)
    err = info.value
    assert err.reason == reason, str(err)
    assert str(path) in str(err)
    assert err.path == path
    return err


def test_missing(tmp_path):
    err = _raises(tmp_path / "result.h5", "missing")
    assert "wrote no result" in str(err) and "log" in str(err)


def test_zero_bytes(tmp_path):
    path = tmp_path / "result.h5"
    path.write_bytes(b"")
    assert "quarantine" in str(_raises(path, "truncated"))


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.1, 0.5, 0.9, 0.999])
def test_truncated(written, fraction):
    path, _ = written
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * fraction))])
    assert "re-run" in str(_raises(path, "truncated"))


def test_random_bytes(tmp_path):
    path = tmp_path / "result.h5"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes())
    assert "quarantine" in str(_raises(path, "corrupt"))


def test_scrambled_body(written):
    path, _ = written
    data = bytearray(path.read_bytes())
    data[2048:] = np.random.default_rng(1).integers(0, 256, len(data) - 2048, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    _raises(path, "corrupt")


def test_text_file(tmp_path):
    path = tmp_path / "result.h5"
    path.write_text("Traceback: job killed before writing\n")
    _raises(path, "corrupt")


def test_non_asiarch_hdf5(tmp_path):
    path = tmp_path / "result.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.arange(10))
    assert "not an asiarch result" in str(_raises(path, "corrupt"))


def test_wrong_schema_version(written):
    path, _ = written
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 7
    err = _raises(path, "schema")
    assert "schema version 7" in str(err) and f"reads {SCHEMA_VERSION}" in str(err) and "upgrade" in str(err)


def test_required_part_missing(written):
    path, _ = written
    with h5py.File(path, "r+") as f:
        del f["curve/loss"]
    _raises(path, "corrupt")


def test_error_reasons_are_validated():
    with pytest.raises(ValueError):
        ResultFileError("x.h5", "weird")


# --------------------------------------------------------------------------- atomicity


def test_crash_mid_write_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "result.h5"
    real = result_mod._write_h5

    def crash(f, record):
        f.attrs["asiarch_result"] = result_mod.MARKER  # half written...
        raise KeyboardInterrupt("node lost power")  # ...then killed

    monkeypatch.setattr(result_mod, "_write_h5", crash)
    with pytest.raises(KeyboardInterrupt):
        write_result(path, full_record())
    assert list(tmp_path.iterdir()) == []

    # An existing good file survives a crashed overwrite untouched.
    monkeypatch.setattr(result_mod, "_write_h5", real)
    write_result(path, full_record())
    before = path.read_bytes()
    monkeypatch.setattr(result_mod, "_write_h5", crash)
    with pytest.raises(KeyboardInterrupt):
        write_result(path, full_record())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["result.h5"]


def test_crash_at_fsync_leaves_nothing(tmp_path, monkeypatch):
    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(result_mod.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        write_result(tmp_path / "result.h5", full_record())
    assert list(tmp_path.iterdir()) == []


def test_temp_file_is_hidden_in_same_directory(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(result_mod.os, "replace", spy)
    write_result(tmp_path / "result.h5", full_record())
    (src, dst), = seen
    src_name = os.path.basename(src)
    assert os.path.dirname(src) == str(tmp_path) and src_name.startswith(".") and src_name.endswith(".tmp")
    assert dst == str(tmp_path / "result.h5")


# --------------------------------------------------------------------------- quarantine, summary


def test_quarantine_keeps_bytes(tmp_path):
    path = tmp_path / "result.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n garbage")
    with pytest.raises(ResultFileError):
        read_result(path)
    moved = quarantine(path)
    assert not path.exists()
    assert moved.parent == tmp_path and moved.name.startswith("result.h5.quarantined-")
    assert moved.read_bytes() == b"\x89HDF\r\n\x1a\n garbage"
    # A second broken file in the same second never overwrites the first.
    path.write_bytes(b"second")
    moved2 = quarantine(path)
    assert moved2 != moved and moved.read_bytes().endswith(b"garbage") and moved2.read_bytes() == b"second"


def test_summary_is_scalar_and_json_ready(written):
    path, record = written
    s = summary(read_result(path))
    assert s["candidate_id"] == 42 and s["status"] == "diverged" and s["curve_points"] == 50
    assert s["metrics"]["mqar/accuracy"] == 0.93
    assert "traceback" not in s and "config" not in s and "curve" not in s
    json.dumps(s)


# --------------------------------------------------------------------------- progress


def test_progress_round_trip(tmp_path):
    path = progress_path(tmp_path / "result.h5")
    assert path == tmp_path / "progress.json"  # the name the job writes (asiarch.job.contract.AttemptFiles)
    assert read_progress(path) is None
    write_progress(path, step=10, tokens=40960, loss=np.float32(3.5), tokens_per_s=1e5, lr=3e-4, elapsed=2.5,
                   curve=[[0, 0, 9.0], [10, 40960, 3.5]])
    write_progress(path, step=20, tokens=81920, loss=math.nan, tokens_per_s=1e5, lr=3e-4, elapsed=5.0)
    got = read_progress(path)
    assert got["step"] == 20 and math.isnan(got["loss"]) and "curve" not in got
    assert isinstance(got["updated_at"], float)
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]


def test_progress_unreadable_is_none(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"step": 1, "lo')
    assert read_progress(path) is None
    path.write_text("[1, 2]")
    assert read_progress(path) is None
    assert read_progress(tmp_path) is None  # a directory
