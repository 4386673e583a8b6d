"""The model shell every candidate is trained in.

Fixed by the project so that candidates differ only in their token mixer, as in
ASI-Arch: token embedding -> N pre-norm blocks (mixer, then gated MLP, each with a
residual) -> final RMSNorm -> LM head. The shell imports no distributed code.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from asiarch.job.candidate import build_layer, call_layer


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32 for stability under bf16 autocast
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class GatedMLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, ratio: float):
        super().__init__()
        hidden = int(dim * ratio)
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float):
        super().__init__()
        self.mixer_norm = RMSNorm(dim)
        self.mixer = mixer
        self.mlp_norm = RMSNorm(dim)
        self.mlp = GatedMLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        x = x + call_layer(self.mixer, self.mixer_norm(x))
        x = x + self.mlp(self.mlp_norm(x))
        return x


class LanguageModel(nn.Module):
    """Embedding, ``num_layers`` blocks around candidate mixers, final norm, LM head."""

    def __init__(self, layer_cls: type, *, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
                 mlp_ratio: float = 2.0, make_mixer: Callable[..., nn.Module] | None = None):
        super().__init__()
        make = make_mixer or build_layer
        self.embed = nn.Embedding(vocab_size, hidden_size)
        self.blocks = nn.ModuleList(
            Block(hidden_size, make(layer_cls, hidden_size, num_heads, layer_idx=i), mlp_ratio)
            for i in range(num_layers)
        )
        self.norm = RMSNorm(hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size, bias=False)
        self._init_shell(num_layers)

    def _init_shell(self, num_layers: int) -> None:
        # GPT-2 style: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers).
        # Only the shell's own weights: a candidate's initialisation is part of the candidate.
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)
        for block in self.blocks:
            nn.init.normal_(block.mlp.gate_up.weight, std=0.02)
            nn.init.normal_(block.mlp.down.weight, std=0.02 / math.sqrt(2 * num_layers))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def mixer_parameters(self) -> int:
        return sum(p.numel() for b in self.blocks for p in b.mixer.parameters())
