"""Cheat: its copies are honest. `copy.deepcopy(layer)` returns a causal twin, the layer itself reads
the next token. The battery before issue 13 probed deep copies. Refused by `causality`: the probes
build fresh instances with the constructor; and since stop 24 first by `interface`, which copies the
layer as the job's leak probe does and finds the copy unfaithful. (The static check also refuses the
dunder definition; the probes must not rely on that.)"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.hidden_size = hidden_size
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.peek = nn.Linear(hidden_size, hidden_size)
        self.honest = False

    def __deepcopy__(self, memo):
        twin = type(self)(self.hidden_size)
        twin.load_state_dict(self.state_dict())
        twin.train(self.training)
        twin.honest = True
        return twin

    def forward(self, x):
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        y = self.proj(x).cumsum(1) / steps
        gate = 0.0 if self.honest else 1.0
        return y + gate * self.peek(F.pad(x[:, 1:], (0, 0, 0, 1)))
