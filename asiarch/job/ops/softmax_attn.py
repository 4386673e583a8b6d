"""Causal softmax attention: the fast path (PyTorch's fused SDPA) and its reference.

q, k: [B, H, T, Dk]; v: [B, H, T, Dv]; scale defaults to Dk ** -0.5.
"""

import torch
import torch.nn.functional as F

from .linear_attn import check_inputs, compute_dtype, resolve_scale

__all__ = ["causal_softmax_attn", "naive_softmax_attn"]


def causal_softmax_attn(q, k, v, *, scale=None):
    """Causal softmax attention via F.scaled_dot_product_attention(is_causal=True).

    Runs in the input dtype: the fused kernels (flash / memory-efficient, CPU and
    CUDA) already accumulate in fp32, and upcasting would lose the fast bf16 paths.
    Returns o: [B, H, T, Dv] in q's dtype.
    """
    check_inputs(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                          scale=resolve_scale(scale, q.shape[-1]))


def naive_softmax_attn(q, k, v, *, scale=None):
    """Reference: softmax(scale * q k^T masked to j <= i) v, computed in fp32."""
    check_inputs(q, k, v)
    out_dtype = q.dtype
    dt = compute_dtype(q)
    T = q.shape[2]
    scores = (q.to(dt) @ k.to(dt).transpose(-1, -2)) * resolve_scale(scale, q.shape[-1])
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))             # (B, H, T, T)
    return (scores.softmax(dim=-1) @ v.to(dt)).to(out_dtype)
