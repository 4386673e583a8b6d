"""The result file (HDF5, one per attempt) and the live progress record beside it.

This module owns the schema: the writer, the reader, :data:`SCHEMA_VERSION` and the
checks that turn any broken file into a :class:`ResultFileError` naming the file,
what is wrong and what to do. The job writes; the Analyst and offline analysis read.

Layout of a result file (schema version 1)::

    /                       attrs: asiarch_result = "asiarch-result", schema_version = 1,
                                   identity strings, status, scalar numbers (see _SCALARS)
    /config                 scalar UTF-8 string dataset: the resolved training config (JSON)
    /env                    scalar UTF-8 string dataset: torch version, device, world size... (JSON)
    /error, /traceback      scalar UTF-8 string datasets (datasets, not attrs: a traceback
                            can outgrow HDF5's 64 KiB limit on compact attributes)
    /curve/{step,tokens}    int64 [n]
    /curve/{loss,lr,time}   float64 [n]   (time: seconds since the run started)
    /metrics/names          UTF-8 strings [m]   e.g. "mqar/accuracy", "eval/loss"
    /metrics/values         float64 [m]

Atomicity: :func:`write_result` writes a hidden temporary file in the same directory,
fsyncs it and renames it onto the final path (:func:`asiarch.job.contract.atomic_path`), so a
reader sees the whole file or none. The progress record is the attempt's ``progress.json``
(:class:`asiarch.job.contract.AttemptFiles`), beside ``result.h5``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from asiarch.job.contract import AttemptFiles, atomic_path, atomic_write, is_planted, read_job_file

SCHEMA_VERSION = 1
# leak: the in-job probe saw the layer read future tokens (asiarch.job.probe); the candidate is refused
# stopped: the head asked the job to stop (early stopping at a rung, or the watchdog; the request is in
# env["stop"]: reason, rung, step, message, stopped_at); its checkpoint is kept so that it can be resumed
STATUSES = ("ok", "failed", "timeout", "preempted", "diverged", "leak", "stopped")

# Root attribute "asiarch_result" holds this value; any other HDF5 file is not ours.
MARKER = "asiarch-result"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_STR = h5py.string_dtype("utf-8")


class ResultFileError(Exception):
    """A result file could not be read.

    ``reason`` is one of:

    - ``"missing"``: no file at ``path`` -- the job wrote no result.
    - ``"truncated"``: the file is empty or shorter than HDF5 says it should be.
    - ``"corrupt"``: not HDF5, not an asiarch result, or a required part is unreadable.
    - ``"schema"``: an asiarch result from a schema version this asiarch cannot read.

    Truncated and corrupt files should be quarantined (:func:`quarantine`) and the
    attempt re-run; a schema mismatch needs a matching asiarch, not a re-run.
    """

    REASONS = ("missing", "truncated", "corrupt", "schema")

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = ""):
        if reason not in self.REASONS:
            raise ValueError(f"ResultFileError reason must be one of {self.REASONS}, got {reason!r}")
        self.path = Path(path)
        self.reason = reason
        self.detail = detail
        super().__init__(self._message())

    def _message(self) -> str:
        p = self.path
        what = f" ({self.detail})" if self.detail else ""
        if self.reason == "missing":
            return (
                f"result file {p} is missing: the job wrote no result{what}; check the job's log "
                f"in {p.parent} and its progress record {progress_path(p)}, then re-run the attempt"
            )
        if self.reason == "schema":
            return f"result file {p} has an unsupported schema{what}; upgrade (or match) asiarch to read it"
        return (
            f"result file {p} is {self.reason}{what}; quarantine it (asiarch.job.result.quarantine) "
            f"and re-run the attempt"
        )


@dataclass
class Curve:
    """The training curve, one entry per logged step."""

    step: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # tokens seen so far, all ranks together
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)  # seconds since the run started

    def append(self, step: int, tokens: int, loss: float, lr: float, time: float) -> None:
        self.step.append(int(step))
        self.tokens.append(int(tokens))
        self.loss.append(float(loss))
        self.lr.append(float(lr))
        self.time.append(float(time))

    def __len__(self) -> int:
        return len(self.step)


@dataclass
class ResultRecord:
    """Everything one attempt leaves behind; the file's layout is in this module's docstring."""

    experiment: str
    candidate_id: int
    attempt: int
    run_key: str
    code_sha256: str
    job_id: str = ""
    array_job_id: str = ""
    array_task_id: str = ""
    status: str = "ok"  # one of STATUSES
    config: dict = field(default_factory=dict)  # resolved training config
    env: dict = field(default_factory=dict)  # torch version, device, world size, hostname, image digest
    curve: Curve = field(default_factory=Curve)
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. {"mqar/accuracy": 0.93}
    final_loss: float = math.nan  # last training-loss average
    eval_loss: float = math.nan
    tokens_per_s: float = math.nan  # training throughput, all ranks together
    peak_memory_bytes: int = 0
    num_params: int = 0
    steps_done: int = 0
    error: str = ""
    traceback: str = ""
    started_at: float = 0.0  # unix time
    finished_at: float = 0.0  # unix time


# Scalar fields stored as root attributes, with the type they are read back as.
_SCALARS: dict[str, type] = {
    "experiment": str,
    "candidate_id": int,
    "attempt": int,
    "run_key": str,
    "code_sha256": str,
    "job_id": str,
    "array_job_id": str,
    "array_task_id": str,
    "status": str,
    "final_loss": float,
    "eval_loss": float,
    "tokens_per_s": float,
    "peak_memory_bytes": int,
    "num_params": int,
    "steps_done": int,
    "started_at": float,
    "finished_at": float,
}
_TEXTS = ("error", "traceback")  # long strings, stored as datasets
_JSONS = ("config", "env")
_CURVE_DTYPES = {"step": np.int64, "tokens": np.int64, "loss": np.float64, "lr": np.float64, "time": np.float64}


# --------------------------------------------------------------------------- writing


def _validate(record: ResultRecord) -> None:
    if record.status not in STATUSES:
        raise ValueError(f"ResultRecord.status must be one of {STATUSES}, got {record.status!r}")
    lengths = {name: len(getattr(record.curve, name)) for name in _CURVE_DTYPES}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"ResultRecord.curve columns must have equal lengths, got {lengths}")
    for name in _JSONS:
        if not isinstance(getattr(record, name), dict):
            raise ValueError(f"ResultRecord.{name} must be a dict, got {type(getattr(record, name)).__name__}")


def _to_json(value: dict) -> str:
    # default=str: paths, dtypes and the like in a resolved config become readable strings.
    return json.dumps(value, sort_keys=True, default=str)


def _write_h5(f: h5py.File, record: ResultRecord) -> None:
    f.attrs["asiarch_result"] = MARKER
    f.attrs["schema_version"] = SCHEMA_VERSION
    for name, kind in _SCALARS.items():
        value = kind(getattr(record, name))
        f.attrs[name] = np.int64(value) if kind is int else value
    for name in _TEXTS:
        f.create_dataset(name, data=str(getattr(record, name)), dtype=_STR)
    for name in _JSONS:
        f.create_dataset(name, data=_to_json(getattr(record, name)), dtype=_STR)
    curve = f.create_group("curve")
    for name, dtype in _CURVE_DTYPES.items():
        curve.create_dataset(name, data=np.asarray(getattr(record.curve, name), dtype=dtype).reshape(-1))
    metrics = f.create_group("metrics")
    names = list(record.metrics)
    metrics.create_dataset("names", data=np.array(names, dtype=object), dtype=_STR, shape=(len(names),))
    metrics.create_dataset("values", data=np.array([float(record.metrics[n]) for n in names], dtype=np.float64))


def write_result(path: str | os.PathLike, record: ResultRecord) -> None:
    """Write ``record`` to ``path`` atomically (temp file, fsync, rename).

    Raises ValueError for an invalid record; on any failure no temporary file is left
    behind and ``path`` is untouched.
    """
    _validate(record)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _write_h5(f, record)
            f.flush()


# --------------------------------------------------------------------------- reading


def _open(path: Path) -> h5py.File:
    # No HDF5 file locking: results are immutable once renamed into place, and locks
    # fail on many NFS/Lustre mounts.
    try:
        return h5py.File(path, "r", locking=False)
    except TypeError:  # h5py built against an HDF5 without the locking option
        return h5py.File(path, "r")


def _read_text(f: h5py.File, name: str) -> str:
    return f[name].asstr()[()]


def _read_h5(f: h5py.File) -> ResultRecord:
    attrs = f.attrs
    kwargs: dict[str, Any] = {}
    for name, kind in _SCALARS.items():
        value = attrs[name]
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        kwargs[name] = kind(value)
    for name in _TEXTS:
        kwargs[name] = _read_text(f, name)
    for name in _JSONS:
        kwargs[name] = json.loads(_read_text(f, name))
    curve = f["curve"]
    kwargs["curve"] = Curve(**{name: curve[name][()].tolist() for name in _CURVE_DTYPES})
    names = f["metrics/names"].asstr()[()].tolist()
    values = f["metrics/values"][()].tolist()
    if len(names) != len(values):
        raise ValueError(f"metrics/names has {len(names)} entries but metrics/values has {len(values)}")
    kwargs["metrics"] = dict(zip(names, values))
    return ResultRecord(**kwargs)


def _stored_eof(head: bytes) -> int | None:
    """End-of-file address recorded in an HDF5 superblock (versions 0-3).

    ``head`` is the start of the file. Returns -1 when ``head`` is too short to hold
    that address (the file was cut inside its superblock), None when it is unknown.
    """
    if len(head) < 14:
        return -1
    version = head[8]
    if version in (0, 1):
        size_of_offsets = head[13]
        start = 24 + (4 if version == 1 else 0) + 2 * size_of_offsets  # after base, free-space addrs
    elif version in (2, 3):
        size_of_offsets = head[9]
        start = 12 + 2 * size_of_offsets  # after base, superblock-extension addrs
    else:
        return None
    if size_of_offsets not in (2, 4, 8):
        return None
    if len(head) < start + size_of_offsets:
        return -1
    return int.from_bytes(head[start : start + size_of_offsets], "little")


def _diagnose(path: Path, exc: BaseException) -> ResultFileError:
    """Classify a file that HDF5 could not open or read: truncated or corrupt."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(128)
    except OSError as err:
        return ResultFileError(path, "corrupt", f"cannot read it: {err}")
    if len(head) < len(_HDF5_SIGNATURE) and _HDF5_SIGNATURE.startswith(head):
        return ResultFileError(path, "truncated", f"only {size} bytes, cut inside the HDF5 signature")
    if not head.startswith(_HDF5_SIGNATURE):
        return ResultFileError(path, "corrupt", "not an HDF5 file (no HDF5 signature)")
    eof = _stored_eof(head)
    if eof == -1:
        return ResultFileError(path, "truncated", f"only {size} bytes, cut inside the HDF5 superblock")
    if eof is not None and size < eof:
        return ResultFileError(path, "truncated", f"{size} bytes on disk, HDF5 expects {eof}")
    if "truncated" in str(exc).lower():
        return ResultFileError(path, "truncated", f"{type(exc).__name__}: {exc}")
    return ResultFileError(path, "corrupt", f"{type(exc).__name__}: {exc}")


def read_result(path: str | os.PathLike) -> ResultRecord:
    """Read a result file; any problem raises :class:`ResultFileError` (never h5py/OSError)."""
    path = Path(path)
    if is_planted(path):  # h5py follows links: a job's result.h5 -> a file of its user's is not opened
        raise ResultFileError(path, "corrupt", "a symbolic link or not a regular file, which the job may have "
                                               "planted: not read")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ResultFileError(path, "missing") from None
    except OSError as exc:
        raise ResultFileError(path, "missing", f"cannot stat: {exc}") from exc
    if size == 0:
        raise ResultFileError(path, "truncated", "the file is empty (0 bytes)")
    try:
        f = _open(path)
    except Exception as exc:  # h5py raises OSError for most, but not all, broken files
        raise _diagnose(path, exc) from exc
    with f:
        try:
            marker = f.attrs.get("asiarch_result")
            version = f.attrs.get("schema_version")
        except Exception as exc:
            raise _diagnose(path, exc) from exc
        if isinstance(marker, bytes):
            marker = marker.decode("utf-8", "replace")
        if marker != MARKER:
            raise ResultFileError(path, "corrupt", "an HDF5 file, but not an asiarch result (no asiarch_result marker)")
        try:
            version = int(version)
        except (TypeError, ValueError):
            raise ResultFileError(path, "schema", f"unreadable schema_version {version!r}") from None
        if version != SCHEMA_VERSION:
            raise ResultFileError(
                path, "schema", f"written by schema version {version}, this asiarch reads {SCHEMA_VERSION}"
            )
        try:
            return _read_h5(f)
        except Exception as exc:
            diagnosis = _diagnose(path, exc)
            if diagnosis.reason == "corrupt":
                diagnosis = ResultFileError(path, "corrupt", f"cannot read a required part: {type(exc).__name__}: {exc}")
            raise diagnosis from exc


def quarantine(path: str | os.PathLike) -> Path:
    """Move a broken file to ``<name>.quarantined-<unix time>`` beside it; never deletes.

    Returns the new path. A second quarantine in the same second gets a ``.<n>`` suffix.
    """
    path = Path(path)
    base = path.with_name(f"{path.name}.quarantined-{int(time.time())}")
    target, n = base, 0
    while target.exists():
        n += 1
        target = base.with_name(f"{base.name}.{n}")
    os.rename(path, target)
    return target


def summary(record: ResultRecord) -> dict[str, Any]:
    """The scalar fields of ``record`` (no config, env, curve or traceback), JSON-ready.

    Adds ``curve_points`` (number of logged steps) and ``metrics`` (a copy of the dict).
    """
    out: dict[str, Any] = {name: getattr(record, name) for name in _SCALARS}
    out["error"] = record.error
    out["curve_points"] = len(record.curve.step)
    out["metrics"] = dict(record.metrics)
    return out


# --------------------------------------------------------------------------- progress


def progress_path(result_path: str | os.PathLike) -> Path:
    """Where the job keeps the progress record of a result file: ``progress.json`` beside it
    (:attr:`asiarch.job.contract.AttemptFiles.PROGRESS`)."""
    return AttemptFiles(Path(result_path).parent).progress


def write_progress(path: str | os.PathLike, **fields: Any) -> None:
    """Atomically replace the JSON progress record at ``path`` with ``fields``.

    Typical fields: step, tokens, loss, tokens_per_s, lr, elapsed (s), and optionally
    ``curve`` (a list of rows). ``updated_at`` (unix time) is added when not given, so
    a watcher can tell a stalled run. No fsync: this is rewritten every few seconds on
    shared filesystems; the rename alone guarantees readers see a whole record.
    """
    fields.setdefault("updated_at", time.time())
    atomic_write(path, json.dumps(fields, default=_json_default), durable=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def read_progress(path: str | os.PathLike) -> dict | None:
    """The progress record at ``path``, or None when missing or unreadable, a link or not a regular file (a job
    may have planted it; never raises)."""
    try:
        data = json.loads(read_job_file(path).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
