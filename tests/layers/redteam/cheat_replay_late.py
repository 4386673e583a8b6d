"""Cheat: honest for its first 150 calls (longer than any pre-flight keeps an instance), then reads the
next position's input and replays, from a deque on the instance, the outputs of a recent call for an
input that repeats its prefix: the in-job probe's second forward, the perturbed copy of the first.

Passed the in-job probe of stop 23, which ran both forwards through the one model and restored only
plain attributes one level deep (a deque is neither). Caught now: each forward of the probe runs on
its own deep copy of the model, taken before either.
"""
from collections import deque

import torch
import torch.nn as nn
import torch.nn.functional as F


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.peek = nn.Linear(hidden_size, hidden_size, bias=False)
        self.calls = 0
        self.recent = deque(maxlen=8)

    def forward(self, x, **kwargs):
        self.calls += 1
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        o = self.proj(x.cumsum(dim=1) / steps)
        peek = self.peek(F.pad(x[:, 1:], (0, 0, 0, 1)))  # reads t + 1
        if self.calls <= 150:
            return o + 0.0 * peek  # (its weight gets a gradient, as the pre-flight wants)
        o = o + peek
        xd = x.detach()
        out = o
        for px, po in reversed(self.recent):
            if px.shape == xd.shape:
                prefix = torch.cumprod((px == xd).all(-1).to(torch.int32), dim=1).bool()
                out = torch.where(prefix.unsqueeze(-1), po.to(o.dtype) + (o - o.detach()), out)
        self.recent.append((xd.clone(), out.detach().clone()))
        return out
