"""``fla.layers.utils``: remove and restore padding, as flash-attn's ``bert_padding`` helpers.

A batch [B, T, ...] with an ``attention_mask`` [B, T] (1 = token, 0 = padding) becomes
one packed sequence of the real tokens, [nnz, ...], plus ``cu_seqlens`` [B + 1] (the
cumulative lengths that kernels use to keep sequences apart); ``pad_input`` undoes it.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["get_unpad_data", "index_first_axis", "pad_input", "index_put_first_axis"]


def get_unpad_data(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(indices, cu_seqlens, max_seqlen)`` of the tokens where ``attention_mask`` [B, T] is nonzero.

    indices: positions in the flattened [B * T] batch; cu_seqlens: int32 [B + 1].
    """
    lens = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()
    cu_seqlens = F.pad(torch.cumsum(lens, dim=0, dtype=torch.int32), (1, 0))
    return indices, cu_seqlens, int(lens.max().item())


def index_first_axis(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``x[indices]`` along the first axis: [B * T, ...] -> [nnz, ...]."""
    return x.index_select(0, indices)


def index_put_first_axis(values: torch.Tensor, indices: torch.Tensor, first_axis_dim: int) -> torch.Tensor:
    """Zeros [first_axis_dim, ...] with ``values`` [nnz, ...] written at ``indices``."""
    out = values.new_zeros((first_axis_dim, *values.shape[1:]))
    return out.index_copy(0, indices, values)


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch_size: int, seq_len: int) -> torch.Tensor:
    """Inverse of unpadding: [nnz, ...] -> [batch_size, seq_len, ...], zeros at padded positions."""
    out = index_put_first_axis(hidden_states, indices, batch_size * seq_len)
    return out.view(batch_size, seq_len, *hidden_states.shape[1:])
