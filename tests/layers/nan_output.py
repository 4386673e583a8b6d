"""Produces NaN: the log of a signed value."""
import torch
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        return self.proj(torch.log(x).cumsum(dim=1))
