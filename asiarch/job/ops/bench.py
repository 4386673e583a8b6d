"""Forward+backward throughput of the token-mixing kernels, chunked vs recurrent vs
softmax, measured in one run on one device so the ratios are comparable.

    python -m asiarch.job.ops.bench                 # T = 256, 1024, 4096 on CPU
    python -m asiarch.job.ops.bench --seq-lens 512 2048 --device cuda --dtype bf16
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from .delta_rule import chunk_delta_rule, recurrent_delta_rule
from .linear_attn import chunk_linear_attn, recurrent_linear_attn
from .softmax_attn import causal_softmax_attn

__all__ = ["bench_kernels", "main"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _kernels(gated, chunk_size):
    """(op, impl, fn(q, k, v, beta, g) -> o) for every kernel benchmarked."""
    gate = (lambda g: g) if gated else (lambda g: None)
    return [
        ("linear_attn", "chunk",
         lambda q, k, v, b, g: chunk_linear_attn(q, k, v, gate(g), chunk_size=chunk_size)),
        ("linear_attn", "recurrent",
         lambda q, k, v, b, g: recurrent_linear_attn(q, k, v, gate(g))),
        ("delta_rule", "chunk",
         lambda q, k, v, b, g: chunk_delta_rule(q, k, v, b, gate(g), chunk_size=chunk_size)),
        ("delta_rule", "recurrent",
         lambda q, k, v, b, g: recurrent_delta_rule(q, k, v, b, gate(g))),
        ("softmax_attn", "sdpa",
         lambda q, k, v, b, g: causal_softmax_attn(q, k, v)),
    ]


def _time_fwd_bwd(fn, inputs, repeats, device, warmup=True):
    """Median seconds of one forward + backward, after one warm-up call."""
    def step():
        leaves = [x.detach().requires_grad_() for x in inputs]
        fn(*leaves).float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
    if warmup:
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_kernels(seq_lens=(256, 1024, 4096), *, batch=1, heads=8, head_dim=64,
                  dtype="fp32", device="cpu", chunk_size=64, gated=True, repeats=3,
                  max_recurrent_len=4096, seed=0):
    """Measure forward+backward tokens/s of every kernel at each sequence length.

    Returns one dict per (op, impl, T): op, impl ('chunk', 'recurrent' or 'sdpa'), T,
    batch, heads, head_dim, dtype, device, seconds (median of `repeats`) and
    tokens_per_s (batch * T / seconds). Recurrent forms are skipped above
    `max_recurrent_len` (they loop over every step in Python).
    """
    device = torch.device(device)
    dt = DTYPES[dtype]
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for T in seq_lens:
        shape = (batch, heads, T, head_dim)
        q = torch.randn(shape, generator=gen)
        k = F.normalize(torch.randn(shape, generator=gen), dim=-1)
        v = torch.randn(shape, generator=gen)
        beta = torch.rand(shape[:3], generator=gen).sigmoid()
        g = F.logsigmoid(torch.randn(shape[:3], generator=gen) + 3.0)
        inputs = [x.to(device=device, dtype=dt) for x in (q, k, v, beta, g)]
        for op, impl, fn in _kernels(gated, chunk_size):
            if impl == "recurrent" and T > max_recurrent_len:
                continue
            long_loop = impl == "recurrent" and T >= 2048    # seconds per call: time once
            sec = _time_fwd_bwd(fn, inputs, 1 if long_loop else repeats, device,
                                warmup=not long_loop)
            rows.append(dict(op=op, impl=impl, T=T, batch=batch, heads=heads,
                             head_dim=head_dim, dtype=dtype, device=str(device),
                             seconds=sec, tokens_per_s=batch * T / sec))
    return rows


def format_table(rows):
    """A text table of tokens/s with, per T, the chunked delta rule's speed-up over its
    recurrence and over softmax attention (ratios > 1 mean the chunked form is faster)."""
    lines = [f"{'T':>6} {'op':<13} {'impl':<10} {'ms':>10} {'tok/s':>10}"]
    for r in rows:
        lines.append(f"{r['T']:>6} {r['op']:<13} {r['impl']:<10} "
                     f"{r['seconds'] * 1e3:>10.1f} {r['tokens_per_s']:>10.0f}")
    lines.append("")
    by = {(r["op"], r["impl"], r["T"]): r["seconds"] for r in rows}
    for T in sorted({r["T"] for r in rows}):
        parts = [f"T={T}:"]
        for op in ("linear_attn", "delta_rule"):
            chunk = by.get((op, "chunk", T))
            if chunk and (op, "recurrent", T) in by:
                parts.append(f"{op} chunk/recurrent x{by[(op, 'recurrent', T)] / chunk:.1f}")
            if chunk and ("softmax_attn", "sdpa", T) in by:
                parts.append(f"{op} chunk/softmax x{by[('softmax_attn', 'sdpa', T)] / chunk:.2f}")
        lines.append("  ".join(parts))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-lens", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--no-gate", dest="gated", action="store_false")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-recurrent-len", type=int, default=4096,
                   help="skip the recurrent references above this T")
    a = p.parse_args(argv)
    rows = bench_kernels(tuple(a.seq_lens), batch=a.batch, heads=a.heads,
                         head_dim=a.head_dim, dtype=a.dtype, device=a.device,
                         chunk_size=a.chunk_size, gated=a.gated, repeats=a.repeats,
                         max_recurrent_len=a.max_recurrent_len)
    print(f"fwd+bwd, batch={a.batch} heads={a.heads} head_dim={a.head_dim} "
          f"{a.dtype} {a.device} threads={torch.get_num_threads()} "
          f"chunk={a.chunk_size} gated={a.gated}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
