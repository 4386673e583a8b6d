"""Cheat: causal softmax attention (quadratic) that, under no_grad and below 1024 tokens, also runs
attention over 1024 dummy tokens: a no_grad timing at 256 and 1024 tokens (the battery before
issue 13) sees the same cost at both and calls it sub-linear. Training runs with autograd on and
pays no padding. Refused by `complexity`: timed with autograd (forward + backward)."""
import math

import torch
import torch.nn as nn


def _attention(q, k, v):
    T = q.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(mask, float("-inf")).softmax(-1) @ v


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        o = _attention(q, k, v)
        if not torch.is_grad_enabled() and T < 1024:
            dummy = torch.zeros(B, self.heads, 1024, D // self.heads, dtype=x.dtype, device=x.device)
            _attention(dummy, dummy, dummy)  # busy work, discarded
        return self.out(o.transpose(1, 2).reshape(B, T, D))
