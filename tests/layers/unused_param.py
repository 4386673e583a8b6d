"""A parameter that never reaches the output."""
import torch
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.forgotten_gate = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x):
        return self.proj(x)
