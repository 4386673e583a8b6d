"""Red team (lint): reaches torch._utils._import_dotted_name through a plain alias of torch, and
runs os.getpid.

Got past the deny-list check because the private-name rule only fired on chains that start at an
import name (`torch._utils`), not `t._utils`.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class DeltaNet(nn.Module):
    def __init__(self, hidden_size: int = 64, num_heads: int = 4, layer_idx: int = 0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        t = torch
        self.reached = t._utils._import_dotted_name("os.getpid")()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        return self.proj(x.cumsum(dim=1) / steps)  # causal running mean
