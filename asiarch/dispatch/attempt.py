"""Writing one attempt's files: the job spec and the rendered job script.

Shared by the loop and by ``asiarch train`` so that a layer trained by hand goes
through exactly the job path the search uses.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from asiarch.config import ClusterConfig, TrainConfig
from asiarch.dispatch.base import JobRequest
from asiarch.job.contract import AttemptFiles, JobIdentity, JobSpec, PlantedFileError, atomic_write
from asiarch.dispatch.render import JobScriptSpec, Raw, apptainer_command, render_job_script, torchrun_command
from asiarch.dispatch.sandbox import SandboxSpec, apptainer_argv, attempt_sandbox

#: Where a job's datasets library builds lm-eval's datasets from cluster.hf_cache (the sandbox's own /tmp).
HF_DATASETS_TMP = "/tmp/asiarch-hf-datasets"

#: The directory of a candidate's checkpoints, beside its attempt directories: the one directory of the candidate's
#: a job may write besides its own attempt's (a job that could write the candidate's directory could plant
#: ``attempt-<n+1> -> ../..``, and the head would write the next attempt's files, and bind it writable, there).
CHECKPOINTS = "checkpoints"


def _refuse_links(path: Path, top: Path) -> None:
    """Raise :class:`PlantedFileError` when ``path`` or a directory between it and ``top`` is a symbolic link."""
    path, top = Path(os.path.abspath(path)), Path(os.path.abspath(top))
    for p in (path, *path.parents):
        if p == top or top not in p.parents:
            break
        if p.is_symlink():
            raise PlantedFileError(f"{p} is a symbolic link (to {os.readlink(p)!r}), where asiarch writes a "
                                   f"directory of its own: a job of an earlier version may have planted it. Move it "
                                   f"away (keep it to inspect) and run again")


def checkpoint_dir(candidate_dir: Path, top: Path | None = None) -> Path:
    """``candidate_dir/checkpoints``, made and checked for links (from ``top``, default the candidate directory's
    parent); a checkpoint an earlier version kept in the candidate directory itself is moved in."""
    ckpt = candidate_dir / CHECKPOINTS
    _refuse_links(ckpt, top or candidate_dir.parent)
    ckpt.mkdir(parents=True, exist_ok=True)
    for old in candidate_dir.glob("checkpoint*.pt"):  # regular files only: a link is left where it is
        if old.is_file() and not old.is_symlink() and not (ckpt / old.name).exists():
            os.replace(old, ckpt / old.name)
    return ckpt


def job_command(spec_path: Path, *, train: TrainConfig, cluster: ClusterConfig, python: str,
                binds: list[str], env: tuple[tuple[str, str], ...],
                sandbox: SandboxSpec | None = None) -> tuple[str, ...]:
    """torchrun for one attempt, inside ``apptainer exec`` when a container image is configured
    (with the sandbox's flags and binds when ``sandbox`` is Apptainer's)."""
    # several nodes: one torchrun per node (srun starts them), meeting at the allocation's first host
    rdzv = Raw('"$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)":29500') if cluster.nodes > 1 else None
    if not cluster.container_image:
        return torchrun_command(python, train.nproc, str(spec_path), nnodes=cluster.nodes, rdzv_endpoint=rdzv)
    inner = torchrun_command(cluster.python or "python3", train.nproc, str(spec_path), nnodes=cluster.nodes,
                             rdzv_endpoint=rdzv)
    if sandbox is not None and sandbox.kind == "apptainer":
        return tuple(apptainer_argv(sandbox, inner))
    data = [str(Path(train.token_file).resolve().parent)] if train.token_file else []
    data += [str(Path(train.data).resolve())] if train.data else []
    return apptainer_command(inner, image=cluster.container_image, binds=binds + data + list(cluster.binds),
                             env=env, nv=cluster.gpus_per_node > 0, cleanenv=cluster.container_cleanenv,
                             containall=cluster.container_containall,
                             network_none=cluster.container_network_none)


def write_attempt_files(paths: AttemptFiles, *, layer_path: Path, identity: JobIdentity | dict, train: TrainConfig,
                        cluster: ClusterConfig, class_name: str, python: str,
                        bind_root: Path | None = None, checkpoint_name: str = "checkpoint.pt",
                        report_steps: tuple[int, ...] = ()) -> JobRequest:
    """Write spec.json (a :class:`~asiarch.job.contract.JobSpec`) and job.sh for one attempt; return
    the request to submit. ``identity`` as a dict is checked like the job checks it (unknown or
    missing keys are a JobSpecError naming them).

    ``bind_root`` is the directory a container must see (the experiment directory); by
    default the attempt's candidate directory and the layer's. The checkpoint lives in the
    candidate's ``checkpoints/`` directory under ``checkpoint_name`` (one per stage and seed), so
    that a requeued job or a retry of the same run resumes from it; a symbolic link on the way
    from ``bind_root`` is refused (:class:`PlantedFileError`), and one a job left in place of the
    checkpoint is removed (the search goes on; the attempt starts from step 0). ``report_steps``: the early-stopping rungs
    (the trainer writes its progress record on reaching each, for the head to judge it there at once)."""
    top = Path(bind_root) if bind_root else paths.dir.parent.parent
    _refuse_links(paths.dir, top)
    paths.dir.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint_dir(paths.dir.parent, top)
    planted = ckpt / checkpoint_name
    if planted.is_symlink():  # only a job writes there: its link goes (not followed), the attempt starts afresh
        planted.unlink()
    if not isinstance(identity, JobIdentity):
        identity = JobIdentity.from_dict(identity, source=f"identity of {paths.spec}")
    spec = JobSpec(
        identity=identity,
        layer_path=str(Path(layer_path).resolve()),
        class_name=class_name,
        result_path=str(paths.result.resolve()),
        progress_path=str(paths.progress.resolve()),
        # per candidate, not per attempt: a requeued job or a retry of the same code resumes from it
        # the directory resolved, the name not: a job that planted checkpoints/<name> -> ~/.ssh/x would otherwise have
        # the next attempt's sandbox bind ~/.ssh writable (checked for links just above)
        checkpoint_path=str(ckpt.resolve() / checkpoint_name),
        train=dataclasses.asdict(train),
        report_steps=tuple(report_steps),
    )
    spec.write(paths.spec)
    env = (("OMP_NUM_THREADS", str(train.threads_per_rank)), ("PYTHONUNBUFFERED", "1"))
    if cluster.hf_cache and train.lm_eval_tasks:  # lm-eval's datasets: the hub's files read-only, built in /tmp
        env += (("HF_HUB_CACHE", str(Path(cluster.hf_cache).resolve())), ("HF_DATASETS_CACHE", HF_DATASETS_TMP))
    if cluster.scratch_var:  # node-local scratch as the job's TMPDIR, /tmp where the variable is unset
        env += (("TMPDIR", Raw(f'"${{{cluster.scratch_var}:-/tmp}}"')),)
    roots = [bind_root] if bind_root else [paths.dir.parent, Path(layer_path).parent, paths.result.parent]
    sandbox = attempt_sandbox(cluster, train=train, python=python, attempt_dir=paths.dir, env=env,
                              checkpoint_path=spec.checkpoint_path,
                              protected=(layer_path, paths.spec, paths.job_script))  # cluster.sandbox
    command = job_command(paths.spec.resolve(), train=train, cluster=cluster, python=python,
                          binds=[str(Path(r).resolve()) for r in roots], env=env, sandbox=sandbox)
    script = render_job_script(JobScriptSpec(
        run_key=identity.run_key, attempt_dir=str(paths.dir.resolve()), command=command, env=env,
        modules=tuple(cluster.modules), sandbox=sandbox if sandbox and sandbox.kind == "bwrap" else None))
    atomic_write(paths.job_script, script)
    return JobRequest(run_key=identity.run_key, script=paths.job_script.resolve(), log=paths.log.resolve(),
                      nproc=train.nproc, gpus=cluster.gpus_per_node)
