"""Recovery of a head killed with its whole process group, against the real pieces: a real head
process, real torchrun with 2 gloo ranks, the real store. torchrun starts each rank in a session of
its own, so ``kill -9 -PGID`` of the head takes the job's payload and torchrun but not the ranks;
without a sandbox (whose pid namespace dies with it) they trained on, unwatched, beside the retry."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asiarch.cli.console import Console
from asiarch.config import render_toml
from asiarch.dispatch.payload import attempt_processes
from asiarch.job.contract import AttemptFiles
from asiarch.layout import ExperimentDir
from asiarch.search.loop import Search
from asiarch.store import Store
from asiarch.tools.kill_head import left_behind, stress_config


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _ranks(attempt_dir: Path) -> list[int]:
    """The trainer processes (torchrun's ranks) of an attempt's job."""
    out = []
    for pid in attempt_processes(attempt_dir):
        try:
            if b"asiarch.job.train" in Path(f"/proc/{pid}/cmdline").read_bytes() and \
                    b"torch.distributed.run" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            pass
    return out


@pytest.mark.slow
def test_ranks_a_group_kill_left_running_are_ended_when_their_attempt_is_abandoned(tmp_path):
    cfg = stress_config("orphans", candidates=1)
    cfg.train.nproc, cfg.train.steps, cfg.cluster.sandbox = 2, 5000, "none"  # long: killed mid-run
    root = tmp_path / "exp"
    root.mkdir()
    (root / "config.toml").write_text(render_toml(cfg))
    head = subprocess.Popen([sys.executable, "-m", "asiarch", "run", str(root), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ranks, attempt_dir = [], None
    try:
        deadline = time.time() + 300
        while len(ranks) < 2:
            assert time.time() < deadline and head.poll() is None, "no job started training"
            time.sleep(0.2)
            for d in (root / "candidates").glob("*/attempt-*"):
                if (d / AttemptFiles.PROGRESS).exists():
                    attempt_dir, ranks = d, _ranks(d)
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head, its submitit controllers, the payloads, torchrun
        head.wait()
    time.sleep(1.0)
    try:
        # the problem: the ranks outlive the kill (this is what a head that does not reap leaves)
        assert all(_alive(p) for p in ranks), "the ranks died with the group: nothing left to end"
        search = Search.open(ExperimentDir(root), cfg, console=Console(verbose=False))
        try:
            search.recover()
            with Store.open_readonly(root / "asiarch.db") as store:
                attempt, = [a for a in store.attempts() if a.dir == str(attempt_dir.relative_to(root))]
                reaped = [r[0] for r in store.conn.execute("SELECT attempt_id FROM events WHERE kind = 'reaped'")]
            assert attempt.status == "lost" and (attempt_dir / AttemptFiles.ABANDONED).exists()
            assert attempt.id in reaped
            assert not any(_alive(p) for p in ranks), "the abandoned attempt's ranks still run"
            assert attempt_processes(attempt_dir) == []
            retries = list(search.active.values())
            search.scheduler.cancel(retries)  # the retry is not what this test is about
            deadline = time.time() + 60
            while not all(s.finished for s in search.scheduler.states(retries).values()):
                assert time.time() < deadline, "the cancelled retry did not end"
                time.sleep(0.2)
        finally:
            search.close()
        assert left_behind(root, grace_s=30) == []
    finally:
        for pid in ranks:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
