"""The experiment directory and the run key that ties a job's pieces together.

    <experiment>/
      asiarch.db            the store
      config.toml           the resolved config, as run
      candidates/<id>-<name>/
        layer.py            the code as trained
        attempt-<n>/job.sh, spec.json, result.h5, progress.json, job.log
        checkpoints/        checkpoint.pt (explore, seed 0), checkpoint-<stage>-s<seed>.pt
      jobs/                 the scheduler's own files (submitit folders)
      reports/              reports and plots

One name, the run key ``<experiment>-c<id>-a<n>``, names the job, its logs, its
directory and its result file. The file names inside an attempt directory are the job's
contract with the head: :class:`asiarch.job.contract.AttemptFiles` declares them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from asiarch.job.contract import AttemptFiles  # standard library only

DB_NAME = "asiarch.db"
CONFIG_NAME = "config.toml"


def slug(name: str, limit: int = 48) -> str:
    """A filesystem- and scheduler-safe version of a candidate name."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-") or "candidate"
    return s[:limit]


def run_key(experiment: str, candidate_id: int, attempt: int) -> str:
    return f"{slug(experiment)}-c{candidate_id:05d}-a{attempt}"


@dataclass(frozen=True)
class ExperimentDir:
    root: Path

    @property
    def db(self) -> Path:
        return self.root / DB_NAME

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def exists(self) -> bool:
        return self.db.exists()

    def candidate_dir(self, candidate_id: int, name: str) -> Path:
        return self.root / "candidates" / f"{candidate_id:05d}-{slug(name)}"

    def layer_file(self, candidate_id: int, name: str) -> Path:
        return self.candidate_dir(candidate_id, name) / "layer.py"

    def attempt(self, candidate_id: int, name: str, n: int) -> AttemptFiles:
        """The files of attempt ``n`` of a candidate (job.sh, spec.json, result.h5, ...)."""
        return AttemptFiles(self.candidate_dir(candidate_id, name) / f"attempt-{n}")

    def relative(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root.resolve()))
