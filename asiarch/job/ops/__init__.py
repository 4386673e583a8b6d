"""Token-mixing kernels in plain PyTorch: each fast chunked form beside the naive
recurrent reference that tests/test_ops.py ties it to, forward and backward."""

from .delta_rule import chunk_delta_rule, recurrent_delta_rule
from .linear_attn import chunk_linear_attn, recurrent_linear_attn
from .softmax_attn import causal_softmax_attn, naive_softmax_attn
from .ssd import chunk_ssd, recurrent_ssd

__all__ = [
    "chunk_linear_attn", "recurrent_linear_attn",
    "chunk_delta_rule", "recurrent_delta_rule",
    "chunk_ssd", "recurrent_ssd",
    "causal_softmax_attn", "naive_softmax_attn",
]
