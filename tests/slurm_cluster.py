"""A real single-node Slurm for the tests: started once per session by slurm/start-test-cluster.sh."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def slurm_unavailable() -> str | None:
    """Why a local Slurm cannot run here, or None."""
    missing = [b for b in ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd") if not shutil.which(b)]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing): run slurm/install-test-cluster.sh as root"
    if os.geteuid() != 0:
        return "the local test cluster starts its daemons as root"
    return None


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture(scope="session")
def slurm_cluster():
    why = slurm_unavailable()
    if why:
        pytest.skip(why)
    state = tempfile.mkdtemp(prefix="asiarch-slurm-")
    # free ports, so that two test sessions on one machine never share a cluster's ports
    env = dict(os.environ, **dict(zip(("ASIARCH_SLURM_DB_PORT", "ASIARCH_SLURM_DBD_PORT", "ASIARCH_SLURM_CTLD_PORT",
                                       "ASIARCH_SLURM_D_PORT"), map(str, free_ports(4)))))
    res = subprocess.run(["bash", str(ROOT / "slurm" / "start-test-cluster.sh"), state], capture_output=True,
                         text=True, timeout=180, env=env)
    if res.returncode != 0:
        pytest.fail(f"the test cluster did not start:\n{res.stderr[-3000:]}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = f"{state}/slurm.conf"
    yield Path(state)
    subprocess.run(["bash", str(ROOT / "slurm" / "stop-test-cluster.sh"), state], capture_output=True, timeout=60)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
