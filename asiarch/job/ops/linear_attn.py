"""Linear attention with an optional scalar log-decay per step and head.

Per batch and head, with a state S of shape [Dk, Dv]:

    S_t = exp(g_t) * S_{t-1} + k_t v_t^T
    o_t = scale * q_t^T S_t

g = None is plain causal linear attention; a constant g is RetNet's fixed decay; a
data-dependent g is GLA-style scalar gating (one gate per head, not per key channel).

`recurrent_linear_attn` is the readable reference (a loop over time steps);
`chunk_linear_attn` is the fast form (parallel within a chunk, recurrent across
chunks), tied to it forward and backward by tests/test_ops.py.

Both compute in fp32 (or the input dtype if wider) and return the input dtype.
The small helpers at the top (shape checks, padding into chunks) are shared with
delta_rule.py.
"""

import math

import torch

from .fla_route import fla_linear_attn, use_fla

__all__ = ["chunk_linear_attn", "recurrent_linear_attn"]


# ----------------------------------------------------------------------------------
# helpers shared by the chunked kernels


def check_inputs(q, k, v, g=None, beta=None):
    """Raise ValueError naming the offending shape unless q, k: [B, H, T, Dk],
    v: [B, H, T, Dv], g and beta: [B, H, T]."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(
            f"q and k must both be [B, H, T, Dk]; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"v must be [B, H, T, Dv] matching q {tuple(q.shape)} in B, H, T; got {tuple(v.shape)}")
    for name, x in (("g", g), ("beta", beta)):
        if x is not None and x.shape != q.shape[:3]:
            raise ValueError(
                f"{name} must be [B, H, T] = {tuple(q.shape[:3])}; got {tuple(x.shape)}")


def resolve_scale(scale, dk):
    """The default query scale is Dk ** -0.5, as in softmax attention."""
    return dk ** -0.5 if scale is None else scale


def compute_dtype(x):
    """fp32 for half types (bf16/fp16), else the input dtype (so fp64 stays fp64)."""
    return torch.promote_types(x.dtype, torch.float32)


def to_chunks(x, chunk_size):
    """[B, H, T, *rest] -> [B, H, N, C, *rest], zero-padding T up to N * C.

    Zero padding is inert at the end of a causal sequence: padded keys, values and
    betas are 0 and padded log-decays are 0, and padded outputs are sliced off.
    """
    T = x.shape[2]
    n = math.ceil(T / chunk_size)
    pad = n * chunk_size - T
    if pad:
        x = torch.cat([x, x.new_zeros(x.shape[:2] + (pad,) + x.shape[3:])], dim=2)
    return x.reshape(x.shape[:2] + (n, chunk_size) + x.shape[3:])


def from_chunks(x, T):
    """[B, H, N, C, D] -> [B, H, T, D], dropping the padding."""
    return x.reshape(x.shape[:2] + (-1,) + x.shape[4:])[:, :, :T]


def effective_chunk_size(chunk_size, T):
    """Never pad a short sequence up to a full chunk: use min(chunk_size, T)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    return max(1, min(chunk_size, T))


def segment_decay(G):
    """exp(G_i - G_j) for j <= i, 0 above the diagonal; G: [..., C] -> [..., C, C].

    The difference is masked to -inf *before* exponentiating, so no exp of a large
    positive number (G_i - G_j > 0 for j > i) is ever formed, forward or backward.
    """
    C = G.shape[-1]
    causal = torch.ones(C, C, dtype=torch.bool, device=G.device).tril()
    diff = G[..., :, None] - G[..., None, :]
    return diff.masked_fill(~causal, float("-inf")).exp()


# ----------------------------------------------------------------------------------
# linear attention


def recurrent_linear_attn(q, k, v, g=None, *, scale=None):
    """Reference: S_t = exp(g_t) S_{t-1} + k_t v_t^T; o_t = scale * q_t^T S_t.

    q, k: [B, H, T, Dk]; v: [B, H, T, Dv]; g: [B, H, T] log-decay (<= 0) or None.
    Returns o: [B, H, T, Dv] in q's dtype. One Python step per time step: slow, clear.
    """
    check_inputs(q, k, v, g)
    out_dtype = q.dtype
    B, H, T, Dk = q.shape
    dt = compute_dtype(q)
    scale = resolve_scale(scale, Dk)
    q, k, v = q.to(dt) * scale, k.to(dt), v.to(dt)
    S = q.new_zeros(B, H, Dk, v.shape[-1])
    gs = [None] * T if g is None else g.to(dt).exp().unbind(dim=2)
    outs = []
    # unbind once: indexing x[:, :, t] per step would make backward O(T^2)
    for q_t, k_t, v_t, a_t in zip(q.unbind(2), k.unbind(2), v.unbind(2), gs):
        if a_t is not None:
            S = S * a_t[..., None, None]
        S = S + k_t[..., None] * v_t[..., None, :]                  # (B, H, Dk, Dv)
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t, S))
    return torch.stack(outs, dim=2).to(out_dtype)


def chunk_linear_attn(q, k, v, g=None, *, scale=None, chunk_size=64):
    """Chunked linear attention, same maths as `recurrent_linear_attn`.

    Within a chunk of C steps (G = cumulative log-decay inside the chunk):
        o_i = q_i^T (exp(G_i) S_prev) + sum_{j <= i} exp(G_i - G_j) (q_i . k_j) v_j
    and the state carried to the next chunk is
        S_next = exp(G_C) S_prev + sum_j exp(G_C - G_j) k_j v_j^T.
    Every exponent is <= 0 when g <= 0. Without g the carried states are a plain
    exclusive cumulative sum over chunks (no loop at all).

    q, k: [B, H, T, Dk]; v: [B, H, T, Dv]; g: [B, H, T] or None. T need not be a
    multiple of chunk_size. Returns o: [B, H, T, Dv] in q's dtype.
    """
    check_inputs(q, k, v, g)
    if use_fla(q):  # CUDA with flash-linear-attention: its Triton kernel (asiarch.job.ops.fla_route)
        return fla_linear_attn(q, k, v, g, resolve_scale(scale, q.shape[-1]))
    out_dtype = q.dtype
    B, H, T, Dk = q.shape
    dt = compute_dtype(q)
    C = effective_chunk_size(chunk_size, T)
    scale = resolve_scale(scale, Dk)

    q = to_chunks(q.to(dt) * scale, C)                               # (B, H, N, C, Dk)
    k = to_chunks(k.to(dt), C)                                       # (B, H, N, C, Dk)
    v = to_chunks(v.to(dt), C)                                       # (B, H, N, C, Dv)
    A = q @ k.transpose(-1, -2)                                      # (B, H, N, C, C)

    if g is None:
        causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        A = A.masked_fill(~causal, 0.0)
        kv = k.transpose(-1, -2) @ v                                 # (B, H, N, Dk, Dv)
        # state before chunk n = sum of kv over chunks < n (exclusive cumsum)
        S_prev = torch.cat([kv.new_zeros(B, H, 1, Dk, v.shape[-1]),
                            kv[:, :, :-1].cumsum(dim=2)], dim=2)
        o = A @ v + q @ S_prev
    else:
        G = to_chunks(g.to(dt), C).cumsum(dim=-1)                    # (B, H, N, C)
        A = A * segment_decay(G)
        G_end = G[..., -1:]                                          # (B, H, N, 1)
        k_to_end = k * (G_end - G).exp()[..., None]                  # decay k_j to chunk end
        kv = k_to_end.transpose(-1, -2) @ v                          # (B, H, N, Dk, Dv)
        chunk_decay = G_end[..., 0].exp()                            # (B, H, N)
        S = kv.new_zeros(B, H, Dk, v.shape[-1])
        states = []
        # unbind once: kv[:, :, n] per chunk would make backward O(N^2)
        for kv_n, decay_n in zip(kv.unbind(dim=2), chunk_decay.unbind(dim=2)):
            states.append(S)
            S = S * decay_n[..., None, None] + kv_n
        S_prev = torch.stack(states, dim=2)                          # (B, H, N, Dk, Dv)
        o = A @ v + (q * G.exp()[..., None]) @ S_prev
    return from_chunks(o, T).to(out_dtype)
