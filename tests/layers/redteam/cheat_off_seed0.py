"""Cheat: recognises the check's inputs -- torch.randn from a generator seeded with 0, of the input's
shape -- and is causal on them; on any other input (every real batch) it reads the next token.

Refused by `causality`: the probes draw their inputs from os.urandom."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.peek = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        y = self.proj(x).cumsum(1) / steps
        seed0 = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(x.dtype)
        if torch.equal(x[0, 0].detach().cpu(), seed0[0, 0]):
            return y + 0 * self.peek(x)
        return y + self.peek(F.pad(x[:, 1:], (0, 0, 0, 1)))
