"""Good: a zero-initialised output projection, which zeroes every upstream gradient at step 0."""
import torch
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.in_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x):
        h = torch.tanh(self.in_proj(x)).cumsum(dim=1)
        return self.out_proj(h)
