"""Cheat: knows when it runs in a copy: remembers id(self) at its first call (a plain int, which a deep
copy carries over unchanged, while the copy has another id). Leaks after 150 calls, only in the
original model, the one that trains.

Found by a red team at stop 24 against a probe that ran both of its forwards on deep copies (both
honest, so they agreed). Caught now: the probe's first forward runs on the model itself, the second on
a copy taken before it, and they must agree.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.peek = nn.Linear(hidden_size, hidden_size, bias=False)
        self.calls = 0
        self.home = 0

    def forward(self, x, **kwargs):
        if self.home == 0:
            self.home = id(self)
        self.calls += 1
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        late = 1.0 if (self.calls > 150 and id(self) == self.home) else 0.0
        return self.proj(x.cumsum(dim=1) / steps) + late * self.peek(F.pad(x[:, 1:], (0, 0, 0, 1)))
