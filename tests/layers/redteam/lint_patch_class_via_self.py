"""Red team (lint): keeps the class nn.Linear on self and replaces its forward for every Linear in
the process.

Got past the deny-list check because classes could be passed around as values and attribute
stores were not checked.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _linear_forward(self, x):
    return F.linear(x, self.weight, self.bias)


class DeltaNet(nn.Module):
    def __init__(self, hidden_size: int = 64, num_heads: int = 4, layer_idx: int = 0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.base = nn.Linear
        self.base.forward = _linear_forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        return self.proj(x.cumsum(dim=1) / steps)  # causal running mean
