"""``fla.modules.ShortConvolution``: a causal depthwise convolution over [B, T, D].

A state (``cache``) is [N, D, W]: the last W inputs of each sequence, oldest first,
zero-padded in front when fewer have been seen; a convolution that continues from it
uses its newest W - 1 columns as history. This is fla 0.2.x's layout, so the states a
layer keeps in its ``Cache`` mean the same with either implementation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ShortConvolution", "causal_conv1d"]

_ACTIVATIONS = ("silu", "swish")


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
          state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of equal-length sequences. x (N, T, D) fp32, weight (D, W) -> y (N, T, D), state (N, D, W)."""
    n, _, d = x.shape
    w = weight.shape[-1]
    xt = x.transpose(1, 2)  # (N, D, T)
    history = state[..., 1:].to(xt.dtype) if state is not None else xt.new_zeros(n, d, w - 1)
    padded = torch.cat([history, xt], dim=-1)  # (N, D, W - 1 + T): the output at t sees inputs t-W+1 .. t
    y = F.conv1d(padded, weight.unsqueeze(1), bias, groups=d)  # (N, D, T)
    return y.transpose(1, 2), padded[..., -w:]


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  residual: torch.Tensor | None = None, initial_state: torch.Tensor | None = None,
                  output_final_state: bool = False, activation: str | None = None,
                  cu_seqlens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``y[t] = act(sum_j weight[:, j] * x[t - W + 1 + j] + bias) + residual[t]``, per channel.

    x [B, T, D] (B = 1 with ``cu_seqlens``: packed sequences that never see each other),
    weight [D, W], initial_state [N, D, W]. Computed in fp32 (autocast off, as fla's
    kernel accumulates), returned in ``x``'s dtype with the final state [N, D, W] (or None).
    """
    dtype = x.dtype
    with torch.autocast(x.device.type, enabled=False):
        xf, wf = x.float(), weight.float()
        bf = bias.float() if bias is not None else None
        if cu_seqlens is None:
            y, final = _conv(xf, wf, bf, initial_state)
        else:
            bounds = [int(b) for b in cu_seqlens.tolist()]
            parts, finals = [], []
            for i, (bos, eos) in enumerate(zip(bounds[:-1], bounds[1:])):
                state = initial_state[i:i + 1] if initial_state is not None else None
                y_i, final_i = _conv(xf[:, bos:eos], wf, bf, state)
                parts.append(y_i)
                finals.append(final_i)
            y, final = torch.cat(parts, dim=1), torch.cat(finals, dim=0)
        if activation in _ACTIVATIONS:
            y = F.silu(y)
        if residual is not None:
            y = y + residual.float()
    return y.to(dtype), (final.to(dtype) if output_final_state else None)


class ShortConvolution(nn.Conv1d):
    """fla's ``ShortConvolution(hidden_size, kernel_size, bias=False, activation='silu')``.

    Parameters as ``nn.Conv1d(hidden_size, hidden_size, kernel_size, groups=hidden_size)``
    (weight [D, 1, W]), so checkpoints load into either implementation.
    ``forward(x, residual=None, mask=None, cache=None, output_final_state=False,
    cu_seqlens=None)`` takes x [B, T, D] and returns ``(y, cache)``: y [B, T, D] and the
    final state [N, D, W] when asked for (or when decoding one token with a cache, which
    is then updated in place, as fla does), else None. ``mask`` [B, T] zeroes padded
    positions first.
    """

    def __init__(self, hidden_size: int, kernel_size: int, bias: bool = False, activation: str | None = "silu",
                 backend: str | None = None, device=None, dtype=None, **kwargs) -> None:
        super().__init__(hidden_size, hidden_size, kernel_size, groups=hidden_size, padding=kernel_size - 1,
                         bias=bias, device=device, dtype=dtype)
        if activation is not None and activation not in _ACTIVATIONS:
            raise ValueError(f"Activation `{activation}` not supported yet; use 'silu', 'swish' or None.")
        self.hidden_size = hidden_size
        self.activation = activation
        self.backend = "torch"  # fla: 'triton' or 'cuda'; accepted and ignored here

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                cache: torch.Tensor | None = None, output_final_state: bool = False,
                cu_seqlens: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t = x.shape[:2]
        n = b if cu_seqlens is None else len(cu_seqlens) - 1
        if mask is not None:
            if cu_seqlens is not None:
                raise ValueError("`mask` and `cu_seqlens` cannot be provided at the same time")
            x = x * mask.unsqueeze(-1).to(x.dtype)
        decoding = cache is not None and b * t == n  # one new token per sequence
        y, final = causal_conv1d(x, self.weight.squeeze(1), self.bias, residual, cache,
                                 output_final_state or decoding, self.activation, cu_seqlens)
        if decoding:
            with torch.no_grad():
                cache.copy_(final)
            final = cache
        return y, final

    @property
    def state_size(self) -> int:
        return self.hidden_size * self.kernel_size[0]
