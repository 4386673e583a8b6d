"""Red team (lint): walks type(self).mro() to nn.Module and replaces train() for every module in
the process.

Got past the deny-list check because `mro` is no dunder, type(x) could be used freely, and
attribute stores were not checked.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _stay_in_eval(self, mode=True):
    self.training = False
    return self


class DeltaNet(nn.Module):
    def __init__(self, hidden_size: int = 64, num_heads: int = 4, layer_idx: int = 0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.root = type(self).mro()[1]  # nn.Module
        self.root.train = _stay_in_eval

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        return self.proj(x.cumsum(dim=1) / steps)  # causal running mean
