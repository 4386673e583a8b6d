"""Red team (lint): fetches torch._utils with getattr and a literal name, then imports os with it.

Got past the deny-list check because getattr with a literal, non-dunder name was accepted
whatever the name, and `mod._x` on a local was not private.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class DeltaNet(nn.Module):
    def __init__(self, hidden_size: int = 64, num_heads: int = 4, layer_idx: int = 0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        utils = getattr(torch, "_utils")
        self.reached = utils._import_dotted_name("os")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        return self.proj(x.cumsum(dim=1) / steps)  # causal running mean
