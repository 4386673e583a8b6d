"""The contract between the head and the job: standard library only, imported by both sides.

What is here is what both sides must agree on, declared once:

- the attempt directory's file names (:class:`AttemptFiles`), which the head renders and
  polls and the job writes;
- :func:`atomic_write`, the one way either side writes a file that a reader may look at
  while it is written (temp file in the same directory, fsync, rename, fsync of the
  directory), so that a reader sees the old file or the new one, never half of one;
- the secret rule (:func:`is_secret`), which names the environment variables that never
  reach a job, a check or a sandbox;
- :data:`DEFAULT_CLASS_NAME`, the candidate layer's class name by ASI-Arch's convention.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

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


def atomic_write(path: str | Path, data: str | bytes, *, durable: bool = True) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through a temporary file in the same
    directory and a rename, so that a process killed mid-write leaves the old file or the new one,
    never half of one. With ``durable`` (the default) the file and the rename are fsynced; pass
    ``durable=False`` for records rewritten every few seconds (progress), where a lost update on
    power loss is harmless and an fsync per update is not."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        _fsync_dir(path.parent)


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
