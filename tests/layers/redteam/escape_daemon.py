"""Red team: a double-forked daemon (new session, its own process group) that outlives the check, in a
layer that otherwise passes every check. Contained by: the pid namespace ends with the sandbox's
first process, and the kernel kills everything left in it, passed or not."""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

REDTEAM = {}  # filled in by tests/search/test_sandbox.py: the marker the daemon carries in its argv

if os.fork() == 0:  # child: a new session, then a grandchild that the check's process group does not hold
    os.setsid()
    if os.fork() == 0:
        _null = os.open("/dev/null", os.O_RDWR)
        for _fd in (0, 1, 2):
            os.dup2(_null, _fd)
        _loop = ("import sys, time\n"
                 "while True:\n"
                 "    try:\n"
                 "        open(sys.argv[2], 'a').write('beat\\n')\n"
                 "    except OSError:\n"
                 "        pass\n"
                 "    time.sleep(0.2)\n")
        os.execv(sys.executable, [sys.executable, "-c", _loop, REDTEAM["daemon_marker"],
                                  REDTEAM["drop"] + "/daemon-heartbeat"])
    os._exit(0)
os.wait()


class DeltaNet(nn.Module):
    """A plain causal mixer (good_plain's): the check passes."""

    def __init__(self, hidden_size: int = 64, num_heads: int = 4, layer_idx: int = 0):
        super().__init__()
        self.kernel_size = 4
        self.conv = nn.Conv1d(hidden_size, hidden_size, self.kernel_size, groups=hidden_size)
        self.gate = nn.Linear(hidden_size, hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))  # left pad only: causal
        h = self.conv(h).transpose(1, 2)  # (B, T, D)
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
        return self.proj(h.cumsum(dim=1) / steps * torch.sigmoid(self.gate(x)))
