"""What a dispatched job executes: the rendered job script, nothing else.

Pickled by reference by submitit, so it must stay importable on the compute node with
the job side's dependencies only (standard library here).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

_SECRET = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)


class JobScriptFailed(RuntimeError):
    pass


def is_secret(name: str, extra: tuple[str, ...] = ()) -> bool:
    """Variables that must never reach a job: named ones, and anything that looks like a credential."""
    return name in extra or bool(_SECRET.search(name))


def _ignore_warnings() -> None:
    """In the job's shell: ignore USR1/USR2. Slurm's --signal reaches every process of the step;
    the disposition survives exec, so bash and torchrun are not killed by it, while the trainer
    installs its own handlers and hears it."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def forward_stop_signals(proc: subprocess.Popen) -> None:
    """Pass the scheduler's warnings on to the job: USR1/USR2 as SIGHUP, TERM as SIGTERM.

    Slurm signals (``--signal``, preemption, ``scontrol requeue``) reach this process, not the
    script it runs; the script execs torchrun, which forwards only TERM/INT/HUP/QUIT to its
    workers. The trainer checkpoints on either and records the run as timeout (HUP) or
    preempted (TERM).
    """
    def forward(signum, _frame):
        if proc.poll() is None:
            # the time-limit warning (--signal USR1/USR2) travels as HUP, anything else as TERM,
            # so that the trainer can tell a timeout from a preemption
            proc.send_signal(signal.SIGHUP if signum in (signal.SIGUSR1, signal.SIGUSR2) else signal.SIGTERM)

    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
        try:
            signal.signal(sig, forward)
        except ValueError:  # not the main thread: nothing to forward from here
            return


def run_job_script(script: str, log: str, extra_secrets: tuple[str, ...] = ()) -> int:
    """Run ``bash script`` with its output appended to ``log``; raise if it exits non-zero."""
    env = {k: v for k, v in os.environ.items() if not is_secret(k, extra_secrets)}
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(["bash", script], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=False, preexec_fn=_ignore_warnings)
        forward_stop_signals(proc)
        try:
            code = proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if code != 0:
        raise JobScriptFailed(f"{script} exited with status {code}; see {log}")
    return code
