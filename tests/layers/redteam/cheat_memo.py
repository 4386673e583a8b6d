"""Cheat: causal softmax attention (quadratic), with outputs memoised by input shape from 256 tokens
on -- the lengths a complexity check times, never the training length -- so repeated timing calls
return at once and the cost looks flat. Refused by `complexity`: a fresh input for every timed
call, whose output must follow it."""
import math

import torch
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.cache = {}

    def forward(self, x):
        B, T, D = x.shape
        key = (B, T, D)
        if T >= 256 and key in self.cache:
            return self.cache[key]
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(D // self.heads)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        o = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        y = self.out(o.transpose(1, 2).reshape(B, T, D))
        if T >= 256:
            self.cache[key] = y.detach()
        return y
