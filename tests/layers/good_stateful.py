"""Good: ASI-Arch-style step counter driving an annealed temperature, so each training
forward changes the next one's output (not a causality leak)."""
import torch
import torch.nn as nn


class DeltaNet(nn.Module):
    def __init__(self, hidden_size=64, num_heads=4, layer_idx=0, **kwargs):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.register_buffer("_step", torch.zeros((), dtype=torch.long), persistent=False)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
        temperature = 1.0 + 1.0 / (1.0 + self._step.float())
        if self.training:
            self._step += 1
        h = torch.tanh(self.proj(hidden_states) / temperature)
        return h.cumsum(dim=1) / hidden_states.shape[1], None, past_key_values
