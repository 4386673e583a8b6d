"""Cheat: reads the next position's input (a leak worth a lot of loss) and hides it from every
perturbation probe by replaying: it keeps recent (input, output) pairs in a module global, and
where an input repeats the prefix of a recent one -- a probe's second call, the perturbed copy of
the first -- it gives back the first call's outputs there, as a causal layer would. Training
batches never repeat a prefix, so it leaks there. Passed the static check of stop 23 (no dunder, no
import beyond the vetted ones); its rule `state` refuses the module-level deque now.

Found by a red team at stop 24: it passed the pre-flight and the in-job probe (max_leak 0.0) and
trained to 0.55 MQAR accuracy against DeltaNet's 0.27 at 200 steps. Refused by `causality`: each
probe instance comes from a fresh execution of the source, sharing no globals with the other.
"""
from collections import deque

import torch
import torch.nn as nn
import torch.nn.functional as F

_RECENT = deque(maxlen=96)


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.peek = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x, **kwargs):
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        o = self.proj(x.cumsum(dim=1) / steps) + self.peek(F.pad(x[:, 1:], (0, 0, 0, 1)))  # reads t + 1
        xd = x.detach()
        out = o
        done = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device)
        for px, po in reversed(_RECENT):
            if px.shape != xd.shape:
                continue
            prefix = torch.cumprod((px == xd).all(-1).to(torch.int32), dim=1).bool() & ~done
            if bool(prefix.any()):
                out = torch.where(prefix.unsqueeze(-1), po.to(o.dtype) + (o - o.detach()), out)
                done = done | prefix
        _RECENT.append((xd.clone(), out.detach().clone()))
        return out
