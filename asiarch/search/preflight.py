"""Pre-flight of a candidate on the head node, in a sandboxed child process.

Candidate code is LLM-written and untrusted, so the head never executes it itself:

1. the static check (``asiarch.job.static_check``) runs in-process, on the syntax
   tree only; a refusal ends the pre-flight before any candidate code runs;
2. otherwise ``python -m asiarch.job.preflight`` runs the battery in a child process
   with an address-space, CPU-time and file-size limit, a wall-clock timeout that
   kills its whole process group, stdin closed, a fresh temporary working directory,
   and an environment rebuilt from a short whitelist that never carries a variable
   whose name contains KEY, TOKEN, SECRET or PASSWORD (so the LLM API key stays with
   the head);
3. the child's JSON report becomes a :class:`PreflightReport`; a child that timed
   out, ran out of memory or crashed gives a failed report that says which.

``check_command`` is ``asiarch check LAYER.py [--json]``.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from asiarch.job.static_check import format_findings, static_check

__all__ = [
    "CheckResult", "PreflightReport", "SandboxResult", "child_env", "run_sandboxed", "run_preflight",
    "check_command",
]

# Variables copied from the head's environment when present (after the secret filter).
ENV_WHITELIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "LD_LIBRARY_PATH")
# A variable whose name contains one of these (any case) never reaches the child.
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
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

    Never includes a variable whose name contains KEY, TOKEN, SECRET or PASSWORD, nor
    one named in ``secret_env_names``. HOME and TMPDIR point at ``workdir``; PYTHONPATH
    starts with this project so ``asiarch.job.preflight`` imports from any cwd; thread
    pools are capped at ``threads``; torch.compile and CUDA are off.
    """
    parent = os.environ if parent is None else parent
    secret = {n.upper() for n in secret_env_names}

    def allowed(name: str) -> bool:
        upper = name.upper()
        return upper not in secret and not any(m in upper for m in SECRET_MARKERS)

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
    return {k: v for k, v in env.items() if allowed(k)}


def _limits(memory_mb: int, cpu_s: int) -> Callable[[], None]:
    """A preexec_fn setting the child's resource limits (runs in the child, before exec)."""

    def apply() -> None:
        memory = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 2))  # SIGXCPU, then SIGKILL
        size = FILE_SIZE_LIMIT_MB << 20
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


@dataclass
class SandboxResult:
    """What a sandboxed child left: exit status (negative: killed by that signal), output, timing."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    elapsed_s: float


def run_sandboxed(argv: list[str], *, cwd: str, env: Mapping[str, str], timeout_s: float,
                  memory_mb: int) -> SandboxResult:
    """Run ``argv`` under the limits; kill its process group after ``timeout_s`` of wall time.

    stdout and stderr go to files in ``cwd`` (capped by the file-size limit, so a child
    that prints without end cannot fill the head's memory).
    """
    cpu_s = max(1, math.ceil(timeout_s)) + 1
    out_path, err_path = Path(cwd, ".stdout"), Path(cwd, ".stderr")
    start = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            preexec_fn=_limits(memory_mb, cpu_s), start_new_session=True, close_fds=True,
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc.returncode is None:  # timed out, or the head was interrupted while waiting
                # The child leads its own session (and is not reaped yet, so its pid is still
                # its own): kill the whole group, anything it started included.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
    elapsed = time.monotonic() - start

    def read(path: Path, limit: int) -> str:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")

    return SandboxResult(proc.returncode, read(out_path, 1 << 20), read(err_path, 1 << 16), timed_out, elapsed)


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
    class_name: str = "DeltaNet",
    hidden_size: int = 64,
    num_heads: int = 4,
    seq_len: int = 64,
    max_params: int | None = None,
    timeout_s: float = 60,
    memory_mb: int = 4096,
    python: str = sys.executable,
    secret_env_names: Iterable[str] = (),
    filename: str = "layer.py",
    complexity: bool = True,
    allow_quadratic: bool = False,
    autocast: bool = False,
    dtype: str = "float32",
    seed: int = 0,
) -> PreflightReport:
    """Check ``source`` statically here, then run the pre-flight battery in a sandboxed child.

    ``timeout_s`` bounds the child's wall-clock (and CPU) time, ``memory_mb`` its address
    space (torch itself needs about 1 GB of it). ``filename`` is the name messages cite.
    ``autocast`` mirrors bf16 training (``precision = "bf16"``).
    See the module docstring for the sandbox.
    """
    start = time.monotonic()
    findings = static_check(source)
    if findings:
        check = CheckResult("static", False, f"the code uses constructs a layer may not: {format_findings(findings)}",
                            {"findings": [asdict(f) for f in findings]})
        return PreflightReport(False, [check], round(time.monotonic() - start, 3))

    with tempfile.TemporaryDirectory(prefix="asiarch-preflight-") as workdir:
        path = Path(workdir, "layer.py")
        path.write_text(source, encoding="utf-8")
        argv = [python, "-m", "asiarch.job.preflight", "--json", "--source", str(path), "--filename", filename,
                "--class-name", class_name, "--hidden-size", str(hidden_size), "--num-heads", str(num_heads),
                "--seq-len", str(seq_len), "--dtype", dtype, "--seed", str(seed)]
        if max_params is not None:
            argv += ["--max-params", str(max_params)]
        if not complexity:
            argv.append("--no-complexity")
        if allow_quadratic:
            argv.append("--allow-quadratic")
        if autocast:
            argv.append("--autocast")
        env = child_env(workdir=workdir, secret_env_names=secret_env_names)
        result = run_sandboxed(argv, cwd=workdir, env=env, timeout_s=timeout_s, memory_mb=memory_mb)

    elapsed = round(time.monotonic() - start, 3)
    data = _report_from_stdout(result.stdout)
    done, _, tail = _parse_stderr(result.stderr)
    if data is not None and not result.timed_out:
        report = PreflightReport.from_dict(data)
        report.ok = report.ok and result.returncode == 0
        report.elapsed_s = elapsed
        report.stderr_tail = "" if report.ok else tail
        return report
    failure = _sandbox_failure(result, timeout_s=timeout_s, memory_mb=memory_mb)
    return PreflightReport(False, done + [failure], elapsed, tail)


# ----------------------------------------------------------------------------------
# asiarch check LAYER.py [--json]


def check_command(path: str, *, as_json: bool = False, **kwargs) -> int:
    """Pre-flight the layer file at ``path`` and print a table (or JSON); 0 iff it passes.

    ``kwargs`` go to :func:`run_preflight`. A missing or unreadable file prints why and
    returns 2.
    """
    try:
        source = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        print(f"asiarch check: no such file: {path}. Give the path of a candidate layer's .py file.", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError) as exc:
        print(f"asiarch check: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    kwargs.setdefault("filename", os.path.basename(path))
    report = run_preflight(source, **kwargs)
    print(report.to_json() if as_json else report.format_table())
    return 0 if report.ok else 1
