"""Good: an ASI-Arch-style layer: keyword constructor, tuple output, @torch.compile kernel,
dropout, and a cumulative-sum (causal) linear attention."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


@torch.compile
def _causal_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # q, k, v: (B, H, T, d); prefix sums of k v^T give a causal linear attention
    kv = torch.einsum("bhtd,bhte->bhtde", k, v).cumsum(dim=2)
    num = torch.einsum("bhtd,bhtde->bhte", q, kv)
    den = torch.einsum("bhtd,bhtd->bht", q, k.cumsum(dim=2)).unsqueeze(-1)
    return num / (den + 1e-6)


class DeltaNet(nn.Module):
    def __init__(self, mode: str = "chunk", d_model: int | None = None, hidden_size: int = 1024,
                 num_heads: int = 4, layer_idx: int | None = None, dropout: float = 0.1, **kwargs):
        super().__init__()
        if d_model is not None:
            hidden_size = d_model
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.layer_idx = layer_idx
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(self.head_dim))
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.o_proj.weight, std=1.0 / math.sqrt(hidden_size))

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                past_key_values=None, use_cache: bool = False, output_attentions: bool = False,
                **kwargs) -> Tuple[torch.Tensor, None, object]:
        b, t, _ = hidden_states.shape
        q, k, v = self.qkv(hidden_states).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, self.num_heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        q, k = F.elu(q) + 1, F.elu(k) + 1
        o = _causal_linear_attention(q, k, v)  # (B, H, T, d)
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * self.norm_weight
        o = o.transpose(1, 2).reshape(b, t, self.hidden_size)
        return self.dropout(self.o_proj(o)), None, past_key_values
