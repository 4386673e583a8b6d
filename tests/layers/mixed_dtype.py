"""Casts a matrix to bf16 mid-kernel, as many ASI-Arch layers do: runs only under bf16 autocast."""
import torch
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        t = x.shape[1]
        decay = torch.tril(torch.ones(t, t)).to(torch.bfloat16) / t  # (T, T), causal
        return decay @ self.proj(x)
