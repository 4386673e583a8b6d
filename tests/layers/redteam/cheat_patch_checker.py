"""Cheat: reads the next token, and when its module executes reassigns torch.Tensor.amax -- which
the battery before issue 13 compared outputs with -- to return zeros, so every difference it
measured was 0. Refused by `causality`: the comparisons use functions captured before the layer
loads (asiarch.job.trusted). Run it only in a child process: the patch is process-wide."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.Tensor.amax = lambda self, *args, **kwargs: torch.zeros(
    [n for i, n in enumerate(self.shape) if i not in {d % self.dim() for d in (args[0] if args else (0, 1, 2))}])


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.peek = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        y = self.proj(x).cumsum(1) / steps
        return y + self.peek(F.pad(x[:, 1:], (0, 0, 0, 1)))
