import subprocess

import pytest

from asiarch.dispatch.render import JobScriptSpec, Raw, render_job_script, shell_quote, torchrun_command
from tests.conftest import check_golden

HOSTILE = "x'; touch /tmp/asiarch-pwned; echo '$(id)`id`\"\\"


def _spec(attempt_dir="/scratch/exp/candidates/00003-delta/attempt-1", run_key="demo-c00003-a1", **kw):
    return JobScriptSpec(
        run_key=run_key, attempt_dir=attempt_dir,
        command=torchrun_command("/opt/venv/bin/python", 2, f"{attempt_dir}/spec.json"),
        env=(("PYTHONUNBUFFERED", "1"), ("OMP_NUM_THREADS", "1")), modules=("cuda/12.4",), **kw)


def test_job_script_golden():
    check_golden("job.sh", render_job_script(_spec()))


def test_multinode_torchrun_uses_c10d():
    cmd = torchrun_command("python", 4, "s.json", nnodes=2, rdzv_endpoint="node1:29500")
    assert "--rdzv-backend=c10d" in cmd and "--rdzv-endpoint=node1:29500" in cmd and "--standalone" not in cmd
    with pytest.raises(ValueError, match="rendezvous"):
        torchrun_command("python", 4, "s.json", nnodes=2)


def test_every_value_is_quoted_hostile_values_stay_data(tmp_path_spaces):
    """LLM output reaches names and paths: run the script with bash and check nothing was executed."""
    d = tmp_path_spaces / HOSTILE.replace("/", "_")
    d.mkdir()
    marker = tmp_path_spaces / "ran"
    spec = JobScriptSpec(run_key=HOSTILE, attempt_dir=str(d),
                         command=("printf", "%s\n", HOSTILE, str(marker)),
                         env=(("EVIL", HOSTILE),))
    script = render_job_script(spec)
    path = tmp_path_spaces / "job.sh"
    path.write_text(script)
    out = subprocess.run(["bash", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-2:] == [HOSTILE, str(marker)]
    assert not marker.exists()
    import os
    assert not os.path.exists("/tmp/asiarch-pwned")


def test_bad_env_name_and_directive_refused():
    with pytest.raises(ValueError, match="environment variable name"):
        render_job_script(JobScriptSpec(run_key="k", attempt_dir="/d", command=("true",), env=(("A B", "1"),)))
    with pytest.raises(ValueError, match="directive"):
        render_job_script(JobScriptSpec(run_key="k", attempt_dir="/d", command=("true",), header=("rm -rf /",)))


def test_shell_quote_raw_and_lists():
    assert shell_quote(Raw("$SLURM_JOB_ID")) == "$SLURM_JOB_ID"
    assert shell_quote(["a b", "c"]) == "'a b' c"


def test_apptainer_command_composition():
    from asiarch.dispatch.render import apptainer_command

    inner = ("python3", "-m", "torch.distributed.run", "--standalone")
    cmd = apptainer_command(inner, image="/img/job.sif", binds=["/exp", "/data", "/exp"],
                            env=(("OMP_NUM_THREADS", "1"),), nv=True, cleanenv=True, containall=True,
                            network_none=True)
    assert cmd == ("apptainer", "exec", "--nv", "--containall", "--cleanenv", "--net", "--network", "none",
                   "--bind", "/exp", "--bind", "/data", "--env", "OMP_NUM_THREADS=1", "/img/job.sif") + inner
    plain = apptainer_command(inner, image="/img/job.sif", cleanenv=False)
    assert plain == ("apptainer", "exec", "/img/job.sif") + inner


def test_head_script_golden_and_valid_bash(tmp_path):
    from asiarch.dispatch.render import render_head_script

    text = render_head_script(name="lab-search", experiment_dir="/scratch/me/exp one",
                              asiarch=("/opt/venv/bin/python", "-m", "asiarch"), time_min=1440, partition="cpu",
                              modules=("python/3.11",))
    check_golden("head.sbatch", text)
    assert "#SBATCH --signal=B:USR1@300" in text and "#SBATCH --requeue" in text
    assert "run '/scratch/me/exp one' &" in text
    script = tmp_path / "head.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_container_build_and_check_through_spython_and_the_stand_in(tmp_path, monkeypatch, capsys):
    """Apptainer cannot be installed here: tests/bin holds a STAND-IN (also named singularity, the
    command spython calls) that checks build's arguments and runs exec's inner command."""
    import os
    import sys
    from pathlib import Path

    from asiarch.cli import main as cli_main

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert cli_main(["container", "build", str(tmp_path / "x.sif")]) == 1
    assert "neither apptainer nor singularity is on PATH" in capsys.readouterr().err
    monkeypatch.setenv("PATH", f"{Path(__file__).resolve().parents[1] / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("ASIARCH_APPTAINER_LOG", str(tmp_path / "calls.log"))
    image = tmp_path / "job.sif"
    assert cli_main(["container", "build", str(image)]) == 0
    assert "stand-in image built from" in image.read_text() and "containers/asiarch.def" in image.read_text()
    assert cli_main(["container", "check", str(image), "--python", sys.executable]) == 0
    assert "asiarch job image ok: torch" in capsys.readouterr().out
    assert cli_main(["container", "check", str(image), "--python", "/no/such/python"]) == 1
    assert "cannot run asiarch jobs" in capsys.readouterr().err
