"""Mixes samples: normalises with statistics over the batch dimension."""
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        return self.proj(x - x.mean(dim=0, keepdim=True))
