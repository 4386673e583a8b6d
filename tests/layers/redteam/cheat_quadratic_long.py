"""Cheat: linear up to 1024 tokens, full softmax attention above (the battery before issue 13 timed
256 and 1024 tokens). Refused by `complexity`: timed up to 2048 tokens, forward + backward."""
import math

import torch
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if T <= 1024:  # linear: causal running mean of the values
            steps = torch.arange(1, T + 1, dtype=x.dtype, device=x.device).view(1, 1, T, 1)
            o = v.cumsum(2) / steps
        else:  # quadratic: causal softmax attention, (B, H, T, T) scores
            scores = q @ k.transpose(-1, -2) / math.sqrt(D // self.heads)
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            o = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        return self.out(o.transpose(1, 2).reshape(B, T, D))
