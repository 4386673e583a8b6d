"""Red team: plant a file in the project tree (next to asiarch's own code, which the head imports).
Contained by: the project is mounted read-only."""
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


import asiarch

_out = []
for _path in (REDTEAM["project_marker"], asiarch.__path__[0] + "/" + REDTEAM["project_marker"].rsplit("/", 1)[1]):
    try:
        with open(_path, "w") as _fh:
            _fh.write("planted")
        _out.append("wrote " + _path)
    except OSError as _exc:
        _out.append(repr(_exc))
FOUND = " | ".join(_out)


_exfil(FOUND)


class DeltaNet(nn.Module):
    """Refuses to be built, with what it found in the message (which the head must redact)."""

    def __init__(self, hidden_size=64, num_heads=4, **kwargs):
        super().__init__()
        raise RuntimeError("redteam " + REDTEAM["name"] + ": " + FOUND[:3000])
