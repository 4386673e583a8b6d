"""`asiarch data prepare`: inputs -> token shards and a manifest, in parallel, resumable.

The corpus is one stream: the documents of the inputs in order, each followed by the tokenizer's
end-of-text id, so two documents are never joined without it. The stream is cut into

- the ``val`` split: its first ``val_tokens`` tokens, rounded up to the end of the document they end
  in (whole documents only), then
- the ``train`` split: the rest,

each written as shards of at most ``shard_tokens`` tokens (``val_000000.bin``, ``train_000000.bin``,
...; uint16, or uint32 when the vocabulary needs it), then ``manifest.json``
(:mod:`asiarch.job.data`). Every file is written atomically.

Work is cut into *units* of about ``unit_chars`` characters of whole documents (a long document is
cut at line breaks where that leaves the ids unchanged: :attr:`Tokenizer.line_cuts_exact`), which
``workers`` processes encode in parallel; the main process writes their ids in order, so the output
is the same for any number of workers. After each shard, ``.prepare-state.json`` records the shard
(size, sha256) and the point of the stream where the next one starts (unit, offset). A run that was
killed, rerun with the same inputs and settings, verifies the shards it finds there, keeps them,
and encodes again from the unit where the first missing shard starts.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from asiarch.data.defaults import DEFAULT_SHARD_TOKENS, DEFAULT_UNIT_CHARS, DEFAULT_VAL_TOKENS
from asiarch.data.sources import InputError, Source, documents, open_source
from asiarch.data.tokenizers import Tokenizer, load_tokenizer
from asiarch.job.contract import atomic_path, atomic_write
from asiarch.job.data import (MANIFEST_NAME, TOKENIZER_COPY, Manifest, Shard, Split, dtype_for, read_manifest,
                              sha256_file, write_manifest)

STATE_NAME = ".prepare-state.json"

# A cut that GPT-2's pre-tokenizer cannot tell from the whole: after a line break that follows a
# non-space character and before a non-space one (no pre-token spans "x\nY", and a piece's final
# "\n" alone is the same pre-token at the end of a text as before a letter).
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
# What this module writes into the directory besides its state: shards, the manifest, their temporaries.
_SHARD_OR_TEMP = re.compile(r"\.?((train|val)_\d{6}\.bin|manifest\.json)(\.\d+\.[0-9a-f]+\.tmp)?"
                            r"|\.\.prepare-state\.json\.\d+\.[0-9a-f]+\.tmp")


class PrepareError(ValueError):
    """The output directory or the settings do not allow the run: the message says what to do."""


@dataclass
class Progress:
    """Where a run stands, for the progress bar (``bytes_total`` is 0 when unknown: hf: inputs)."""

    bytes_done: int
    bytes_total: int
    tokens: int           # tokens in the output so far (kept shards included)
    encoded: int          # tokens encoded by this run
    seconds: float
    kept_shards: int      # shards of an earlier run, verified and kept
    done: bool = False


@dataclass
class PrepareResult:
    manifest: Manifest
    directory: Path
    encoded_tokens: int   # encoded by this run (0 when everything was already there)
    seconds: float
    kept_shards: int
    already_done: bool = False

    @property
    def tokens_per_s(self) -> float:
        return self.encoded_tokens / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Unit:
    pieces: list = field(default_factory=list)   # texts to encode
    ends: list = field(default_factory=list)     # whether piece i ends its document (EOT after it)
    chars: int = 0
    nbytes: int = 0                              # input bytes of the documents ending in this unit


def cut_document(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of about ``size`` characters at safe line breaks (:data:`_SAFE_CUT`);
    pieces joined give ``text`` back. A text with no such break stays whole."""
    if len(text) <= size:
        return [text]
    pieces, start = [], 0
    while len(text) - start > size:
        m = _SAFE_CUT.search(text, start + size)
        if not m:
            break
        pieces.append(text[start:m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


def make_units(sources: list[Source], field_name: str, tok: Tokenizer, unit_chars: int) -> Iterator[Unit]:
    """The stream's work units, in order (deterministic for given inputs and settings)."""
    unit = Unit()
    for source in sources:
        for text, nbytes in documents(source, field_name):
            parts = cut_document(text, unit_chars) if tok.line_cuts_exact else [text]
            for i, part in enumerate(parts):
                unit.pieces.append(part)
                unit.ends.append(i == len(parts) - 1)
                unit.chars += len(part)
                if i == len(parts) - 1:
                    unit.nbytes += nbytes
                if unit.chars >= unit_chars:
                    yield unit
                    unit = Unit()
    if unit.pieces:
        yield unit


def encode_unit(tok: Tokenizer, pieces: list[str], ends: list[bool], dtype: str) -> np.ndarray:
    """The ids of one unit, an end-of-text after each piece that ends a document: (tokens,) ``dtype``."""
    encoded = tok.encode_batch(pieces)
    if encoded and isinstance(encoded[0], list):  # one flat list, one array: cheap for many short documents
        flat: list[int] = []
        for ids, end in zip(encoded, ends):
            flat += ids
            if end:
                flat.append(tok.eot)
        arr = np.array(flat, dtype=dtype)
    else:
        eot = np.array([tok.eot], dtype=dtype)
        parts = []
        for ids, end in zip(encoded, ends):
            parts += [np.asarray(ids).astype(dtype, copy=False)] + ([eot] if end else [])
        arr = np.concatenate(parts) if parts else np.zeros(0, dtype)
    if arr.size and int(arr.max()) >= tok.vocab_size:
        raise PrepareError(f"tokenizer {tok.name!r} produced id {int(arr.max())} >= its vocabulary size "
                           f"{tok.vocab_size}; its tokenizer.json is inconsistent")
    return arr


# Worker processes are forked from the main one and inherit the loaded tokenizer (nothing is pickled
# but the texts and the ids); fork, not spawn: bin/asiarch runs the CLI at import, unguarded.
_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: the workers are the parallelism


def _encode_in_worker(pieces: list[str], ends: list[bool], dtype: str) -> np.ndarray:
    return encode_unit(_WORKER_TOKENIZER, pieces, ends, dtype)


# --------------------------------------------------------------------------- the plan and its state


def _plan(sources: list[Source], tok: Tokenizer, *, field_name: str, val_tokens: int, shard_tokens: int,
          unit_chars: int) -> dict:
    """Everything the output depends on; a resumed run must have the same plan."""
    tokenizer_file = []
    if Path(tok.name).is_file():
        st = Path(tok.name).stat()
        tokenizer_file = [st.st_size, st.st_mtime_ns]
    return {"inputs": [s.fingerprint() for s in sources], "tokenizer": tok.name, "tokenizer_file": tokenizer_file,
            "vocab_size": tok.vocab_size, "eot": tok.eot, "field": field_name, "val_tokens": val_tokens,
            "shard_tokens": shard_tokens, "unit_chars": unit_chars}


def _plan_difference(old: dict, new: dict) -> str:
    diffs = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    parts = []
    for k in diffs:
        if k == "inputs":
            parts.append("the inputs (names, sizes or modification times)")
        else:
            parts.append(f"{k} (was {old.get(k)!r}, now {new.get(k)!r})")
    return ", ".join(parts)


def _load_state(out: Path, plan: dict) -> tuple[list[dict], bool]:
    """The shard records of an earlier run of this plan in ``out`` and whether it finished (no records
    for a new directory)."""
    state_path = out / STATE_NAME
    if not state_path.exists():
        leftovers = [p.name for p in out.iterdir()] if out.is_dir() else []
        if leftovers:
            raise PrepareError(f"{out}: not empty and not an asiarch data prepare directory (holds "
                               f"{', '.join(sorted(leftovers)[:5])}); give a new or empty --out")
        return [], False
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        old_plan, records, done = state["plan"], state["shards"], bool(state["done"])
    except (ValueError, KeyError, TypeError) as exc:
        raise PrepareError(f"{state_path}: unreadable resume state ({exc}); delete {out} and prepare again") from None
    if old_plan != plan:
        raise PrepareError(f"{out} holds a prepare with other settings: {_plan_difference(old_plan, plan)} "
                           f"differ. Rerun with the original inputs and settings to resume it, or give a new --out")
    return records, done


def _verified_prefix(out: Path, records: list[dict]) -> list[dict]:
    """The records whose shard is on disk with its recorded size and sha256, up to the first that is not."""
    kept = []
    for r in records:
        path = out / r["file"]
        if not path.is_file() or path.stat().st_size != r["bytes"] or sha256_file(path) != r["sha256"]:
            break
        kept.append(r)
    return kept


def _save_state(out: Path, plan: dict, records: list[dict], done: bool = False) -> None:
    atomic_write(out / STATE_NAME, json.dumps({"plan": plan, "shards": records, "done": done}, indent=1))


# --------------------------------------------------------------------------- writing the stream


class _StreamWriter:
    """Cuts the id stream into the val split then the train split, in shards; records each."""

    def __init__(self, out: Path, plan: dict, records: list[dict], *, dtype: str, eot: int, val_tokens: int,
                 shard_tokens: int):
        self.out, self.plan, self.records = out, plan, list(records)
        self.dtype, self.eot, self.val_tokens, self.shard_tokens = dtype, eot, val_tokens, shard_tokens
        last = records[-1] if records else None
        self.split = last["after_split"] if last else "val"
        self.val_count = sum(r["tokens"] for r in records if r["split"] == "val")
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.tokens = sum(r["tokens"] for r in records)

    def resume_point(self) -> tuple[int, int]:
        return tuple(self.records[-1]["next"]) if self.records else (0, 0)

    def feed(self, unit_index: int, ids: np.ndarray, start: int = 0) -> None:
        """Append ``ids[start:]``, the ids of unit ``unit_index``, flushing shards as they fill."""
        pos, n = start, len(ids)
        while pos < n:
            room = self.shard_tokens - self.buffered
            if self.split == "val" and self.val_count >= self.val_tokens:
                ends = np.flatnonzero(ids[pos:pos + room] == self.eot)  # finish the document val ends in
                take = int(ends[0]) + 1 if ends.size else min(n - pos, room)
            elif self.split == "val":
                take = min(n - pos, room, self.val_tokens - self.val_count)
            else:
                take = min(n - pos, room)
            self.buffer.append(ids[pos:pos + take])
            self.buffered += take
            pos += take
            if self.split == "val":
                self.val_count += take
                if self.val_count >= self.val_tokens and ids[pos - 1] == self.eot:
                    self.flush(unit_index, pos, n, after_split="train")
                    continue
            if self.buffered == self.shard_tokens:
                self.flush(unit_index, pos, n)

    def flush(self, unit_index: int, pos: int, n: int, after_split: str | None = None) -> None:
        """Write the buffer as the next shard of the current split; the stream resumes after ``pos``."""
        after_split = after_split or self.split
        if self.buffered:
            data = np.concatenate(self.buffer).astype(self.dtype, copy=False)
            index = sum(1 for r in self.records if r["split"] == self.split)
            name = f"{self.split}_{index:06d}.bin"
            payload = data.tobytes()
            with atomic_path(self.out / name) as tmp:
                with open(tmp, "wb") as fh:
                    fh.write(payload)
            nxt = (unit_index + 1, 0) if pos >= n else (unit_index, pos)
            self.records.append({"split": self.split, "file": name, "tokens": int(data.size), "bytes": len(payload),
                                 "sha256": hashlib.sha256(payload).hexdigest(), "next": list(nxt),
                                 "after_split": after_split})
            self.tokens += int(data.size)
            _save_state(self.out, self.plan, self.records)
        self.buffer, self.buffered, self.split = [], 0, after_split


# --------------------------------------------------------------------------- prepare


def prepare(inputs: list[str], *, tokenizer: str, out: str | os.PathLike, val_tokens: int = DEFAULT_VAL_TOKENS,
            workers: int = 1, field: str = "text", eot: str | None = None,
            shard_tokens: int = DEFAULT_SHARD_TOKENS, unit_chars: int = DEFAULT_UNIT_CHARS,
            progress: Callable[[Progress], None] | None = None) -> PrepareResult:
    """Tokenize ``inputs`` into the prepared directory ``out`` (see the module docstring).

    ``tokenizer``: 'gpt2', 'bytes' or a tokenizer.json path (``eot``: its end-of-text token's name,
    when not a usual one). ``progress`` is called a few times a second and once at the end. Raises
    InputError (an input), TokenizerError (the tokenizer), PrepareError (the directory, the settings,
    a corpus too small for the splits)."""
    if not inputs:
        raise InputError("no inputs: give text, .jsonl or .parquet files, or hf:NAME[:CONFIG]")
    for name, value, low in (("--val-tokens", val_tokens, 1), ("--workers", workers, 1),
                             ("--shard-tokens", shard_tokens, 1), ("unit_chars", unit_chars, 1)):
        if value < low:
            raise PrepareError(f"{name} must be at least {low}, got {value}")
    sources = [open_source(name) for name in inputs]   # every input checked before any work
    tok = load_tokenizer(tokenizer, eot=eot)
    dtype = dtype_for(tok.vocab_size)
    out = Path(out)
    plan = _plan(sources, tok, field_name=field, val_tokens=val_tokens, shard_tokens=shard_tokens,
                 unit_chars=unit_chars)
    records, finished = _load_state(out, plan)
    if finished and (out / MANIFEST_NAME).exists():
        manifest = read_manifest(out)  # done before: its shards are there with their sizes
        return PrepareResult(manifest, out, 0, 0.0, len(manifest.shards()), already_done=True)
    out.mkdir(parents=True, exist_ok=True)
    kept = _verified_prefix(out, records)
    known = {r["file"] for r in kept}
    for stale in out.iterdir():  # shards after the last good one, and temporary files of a killed write
        if stale.name not in known and _SHARD_OR_TEMP.fullmatch(stale.name):
            stale.unlink()
    writer = _StreamWriter(out, plan, kept, dtype=dtype, eot=tok.eot, val_tokens=val_tokens,
                           shard_tokens=shard_tokens)
    if not kept:
        _save_state(out, plan, [])
    resume_unit, resume_offset = writer.resume_point()

    t0 = time.time()
    total_bytes = sum(s.size for s in sources) if all(s.kind != "hf" for s in sources) else 0
    state = {"bytes": 0, "encoded": 0, "last": 0.0}

    def report(done: bool = False) -> None:
        now = time.time()
        if progress is not None and (done or now - state["last"] >= 0.2):
            state["last"] = now
            progress(Progress(state["bytes"], total_bytes, writer.tokens + writer.buffered, state["encoded"],
                              now - t0, len(kept), done))

    def consume(index: int, nbytes: int, ids: np.ndarray) -> None:
        writer.feed(index, ids, resume_offset if index == resume_unit else 0)
        state["encoded"] += len(ids) - (resume_offset if index == resume_unit else 0)
        state["bytes"] += nbytes
        report()

    units = make_units(sources, field, tok, unit_chars)
    last = -1  # index of the last unit of the stream
    if workers == 1:
        for last, unit in enumerate(units):
            i = last
            if i < resume_unit:
                state["bytes"] += unit.nbytes
                continue
            consume(i, unit.nbytes, encode_unit(tok, unit.pieces, unit.ends, dtype))
    else:
        global _WORKER_TOKENIZER
        _WORKER_TOKENIZER = tok
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_init_worker)
        try:
            pending: deque = deque()
            for last, unit in enumerate(units):
                i = last
                if i < resume_unit:
                    state["bytes"] += unit.nbytes
                    continue
                pending.append((i, unit.nbytes, pool.submit(_encode_in_worker, unit.pieces, unit.ends, dtype)))
                while len(pending) > 2 * workers:  # bounded read-ahead: memory stays a few units per worker
                    index, nbytes, future = pending.popleft()
                    consume(index, nbytes, future.result())
            while pending:
                index, nbytes, future = pending.popleft()
                consume(index, nbytes, future.result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            _WORKER_TOKENIZER = None
    writer.flush(last, 0, 0)  # the last, partial shard: the stream resumes after the last unit

    splits = {name: [r for r in writer.records if r["split"] == name] for name in ("train", "val")}
    total = writer.tokens
    if not splits["train"]:
        raise PrepareError(f"the inputs hold {total:,} tokens, and the validation split (--val-tokens {val_tokens:,}, "
                           f"rounded up to a whole document) took all of them: none are left for training; lower "
                           f"--val-tokens or add inputs (then prepare into a new --out)")
    manifest = Manifest(
        tokenizer=tok.name, vocab_size=tok.vocab_size, eot=tok.eot, dtype=dtype, sources=tuple(inputs),
        splits={name: Split(sum(r["tokens"] for r in rs), tuple(Shard(r["file"], r["tokens"], r["sha256"]) for r in rs))
                for name, rs in splits.items()})
    if tok.name not in ("gpt2", "bytes"):  # a tokenizer.json: a copy travels with the data (jobs read it there)
        atomic_write(out / TOKENIZER_COPY, Path(tok.name).read_bytes())
    write_manifest(out, manifest)
    _save_state(out, plan, writer.records, done=True)
    seconds = time.time() - t0
    report(done=True)
    return PrepareResult(manifest, out, state["encoded"], seconds, len(kept))


# --------------------------------------------------------------------------- the tokenizer alone, for comparison

#: Characters of the inputs' first documents that :func:`tokenizer_alone` encodes (a few seconds at most).
COMPARE_CHARS = 4_000_000


@dataclass
class EncodeRate:
    """The tokenizer alone on texts in memory, one thread: what ``prepare``'s own rate is measured against."""

    method: str           # e.g. "tiktoken encode_ordinary, 1 thread"
    documents: int
    chars: int
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


def encode_rate(tok: Tokenizer, texts: list[str]) -> EncodeRate:
    """Time ``tok`` encoding ``texts`` (already in memory) in this process: for gpt2 tiktoken's
    ``encode_ordinary`` over each text, one thread, its fastest single-thread path (its
    ``encode_ordinary_batch`` with ``num_threads=1`` is slower on short documents)."""
    method = {"gpt2": "tiktoken encode_ordinary, 1 thread", "bytes": "UTF-8 bytes"}.get(
        tok.name, "tokenizers encode_batch, its own threads")
    tok.encode_batch(texts[:200])  # warm-up: the first calls build the tokenizer's caches
    t0 = time.perf_counter()
    tokens = sum(len(ids) for ids in tok.encode_batch(texts))
    return EncodeRate(method, len(texts), sum(map(len, texts)), tokens, time.perf_counter() - t0)


def tokenizer_alone(inputs: list[str], *, tokenizer: str, field: str = "text", eot: str | None = None,
                    max_chars: int = COMPARE_CHARS) -> EncodeRate:
    """:func:`encode_rate` on the first documents of ``inputs`` (up to ``max_chars`` characters), read
    into memory first: the same text ``prepare`` encoded, without its reading, writing and hashing."""
    tok = load_tokenizer(tokenizer, eot=eot)
    texts, chars = [], 0
    for source in (open_source(name) for name in inputs):
        for text, _ in documents(source, field):
            texts.append(text)
            chars += len(text)
            if chars >= max_chars:
                break
        if chars >= max_chars:
            break
    return encode_rate(tok, texts)

