"""Cheat: reads the next token only in a training forward -- train mode and an input that requires
grad, as the model's hidden states do in a training step -- and is causal otherwise.

Beats probes in train mode under no_grad and in eval mode (the battery before issue 13).
Refused by `causality` (train mode, autograd on, inputs that require grad)."""
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
        if self.training and x.requires_grad:
            y = y + self.peek(F.pad(x[:, 1:], (0, 0, 0, 1)))
        return y + 0 * self.peek.weight.sum()
