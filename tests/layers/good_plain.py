"""Good: a plain forward(x) -> y causal mixer (causal depthwise conv, running mean, gate)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class DeltaNet(nn.Module):
    def __init__(self, hidden_size: int = 64, num_heads: int = 4, layer_idx: int = 0):
        super().__init__()
        self.kernel_size = 4
        self.conv = nn.Conv1d(hidden_size, hidden_size, self.kernel_size, groups=hidden_size)
        self.gate = nn.Linear(hidden_size, hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        print("hello from", type(self).__name__)  # stdout must not corrupt the JSON report

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))  # left pad only: causal
        h = self.conv(h).transpose(1, 2)  # (B, T, D)
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
        running = h.cumsum(dim=1) / steps  # causal running mean
        return self.proj(running * torch.sigmoid(self.gate(x)))
