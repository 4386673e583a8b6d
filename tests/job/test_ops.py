"""Ties every fast token-mixing kernel in asiarch.job.ops to its naive reference,
forward and backward, in fp32 and bf16 (bf16 fast path against the fp32 reference)."""

import pytest
import torch
import torch.nn.functional as F

from asiarch.job.ops import (causal_softmax_attn, chunk_delta_rule, chunk_linear_attn,
                             chunk_ssd, naive_softmax_attn, recurrent_delta_rule,
                             recurrent_linear_attn, recurrent_ssd)
from asiarch.job.ops.bench import MIXERS, bench_kernels, format_table

B, H, DK, DV = 2, 2, 16, 16
# max |fast - ref| / max |ref|: fp32 differs only by summation order; bf16 inputs,
# outputs and gradients are rounded to 8 mantissa bits (~4e-3 relative each).
TOL = {torch.float32: 1e-4, torch.bfloat16: 2.5e-2}

# op name -> (fast, reference, takes beta)
OPS = {
    "linear_attn": (chunk_linear_attn, recurrent_linear_attn, False),
    "delta_rule": (chunk_delta_rule, recurrent_delta_rule, True),
}


def make_inputs(T, gated, with_beta, dk=DK, dv=DV, g_scale=1.0, seed=0):
    """fp32 leaves: q, k (L2-normalised, so the delta rule stays stable), v, beta, g."""
    gen = torch.Generator().manual_seed(seed)
    x = {
        "q": torch.randn(B, H, T, dk, generator=gen),
        "k": F.normalize(torch.randn(B, H, T, dk, generator=gen), dim=-1),
        "v": torch.randn(B, H, T, dv, generator=gen),
    }
    if with_beta:
        x["beta"] = torch.rand(B, H, T, generator=gen) * 0.9 + 0.05
    if gated:
        x["g"] = g_scale * F.logsigmoid(torch.randn(B, H, T, generator=gen) + 1.0)
    return x


def call(fn, x, **kw):
    args = [x["q"], x["k"], x["v"]] + ([x["beta"]] if "beta" in x else [])
    return fn(*args, x.get("g"), **kw)


def run(fn, x, dtype, out_weight, *, invoke=call, **kw):
    """Output (fp32) and gradients (fp32) of sum(out * out_weight) w.r.t. every input."""
    leaves = {n: t.detach().to(dtype).requires_grad_() for n, t in x.items()}
    out = invoke(fn, leaves, **kw)
    assert out.dtype == dtype
    grads = torch.autograd.grad((out.float() * out_weight).sum(), list(leaves.values()))
    return out.float(), {n: gr.float() for n, gr in zip(leaves, grads)}


def assert_close(actual, expected, tol, what):
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = (actual - expected).abs().max().item()
    mag = expected.abs().max().item()
    assert err <= tol * max(mag, 1e-2), f"{what}: max err {err:.3g} vs magnitude {mag:.3g}"


@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("gated", [False, True], ids=["nogate", "gated"])
@pytest.mark.parametrize("T", [1, 17, 64, 130])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("op", list(OPS))
def test_chunk_matches_recurrent(op, dtype, T, gated, chunk_size):
    fast, ref, with_beta = OPS[op]
    x = make_inputs(T, gated, with_beta)
    # bf16 runs see bf16-rounded inputs; the reference sees the same values in fp32
    x = {n: t.to(dtype).float() for n, t in x.items()}
    w = torch.randn(B, H, T, DV, generator=torch.Generator().manual_seed(1))
    out, grads = run(fast, x, dtype, w, chunk_size=chunk_size)
    out_ref, grads_ref = run(ref, x, torch.float32, w)
    assert_close(out, out_ref, TOL[dtype], "output")
    for name in grads_ref:
        assert_close(grads[name], grads_ref[name], TOL[dtype], f"d{name}")


@pytest.mark.parametrize("T", [1, 17, 130])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_softmax_matches_naive(dtype, T):
    x = {n: t.to(dtype).float() for n, t in make_inputs(T, False, False).items()}
    w = torch.randn(B, H, T, DV, generator=torch.Generator().manual_seed(1))
    out, grads = run(lambda q, k, v, g: causal_softmax_attn(q, k, v), x, dtype, w)
    out_ref, grads_ref = run(lambda q, k, v, g: naive_softmax_attn(q, k, v), x,
                             torch.float32, w)
    assert_close(out, out_ref, TOL[dtype], "output")
    for name in grads_ref:
        assert_close(grads[name], grads_ref[name], TOL[dtype], f"d{name}")


CAUSAL_CASES = {
    "chunk_linear_attn": (chunk_linear_attn, True),
    "recurrent_linear_attn": (recurrent_linear_attn, True),
    "chunk_delta_rule": (chunk_delta_rule, True),
    "recurrent_delta_rule": (recurrent_delta_rule, True),
    "causal_softmax_attn": (lambda q, k, v, g: causal_softmax_attn(q, k, v), False),
    "naive_softmax_attn": (lambda q, k, v, g: naive_softmax_attn(q, k, v), False),
}


@pytest.mark.parametrize("name", list(CAUSAL_CASES))
def test_causal(name):
    """Perturbing steps >= t0 (every input) leaves outputs before t0 unchanged."""
    fn, gated = CAUSAL_CASES[name]
    kw = {"chunk_size": 16} if name.startswith("chunk") else {}
    T, t0 = 40, 23                                   # t0 in the middle of a chunk
    x = make_inputs(T, gated, "delta" in name)
    y = {n: t.clone() for n, t in x.items()}
    for n, t in y.items():
        t[:, :, t0:] = make_inputs(T, gated, "delta" in name, seed=7)[n][:, :, t0:]
    o1, o2 = call(fn, x, **kw), call(fn, y, **kw)
    # exact in practice; the slack only allows a BLAS to reorder sums of zeros
    assert torch.allclose(o1[:, :, :t0], o2[:, :, :t0], rtol=0, atol=1e-6)
    assert not torch.allclose(o1[:, :, t0:], o2[:, :, t0:])


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("T", [5, 63, 65, 100])
def test_length_not_multiple_of_chunk(op, T):
    """Padding is internal: any T gives a [B, H, T, Dv] output equal to the reference."""
    fast, ref, with_beta = OPS[op]
    x = make_inputs(T, True, with_beta, dk=8, dv=12)      # Dk != Dv on purpose
    out = call(fast, x, chunk_size=32)
    assert out.shape == (B, H, T, 12)
    assert_close(out, call(ref, x), 1e-4, "output")


@pytest.mark.parametrize("op", list(OPS))
def test_strong_decay_is_finite(op):
    """Log-decays of -30 per step underflow cumulative decays inside a chunk to 0;
    the chunked form must stay finite (no exp of large positive numbers) and exact."""
    fast, ref, with_beta = OPS[op]
    x = make_inputs(70, True, with_beta, g_scale=30.0)
    w = torch.randn(B, H, 70, DV)
    out, grads = run(fast, x, torch.float32, w, chunk_size=64)
    out_ref, grads_ref = run(ref, x, torch.float32, w)
    assert_close(out, out_ref, 1e-4, "output")
    for name in grads_ref:
        assert_close(grads[name], grads_ref[name], 1e-4, f"d{name}")


@pytest.mark.parametrize("op", list(OPS))
def test_scale_and_bad_shapes(op):
    fast, ref, with_beta = OPS[op]
    x = make_inputs(20, False, with_beta)
    assert_close(call(fast, x, scale=0.3, chunk_size=8), call(ref, x, scale=0.3), 1e-4,
                 "output with scale=0.3")
    x["v"] = x["v"][:, :, :-1]
    with pytest.raises(ValueError, match="v must be"):
        call(fast, x)


# ----------------------------------------------------------------------------------
# SSD (Mamba2): x [B, H, T, P], dt [B, H, T], A [H], Bm/Cm [B, G, T, N], D [H]


def make_ssd_inputs(T, G, a_scale=1.0, h=H, n=DK, p=DV, seed=0):
    """fp32 leaves with Mamba2-like magnitudes: dt = softplus(.) ~ 0.1..1, A in [-4, -0.5]."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(B, h, T, p, generator=gen),
        "dt": F.softplus(torch.randn(B, h, T, generator=gen) - 1.0),
        "A": -a_scale * (torch.rand(h, generator=gen) * 3.5 + 0.5),
        "Bm": torch.randn(B, G, T, n, generator=gen) * n ** -0.5,
        "Cm": torch.randn(B, G, T, n, generator=gen) * n ** -0.5,
        "D": torch.randn(h, generator=gen),
    }


def call_ssd(fn, x, **kw):
    return fn(x["x"], x["dt"], x["A"], x["Bm"], x["Cm"], x.get("D"), **kw)


@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("G", [1, H], ids=["G1", "GH"])
@pytest.mark.parametrize("T", [1, 17, 64, 130])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_chunk_ssd_matches_recurrent(dtype, T, G, chunk_size):
    x = {n: t.to(dtype).float() for n, t in make_ssd_inputs(T, G).items()}
    w = torch.randn(B, H, T, DV, generator=torch.Generator().manual_seed(1))
    out, grads = run(chunk_ssd, x, dtype, w, invoke=call_ssd, chunk_size=chunk_size)
    out_ref, grads_ref = run(recurrent_ssd, x, torch.float32, w, invoke=call_ssd)
    assert_close(out, out_ref, TOL[dtype], "output")
    for name in grads_ref:
        assert_close(grads[name], grads_ref[name], TOL[dtype], f"d{name}")


def test_ssd_groups_and_no_skip():
    """Heads 0, 1 read group 0 and heads 2, 3 group 1 (H = 4, G = 2); D = None is D = 0."""
    x = make_ssd_inputs(30, 2, h=4)
    heads = torch.tensor([0, 0, 1, 1])
    per_head = dict(x, Bm=x["Bm"][:, heads], Cm=x["Cm"][:, heads])
    for fn, kw in ((chunk_ssd, {"chunk_size": 8}), (recurrent_ssd, {})):
        assert_close(call_ssd(fn, x, **kw), call_ssd(fn, per_head, **kw), 1e-5, fn.__name__)
        assert_close(call_ssd(fn, dict(x, D=None), **kw),
                     call_ssd(fn, dict(x, D=torch.zeros(4)), **kw), 1e-6, fn.__name__)


@pytest.mark.parametrize("fn", [chunk_ssd, recurrent_ssd], ids=lambda f: f.__name__)
def test_ssd_causal(fn):
    """Perturbing steps >= t0 of x, dt, Bm and Cm leaves outputs before t0 unchanged."""
    kw = {"chunk_size": 16} if fn is chunk_ssd else {}
    T, t0 = 40, 23                                   # t0 in the middle of a chunk
    x = make_ssd_inputs(T, 1)
    y = {n: t.clone() for n, t in x.items()}
    other = make_ssd_inputs(T, 1, seed=7)
    for n in ("x", "dt", "Bm", "Cm"):
        y[n][:, :, t0:] = other[n][:, :, t0:]
    o1, o2 = call_ssd(fn, x, **kw), call_ssd(fn, y, **kw)
    assert torch.allclose(o1[:, :, :t0], o2[:, :, :t0], rtol=0, atol=1e-6)
    assert not torch.allclose(o1[:, :, t0:], o2[:, :, t0:])


def test_ssd_strong_decay_is_finite():
    """dt * A down to about -100 per step: cumulative decays underflow to 0 inside a
    chunk, and the chunked form must stay finite and exact, forward and backward."""
    x = make_ssd_inputs(70, H, a_scale=30.0)
    w = torch.randn(B, H, 70, DV, generator=torch.Generator().manual_seed(1))
    out, grads = run(chunk_ssd, x, torch.float32, w, invoke=call_ssd, chunk_size=64)
    out_ref, grads_ref = run(recurrent_ssd, x, torch.float32, w, invoke=call_ssd)
    assert_close(out, out_ref, 1e-4, "output")
    for name in grads_ref:
        # dA = sum over b, t of dt dL/dg nearly cancels here (~1e-3, against ~10 for
        # d dt), so fp32 summation order shows in it at up to ~3e-4 relative
        assert_close(grads[name], grads_ref[name], 1e-3 if name == "A" else 1e-4, f"d{name}")


@pytest.mark.parametrize("change, match", [
    (lambda x: dict(x, x=x["x"][0]), r"x must be \[B, H, T, P\]"),
    (lambda x: dict(x, dt=x["dt"][:, :, :-1]), "dt must be"),
    (lambda x: dict(x, A=x["A"][None]), "A must be"),
    (lambda x: dict(x, D=x["D"][:-1]), "D must be"),
    (lambda x: dict(x, Cm=x["Cm"][..., :-1]), "Bm and Cm must both be"),
    (lambda x: dict(x, Bm=x["Bm"][:, :, :-1], Cm=x["Cm"][:, :, :-1]), "matching x"),
    (lambda x: dict(x, Bm=x["Bm"].expand(B, 3, 20, DK), Cm=x["Cm"].expand(B, 3, 20, DK)),
     "must divide the number of heads"),
])
@pytest.mark.parametrize("fn", [chunk_ssd, recurrent_ssd], ids=lambda f: f.__name__)
def test_ssd_bad_shapes(fn, change, match):
    with pytest.raises(ValueError, match=match):
        call_ssd(fn, change(make_ssd_inputs(20, 1)))


def test_bench_kernels_smoke():
    rows = bench_kernels((8, 24), batch=1, heads=2, head_dim=8, chunk_size=16, repeats=1)
    impls = {(r["mixer"], r["impl"]) for r in rows}
    assert impls == {(m, i) for m in MIXERS if m != "softmax" for i in ("chunk", "recurrent")
                     } | {("softmax", "sdpa")}
    assert len(rows) == 2 * len(impls) and all(r["tokens_per_s"] > 0 for r in rows)
    table = format_table(rows)
    assert "mamba2" in table and "chunk/recurrent" in table and "chunk/softmax" in table
    sub = bench_kernels((8,), mixers=("gla",), heads=2, head_dim=8, repeats=1,
                        max_recurrent_len=4)
    assert [(r["mixer"], r["impl"]) for r in sub] == [("gla", "chunk")]
    with pytest.raises(ValueError, match="unknown mixers"):
        bench_kernels((8,), mixers=("mamba",))
