"""``fla.modules.l2norm``: L2 normalisation over the last dimension."""

from __future__ import annotations

import torch

__all__ = ["l2norm", "l2_norm"]


def l2norm(x: torch.Tensor, eps: float = 1e-6, output_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + eps)`` over the last dimension, in fp32; returns ``x``'s dtype
    (or ``output_dtype``), as fla's kernel does."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)
    return y.to(output_dtype or x.dtype)


l2_norm = l2norm
