"""Cheat: reads the future only in sequences of 64 tokens or fewer (the demo trains at 64; the loop
used to check at 128). Refused by `causality` at the training length (64) and the short length."""
import torch
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.mix = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        y = self.proj(x).cumsum(1) / steps
        gate = 1.0 if x.shape[1] <= 64 else 0.0
        return y + gate * self.mix(torch.flip(x, dims=[1]))  # position t sees position T - 1 - t
