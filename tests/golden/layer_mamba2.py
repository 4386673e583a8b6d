"""mamba2

Mamba2 (Dao & Gu, 2024) as a token mixer: a selective state space whose writes are
scaled by a learned step size per head and token and whose state decays by exp(dt A),
computed in its chunked state-space-duality form, with a D skip path, short convolutions
and a gated RMSNorm output.

Genome: Mamba2 SSD; silu features, unnormalised q/k; data-dependent decay; short conv 4;
RMSNorm + swish gate output; value dim x2.

Rendered by asiarch from ASIARCH_GENOME below; the token mixing runs in asiarch.job.ops.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from asiarch.job.ops import chunk_ssd

# The genes this file was rendered from (read back with asiarch.propose.genome.genome_from_code).
ASIARCH_GENOME = {
    "update": "ssd",
    "feature_map": "silu",
    "qk_norm": "none",
    "decay": "data",
    "beta": "one",
    "short_conv": 4,
    "output_gate": "swish",
    "output_norm": "rms",
    "expand_v": 2,
}


class DeltaNet(nn.Module):
    """Mamba2 SSD; silu features, unnormalised q/k; data-dependent decay; short conv 4;
    RMSNorm + swish gate output; value dim x2.

    Input and output are (B, T, D) with D = hidden_size; num_heads heads of
    Dk = D // num_heads key dims and Dv = 2 * Dk value dims.
    """

    def __init__(self, hidden_size=256, num_heads=4, layer_idx=None, **kwargs):
        super().__init__()
        hidden_size = kwargs.pop("d_model", hidden_size)  # ASI-Arch layers may pass d_model
        assert hidden_size % num_heads == 0, (
            f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})"
        )
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.layer_idx = layer_idx
        self.head_k_dim = hidden_size // num_heads  # Dk
        self.head_v_dim = 2 * self.head_k_dim  # Dv, expanded for a larger state
        self.key_dim = num_heads * self.head_k_dim
        self.value_dim = num_heads * self.head_v_dim

        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        # depthwise causal convolutions over time (padded on the left in forward)
        conv_size = 4
        self.q_conv = nn.Conv1d(self.key_dim, self.key_dim, conv_size, groups=self.key_dim,
                                bias=False)
        self.k_conv = nn.Conv1d(self.key_dim, self.key_dim, conv_size, groups=self.key_dim,
                                bias=False)
        self.v_conv = nn.Conv1d(self.value_dim, self.value_dim, conv_size, groups=self.value_dim,
                                bias=False)
        # Mamba2's step size per head and token dt = softplus(x W_dt + dt_bias) and state matrix
        # A = -exp(A_log) (one scalar per head): the state decays by exp(dt A) per step
        self.a_proj = nn.Linear(hidden_size, num_heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(num_heads).uniform_(1, 16).log())
        # softplus(dt_bias) starts log-uniform in [1e-3, 1e-1], as in Mamba2
        log_dt = torch.rand(num_heads) * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3)
        dt = log_dt.exp().clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        self.D = nn.Parameter(torch.ones(num_heads))  # skip: D_h * x_t added to the readout
        self.A_log._no_weight_decay = True
        self.dt_bias._no_weight_decay = True
        self.D._no_weight_decay = True
        self.o_norm_weight = nn.Parameter(torch.ones(self.head_v_dim))  # per-head RMSNorm (Dv,)
        self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None,
                use_cache=False, output_attentions=False, **kwargs):
        """hidden_states (B, T, D) -> (output (B, T, D), None, past_key_values).

        For training on packed sequences: no recurrent cache is kept (past_key_values
        is passed through unchanged) and a padding mask is refused, not ignored.
        """
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(
                f"{type(self).__name__} does not support padding; pass unpadded sequences"
            )
        B, T, _ = hidden_states.shape
        H, Dk, Dv = self.num_heads, self.head_k_dim, self.head_v_dim

        q = self.q_proj(hidden_states)  # (B, T, H*Dk)
        k = self.k_proj(hidden_states)  # (B, T, H*Dk)
        v = self.v_proj(hidden_states)  # (B, T, H*Dv)
        q = self._short_conv(self.q_conv, q)  # (B, T, H*Dk)
        k = self._short_conv(self.k_conv, k)  # (B, T, H*Dk)
        v = F.silu(self._short_conv(self.v_conv, v))  # (B, T, H*Dv)
        q = q.view(B, T, H, Dk).transpose(1, 2)  # (B, H, T, Dk)
        k = k.view(B, T, H, Dk).transpose(1, 2)  # (B, H, T, Dk)
        v = v.view(B, T, H, Dv).transpose(1, 2)  # (B, H, T, Dv)
        q, k = F.silu(q), F.silu(k)  # feature map
        dt = F.softplus(self.a_proj(hidden_states).float() + self.dt_bias.float())  # (B, T, H), > 0
        dt = dt.transpose(1, 2)  # (B, H, T)
        A = -self.A_log.float().exp()  # (H,), < 0
        # SSD with Mamba2's names: x = v, B = k, C = q, one group per head
        o = chunk_ssd(v, dt, A, k, q, self.D)  # (B, H, T, Dv)
        o = o.transpose(1, 2)  # (B, T, H, Dv)
        o32 = o.float()  # RMSNorm over Dv, in fp32
        o = (o32 * torch.rsqrt(o32.pow(2).mean(dim=-1, keepdim=True) + 1e-5)).to(o.dtype)
        o = o * self.o_norm_weight  # (B, T, H, Dv)
        o = o * F.silu(self.g_proj(hidden_states).view(B, T, H, Dv))  # (B, T, H, Dv)
        o = self.o_proj(o.reshape(B, T, H * Dv))  # (B, T, D)
        return o, None, past_key_values

    @staticmethod
    def _short_conv(conv, x):
        """Causal depthwise convolution over time: (B, T, C) -> (B, T, C), left padding only."""
        x = F.pad(x.transpose(1, 2), (conv.kernel_size[0] - 1, 0))  # (B, C, K-1+T)
        return conv(x).transpose(1, 2)  # (B, T, C)
