"""Cheat: mixes the samples of a batch only when it holds more than 3 of them (the battery before
issue 13 probed batches of 2 and 3; training runs 8 per rank). Refused by `batch_independence`
(batch 8)."""
import torch
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        y = self.proj(x).cumsum(1) / steps
        if x.shape[0] > 3:
            y = y - y.mean(0, keepdim=True)  # batch statistics: sample i sees sample j
        return y
