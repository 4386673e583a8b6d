"""The kill-head stress run's count of processes left behind (the run itself: tests/tools/test_faults.py)."""

import os
import subprocess
import sys
import time

from asiarch.tools.kill_head import left_behind


def test_left_behind_counts_processes_naming_the_experiment_by_command_line_or_environment(tmp_path):
    root = tmp_path / "exp"
    root.mkdir()
    by_argv = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(root / "candidates")])
    by_env = subprocess.Popen(["sleep", "60"], env={**os.environ, "ASIARCH_ATTEMPT_DIR": str(root / "a")})
    elsewhere = subprocess.Popen(["sleep", "60"])
    try:
        found = left_behind(root, grace_s=0)
        pids = {int(line.split()[0]) for line in found}
        assert pids == {by_argv.pid, by_env.pid}, found  # not this test (its ancestors), not the other sleep
        by_argv.kill()
        by_env.kill()
        by_argv.wait()
        by_env.wait()
        t0 = time.monotonic()
        assert left_behind(root, grace_s=5) == []
        assert time.monotonic() - t0 < 2  # returns as soon as none is left
    finally:
        for p in (by_argv, by_env, elsewhere):
            p.kill()
            p.wait()
