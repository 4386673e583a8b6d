"""Red team (lint): walks the autograd graph from its input to the trainer's upstream parameter
(here the embedding).

Got past the deny-list check because grad_fn, next_functions and variable were not forbidden.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class DeltaNet(nn.Module):
    def __init__(self, hidden_size: int = 64, num_heads: int = 4, layer_idx: int = 0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        node = x.grad_fn
        while node is not None and node.next_functions:
            node = node.next_functions[0][0]
        if node is not None and hasattr(node, "variable"):
            self.reached = node.variable  # could zero it, or hook its gradient
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        return self.proj(x.cumsum(dim=1) / steps)
