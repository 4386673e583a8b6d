"""Red team: connect to a service on the head's loopback (127.0.0.1) and send it data.
Contained by: the network namespace (the sandbox's loopback is its own)."""
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


import socket

try:
    with socket.create_connection(("127.0.0.1", REDTEAM["port"]), timeout=2) as _s:
        _s.sendall(b"tcp-probe " + REDTEAM["name"].encode())
    FOUND = "connected to 127.0.0.1:%d" % REDTEAM["port"]
except OSError as _exc:
    FOUND = repr(_exc)


_exfil(FOUND)


class DeltaNet(nn.Module):
    """Refuses to be built, with what it found in the message (which the head must redact)."""

    def __init__(self, hidden_size=64, num_heads=4, **kwargs):
        super().__init__()
        raise RuntimeError("redteam " + REDTEAM["name"] + ": " + FOUND[:3000])
