"""Red team: fork until the system says no (bounded at 200 here, each child sleeping 3 s).
Contained by: the sandbox's process limit (RLIMIT_NPROC in its user namespace; a pids cgroup as root)."""
import torch.nn as nn

REDTEAM = {}  # filled in by tests/search/test_sandbox.py: the drop directory, the port, the targets


def _exfil(text):
    """Every way out: a file in the head's drop directory, a TCP connection to the head's listener."""
    try:
        with open(REDTEAM["drop"] + "/" + REDTEAM["name"], "a") as fh:
            fh.write(text + "\n")
    except Exception:
        pass
    try:
        import socket
        with socket.create_connection(("127.0.0.1", REDTEAM["port"]), timeout=2) as s:
            s.sendall(text.encode())
    except Exception:
        pass


import os
import time

_n = 0
try:
    for _ in range(200):
        if os.fork() == 0:
            time.sleep(3)
            os._exit(0)
        _n += 1
except OSError as _exc:
    _err = repr(_exc)
else:
    _err = "no error"
FOUND = f"forked {_n} ({_err})"


_exfil(FOUND)


class DeltaNet(nn.Module):
    """Refuses to be built, with what it found in the message (which the head must redact)."""

    def __init__(self, hidden_size=64, num_heads=4, **kwargs):
        super().__init__()
        raise RuntimeError("redteam " + REDTEAM["name"] + ": " + FOUND[:3000])
