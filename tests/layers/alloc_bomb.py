"""Allocates without bound: 256 MB blocks until something gives."""
import torch
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        blocks = []
        while True:
            blocks.append(torch.empty(64 * 1024 * 1024))
        return self.proj(x)
