"""Causal but quadratic: a Python loop over every pair of positions (time ~ seq^2)."""
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        pairs = 0
        for _ in range(8 * x.shape[1] * x.shape[1]):  # enough work that fixed costs vanish at 256 tokens
            pairs += 1
        return self.proj(x) * (pairs > 0)
