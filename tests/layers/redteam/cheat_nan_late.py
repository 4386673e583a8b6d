"""Cheat: finite for 20 training steps, then NaN (the battery before issue 13 ran one step).
Refused by `finite_step`: 25 AdamW steps."""
import torch
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        y = self.proj(x).cumsum(1) / steps
        return y * float("nan") if self.calls > 20 else y
