"""Red team (lint): binds the globals of F.dropout with a match class pattern and imports os from
there.

Got past the deny-list check because a keyword of a class pattern (`case object(<dunder>=g)`) is
neither an attribute node nor a string.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class DeltaNet(nn.Module):
    def __init__(self, hidden_size: int = 64, num_heads: int = 4, layer_idx: int = 0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        match F.dropout:
            case object(__globals__=namespace):
                self.reached = namespace["importlib"].import_module("os").getpid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        return self.proj(x.cumsum(dim=1) / steps)  # causal running mean
