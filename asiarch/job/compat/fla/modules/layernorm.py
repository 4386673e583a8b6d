"""``fla.modules.RMSNorm``: RMS normalisation computed in fp32, returned in the input's dtype."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RMSNorm", "rms_norm"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight + bias`` over the last dimension, in fp32."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    if bias is not None:
        y = y + bias.float()
    return y


class RMSNorm(nn.Module):
    """fla's ``RMSNorm(hidden_size, elementwise_affine=True, bias=False, eps=1e-5)``.

    ``forward(x, residual=None, prenorm=False, residual_in_fp32=False)``: with a
    residual, normalises ``x + residual`` and, with ``prenorm``, also returns that sum.
    """

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, bias: bool = False, eps: float = 1e-5,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.elementwise_affine = elementwise_affine
        self.eps = eps
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(hidden_size, device=device, dtype=dtype)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}" + ("" if self.elementwise_affine else ", elementwise_affine=False")

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, prenorm: bool = False,
                residual_in_fp32: bool = False):
        if residual is not None:
            x = (x.float() + residual.float()).to(torch.float32 if residual_in_fp32 else x.dtype)
        y = rms_norm(x, self.weight, self.bias, self.eps).to(x.dtype)
        return (y, x) if prenorm else y
