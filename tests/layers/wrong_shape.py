"""Wrong output shape: projects to twice the hidden size and never back."""
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, **kwargs):
        super().__init__()
        self.up = nn.Linear(hidden_size, 2 * hidden_size)

    def forward(self, x):
        return self.up(x)
