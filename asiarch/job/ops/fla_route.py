"""The chunked kernels on flash-linear-attention's Triton kernels, where they can run.

On CUDA with fla installed, :func:`chunk_linear_attn` (and through it ``chunk_ssd``) runs
fla's ``chunk_simple_gla`` and :func:`chunk_delta_rule` runs ``chunk_gated_delta_rule``
(with a zero gate when there is none: fla's plain ``chunk_delta_rule`` refuses fp32). Both
are called in fla's ``[B, T, H, D]`` layout and give the same maths as the plain-PyTorch
forms (same default scale Dk ** -0.5, g a per-step log-decay, beta after its sigmoid).
Off CUDA, without fla, or with ``ASIARCH_NO_FLA=1`` set, the plain-PyTorch kernels run.

``ASIARCH_FLA_ON_CPU=1`` routes CPU tensors too: only for checking this adapter under
Triton's interpreter (``TRITON_INTERPRET=1``), as tests/test_fla_route.py does.
"""

from __future__ import annotations

import functools
import inspect
import os

import torch

__all__ = ["DISABLE_ENV", "fla_kernels", "use_fla", "fla_linear_attn", "fla_delta_rule"]

DISABLE_ENV = "ASIARCH_NO_FLA"
CPU_ENV = "ASIARCH_FLA_ON_CPU"


@functools.lru_cache(maxsize=None)
def fla_kernels():
    """(chunk_simple_gla, chunk_gated_delta_rule) from fla, or None when fla or Triton does not import."""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception:  # ImportError, or Triton failing to find a driver at import
        return None
    return chunk_simple_gla, chunk_gated_delta_rule


def use_fla(x: torch.Tensor) -> bool:
    """Whether the kernels for ``x`` should be fla's."""
    if os.environ.get(DISABLE_ENV):
        return False
    if not (x.is_cuda or os.environ.get(CPU_ENV)):
        return False
    return fla_kernels() is not None


def _call(fn, *args, **kwargs):
    """Call an fla op in the [B, T, H, D] layout: older fla versions (0.2.x) default to head_first=True."""
    if "head_first" in inspect.signature(fn).parameters:
        kwargs["head_first"] = False
    out = fn(*args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _btd(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, ...] <-> [B, T, H, ...]."""
    return x.transpose(1, 2).contiguous()


def fla_linear_attn(q, k, v, g, scale: float) -> torch.Tensor:
    """chunk_linear_attn's maths on fla's chunk_simple_gla; [B, H, T, D] in and out."""
    simple_gla, _ = fla_kernels()
    gate = None if g is None else _btd(g.float())
    o = _call(simple_gla, _btd(q), _btd(k), _btd(v), g=gate, scale=scale)
    return o.transpose(1, 2)


def fla_delta_rule(q, k, v, beta, g, scale: float) -> torch.Tensor:
    """chunk_delta_rule's maths on fla's chunk_gated_delta_rule; [B, H, T, D] in and out."""
    _, gated_delta = fla_kernels()
    B, H, T = q.shape[:3]
    gate = q.new_zeros(B, T, H, dtype=torch.float32) if g is None else _btd(g.float())
    o = _call(gated_delta, _btd(q), _btd(k), _btd(v), gate, _btd(beta.to(q.dtype)), scale=scale)
    return o.transpose(1, 2)
