"""Delta rule (DeltaNet) and gated delta rule (Gated DeltaNet, Yang et al. 2024).

Per batch and head, with a state S of shape [Dk, Dv] and a_t = exp(g_t) (a_t = 1
when g is None):

    S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T
    o_t = scale * q_t^T S_t

`recurrent_delta_rule` is the readable reference (a loop over time steps);
`chunk_delta_rule` is the fast form, the WY / UT-transform algorithm of
flash-linear-attention's chunk_(gated_)delta_rule naive references, tied to it
forward and backward by tests/test_ops.py.

Keys are expected to be L2-normalised by callers (otherwise the recurrence can blow
up), but neither form assumes it. Both compute in fp32 (or the input dtype if
wider) and return the input dtype.
"""

import torch

from .fla_route import fla_delta_rule, use_fla
from .linear_attn import (check_inputs, compute_dtype, effective_chunk_size,
                          from_chunks, resolve_scale, segment_decay, to_chunks)

__all__ = ["chunk_delta_rule", "recurrent_delta_rule"]


def recurrent_delta_rule(q, k, v, beta, g=None, *, scale=None):
    """Reference: S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T, a_t = exp(g_t);
    o_t = scale * q_t^T S_t.

    q, k: [B, H, T, Dk]; v: [B, H, T, Dv]; beta: [B, H, T] in (0, 1); g: [B, H, T]
    log-decay (<= 0) or None. Returns o: [B, H, T, Dv] in q's dtype.
    """
    check_inputs(q, k, v, g, beta)
    out_dtype = q.dtype
    B, H, T, Dk = q.shape
    dt = compute_dtype(q)
    scale = resolve_scale(scale, Dk)
    q, k, v, beta = q.to(dt) * scale, k.to(dt), v.to(dt), beta.to(dt)
    S = q.new_zeros(B, H, Dk, v.shape[-1])
    gs = [None] * T if g is None else g.to(dt).exp().unbind(dim=2)
    outs = []
    # unbind once: indexing x[:, :, t] per step would make backward O(T^2)
    for q_t, k_t, v_t, b_t, a_t in zip(q.unbind(2), k.unbind(2), v.unbind(2),
                                       beta.unbind(2), gs):
        if a_t is not None:
            S = S * a_t[..., None, None]
        err = v_t - torch.einsum("bhkv,bhk->bhv", S, k_t)           # (B, H, Dv)
        S = S + b_t[..., None, None] * k_t[..., None] * err[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t, S))
    return torch.stack(outs, dim=2).to(out_dtype)


def chunk_delta_rule(q, k, v, beta, g=None, *, scale=None, chunk_size=64):
    """Chunked (gated) delta rule, same maths as `recurrent_delta_rule`.

    Within a chunk of C steps, G = cumulative log-decay inside the chunk and
    Gamma_ij = exp(G_i - G_j) for j <= i (all ones without g). The C rank-one updates
    collapse into one (WY / UT transform): with the unit lower-triangular
        A = I + strict_tril(diag(beta) K K^T * Gamma)                       (C x C)
    solve
        U = A^-1 diag(beta) V,     W = A^-1 diag(beta exp(G)) K
    and then, from the state S_prev carried into the chunk,
        V_new = U - W S_prev                           (what the chunk really writes)
        O     = (Q exp(G)) S_prev + (tril(Q K^T) * Gamma) V_new
        S     = exp(G_C) S_prev + (K exp(G_C - G))^T V_new.
    Everything but the last three lines is batched over all chunks; only those run
    in a loop over chunks (two small matmuls per chunk, see below).

    q, k: [B, H, T, Dk]; v: [B, H, T, Dv]; beta: [B, H, T]; g: [B, H, T] or None.
    T need not be a multiple of chunk_size. Returns o: [B, H, T, Dv] in q's dtype.
    """
    check_inputs(q, k, v, g, beta)
    if use_fla(q):  # CUDA with flash-linear-attention: its Triton kernel (asiarch.job.ops.fla_route)
        return fla_delta_rule(q, k, v, beta, g, resolve_scale(scale, q.shape[-1]))
    out_dtype = q.dtype
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    dt = compute_dtype(q)
    C = effective_chunk_size(chunk_size, T)
    scale = resolve_scale(scale, Dk)

    q = to_chunks(q.to(dt) * scale, C)                               # (B, H, N, C, Dk)
    k = to_chunks(k.to(dt), C)                                       # (B, H, N, C, Dk)
    v = to_chunks(v.to(dt), C)                                       # (B, H, N, C, Dv)
    beta = to_chunks(beta.to(dt), C)[..., None]                      # (B, H, N, C, 1)
    N = q.shape[2]
    eye = torch.eye(C, dtype=dt, device=q.device)
    causal = torch.ones_like(eye, dtype=torch.bool).tril()           # j <= i
    strict = torch.ones_like(eye, dtype=torch.bool).tril(-1)         # j < i

    k_beta = k * beta
    KK = k_beta @ k.transpose(-1, -2)                                # (B, H, N, C, C)
    QK = q @ k.transpose(-1, -2)                                     # (B, H, N, C, C)
    if g is None:
        QK = QK.masked_fill(~causal, 0.0)
        w_rhs = k_beta
        q_dec = q
    else:
        G = to_chunks(g.to(dt), C).cumsum(dim=-1)                    # (B, H, N, C)
        gamma = segment_decay(G)                                     # (B, H, N, C, C)
        KK = KK * gamma
        QK = QK * gamma
        G_exp = G.exp()[..., None]                                   # (B, H, N, C, 1)
        w_rhs = k_beta * G_exp
        q_dec = q * G_exp
        G_end = G[..., -1:]                                          # (B, H, N, 1)
        k_to_end = k * (G_end - G).exp()[..., None]                  # (B, H, N, C, Dk)
        chunk_decay = G_end.exp()[..., None]                         # (B, H, N, 1, 1)

    # UT transform: one triangular solve (in fp32) for both right-hand sides
    A = KK.masked_fill(~strict, 0.0) + eye
    UW = torch.linalg.solve_triangular(A, torch.cat([v * beta, w_rhs], dim=-1),
                                       upper=False, unitriangular=True)
    U, W = UW.split([Dv, Dk], dim=-1)                                # (B, H, N, C, Dv/Dk)

    # O = q_dec S + QK (U - W S) = (q_dec - QK W) S + QK U: fold the state-free
    # parts in batched, so the loop only does [W; Q_eff] @ S and the state update.
    o_local = QK @ U                                                 # (B, H, N, C, Dv)
    WQ = torch.cat([W, q_dec - QK @ W], dim=-2)                      # (B, H, N, 2C, Dk)
    # unbind once (not X[:, :, n] per chunk, whose backward writes a full-size zero
    # gradient per chunk: O(N^2) memory traffic)
    S = q.new_zeros(B, H, Dk, Dv)
    k_T = (k if g is None else k_to_end).transpose(-1, -2)           # (B, H, N, Dk, C)
    decays = [None] * N if g is None else chunk_decay.unbind(dim=2)  # (B, H, 1, 1) each
    o_state = []
    for wq_n, u_n, kT_n, decay_n in zip(WQ.unbind(dim=2), U.unbind(dim=2),
                                        k_T.unbind(dim=2), decays):
        ws, qs = (wq_n @ S).split([C, C], dim=-2)                    # (B, H, C, Dv) each
        o_state.append(qs)
        v_new = u_n - ws
        S = (S if decay_n is None else S * decay_n) + kT_n @ v_new
    o = o_local + torch.stack(o_state, dim=2)
    return from_chunks(o, T).to(out_dtype)
