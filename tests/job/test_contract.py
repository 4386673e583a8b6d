"""The head-job contract (asiarch.job.contract): the attempt's file names, the one atomic writer,
the typed job spec, the secret rule, and the scheduler registry that builds backends by name."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from asiarch.config import ClusterConfig, Config, TrainConfig
from asiarch.dispatch import base, payload, registry
from asiarch.dispatch.attempt import write_attempt_files
from asiarch.dispatch.base import JobState, Scheduler, SchedulerError
from asiarch.job import contract
from asiarch.job import result as rf
from asiarch.job.contract import TRAIN_KEYS, AttemptFiles, JobIdentity, JobSpec, JobSpecError, atomic_path, atomic_write
from asiarch.layout import ExperimentDir

ROOT = Path(__file__).resolve().parents[2]

# A meta-path finder that refuses the head's dependencies, as a job image without them would.
BLOCK_HEAD_DEPENDENCIES = textwrap.dedent('''
    import importlib.abc, sys
    BLOCKED = {"openai", "jinja2", "submitit"}

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{name}: a head-side dependency, not in the job image")
            return None

    sys.meta_path.insert(0, Refuse())
''')


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", BLOCK_HEAD_DEPENDENCIES + textwrap.dedent(code)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- the job side's imports


def test_job_side_imports_without_the_heads_dependencies(tmp_path):
    out = _python('''
        import asiarch.job.contract, asiarch.dispatch.payload, asiarch.job.train
        loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
        print("loaded:", loaded)
        try:
            import asiarch.dispatch.local  # needs submitit: the finder must refuse it
        except ImportError as exc:
            print("refused:", exc)
    ''', tmp_path)
    assert out.returncode == 0, out.stderr
    assert "loaded: []" in out.stdout
    # the guard itself works: a head-side module does not import under it
    assert "refused: submitit: a head-side dependency" in out.stdout


# --------------------------------------------------------------------------- attempt files


def test_attempt_files_follow_from_the_directory(tmp_path):
    f = AttemptFiles(str(tmp_path / "attempt-1"))
    assert f.dir == tmp_path / "attempt-1"
    assert {p.name for p in (f.job_script, f.spec, f.result, f.progress, f.log, f.job_marker, f.job_exit,
                             f.abandoned)} == {"job.sh", "spec.json", "result.h5", "progress.json", "job.log",
                                               "job.json", "job-exit.json", "abandoned"}
    assert all(p.parent == f.dir for p in (f.job_script, f.spec, f.result, f.progress, f.log))
    # the experiment directory hands out the same class, and the payload declares no names of its own
    exp = ExperimentDir(tmp_path)
    a = exp.attempt(7, "my layer", 2)
    assert isinstance(a, AttemptFiles) and a.dir == exp.candidate_dir(7, "my layer") / "attempt-2"
    assert not [n for n in ("JOB_MARKER", "JOB_EXIT", "ABANDONED", "PROGRESS") if hasattr(payload, n)]
    assert payload.AttemptFiles is AttemptFiles


def test_missing_result_names_the_progress_file_the_job_writes(tmp_path):
    f = AttemptFiles(tmp_path)
    assert rf.progress_path(f.result) == f.progress
    with pytest.raises(rf.ResultFileError) as info:
        rf.read_result(f.result)
    assert str(f.progress) in str(info.value) and "result.progress.json" not in str(info.value)


# --------------------------------------------------------------------------- atomic_write


def test_atomic_write_replaces_whole_files_with_the_mode_open_gives(tmp_path):
    path = tmp_path / "config.toml"
    atomic_write(path, "a = 1\n")
    atomic_write(path, b"a = 2\n", durable=False)
    assert path.read_text() == "a = 2\n"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    atomic_write(path, "shared", mode=0o640)
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def test_a_write_that_fails_half_way_leaves_the_old_file(tmp_path):
    path = tmp_path / "spec.json"
    atomic_write(path, "old")
    with pytest.raises(RuntimeError, match="disk gone"):
        with atomic_path(path) as tmp:
            with open(tmp, "w") as fh:
                fh.write("new, half of i")
                fh.flush()
                raise RuntimeError("disk gone")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["spec.json"]  # the temporary file is gone too


def test_a_failed_fsync_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "job.sh"
    atomic_write(path, "old")

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(contract.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        atomic_write(path, "new")
    atomic_write(path, "progress", durable=False)  # no fsync asked for: unaffected
    monkeypatch.undo()
    assert path.read_text() == "progress"
    assert [p.name for p in tmp_path.iterdir()] == ["job.sh"]


@pytest.mark.parametrize("atomic", [True, False])
def test_a_process_killed_mid_write_leaves_the_old_file(tmp_path, atomic):
    """A writer killed half way (os._exit: no cleanup runs) leaves the old file whole; a plain
    in-place write, the defence off, leaves half a file."""
    path = tmp_path / "result.json"
    path.write_text("old and whole")
    write = ("with contract.atomic_path(path) as tmp:\n    fh = open(tmp, 'w')" if atomic
             else "if True:\n    fh = open(path, 'w')")
    code = f"""
import os
from pathlib import Path
from asiarch.job import contract
path = Path({str(path)!r})
{write}
    fh.write("new, half of i")
    fh.flush()
    os._exit(9)
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 9, res.stderr
    if atomic:
        assert path.read_text() == "old and whole"
    else:
        assert path.read_text() == "new, half of i"


# --------------------------------------------------------------------------- the job spec


IDENTITY = {"experiment": "t", "candidate_id": 1, "attempt": 1, "run_key": "t-c00001-a1", "code_sha256": "x"}


def _spec_dict(**changes) -> dict:
    d = {"identity": dict(IDENTITY), "layer_path": "/e/layer.py", "result_path": "/e/a/result.h5",
         "progress_path": "/e/a/progress.json", "train": dataclasses.asdict(TrainConfig())}
    d.update(changes)
    return d


def test_job_spec_round_trip_and_defaults():
    spec = JobSpec.from_dict(_spec_dict())
    assert spec.class_name == contract.DEFAULT_CLASS_NAME and spec.checkpoint_path == ""
    assert spec.identity == JobIdentity(**IDENTITY) and spec.identity.stage == "explore"
    assert JobSpec.from_json(spec.to_json()) == spec


def test_job_spec_names_unknown_and_missing_keys():
    with pytest.raises(JobSpecError) as info:
        JobSpec.from_dict({k: v for k, v in _spec_dict(resultpath="/typo").items() if k != "result_path"},
                          source="/e/a/spec.json")
    msg = str(info.value)
    assert msg.startswith("/e/a/spec.json: ")
    assert "unknown key(s) resultpath" in msg and "missing required key(s) result_path" in msg
    assert "Valid keys: identity, layer_path, result_path" in msg

    with pytest.raises(JobSpecError, match=r"unknown key\(s\) identity\.sha.*missing required key\(s\) "
                                           r"identity\.code_sha256"):
        ident = {k: v for k, v in IDENTITY.items() if k != "code_sha256"} | {"sha": "x"}
        JobSpec.from_dict(_spec_dict(identity=ident))

    train = dataclasses.asdict(TrainConfig())
    del train["seq_len"], train["lr"]
    with pytest.raises(JobSpecError, match=r"missing required key\(s\) train\.seq_len, train\.lr"):
        JobSpec.from_dict(_spec_dict(train=train))


def test_job_spec_report_steps_default_empty_and_refused_when_not_step_numbers():
    assert JobSpec.from_dict(_spec_dict()).report_steps == ()
    spec = JobSpec.from_dict(_spec_dict(report_steps=[100, 200]))
    assert spec.report_steps == (100, 200) and JobSpec.from_json(spec.to_json()) == spec
    for bad in ([100, "200"], [0], [True], 100):
        with pytest.raises(JobSpecError, match="report_steps must be a list of positive step numbers"):
            JobSpec.from_dict(_spec_dict(report_steps=bad))


def test_job_spec_refuses_wrong_types_and_broken_files(tmp_path):
    with pytest.raises(JobSpecError, match="identity.candidate_id must be an integer, got '1'"):
        JobSpec.from_dict(_spec_dict(identity=IDENTITY | {"candidate_id": "1"}))
    with pytest.raises(JobSpecError, match="layer_path must be a string, got None"):
        JobSpec.from_dict(_spec_dict(layer_path=None))
    with pytest.raises(JobSpecError, match="train must be a JSON object"):
        JobSpec.from_dict(_spec_dict(train=[1]))
    bad = tmp_path / "spec.json"
    bad.write_text('{"identity": ')
    with pytest.raises(JobSpecError, match=f"{bad}: not JSON"):
        JobSpec.load(bad)
    with pytest.raises(JobSpecError, match="cannot read the job spec"):
        JobSpec.load(tmp_path / "nothing.json")


def test_train_keys_are_train_config_fields():
    assert set(TRAIN_KEYS) <= {f.name for f in dataclasses.fields(TrainConfig)}


def test_the_head_writes_the_spec_the_job_reads(tmp_path):
    files = AttemptFiles(tmp_path / "c" / "attempt-1")
    write_attempt_files(files, layer_path=tmp_path / "layer.py", identity=IDENTITY | {"stage": "verify", "seed": 2},
                        train=TrainConfig(steps=7), cluster=ClusterConfig(), class_name="MyMixer", python="python3")
    spec = JobSpec.load(files.spec)
    assert spec.identity.stage == "verify" and spec.identity.seed == 2 and spec.train["steps"] == 7
    assert spec.class_name == "MyMixer" and spec.result_path == str(files.result.resolve())
    assert spec.progress_path == str(files.progress.resolve())
    assert spec.checkpoint_path == str((files.dir.parent / "checkpoints" / "checkpoint.pt").resolve())
    with pytest.raises(JobSpecError, match=r"unknown key\(s\) identity\.stgae"):
        write_attempt_files(files, layer_path=tmp_path / "layer.py", identity=IDENTITY | {"stgae": "verify"},
                            train=TrainConfig(), cluster=ClusterConfig(), class_name="M", python="python3")


def test_the_job_refuses_a_broken_spec_with_the_reason(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(_spec_dict(layerpath="/typo")))
    out = _python(f'''
        from asiarch.job import train
        print("exit", train.main([{str(spec)!r}]))
    ''', tmp_path)
    assert out.returncode == 0 and "exit 2" in out.stdout, out.stderr
    assert f"asiarch: {spec}: unknown key(s) layerpath" in out.stderr


# --------------------------------------------------------------------------- the secret rule


def test_one_secret_rule_for_jobs_checks_and_sandboxes():
    env = {"HOME": "/h", "DB_PASSWD": "p", "MY_CREDENTIAL": "c", "GITHUB_TOKEN": "t", "MY_ENDPOINT": "u"}
    assert base.job_environment(("MY_ENDPOINT",), base=env) == {"HOME": "/h"}
    assert payload.is_secret is contract.is_secret
    assert not contract.is_secret("PATH") and contract.is_secret("db_passwd")


# --------------------------------------------------------------------------- scheduler registry


def test_an_unknown_scheduler_name_lists_the_valid_ones(tmp_path):
    cfg = Config()
    cfg.cluster.scheduler = "pbs"
    with pytest.raises(SchedulerError, match=r"no scheduler named 'pbs'; valid: 'local', 'slurm'"):
        registry.make_scheduler(ExperimentDir(tmp_path), cfg)


def test_backends_are_built_from_the_config_by_name(tmp_path):
    cfg = Config()
    cfg.cluster.max_in_flight = 3
    exp = ExperimentDir(tmp_path)
    local = registry.make_scheduler(exp, cfg)
    assert local.name == "local" and local.max_in_flight == 3 and local.folder == exp.jobs
    assert local.secret_env == (cfg.llm.api_key_env,) and local.accounting(["x"]) == {}
    cfg.cluster.scheduler, cfg.cluster.gpus_per_node, cfg.cluster.timeout_min = "slurm", 2, 12.5
    cfg.cluster.sbatch_extra = ["exclusive", "mail-type=END"]
    slurm = registry.make_scheduler(exp, cfg, check=False)  # check=False: no controller is asked
    assert slurm.name == "slurm" and isinstance(slurm, Scheduler)
    assert (slurm.spec.time_min, slurm.spec.cpus_per_task, slurm.spec.gpus_per_node, slurm.spec.array_parallelism) \
        == (13, 8, 2, 3)
    assert slurm.spec.additional == (("exclusive", True), ("mail-type", "END"))


def test_a_backend_registers_by_name_and_declares_every_capability(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @registry.register("fake")
    class Fake(Scheduler):
        name = "fake"

        @classmethod
        def from_config(cls, exp, cfg):
            return cls()

        def submit(self, requests):
            return [f"f{i}" for i, _ in enumerate(requests)]

        def states(self, job_ids):
            return {j: JobState.COMPLETED for j in job_ids}

        def cancel(self, job_ids):
            pass

        def adopt(self, marker, attempt_dir):
            return None

    cfg = Config()
    cfg.cluster.scheduler = "fake"
    sched = registry.make_scheduler(ExperimentDir(tmp_path), cfg)
    assert isinstance(sched, Fake) and sched.check() is None and sched.accounting(["f0"]) == {}
    assert "fake" in registry.scheduler_names()

    class Incomplete(Scheduler):
        def submit(self, requests):
            return []

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
    with pytest.raises(TypeError, match="not a subclass"):
        registry.register("dict")(dict)
