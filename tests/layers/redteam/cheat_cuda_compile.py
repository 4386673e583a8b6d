"""Cheat: reads the next token only on CUDA or while torch.compile traces it -- never in a CPU
pre-flight, where compiling is off.

Passes every pre-flight; it cannot be run on this project's CPU test machines. The in-job probe
(`asiarch.job.probe`) runs the model as trained -- on the GPU, with the layer's compiled kernels --
and would end such an attempt as `leak`."""
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
        gate = 1.0 if x.is_cuda or torch.compiler.is_compiling() else 0.0
        return y + gate * self.peek(F.pad(x[:, 1:], (0, 0, 0, 1)))
