"""Raises in __init__: head_dim must divide hidden_size, and 7 does not divide 64."""
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, **kwargs):
        super().__init__()
        head_dim = 7
        if hidden_size % head_dim:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of head_dim {head_dim}")
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        return self.proj(x)
