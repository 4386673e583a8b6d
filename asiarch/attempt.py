"""Writing one attempt's files: the job spec and the rendered job script.

Shared by the loop and by ``asiarch train`` so that a layer trained by hand goes
through exactly the job path the search uses.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from asiarch.config import ClusterConfig, TrainConfig
from asiarch.dispatch.base import JobRequest
from asiarch.layout import AttemptPaths
from asiarch.render import JobScriptSpec, render_job_script, torchrun_command


def write_attempt_files(paths: AttemptPaths, *, layer_path: Path, identity: dict, train: TrainConfig,
                        cluster: ClusterConfig, class_name: str, python: str) -> JobRequest:
    """Write spec.json and job.sh for one attempt; return the request to submit."""
    paths.dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "identity": identity,
        "layer_path": str(Path(layer_path).resolve()),
        "class_name": class_name,
        "result_path": str(paths.result.resolve()),
        "progress_path": str(paths.progress.resolve()),
        # per candidate, not per attempt: a requeued job or a retry of the same code resumes from it
        "checkpoint_path": str((paths.dir.parent / "checkpoint.pt").resolve()),
        "train": dataclasses.asdict(train),
    }
    paths.spec.write_text(json.dumps(spec, indent=2))
    script = render_job_script(JobScriptSpec(
        run_key=identity["run_key"], attempt_dir=str(paths.dir.resolve()),
        command=torchrun_command(python, train.nproc, str(paths.spec.resolve())),
        env=(("OMP_NUM_THREADS", str(train.threads_per_rank)), ("PYTHONUNBUFFERED", "1")),
        modules=tuple(cluster.modules)))
    paths.job_script.write_text(script)
    return JobRequest(run_key=identity["run_key"], script=paths.job_script.resolve(), log=paths.log.resolve(),
                      nproc=train.nproc, gpus=cluster.gpus_per_node)
