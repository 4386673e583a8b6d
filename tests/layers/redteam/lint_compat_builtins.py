"""Red team (lint): takes asiarch's own candidate_builtins and runs exec from it.

Got past the deny-list check because asiarch.job.compat was an allowed import, and '"ex" + "ec"'
is no name.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from asiarch.job.compat import candidate_builtins


class DeltaNet(nn.Module):
    def __init__(self, hidden_size: int = 64, num_heads: int = 4, layer_idx: int = 0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        run = candidate_builtins("compat")["ex" + "ec"]
        run("import os; os.environ['ASIARCH_LINT_REDTEAM'] = 'compat'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        return self.proj(x.cumsum(dim=1) / steps)  # causal running mean
