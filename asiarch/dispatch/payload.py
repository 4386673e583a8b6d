"""What a dispatched job executes: the rendered job script, nothing else.

Pickled by reference by submitit, so it must stay importable on the compute node with
the job side's dependencies only (standard library here).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from asiarch.job.contract import AttemptFiles, atomic_write, is_secret  # standard library only


#: Set in the environment of every process a job runs (its script, torchrun, the ranks: they inherit
#: it) to the attempt directory, resolved. torchrun starts each rank in a session of its own, so a
#: signal to the job's process group misses them; this names them (:func:`attempt_processes`).
ATTEMPT_ENV = "ASIARCH_ATTEMPT_DIR"


class JobScriptFailed(RuntimeError):
    pass


def _job_signals() -> None:
    """In the job's shell: ignore USR1/USR2, and give HUP, INT, TERM and QUIT their default action.

    Slurm's --signal reaches every process of the step; the disposition survives exec, so bash and
    torchrun are not killed by it, while the trainer installs its own handlers and hears it. The
    others are reset because bash cannot trap a signal that was ignored when it started: a head run
    under ``nohup`` (HUP ignored) or as a background job of a script (INT and QUIT ignored) would hand
    that on, and the job script's forwarding of the time-limit warning (HUP) to the trainer would be
    dropped without a word (the job then trains to its time limit and dies without a result)."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


class StopSignals:
    """Pass the scheduler's warnings on to the job: USR1/USR2 as SIGHUP, TERM as SIGTERM.

    Slurm signals (``--signal``, preemption, ``scontrol requeue``) reach this process, not the
    script it runs; the script execs torchrun, which forwards only TERM/INT/HUP/QUIT to its
    workers. The trainer checkpoints on either and records the run as timeout (HUP) or
    preempted (TERM).

    A time-limit warning that comes before the trainer is ready (``ready()`` false: it has not
    written its first progress record, so its handlers may not exist yet) is held and passed on
    by :meth:`flush` once it is: Slurm may send ``--signal`` up to a minute early, which for a
    short job can be at its very start, and a HUP then would kill the job without a result.

    Installed before the job's process exists (:meth:`attach` gives it the process): a signal
    that comes in between is held too, TERM included, instead of killing this process.
    """

    def __init__(self, ready=lambda: True):
        self.proc: subprocess.Popen | None = None
        self.ready, self.held, self.term = ready, False, False
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
            try:
                signal.signal(sig, self._receive)
            except ValueError:  # not the main thread: nothing to forward from here
                return

    def attach(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.flush()

    def _receive(self, signum, _frame):
        if signum == signal.SIGTERM:
            self.term = True
        else:
            self.held = True
        self.flush()

    def flush(self) -> None:
        """Pass on what was received: TERM at once, a warning (as HUP, so that the trainer can tell it
        from a preemption) once the trainer is ready."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.term:
            self.term = False
            self.proc.send_signal(signal.SIGTERM)
        if self.held and self.ready():
            self.held = False
            self.proc.send_signal(signal.SIGHUP)


def process_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from /proc), or None when
    there is no such process. With the pid it names one process, whatever pids are reused. A
    process that has ended but is not yet reaped (a zombie: its parent died with it, and init
    reaps orphans when it gets to them) is none: it will never run again."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
    return None if fields[0] in ("Z", "X") else fields[19]  # state (field 3), start time (field 22)


def attempt_processes(attempt_dir: Path) -> list[int]:
    """Pids of this machine's processes whose environment sets :data:`ATTEMPT_ENV` to ``attempt_dir``
    (the processes of that attempt's job; a zombie has no environment left and is not among them).
    Processes this user may not read are skipped."""
    tag = f"{ATTEMPT_ENV}={Path(attempt_dir).resolve()}".encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or another user's
            continue
        if environ.startswith(tag) or b"\0" + tag in environ:
            found.append(int(entry.name))
    return found


def end_attempt_processes(attempt_dir: Path, within_s: float = 5.0) -> int:
    """SIGKILL every process of ``attempt_dir``'s job (:func:`attempt_processes`), again until none is
    left or ``within_s`` seconds have passed (a parent may fork between a scan and its kill). KILL,
    not TERM: a trainer hearing TERM would checkpoint into the candidate's checkpoint, which a retry
    of the attempt resumes from. Returns how many processes were signalled."""
    ended: set[int] = set()
    deadline = time.monotonic() + within_s
    while True:
        pids = [p for p in attempt_processes(attempt_dir) if p not in ended]
        if not pids or time.monotonic() > deadline:
            return len(ended)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:  # ended meanwhile
                continue
            ended.add(pid)
        time.sleep(0.05)


def slurm_job_id(environ=os.environ) -> str | None:
    """This job's id as submitit and squeue write it: ``<array>_<task>`` for an array task."""
    if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ.get("SLURM_JOB_ID")


def claim_attempt(attempt_dir: Path) -> bool:
    """Record who runs this attempt, then make sure no head gave up on it.

    The marker is written before the tombstone is read, and a head writes the tombstone before
    it reads the marker, so of a job starting while a head recovers, at least one sees the
    other: either the job stops here or the head adopts the job. Returns False when the job
    must not run.
    """
    files = AttemptFiles(attempt_dir)
    files.dir.mkdir(parents=True, exist_ok=True)
    files.job_exit.unlink(missing_ok=True)
    atomic_write(files.job_marker, json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start_time(os.getpid()),
        "slurm_job_id": slurm_job_id(), "started_at": time.time()}))
    return not files.abandoned.exists()


def run_job_script(script: str, log: str, extra_secrets: tuple[str, ...] = ()) -> int:
    """Run ``bash script`` with its output appended to ``log``; raise if it exits non-zero.

    Before anything runs, the job claims its attempt (see :func:`claim_attempt`); an attempt
    a restarted head has abandoned is not run (the head retried it as a new attempt)."""
    files = AttemptFiles(Path(script).parent)
    signals = StopSignals(ready=files.progress.exists)  # before anything that takes time
    env = {k: v for k, v in os.environ.items() if not is_secret(k, extra_secrets)}
    env[ATTEMPT_ENV] = str(files.dir.resolve())
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    if not claim_attempt(files.dir):
        with open(log, "a") as out:
            out.write(f"asiarch: attempt abandoned by a restarted head (see {files.abandoned}); "
                      "not running it\n")
        return 0
    code = None
    try:
        code = _run(script, log, env, signals)
    finally:
        atomic_write(files.job_exit, json.dumps({"code": code, "ended_at": time.time()}))
    if code != 0:
        raise JobScriptFailed(f"{script} exited with status {code}; see {log}")
    return code


def _run(script: str, log: str, env: dict, signals: StopSignals) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(["bash", script], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=False, preexec_fn=_job_signals)
        signals.attach(proc)
        try:
            while True:
                try:
                    return proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    signals.flush()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
