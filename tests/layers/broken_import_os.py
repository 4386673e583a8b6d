import os

import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.home = os.path.expanduser("~")

    def forward(self, x):
        return self.proj(x)
