"""The contract between the head and the job: standard library only, imported by both sides.

What is here is what both sides must agree on, declared once:

- the attempt directory's file names (:class:`AttemptFiles`), which the head renders and
  polls and the job writes;
- the job spec (:class:`JobSpec`, the attempt's ``spec.json``): what the head asks of the job,
  checked on both sides, so that a key one side renamed is an error naming it, not a default;
- :func:`atomic_write` (and :func:`atomic_path` for writers that need a path, such as h5py),
  the one way either side writes a file that a reader may look at while it is written (temp
  file in the same directory, fsync, rename, fsync of the directory), so that a reader sees
  the old file or the new one, never half of one;
- the secret rule (:func:`is_secret`), which names the environment variables that never
  reach a job, a check or a sandbox;
- :data:`DEFAULT_CLASS_NAME`, the candidate layer's class name by ASI-Arch's convention.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import stat
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

#: The class a candidate file defines, by ASI-Arch's convention (configurable: search.class_name).
DEFAULT_CLASS_NAME = "DeltaNet"

#: A variable whose name matches (any case) is a credential: it never reaches a job, a check
#: or a sandbox, whatever else the configuration says.
SECRET_PATTERN = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)


def is_secret(name: str, extra: tuple[str, ...] | list[str] | frozenset[str] = ()) -> bool:
    """Whether the environment variable ``name`` must be kept from candidate code: one of the
    names in ``extra`` (e.g. the configured ``llm.api_key_env``), or any name that looks like a
    credential (:data:`SECRET_PATTERN`)."""
    return name in extra or bool(SECRET_PATTERN.search(name))


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; best effort (some filesystems refuse fsync on a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_beside(path: Path) -> Path:
    """A new empty file ``.<name>.<pid>.<random>.tmp`` in ``path``'s directory (same filesystem, so
    the rename is atomic), created with the mode a plain ``open(path, "w")`` gives (0o666 less the
    umask: job scripts, specs and results stay readable by whoever may read the experiment;
    ``tempfile.mkstemp`` would make them 0o600)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


@contextmanager
def atomic_path(path: str | Path, *, durable: bool = True, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the new file to; when the block ends without an
    exception it is renamed onto ``path`` (fsynced first, and the directory after, with
    ``durable``; given the permissions ``mode`` first, when one is given).

    On an exception the temporary file is removed and ``path`` is untouched; a process killed
    inside the block leaves ``path`` as it was (and a hidden ``.<name>.*.tmp`` beside it). For
    writers that open the file themselves (``h5py.File(tmp, "w")``, ``torch.save(obj, tmp)``)::

        with atomic_path(result) as tmp:
            with h5py.File(tmp, "w") as f:
                ...
    """
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write(path: str | Path, data: str | bytes, *, durable: bool = True, mode: int | None = None) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through a temporary file in the same
    directory and a rename (:func:`atomic_path`), so that a process killed mid-write leaves the
    old file or the new one, never half of one. With ``durable`` (the default) the file and the
    rename are fsynced; pass ``durable=False`` for records rewritten every few seconds (progress),
    where a lost update on power loss is harmless and an fsync per update is not. ``mode``: the
    file's permissions (default: 0o666 less the umask, as ``open`` gives)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path = Path(path)
    with atomic_path(path, durable=False) as tmp:  # the mode and the fsyncs here, on the file opened once
        # opened again without following a link: in a directory a running job can write (the stop request in its
        # attempt directory), a job that swapped the new file for a link would have the head write its target
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0))
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    if durable:
        _fsync_dir(path.parent)


class PlantedFileError(OSError):
    """A file a job writes is a symbolic link, a FIFO or anything but a regular file: a job may have planted it to
    make the head read (or block on) something else; it is not read."""


def read_job_file(path: str | Path, *, tail: int | None = None) -> bytes:
    """The bytes of a file a job wrote (its log, progress record, exit and start records), read by the head without
    following a symbolic link and only from a regular file, so that a job cannot make the head read its user's files
    (``job.log -> ~/.ssh/id_rsa``, whose tail would reach the store, the report and the LLM) or hang on a FIFO.
    ``tail``: at most the last that many bytes. Raises FileNotFoundError, :class:`PlantedFileError` or OSError."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise PlantedFileError(f"{path} is a symbolic link (to {os.readlink(path)!r}), which the job may have "
                                   "planted: not read") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PlantedFileError(f"{path} is not a regular file, which the job may have planted: not read")
        if tail is not None and st.st_size > tail:
            os.lseek(fd, st.st_size - tail, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def is_planted(path: str | Path) -> bool:
    """True when ``path`` exists as a symbolic link or as anything but a regular file or directory."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode))


@dataclass(frozen=True)
class AttemptFiles:
    """The files of one attempt directory, by the names both sides use.

    ``AttemptFiles(dir)`` is all a caller needs: every path follows from the directory."""

    dir: Path

    #: file names inside the attempt directory
    JOB_SCRIPT = "job.sh"
    SPEC = "spec.json"
    RESULT = "result.h5"
    PROGRESS = "progress.json"
    LOG = "job.log"
    #: written by the job when it starts (host, pid, start time, Slurm id), for adoption
    JOB_MARKER = "job.json"
    #: written by the job when its script ends (the exit code; absent when it was killed)
    JOB_EXIT = "job-exit.json"
    #: written by a head that gives the attempt up: a job of it that starts later exits untrained
    ABANDONED = "abandoned"
    #: written by the head to stop a running job (early stopping, the watchdog): {"reason", "rung", ...};
    #: the trainer reads it each step, checkpoints, writes its result as 'stopped' and removes it
    STOP = "stop.json"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", Path(self.dir))

    @property
    def job_script(self) -> Path:
        return self.dir / self.JOB_SCRIPT

    @property
    def spec(self) -> Path:
        return self.dir / self.SPEC

    @property
    def result(self) -> Path:
        return self.dir / self.RESULT

    @property
    def progress(self) -> Path:
        return self.dir / self.PROGRESS

    @property
    def log(self) -> Path:
        return self.dir / self.LOG

    @property
    def job_marker(self) -> Path:
        return self.dir / self.JOB_MARKER

    @property
    def job_exit(self) -> Path:
        return self.dir / self.JOB_EXIT

    @property
    def abandoned(self) -> Path:
        return self.dir / self.ABANDONED

    @property
    def stop(self) -> Path:
        return self.dir / self.STOP


def request_stop(files: AttemptFiles, *, reason: str, rung: int | None = None, step: int | None = None,
                 message: str = "") -> None:
    """Ask the attempt's running job to stop (the head's side): write its control file ``stop.json``
    atomically. The trainer sees it at the end of its next step, checkpoints, and writes its result
    with status 'stopped' and this request (``env["stop"]``); a job that has not started yet stops
    after its first step. ``reason``: why (asiarch.search.early_stopping.STOP_REASONS); ``rung``: the
    early-stopping rung (1-based) when a rung decided it; ``step``: the step the decision looked at."""
    atomic_write(files.stop, json.dumps({"reason": reason, "rung": rung, "step": step, "message": message}))


def read_stop_request(path: str | Path) -> dict | None:
    """The stop request at ``path`` (:func:`request_stop`), or None when there is none. A file that is
    there but unreadable or not a JSON object still asks to stop: ``{"reason": "requested", ...}``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        return {"reason": "requested", "rung": None, "step": None, "message": f"unreadable stop request: {exc}"}
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return {"reason": "requested", "rung": None, "step": None, "message": "a stop request that is not JSON"}
    return {"reason": str(data.get("reason") or "requested"), "rung": data.get("rung"), "step": data.get("step"),
            "message": str(data.get("message") or "")}


# --------------------------------------------------------------------------- the job spec


class JobSpecError(ValueError):
    """A job spec (``spec.json``) that does not keep the contract: the message names the file,
    the keys that are unknown or missing, and the valid ones."""


#: The keys of the resolved [train] section the trainer reads (asiarch.config.TrainConfig declares
#: them with their defaults and meaning; the head writes every field of it). A spec without one is
#: refused before training starts, instead of a KeyError after the model was built.
TRAIN_KEYS = (
    "task", "seed", "steps", "batch_size", "seq_len", "vocab_size", "num_kv_pairs", "token_file", "data",
    "hidden_size", "num_layers", "num_heads", "mlp_ratio",
    "lr", "weight_decay", "warmup_steps", "decay_fraction", "grad_clip", "precision",
    "log_every", "divergence_factor", "eval_batches", "lm_eval_tasks", "lm_eval_include", "lm_eval_limit",
    "mqar_eval", "threads_per_rank",
)


def _check_keys(data: Any, cls: type, where: str, source: str) -> dict:
    """``data`` as a dict holding every required field of the dataclass ``cls`` and no other key;
    otherwise a :class:`JobSpecError` naming the offending keys and the valid ones."""
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        raise JobSpecError(f"{source}: {where or 'the spec'} must be a JSON object, got {type(data).__name__}")
    fields = dataclasses.fields(cls)
    valid = [f.name for f in fields]
    required = [f.name for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    unknown = [k for k in data if k not in valid]
    missing = [k for k in required if k not in data]
    problems = []
    if unknown:
        problems.append(f"unknown key(s) {', '.join(prefix + k for k in unknown)}")
    if missing:
        problems.append(f"missing required key(s) {', '.join(prefix + k for k in missing)}")
    if problems:
        raise JobSpecError(f"{source}: {'; '.join(problems)}. Valid keys: {', '.join(prefix + k for k in valid)} "
                           "(the head and the job must run the same asiarch; re-render the attempt)")
    return data


def _check_types(obj: Any, where: str, source: str) -> None:
    """The scalar fields of the dataclass ``obj`` have the type their annotation names (str or int)."""
    prefix = f"{where}." if where else ""
    for f in dataclasses.fields(obj):
        kind = {"str": str, "int": int}.get(str(f.type))
        value = getattr(obj, f.name)
        if kind is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise JobSpecError(f"{source}: {prefix}{f.name} must be {'a string' if kind is str else 'an integer'}, "
                               f"got {value!r}")


@dataclass(frozen=True)
class JobIdentity:
    """Who the job is: the names its result file records (asiarch.job.result.ResultRecord)."""

    experiment: str
    candidate_id: int
    attempt: int
    run_key: str          # <experiment>-c<id>-a<n>: names the job, its logs, its directory, its result
    code_sha256: str      # of the layer file as trained (a checkpoint of other code is not resumed)
    stage: str = "explore"
    seed: int = 0         # the seed index within the stage (the train section holds the seed used)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "job spec") -> JobIdentity:
        ident = cls(**_check_keys(data, cls, "identity", source))
        _check_types(ident, "identity", source)
        return ident


@dataclass(frozen=True)
class JobSpec:
    """What the head asks of one job: the attempt's ``spec.json``, written by
    :func:`asiarch.dispatch.attempt.write_attempt_files`, read by :mod:`asiarch.job.train`.

    Paths are absolute (the job runs in another working directory, maybe another container).
    :meth:`from_dict` refuses unknown and missing keys by name, so a key renamed on one side
    fails the job at once with the reason, instead of training with a default."""

    identity: JobIdentity
    layer_path: str       # the candidate's layer file
    result_path: str      # the HDF5 result (asiarch.job.result)
    progress_path: str    # the live progress record, rewritten every few seconds
    train: dict           # the resolved [train] section (asiarch.config.TrainConfig): TRAIN_KEYS at least
    class_name: str = DEFAULT_CLASS_NAME
    checkpoint_path: str = ""   # where a requeued or retried run resumes from; empty: no checkpoint
    # steps after which the progress record is written at the next logged point whatever its rate limit:
    # the early-stopping rungs, so that the head judges an attempt there as soon as it gets there
    report_steps: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "job spec") -> JobSpec:
        """The spec in ``data`` (spec.json's object); :class:`JobSpecError` names what is wrong.
        ``source`` names the file in messages."""
        data = dict(_check_keys(data, cls, "", source))
        data["identity"] = JobIdentity.from_dict(data["identity"], source=source)
        if not isinstance(data["train"], dict):
            raise JobSpecError(f"{source}: train must be a JSON object (the resolved [train] section), "
                               f"got {type(data['train']).__name__}")
        missing = [k for k in TRAIN_KEYS if k not in data["train"]]
        if missing:
            raise JobSpecError(f"{source}: missing required key(s) {', '.join('train.' + k for k in missing)} "
                               "(the head and the job must run the same asiarch; re-render the attempt)")
        steps = data.get("report_steps", ())
        if not isinstance(steps, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                                           for x in steps):
            raise JobSpecError(f"{source}: report_steps must be a list of positive step numbers, got {steps!r}")
        data["report_steps"] = tuple(steps)
        spec = cls(**data)
        _check_types(spec, "", source)
        return spec

    @classmethod
    def from_json(cls, text: str, *, source: str = "job spec") -> JobSpec:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise JobSpecError(f"{source}: not JSON ({exc}); re-render the attempt") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def load(cls, path: str | Path) -> JobSpec:
        """Read and check the spec at ``path`` (errors name the file)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise JobSpecError(f"{path}: cannot read the job spec ({exc.strerror or exc})") from None
        return cls.from_json(text, source=str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def write(self, path: str | Path) -> None:
        """Write the spec atomically (a requeued job of the attempt may read it at any time)."""
        atomic_write(path, self.to_json())


# ------------------------------------------------------------------------------------------
# redaction: secret values never leave a check or a job in the text that comes out of it

#: Secret values shorter than this are not redacted: a value that short would match ordinary
#: text (a variable such as ``MONKEY_COUNT=3`` is "secret" by name), and no real credential is.
MIN_SECRET_LENGTH = 8
#: What a secret value is replaced by.
REDACTED = "[redacted]"


def secret_values(environ, extra_names=()) -> tuple[str, ...]:
    """The values of the secret variables of ``environ`` (a mapping such as ``os.environ``): those
    whose name :func:`is_secret` selects, ``extra_names`` (e.g. ``llm.api_key_env``) included;
    distinct, at least :data:`MIN_SECRET_LENGTH` characters long, longest first (so that a value
    containing another is replaced whole)."""
    extra = tuple(extra_names)
    values = {v for k, v in environ.items() if v and len(v) >= MIN_SECRET_LENGTH and is_secret(k, extra)}
    return tuple(sorted(values, key=lambda v: (-len(v), v)))


def redact(text: str, values) -> str:
    """``text`` with every occurrence of each of ``values`` (from :func:`secret_values`) replaced
    by :data:`REDACTED`. Applied to everything that comes out of a check or a job (reasons,
    tracebacks, log tails) before it is stored, shown or sent to an LLM: the sandbox keeps the key
    from candidate code, this keeps it from the text if anything else ever let it through."""
    if not text:
        return text
    for value in values:
        if value and value in text:
            text = text.replace(value, REDACTED)
    return text
