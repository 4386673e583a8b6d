import torch.nn as nn


class DeltaNet(nn.Module):
    def forward(self, x)
        return x
