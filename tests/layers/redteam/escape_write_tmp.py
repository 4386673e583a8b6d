"""Red team: leave a file in the head's /tmp for a later process to pick up.
Contained by: the sandbox's /tmp is its own (a tmpfs that ends with it)."""
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


try:
    with open(REDTEAM["tmp_marker"], "w") as _fh:
        _fh.write("planted")
    FOUND = "wrote " + REDTEAM["tmp_marker"]
except OSError as _exc:
    FOUND = repr(_exc)


_exfil(FOUND)


class DeltaNet(nn.Module):
    """Refuses to be built, with what it found in the message (which the head must redact)."""

    def __init__(self, hidden_size=64, num_heads=4, **kwargs):
        super().__init__()
        raise RuntimeError("redteam " + REDTEAM["name"] + ": " + FOUND[:3000])
