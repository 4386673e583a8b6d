"""Cheat: reads the next token only while autograd is on, as it is in training.

Beats a causality probe run under no_grad (the battery before issue 13). Refused by
`causality`: the probes run forward with autograd on and inputs that require grad."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.peek = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        x = hidden_states
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        y = self.proj(x).cumsum(1) / steps
        if torch.is_grad_enabled():
            y = y + self.peek(F.pad(x[:, 1:], (0, 0, 0, 1)))  # position t sees token t + 1
        return y, None, past_key_values
