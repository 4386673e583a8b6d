"""Pre-flight of a candidate on the head node, in a sandboxed child process.

Candidate code is LLM-written and untrusted, so the head never executes it itself:

1. the static check (``asiarch.job.static_check``) runs in-process, on the syntax
   tree only; a refusal ends the pre-flight before any candidate code runs;
2. otherwise ``python -m asiarch.job.preflight`` runs the battery in a child process
   inside the OS sandbox (``cluster.sandbox``; :mod:`asiarch.dispatch.sandbox`): its own
   user, pid, network, IPC and mount namespaces, the interpreter, the asiarch package and
   the layer read-only, a fresh working directory the only writable place, no home, a
   private /tmp, no network, a process limit, killed whole when it ends; plus an
   address-space, CPU-time and file-size limit, a wall-clock timeout, stdin closed, and
   an environment rebuilt from a short whitelist that never carries a secret
   (:func:`asiarch.job.contract.is_secret`), so the LLM API key stays with the head: the
   head's /proc is not in the child's pid namespace;
3. the child's JSON report becomes a :class:`PreflightReport`, redacted of every secret
   value of the head's environment; a child that timed out, ran out of memory or crashed
   gives a failed report that says which.

:func:`preflight_settings` gives the settings of an experiment's config; ``asiarch check``
(:mod:`asiarch.cli.check`) prints a report.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from asiarch.dispatch.sandbox import (SandboxSpec, SandboxUnavailable, interpreter_paths, package_dir, resolve_kind,
                                      sandbox_argv)
from asiarch.job.contract import DEFAULT_CLASS_NAME, is_secret, redact, secret_values
from asiarch.job.static_check import format_findings, static_check

__all__ = [
    "CheckResult", "PreflightReport", "SandboxResult", "Sandboxing", "SandboxUnavailable", "child_env",
    "run_sandboxed", "run_preflight", "redact_report", "preflight_settings",
]

# Variables copied from the head's environment when present (after the secret filter).
ENV_WHITELIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "LD_LIBRARY_PATH")
# Processes (threads included) the pre-flight's sandbox may hold: torch with one thread per
# pool runs about 10; a fork bomb stops here.
PREFLIGHT_MAX_PROCS = 64
# Files the child may write (its stdout and stderr captures included), in MB.
FILE_SIZE_LIMIT_MB = 64
# Characters of the child's stderr kept in a failed report.
STDERR_TAIL_CHARS = 2000

_PROGRESS_PREFIX = "asiarch-preflight:"  # asiarch.job.preflight.PROGRESS_PREFIX (not imported: it needs torch)
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass
class CheckResult:
    """One check: its name, whether it passed, a sentence to act on, and its measurements."""

    name: str
    passed: bool
    detail: str
    figures: dict = field(default_factory=dict)


@dataclass
class PreflightReport:
    """The outcome of a pre-flight: ``ok`` iff every check ran and passed."""

    ok: bool
    checks: list[CheckResult]
    elapsed_s: float
    stderr_tail: str = ""
    skipped: list[str] = field(default_factory=list)  # checks a stopping failure left out

    @property
    def failed(self) -> CheckResult | None:
        """The first failed check, or None."""
        return next((c for c in self.checks if not c.passed), None)

    @property
    def reason(self) -> str:
        """One line naming the first failed check and its detail; empty when ok."""
        if self.ok:
            return ""
        check = self.failed
        if check is None:
            tail = self.stderr_tail.strip().splitlines()
            return "preflight: did not complete" + (f": {tail[-1]}" if tail else "")
        return f"{check.name}: {check.detail}"

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping) -> "PreflightReport":
        checks = [CheckResult(c["name"], bool(c["passed"]), str(c.get("detail", "")), dict(c.get("figures") or {}))
                  for c in data.get("checks", [])]
        return cls(bool(data["ok"]), checks, float(data.get("elapsed_s", 0.0)), str(data.get("stderr_tail", "")),
                   list(data.get("skipped", [])))

    @classmethod
    def from_json(cls, text: str) -> "PreflightReport":
        return cls.from_dict(json.loads(text))

    def format_table(self) -> str:
        """A readable table: check, pass/FAIL, detail; then the verdict and the time."""
        width = max([len(c.name) for c in self.checks] + [5])
        lines = [f"{'check':<{width}}  {'':<4}  detail"]
        lines += [f"{c.name:<{width}}  {'pass' if c.passed else 'FAIL':<4}  {c.detail}" for c in self.checks]
        if self.skipped:
            lines.append(f"not run: {', '.join(self.skipped)}")
        lines.append(f"{'ok' if self.ok else 'FAILED'} in {self.elapsed_s:.1f} s")
        failed = self.failed
        if self.stderr_tail and (failed is None or failed.name == "crash"):
            lines.append("stderr (end):\n" + self.stderr_tail)
        return "\n".join(lines)


# ----------------------------------------------------------------------------------
# the sandbox


def child_env(
    parent: Mapping[str, str] | None = None,
    *,
    workdir: str,
    secret_env_names: Iterable[str] = (),
    threads: int = 1,
) -> dict[str, str]:
    """The child's environment: whitelisted variables of ``parent`` and fixed settings.

    Never includes a variable that :func:`asiarch.job.contract.is_secret` selects (a name that
    looks like a credential, or one of ``secret_env_names``). HOME and TMPDIR point at
    ``workdir``; PYTHONPATH starts with this project so ``asiarch.job.preflight`` imports from
    any cwd; thread pools are capped at ``threads``; torch.compile and CUDA are off.
    """
    parent = os.environ if parent is None else parent
    secret = tuple(secret_env_names)
    env = {k: parent[k] for k in ENV_WHITELIST if k in parent}
    pythonpath = [_PROJECT_ROOT] + [p for p in parent.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update({
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(pythonpath)),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "TORCHDYNAMO_DISABLE": "1",
        "CUDA_VISIBLE_DEVICES": "",
    })
    env.setdefault("PATH", os.defpath)
    env.setdefault("LANG", "C.UTF-8")
    return {k: v for k, v in env.items() if not is_secret(k, secret)}


def _limits(memory_mb: int, cpu_s: int, cgroup: "_PidsCgroup | None" = None) -> Callable[[], None]:
    """A preexec_fn setting the child's resource limits (runs in the child, before exec)."""

    def apply() -> None:
        if cgroup is not None:
            cgroup.enter()
        memory = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 2))  # SIGXCPU, then SIGKILL
        size = FILE_SIZE_LIMIT_MB << 20
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


class _PidsCgroup:
    """A pids cgroup around one sandbox, for a head running as root: the kernel does not enforce
    RLIMIT_NPROC for uid 0 (inside a user namespace either), so there the cgroup is the process
    limit; and whatever is left in it at the end is killed. None where no pids hierarchy is
    writable (then, as root, the process limit is not enforced)."""

    _count = 0

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def create(cls, max_procs: int) -> "_PidsCgroup | None":
        if os.geteuid() != 0:
            return None
        for base in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
            v2 = base == Path("/sys/fs/cgroup")
            try:
                if v2 and "pids" not in (base / "cgroup.subtree_control").read_text().split():
                    continue
                if not (base / "cgroup.procs").exists():
                    continue
                cls._count += 1
                path = base / f"asiarch-sandbox-{os.getpid()}-{cls._count}"
                path.mkdir()
            except OSError:
                continue
            try:
                (path / "pids.max").write_text(str(max_procs))
                return cls(path)
            except OSError:
                path.rmdir()
        return None

    def enter(self) -> None:
        """Move the calling process into the cgroup (in the child, before exec)."""
        (self.path / "cgroup.procs").write_text("0")

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def close(self) -> None:
        """Kill what is left, then remove the cgroup."""
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


@dataclass(frozen=True)
class Sandboxing:
    """How the pre-flight child is contained: ``cluster.sandbox``, and for Apptainer the image and
    the interpreter inside it. A plain string ("auto", "bwrap", "apptainer", "none") means that
    setting with no image."""

    setting: str = "auto"
    container_image: str = ""
    python: str = ""  # inside the image (cluster.python; python3 when empty)

    @classmethod
    def from_cluster(cls, cluster) -> "Sandboxing":
        return cls(cluster.sandbox, cluster.container_image, cluster.python)

    @classmethod
    def of(cls, value: "str | Sandboxing") -> "Sandboxing":
        return value if isinstance(value, Sandboxing) else cls(str(value))

    def kind(self) -> str:
        """'bwrap', 'apptainer' or 'none' here; raises SandboxUnavailable with what to do."""
        return resolve_kind(self.setting, container_image=self.container_image)


@dataclass
class SandboxResult:
    """What a sandboxed child left: exit status (negative: killed by that signal), output, timing."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    elapsed_s: float
    sandbox: str = "none"  # the sandbox it ran in: bwrap, apptainer or none


def sandbox_spec(kind: str, argv: list[str], *, cwd: str, env: Mapping[str, str], read_only: Iterable[str] = (),
                 max_procs: int = PREFLIGHT_MAX_PROCS, image: str = "") -> SandboxSpec:
    """The pre-flight's sandbox: ``cwd`` the one writable directory; the interpreter of ``argv``, the
    asiarch package, PYTHONPATH's directories and ``read_only`` (the layer) read-only; no network."""
    python = argv[0]
    if kind == "apptainer":  # the image holds the interpreter and asiarch: only the work directory goes in
        env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
        return SandboxSpec("apptainer", cwd=cwd, env=tuple(sorted(env.items())), writable=(cwd,),
                           protected=tuple(read_only), max_procs=max_procs, limit_python=python,
                           executable="apptainer", image=image)
    # the process-limit shim runs on the head's own interpreter, whatever ``python`` is
    paths = list(dict.fromkeys(interpreter_paths(sys.executable) + interpreter_paths(python))) + [package_dir()]
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
              if p and os.path.isdir(p) and p != _PROJECT_ROOT and p not in paths]
    return SandboxSpec("bwrap", cwd=cwd, env=tuple(sorted(env.items())), read_only=tuple(paths), writable=(cwd,),
                       protected=tuple(read_only), max_procs=max_procs, limit_python=sys.executable,
                       executable=shutil.which("bwrap") or "bwrap")


def run_sandboxed(argv: list[str], *, cwd: str, env: Mapping[str, str], timeout_s: float, memory_mb: int,
                  sandbox: "str | Sandboxing" = "auto", read_only: Iterable[str] = (),
                  max_procs: int = PREFLIGHT_MAX_PROCS) -> SandboxResult:
    """Run ``argv`` in the sandbox (see :mod:`asiarch.dispatch.sandbox`) under the limits; kill it
    after ``timeout_s`` of wall time.

    ``cwd`` is the one writable directory, ``read_only`` files inside it stay read-only (the
    layer), ``env`` is the whole environment inside. With ``sandbox = "none"`` the child runs
    bare (the limits and the scrubbed environment only). stdout and stderr go to files in a
    private directory the child cannot reach by name, capped by the file-size limit, so a child
    that prints without end cannot fill the head's memory. Raises SandboxUnavailable when the
    sandbox asked for cannot run here.
    """
    sandboxing = Sandboxing.of(sandbox)
    kind = sandboxing.kind()
    if kind == "apptainer" and os.path.abspath(argv[0]) == os.path.abspath(sys.executable):
        argv = [sandboxing.python or "python3"] + list(argv[1:])  # the image's interpreter, not the head's
    cgroup = None
    if kind == "none":
        command, popen_env = list(argv), dict(env)
    else:
        spec = sandbox_spec(kind, list(argv), cwd=cwd, env=env, read_only=read_only, max_procs=max_procs,
                            image=sandboxing.container_image)
        command = sandbox_argv(spec, argv)
        # bwrap itself gets nothing of the head's environment either (its init is the sandbox's pid 1)
        popen_env = {"PATH": env.get("PATH", os.defpath), "LANG": env.get("LANG", "C.UTF-8")}
        # + 1: the outer bwrap, outside the user namespace; then the cap is what RLIMIT_NPROC is for a user
        cgroup = _PidsCgroup.create(max_procs + 1) if kind == "bwrap" else None
    cpu_s = max(1, math.ceil(timeout_s)) + 1
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="asiarch-capture-") as private, \
            open(Path(private, "stdout"), "w+b") as out, open(Path(private, "stderr"), "w+b") as err:
        try:
            proc = subprocess.Popen(
                command, cwd=cwd, env=popen_env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                preexec_fn=_limits(memory_mb, cpu_s, cgroup), start_new_session=True, close_fds=True,
            )
        except BaseException:
            if cgroup is not None:
                cgroup.close()
            raise
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc.returncode is None:  # timed out, or the head was interrupted while waiting
                # The child leads its own session (and is not reaped yet, so its pid is still
                # its own): kill the whole group, anything it started included. In a sandbox the
                # rest dies with it (--die-with-parent, then the pid namespace's end).
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            if cgroup is not None:
                cgroup.close()
        elapsed = time.monotonic() - start
        stdout, stderr = _tail(out, 1 << 20), _tail(err, 1 << 16)
    rc = proc.returncode
    if kind != "none" and rc > 128 and rc - 128 in _SIGNALS:
        rc = -(rc - 128)  # bwrap and apptainer exit with 128 + N when their command died of signal N
    return SandboxResult(rc, stdout, stderr, timed_out, elapsed, kind)


_SIGNALS = {int(s) for s in signal.Signals}


def _tail(fh, limit: int) -> str:
    """The last ``limit`` bytes of an open capture file, as text (read through the descriptor, never by name)."""
    fh.flush()
    fh.seek(0, os.SEEK_END)
    fh.seek(max(0, fh.tell() - limit))
    return fh.read().decode("utf-8", "replace")


def redact_report(report: "PreflightReport", values: Iterable[str]) -> "PreflightReport":
    """``report`` with every secret value (:func:`asiarch.job.contract.secret_values`) taken out of
    its text: details, figures, the stderr tail, the names of the checks."""
    values = tuple(values)
    if not values:
        return report
    data = json.loads(redact(report.to_json(), [json.dumps(v)[1:-1] for v in values]))
    return PreflightReport.from_dict(data)


# ----------------------------------------------------------------------------------
# the pre-flight


def _parse_stderr(stderr: str) -> tuple[list[CheckResult], str | None, str]:
    """Split the child's stderr into finished checks, the check running last, and the rest."""
    done: list[CheckResult] = []
    running = None
    rest = []
    for line in stderr.splitlines():
        if line.startswith(_PROGRESS_PREFIX + " start "):
            running = line.split(" ", 2)[2].strip()
        elif line.startswith(_PROGRESS_PREFIX + " done "):
            try:
                c = json.loads(line.split(" ", 2)[2])
                done.append(CheckResult(c["name"], bool(c["passed"]), str(c["detail"]), dict(c.get("figures") or {})))
                running = None
            except (ValueError, KeyError, TypeError):
                rest.append(line)
        else:
            rest.append(line)
    return done, running, "\n".join(rest)[-STDERR_TAIL_CHARS:]


def _report_from_stdout(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and "ok" in data and "checks" in data:
            return data
    return None


def _sandbox_failure(result: SandboxResult, *, timeout_s: float, memory_mb: int) -> CheckResult:
    """The check that explains a child that ended without a report."""
    _, running, tail = _parse_stderr(result.stderr)
    during = f" during the {running!r} check" if running else ""
    rc = result.returncode
    if result.timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL) and not _is_memory_error(tail):
        return CheckResult("timeout", False,
                           f"the pre-flight did not finish within its {timeout_s:g} s limit and was killed{during}: "
                           "look for an endless loop, or a Python loop over every token and channel; a forward "
                           "at the pre-flight's small sizes should take well under a second.", {"timeout_s": timeout_s,
                                                                              "running": running})
    if _is_memory_error(tail):
        return CheckResult("memory", False,
                           f"the pre-flight ran out of memory (limit {memory_mb} MB){during}: allocate tensors "
                           "proportional to batch x seq x hidden, never a fixed huge size or seq^3.",
                           {"memory_mb": memory_mb, "running": running})
    if rc < 0:
        try:
            how = f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            how = f"killed by signal {-rc}"
        if rc == -signal.SIGXFSZ:
            how += f" (it wrote more than {FILE_SIZE_LIMIT_MB} MB of output)"
    else:
        how = f"exited with status {rc} without a report"
    last = tail.strip().splitlines()[-1] if tail.strip() else "no error output"
    return CheckResult("crash", False, f"the pre-flight process {how}{during}; last error output: {last}",
                       {"returncode": rc, "running": running})


def _is_memory_error(stderr: str) -> bool:
    return "MemoryError" in stderr or "can't allocate memory" in stderr or "Cannot allocate memory" in stderr


def run_preflight(
    source: str,
    *,
    class_name: str = DEFAULT_CLASS_NAME,
    hidden_size: int = 64,
    num_heads: int = 4,
    seq_len: int = 64,
    batch_size: int | None = None,
    precision: str | None = None,
    max_params: int | None = None,
    timeout_s: float = 60,
    memory_mb: int = 4096,
    python: str = sys.executable,
    secret_env_names: Iterable[str] = (),
    sandbox: "str | Sandboxing" = "auto",
    filename: str = "layer.py",
    complexity: bool = True,
    allow_quadratic: bool = False,
    autocast: bool = False,
    dtype: str = "float32",
    seed: int | None = None,
) -> PreflightReport:
    """Check ``source`` statically here, then run the pre-flight battery in a sandboxed child.

    ``timeout_s`` bounds the child's wall-clock (and CPU) time, ``memory_mb`` its address
    space (torch itself needs about 1 GB of it). ``filename`` is the name messages cite.
    ``seq_len`` and ``batch_size`` are the training length and batch per rank (the probes run
    there and around it); ``precision`` is ``train.precision``: "bf16" runs the battery under bf16
    autocast, as training does (the same as ``autocast=True``). ``seed`` reproduces a report's
    draws; by default the child draws them from os.urandom.
    ``sandbox`` is ``cluster.sandbox`` (or a :class:`Sandboxing` with the container image); see
    the module docstring. Every text of the report is redacted of the secret values of the
    head's environment (``secret_env_names`` included). Raises SandboxUnavailable when the
    sandbox cannot run here.
    """
    start = time.monotonic()
    secrets = secret_values(os.environ, tuple(secret_env_names))
    findings = static_check(source)
    if findings:
        check = CheckResult("static", False, f"the code uses constructs a layer may not: {format_findings(findings)}",
                            {"findings": [asdict(f) for f in findings]})
        return redact_report(PreflightReport(False, [check], round(time.monotonic() - start, 3)), secrets)

    with tempfile.TemporaryDirectory(prefix="asiarch-preflight-") as workdir:
        path = Path(workdir, "layer.py")
        path.write_text(source, encoding="utf-8")
        argv = [python, "-m", "asiarch.job.preflight", "--json", "--source", str(path), "--filename", filename,
                "--class-name", class_name, "--hidden-size", str(hidden_size), "--num-heads", str(num_heads),
                "--seq-len", str(seq_len), "--dtype", dtype]
        if seed is not None:
            argv += ["--seed", str(seed)]
        if batch_size is not None:
            argv += ["--batch-size", str(batch_size)]
        if max_params is not None:
            argv += ["--max-params", str(max_params)]
        if not complexity:
            argv.append("--no-complexity")
        if allow_quadratic:
            argv.append("--allow-quadratic")
        if autocast or precision == "bf16":
            argv.append("--autocast")
        env = child_env(workdir=workdir, secret_env_names=secret_env_names)
        result = run_sandboxed(argv, cwd=workdir, env=env, timeout_s=timeout_s, memory_mb=memory_mb,
                               sandbox=sandbox, read_only=(str(path),))

    elapsed = round(time.monotonic() - start, 3)
    data = _report_from_stdout(result.stdout)
    done, _, tail = _parse_stderr(result.stderr)
    if data is not None and not result.timed_out:
        report = PreflightReport.from_dict(data)
        report.ok = report.ok and result.returncode == 0
        report.elapsed_s = elapsed
        report.stderr_tail = "" if report.ok else tail
        return redact_report(report, secrets)
    failure = _sandbox_failure(result, timeout_s=timeout_s, memory_mb=memory_mb)
    return redact_report(PreflightReport(False, done + [failure], elapsed, tail), secrets)


# ----------------------------------------------------------------------------------
# an experiment's settings


def preflight_settings(cfg) -> dict:
    """The :func:`run_preflight` keywords an experiment's Config sets: the experiment's own training
    settings, so the probes run at the training length (and at twice and four times it, so state
    passed across the chunks of ASI-Arch-style kernels is checked too), with the batch per rank, and
    under bf16 autocast when training runs in bf16 (many published layers hard-code bf16 inside their
    kernels); the layer's class name, the parameter cap, the quadratic allowance, the LLM key's
    variable (kept out of the child and out of the report) and the sandbox. The loop's pre-flight
    and ``asiarch check --config`` both use it."""
    t = cfg.train
    return {"class_name": cfg.search.class_name, "hidden_size": t.hidden_size, "num_heads": t.num_heads,
            "seq_len": t.seq_len, "batch_size": max(1, t.batch_size // t.nproc), "precision": t.precision,
            "max_params": t.max_params or None, "allow_quadratic": cfg.search.allow_quadratic,
            "secret_env_names": (cfg.llm.api_key_env,), "sandbox": Sandboxing.from_cluster(cfg.cluster)}
