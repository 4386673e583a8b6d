"""Cheat: causal for its first 12 training-mode calls, then reads the next token.

The battery before issue 13 called each copy of the layer a handful of times. Refused by
`causality`: the probes run again on a pair trained for 25 steps."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.peek = nn.Linear(hidden_size, hidden_size)
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        y = self.proj(x).cumsum(1) / steps
        gate = 1.0 if self.calls > 12 else 0.0
        return y + gate * self.peek(F.pad(x[:, 1:], (0, 0, 0, 1)))
