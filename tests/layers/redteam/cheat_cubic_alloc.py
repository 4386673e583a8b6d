"""Cheat: linear, except that above 1024 tokens it allocates a (T, T, T) tensor (34 GB at 2048
tokens in fp32). The battery before issue 13 stopped at 1024 tokens. Refused by `complexity` at
2048 tokens: the sandbox's memory limit makes the allocation fail ("out of memory")."""
import torch
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        T = x.shape[1]
        steps = torch.arange(1, T + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        y = self.proj(x).cumsum(1) / steps
        if T > 1024:
            cube = torch.zeros(T, T, T, dtype=x.dtype, device=x.device)
            y = y + cube[0, 0, 0]
        return y
