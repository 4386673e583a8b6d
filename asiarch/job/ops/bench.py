"""Forward+backward throughput of each token mixer in its exact form, chunked vs
recurrent vs softmax, measured in one run on one device so the ratios are comparable.

    python -m asiarch.job.ops.bench                 # T = 256, 1024, 4096 on CPU
    python -m asiarch.job.ops.bench --seq-lens 512 2048 --device cuda --dtype bf16
    python -m asiarch.job.ops.bench --mixers gla mamba2 softmax

Mixers:
    linear          linear attention, no decay
    retnet          linear attention with RetNet's fixed decay g_h = log(1 - 2^(-5-h))
    gla             simple GLA: linear attention with a data-dependent log-decay per
                    head and step
    deltanet        delta rule, no decay
    gated_deltanet  delta rule with a data-dependent log-decay
    mamba2          SSD, one group of B and C (G = 1), state size N = head_dim
    softmax         causal softmax attention (fused SDPA)
"""

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from .delta_rule import chunk_delta_rule, recurrent_delta_rule
from .linear_attn import chunk_linear_attn, recurrent_linear_attn
from .softmax_attn import causal_softmax_attn
from .ssd import chunk_ssd, recurrent_ssd

__all__ = ["MIXERS", "bench_kernels", "format_table", "main"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MIXERS = ("linear", "retnet", "gla", "deltanet", "gated_deltanet", "mamba2", "softmax")


def _mixers(heads, chunk_size, device):
    """mixer -> (names of its inputs, {impl: fn(*inputs) -> output}); the inputs are
    the trainable tensors, differentiated in the backward pass."""
    # RetNet's decay is a constant of the architecture, not an input
    retnet_g = torch.log1p(-2.0 ** (-5.0 - torch.arange(heads, device=device)))   # (H,)

    def retnet(fn, **kw):
        return lambda q, k, v: fn(q, k, v, retnet_g[:, None].expand(q.shape[:3]), **kw)

    ck = {"chunk_size": chunk_size}
    return {
        "linear": (("q", "k", "v"), {
            "chunk": lambda q, k, v: chunk_linear_attn(q, k, v, **ck),
            "recurrent": recurrent_linear_attn}),
        "retnet": (("q", "k", "v"), {
            "chunk": retnet(chunk_linear_attn, **ck),
            "recurrent": retnet(recurrent_linear_attn)}),
        "gla": (("q", "k", "v", "g"), {
            "chunk": lambda q, k, v, g: chunk_linear_attn(q, k, v, g, **ck),
            "recurrent": recurrent_linear_attn}),
        "deltanet": (("q", "k", "v", "beta"), {
            "chunk": lambda q, k, v, b: chunk_delta_rule(q, k, v, b, **ck),
            "recurrent": recurrent_delta_rule}),
        "gated_deltanet": (("q", "k", "v", "beta", "g"), {
            "chunk": lambda q, k, v, b, g: chunk_delta_rule(q, k, v, b, g, **ck),
            "recurrent": recurrent_delta_rule}),
        "mamba2": (("x", "dt", "A", "Bm", "Cm", "D"), {
            "chunk": lambda *a: chunk_ssd(*a, **ck),
            "recurrent": recurrent_ssd}),
        "softmax": (("q", "k", "v"), {"sdpa": causal_softmax_attn}),
    }


def _inputs(T, batch, heads, head_dim, gen):
    """Every mixer's inputs at length T (fp32, CPU), by name."""
    shape = (batch, heads, T, head_dim)
    return {
        "q": torch.randn(shape, generator=gen),
        "k": F.normalize(torch.randn(shape, generator=gen), dim=-1),
        "v": torch.randn(shape, generator=gen),
        "beta": torch.rand(shape[:3], generator=gen).sigmoid(),
        "g": F.logsigmoid(torch.randn(shape[:3], generator=gen) + 3.0),
        # Mamba2: softplus'd step sizes, A = -exp(A_log) with A in [-16, -1]
        "x": torch.randn(shape, generator=gen),
        "dt": F.softplus(torch.randn(shape[:3], generator=gen) - 2.0),
        "A": -torch.empty(heads).uniform_(0.0, math.log(16.0), generator=gen).exp(),
        "Bm": torch.randn(batch, 1, T, head_dim, generator=gen),
        "Cm": torch.randn(batch, 1, T, head_dim, generator=gen),
        "D": torch.ones(heads),
    }


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


def bench_kernels(seq_lens=(256, 1024, 4096), *, mixers=MIXERS, batch=1, heads=8,
                  head_dim=64, dtype="fp32", device="cpu", chunk_size=64, repeats=3,
                  max_recurrent_len=4096, seed=0):
    """Measure forward+backward tokens/s of every mixer's implementations at each T.

    Returns one dict per (mixer, impl, T): mixer (one of MIXERS), impl ('chunk',
    'recurrent' or, for softmax, 'sdpa'), T, batch, heads, head_dim, dtype, device,
    seconds (median of `repeats`) and tokens_per_s (batch * T / seconds). Recurrent
    forms are skipped above `max_recurrent_len` (they loop over every step in Python)
    and timed once, without warm-up, from T = 2048.
    """
    unknown = sorted(set(mixers) - set(MIXERS))
    if unknown:
        raise ValueError(f"unknown mixers {unknown}; choose from {list(MIXERS)}")
    device = torch.device(device)
    dt = DTYPES[dtype]
    specs = _mixers(heads, chunk_size, device)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for T in seq_lens:
        inputs = {n: x.to(device=device, dtype=dt)
                  for n, x in _inputs(T, batch, heads, head_dim, gen).items()}
        for mixer in mixers:
            names, impls = specs[mixer]
            for impl, fn in impls.items():
                if impl == "recurrent" and T > max_recurrent_len:
                    continue
                long_loop = impl == "recurrent" and T >= 2048   # seconds per call: time once
                sec = _time_fwd_bwd(fn, [inputs[n] for n in names],
                                    1 if long_loop else repeats, device, warmup=not long_loop)
                rows.append(dict(mixer=mixer, impl=impl, T=T, batch=batch, heads=heads,
                                 head_dim=head_dim, dtype=dtype, device=str(device),
                                 seconds=sec, tokens_per_s=batch * T / sec))
    return rows


def format_table(rows):
    """Text tables: ms and tokens/s per mixer, T and impl; then per T and mixer the
    chunked form's speed-up over its recurrence and over softmax attention (ratios > 1
    mean the chunked form is faster)."""
    order = {m: i for i, m in enumerate(MIXERS)}
    lines = [f"{'mixer':<15} {'T':>6} {'impl':<10} {'ms':>10} {'tok/s':>10}"]
    for r in sorted(rows, key=lambda r: (order[r["mixer"]], r["T"])):
        lines.append(f"{r['mixer']:<15} {r['T']:>6} {r['impl']:<10} "
                     f"{r['seconds'] * 1e3:>10.1f} {r['tokens_per_s']:>10.0f}")
    lines += ["", f"{'T':>6} {'mixer':<15} {'chunk/recurrent':>16} {'chunk/softmax':>14}"]
    by = {(r["mixer"], r["impl"], r["T"]): r["seconds"] for r in rows}

    def ratio(num, chunk):
        return "-" if num is None else f"x{num / chunk:.2f}"

    for T in sorted({r["T"] for r in rows}):
        for mixer in MIXERS:
            chunk = by.get((mixer, "chunk", T))
            if chunk:
                lines.append(f"{T:>6} {mixer:<15} "
                             f"{ratio(by.get((mixer, 'recurrent', T)), chunk):>16} "
                             f"{ratio(by.get(('softmax', 'sdpa', T)), chunk):>14}")
    return "\n".join(lines)


def main(argv=None, prog=None):
    """The command line (also `asiarch bench kernels`, which passes its arguments on)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                epilog="mixers: " + ", ".join(MIXERS))
    p.add_argument("--seq-lens", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--mixers", nargs="+", choices=MIXERS, default=list(MIXERS),
                   metavar="MIXER", help="a subset of the mixers (default: all)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-recurrent-len", type=int, default=4096,
                   help="skip the recurrent references above this T")
    a = p.parse_args(argv)
    rows = bench_kernels(tuple(a.seq_lens), mixers=tuple(a.mixers), batch=a.batch,
                         heads=a.heads, head_dim=a.head_dim, dtype=a.dtype, device=a.device,
                         chunk_size=a.chunk_size, repeats=a.repeats,
                         max_recurrent_len=a.max_recurrent_len)
    print(f"fwd+bwd, batch={a.batch} heads={a.heads} head_dim={a.head_dim} "
          f"{a.dtype} {a.device} threads={torch.get_num_threads()} chunk={a.chunk_size}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
