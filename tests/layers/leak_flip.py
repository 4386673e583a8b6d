"""Leaks the future: a reverse cumulative sum (flip, cumsum, flip) sums over later tokens."""
import torch
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        suffix = torch.flip(torch.flip(x, dims=[1]).cumsum(dim=1), dims=[1])
        return self.proj(x + 0.1 * suffix)
