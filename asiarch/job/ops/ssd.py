"""Mamba2's SSD (state space duality, Dao & Gu 2024), head-first, in Mamba2's notation.

Per batch and head h, with a state h_t of shape [N, P] and a_t = exp(dt_t A_h):

    h_t = a_t h_{t-1} + dt_t B_t x_t^T
    y_t = C_t^T h_t + D_h x_t

x: [B, H, T, P] inputs (P = head dim); dt: [B, H, T] positive step sizes (already
softplus'd); A: [H] negative reals; Bm, Cm: [B, G, T, N] shared by groups of heads
(head h reads group h // (H // G)); D: [H] skip connection, or None for none.

`recurrent_ssd` is the readable reference (a loop over time steps); `chunk_ssd` is
the fast form, which *is* scalar-decay linear attention (see its docstring) and runs
on `chunk_linear_attn`. tests/test_ops.py ties the two forward and backward.

Both compute in fp32 (or x's dtype if wider) and return x's dtype.
"""

import torch

from .linear_attn import chunk_linear_attn, compute_dtype

__all__ = ["chunk_ssd", "recurrent_ssd"]


def check_ssd_inputs(x, dt, A, Bm, Cm, D=None):
    """Raise ValueError naming the offending shape unless x: [B, H, T, P], dt: [B, H, T],
    A: [H], Bm and Cm: [B, G, T, N] with G dividing H, D: [H] or None."""
    if x.dim() != 4:
        raise ValueError(f"x must be [B, H, T, P]; got {tuple(x.shape)}")
    Bsz, H, T, _ = x.shape
    if dt.shape != (Bsz, H, T):
        raise ValueError(
            f"dt must be [B, H, T] = {(Bsz, H, T)} (x is {tuple(x.shape)}); got {tuple(dt.shape)}")
    if A.shape != (H,):
        raise ValueError(f"A must be [H] = {(H,)}; got {tuple(A.shape)}")
    if D is not None and D.shape != (H,):
        raise ValueError(f"D must be [H] = {(H,)} or None; got {tuple(D.shape)}")
    if Bm.dim() != 4 or Cm.shape != Bm.shape:
        raise ValueError(
            f"Bm and Cm must both be [B, G, T, N]; got Bm {tuple(Bm.shape)}, Cm {tuple(Cm.shape)}")
    if Bm.shape[0] != Bsz or Bm.shape[2] != T:
        raise ValueError(
            f"Bm and Cm must be [B, G, T, N] matching x {tuple(x.shape)} in B and T; "
            f"got {tuple(Bm.shape)}")
    if H % Bm.shape[1]:
        raise ValueError(
            f"the number of groups G = {Bm.shape[1]} (Bm, Cm {tuple(Bm.shape)}) must divide "
            f"the number of heads H = {H} (x {tuple(x.shape)})")


def groups_to_heads(t, H):
    """[B, G, T, N] -> [B, H, T, N]: head h gets group h // (H // G)."""
    return t.repeat_interleave(H // t.shape[1], dim=1)


def recurrent_ssd(x, dt, A, Bm, Cm, D=None):
    """Reference: h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T; y_t = C_t^T h_t + D x_t.

    x: [B, H, T, P]; dt: [B, H, T] (> 0); A: [H] (< 0); Bm, Cm: [B, G, T, N]; D: [H]
    or None. Returns y: [B, H, T, P] in x's dtype. One Python step per time step.
    """
    check_ssd_inputs(x, dt, A, Bm, Cm, D)
    out_dtype = x.dtype
    Bsz, H, T, P = x.shape
    ct = compute_dtype(x)
    x, dt, A = x.to(ct), dt.to(ct), A.to(ct)
    Bh = groups_to_heads(Bm.to(ct), H)                               # (B, H, T, N)
    Ch = groups_to_heads(Cm.to(ct), H)                               # (B, H, T, N)
    decay = (dt * A[:, None]).exp()                                  # (B, H, T)
    h = x.new_zeros(Bsz, H, Bh.shape[-1], P)
    ys = []
    # unbind once: indexing x[:, :, t] per step would make backward O(T^2)
    for x_t, dt_t, a_t, B_t, C_t in zip(x.unbind(2), dt.unbind(2), decay.unbind(2),
                                        Bh.unbind(2), Ch.unbind(2)):
        u_t = dt_t[..., None] * B_t                                 # (B, H, N)
        h = h * a_t[..., None, None] + u_t[..., None] * x_t[..., None, :]   # (B, H, N, P)
        ys.append(torch.einsum("bhn,bhnp->bhp", C_t, h))             # (B, H, P)
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + D.to(ct)[:, None, None] * x
    return y.to(out_dtype)


def chunk_ssd(x, dt, A, Bm, Cm, D=None, *, chunk_size=64):
    """Chunked SSD, same maths as `recurrent_ssd`, computed as linear attention.

    The duality: unrolling the recurrence,
        y_i = sum_{j <= i} exp(sum_{j < s <= i} dt_s A) (C_i . B_j) dt_j x_j + D x_i,
    which is causal linear attention with a scalar log-decay per head and step:
        q = C,  k = dt B,  v = x,  g = dt A (<= 0),  scale = 1,
    i.e. S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = q_t^T S_t with S = h. The quadratic
    (attention) form inside a chunk and the linear (recurrent) form across chunks
    are exactly `chunk_linear_attn`; D x is added on top. Groups are expanded to
    heads first (head h reads group h // (H // G)).

    x: [B, H, T, P]; dt: [B, H, T] (> 0); A: [H] (< 0); Bm, Cm: [B, G, T, N]; D: [H]
    or None. T need not be a multiple of chunk_size. Returns y: [B, H, T, P] in x's
    dtype.
    """
    check_ssd_inputs(x, dt, A, Bm, Cm, D)
    out_dtype = x.dtype
    H = x.shape[1]
    ct = compute_dtype(x)
    # form k and g in the compute dtype, not as products of rounded half inputs
    x, dt = x.to(ct), dt.to(ct)
    q = groups_to_heads(Cm.to(ct), H)                                # (B, H, T, N)
    k = groups_to_heads(Bm.to(ct), H) * dt[..., None]                # (B, H, T, N)
    g = dt * A.to(ct)[:, None]                                       # (B, H, T)
    y = chunk_linear_attn(q, k, x, g, scale=1.0, chunk_size=chunk_size)
    if D is not None:
        y = y + D.to(ct)[:, None, None] * x
    return y.to(out_dtype)
