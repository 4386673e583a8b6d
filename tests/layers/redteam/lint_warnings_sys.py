"""Red team (lint): takes sys from the warnings module and reads /proc/self/status through
linecache.

Got past the deny-list check because warnings was an allowed import, and `from warnings import
sys as registry` was not checked.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from warnings import sys as registry


class DeltaNet(nn.Module):
    def __init__(self, hidden_size: int = 64, num_heads: int = 4, layer_idx: int = 0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.reached = registry.modules["linecache"].getlines("/proc/self/status")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        return self.proj(x.cumsum(dim=1) / steps)  # causal running mean
