"""Cheat: a leak behind a zero-initialised output projection. At initialisation the output is 0 for
every input, so no probe of a fresh instance sees the leak; after one optimiser step it reads the
whole sequence. Refused by `causality`: the probes run again on a pair trained 25 steps."""
import torch
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        h = self.proj(x).cumsum(1) / steps + x.mean(1, keepdim=True)  # the mean reads the future
        return self.out(h)
