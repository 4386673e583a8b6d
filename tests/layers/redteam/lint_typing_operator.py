"""Red team (lint): takes operator.attrgetter from typing's namespace and spells the globals dunder
in two halves.

Got past the deny-list check because `from typing import operator` was not checked, and no
string spelled a whole dunder name.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from typing import operator as ops


class DeltaNet(nn.Module):
    def __init__(self, hidden_size: int = 64, num_heads: int = 4, layer_idx: int = 0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        peek = ops.attrgetter("__glo" + "bals__")
        self.reached = peek(F.dropout)["importlib"].import_module("os").getpid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        return self.proj(x.cumsum(dim=1) / steps)  # causal running mean
