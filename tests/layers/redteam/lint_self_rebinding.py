"""Red team (lint): calls a parameter `self` that is really the torch module, to reach torch.os.

Got past the deny-list check because any attribute on a name spelled `self` was exempt from the
module-name rule.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _host_path(self=torch):
    return self.os.environ.get("PATH")


class DeltaNet(nn.Module):
    def __init__(self, hidden_size: int = 64, num_heads: int = 4, layer_idx: int = 0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.reached = _host_path()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        return self.proj(x.cumsum(dim=1) / steps)  # causal running mean
