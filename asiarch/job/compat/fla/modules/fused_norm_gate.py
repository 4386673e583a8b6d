"""``fla.modules.FusedRMSNormGated``: ``rmsnorm(x) * weight * act(g)``, computed in fp32."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from asiarch.job.compat.fla.modules.layernorm import rms_norm

__all__ = ["FusedRMSNormGated"]

_ACTIVATIONS = ("swish", "silu", "sigmoid")


class FusedRMSNormGated(nn.Module):
    """fla's ``FusedRMSNormGated(hidden_size, elementwise_affine=True, eps=1e-5, activation='swish')``.

    ``norm(x, g)`` = ``x / sqrt(mean(x^2) + eps) * weight * act(g)`` over the last
    dimension, where act is silu (``swish``/``silu``) or ``sigmoid``; computed in fp32 and
    returned in ``x``'s dtype. ``residual``/``prenorm`` as in :class:`RMSNorm`.
    """

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, eps: float = 1e-5,
                 activation: str = "swish", device=None, dtype=None) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"Unsupported activation: {activation}; use one of {', '.join(_ACTIVATIONS)}")
        self.hidden_size = hidden_size
        self.elementwise_affine = elementwise_affine
        self.eps = eps
        self.activation = activation
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.register_parameter("bias", None)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, activation={self.activation}"

    def forward(self, x: torch.Tensor, g: torch.Tensor, residual: torch.Tensor | None = None,
                prenorm: bool = False, residual_in_fp32: bool = False):
        if residual is not None:
            x = (x.float() + residual.float()).to(torch.float32 if residual_in_fp32 else x.dtype)
        gf = g.float()
        gate = torch.sigmoid(gf) if self.activation == "sigmoid" else F.silu(gf)
        y = (rms_norm(x, self.weight, self.bias, self.eps) * gate).to(x.dtype)
        return (y, x) if prenorm else y
