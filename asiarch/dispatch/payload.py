"""What a dispatched job executes: the rendered job script, nothing else.

Pickled by reference by submitit, so it must stay importable on the compute node with
the job side's dependencies only (standard library here).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

_SECRET = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)


class JobScriptFailed(RuntimeError):
    pass


def is_secret(name: str, extra: tuple[str, ...] = ()) -> bool:
    """Variables that must never reach a job: named ones, and anything that looks like a credential."""
    return name in extra or bool(_SECRET.search(name))


def run_job_script(script: str, log: str, extra_secrets: tuple[str, ...] = ()) -> int:
    """Run ``bash script`` with its output appended to ``log``; raise if it exits non-zero."""
    env = {k: v for k, v in os.environ.items() if not is_secret(k, extra_secrets)}
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(["bash", script], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=False)
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
