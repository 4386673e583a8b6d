"""Training and evaluation tasks: MQAR, and language modelling over a token file or a prepared directory.

Every task exposes ``vocab_size``, ``seq_len``, ``batch(batch_size, generator)`` and
``eval_batches(...)``. Nothing here touches global random state: the trainer passes a
``torch.Generator`` seeded per rank, so each rank draws its own, reproducible, batches.
Batches are CPU ``int64`` tensors ``[B, T]``; the trainer moves them to its device.
Targets equal to :data:`IGNORE_INDEX` are not scored (``F.cross_entropy``'s default).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import torch

from asiarch.job.contract import atomic_write
# encode_bytes lives with the manifest (numpy only, for `asiarch data prepare --tokenizer bytes`); re-exported
from asiarch.job.data import PREPARE_HINT, DataError, encode_bytes, open_shard, read_manifest  # noqa: F401

IGNORE_INDEX = -100


def masked_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of scored positions (``targets != -100``) whose argmax equals the target.

    logits: [B, T, V]; targets: [B, T]. Returns nan when no position is scored.
    """
    mask = targets != IGNORE_INDEX
    total = int(mask.sum())
    if total == 0:
        return float("nan")
    correct = (logits.argmax(dim=-1) == targets) & mask
    return int(correct.sum()) / total


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


# --------------------------------------------------------------------------- MQAR


def _distinct(rng: np.random.Generator, rows: int, n: int, high: int) -> np.ndarray:
    """``rows`` uniform draws of ``n`` distinct integers in ``[0, high)``, in random order: (rows, n).

    When n is small against high, i.i.d. draws whose rows hold a repeat are redrawn whole
    (exact, and cheap: a row repeats with probability about 1 - exp(-n^2 / 2high)); otherwise a
    random permutation of each row of [0, high), cut to n.
    """
    if n * n > 2 * high:
        return rng.permuted(np.broadcast_to(np.arange(high), (rows, high)), axis=1)[:, :n]
    out = rng.integers(high, size=(rows, n))
    redo = np.arange(rows)
    while True:
        s = np.sort(out[redo], axis=1)
        redo = redo[(s[:, 1:] == s[:, :-1]).any(axis=1)]
        if redo.size == 0:
            return out
        out[redo] = rng.integers(high, size=(redo.size, n))


class MQARTask:
    """Multi-query associative recall (Zoology, arXiv 2312.04927).

    A row of ``seq_len`` tokens opens with ``num_kv_pairs`` pairs ``k1 v1 k2 v2 ...``
    (keys drawn without replacement from ``[1, vocab_size // 2)``, values from
    ``[vocab_size // 2, vocab_size)``). The rest of the row is split into slots of two
    tokens; each key reappears once, as a query at the first token of a slot chosen
    without replacement with probability ∝ slot^(power_a - 1) (slot = 1, 2, ...), so
    most queries come soon after the context, as in Zoology. The target at a query's
    position is its key's value; every other target is -100. Tokens at other positions
    are uniform over the vocabulary (``random_non_queries``) or 0.
    """

    name = "mqar"

    def __init__(
        self,
        vocab_size: int = 8192,
        seq_len: int = 64,
        num_kv_pairs: int = 4,
        power_a: float = 0.01,
        random_non_queries: bool = True,
    ):
        self.vocab_size = _check_int("vocab_size", vocab_size, 8)
        self.num_kv_pairs = _check_int("num_kv_pairs", num_kv_pairs, 1)
        self.seq_len = _check_int("seq_len", seq_len, 4)
        if self.seq_len < 4 * self.num_kv_pairs:
            raise ValueError(
                f"seq_len must be >= 4 * num_kv_pairs = {4 * self.num_kv_pairs} (context plus one query "
                f"slot of 2 tokens per key), got seq_len={self.seq_len}"
            )
        if self.num_kv_pairs > self.vocab_size // 4:
            raise ValueError(
                f"num_kv_pairs must be <= vocab_size // 4 = {self.vocab_size // 4}, got {self.num_kv_pairs}"
            )
        if not (isinstance(power_a, (int, float)) and 0 < power_a <= 1):
            raise ValueError(f"power_a must be in (0, 1], got {power_a!r}")
        self.power_a = float(power_a)
        self.random_non_queries = bool(random_non_queries)
        self.context_len = 2 * self.num_kv_pairs
        self.num_slots = (self.seq_len - self.context_len) // 2
        # Slot weights p ∝ slot^(a-1); the race in batch() divides by them.
        self._inv_slot_weight = np.arange(1, self.num_slots + 1, dtype=np.float64) ** (1 - self.power_a)  # [S]

    def __repr__(self) -> str:
        return (
            f"MQARTask(vocab_size={self.vocab_size}, seq_len={self.seq_len}, num_kv_pairs={self.num_kv_pairs}, "
            f"power_a={self.power_a}, random_non_queries={self.random_non_queries})"
        )

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: ``(inputs, targets)``, both int64 ``[batch_size, seq_len]``."""
        B = _check_int("batch_size", batch_size, 1)
        V, T, n, S = self.vocab_size, self.seq_len, self.num_kv_pairs, self.num_slots
        half = V // 2
        # The torch generator seeds a numpy one: numpy runs these small ops on one thread,
        # many times faster than torch's thread pool when cores are shared.
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        rows = np.arange(B)[:, None]

        keys = 1 + _distinct(rng, B, n, half - 1)  # (B, n) in [1, half); 0 is never a key
        values = half + _distinct(rng, B, n, V - half)  # (B, n) in [half, V)

        # Weighted sampling without replacement (Efraimidis-Spirakis): the n slots with the
        # largest log(u) / w, in decreasing order, are a sequential draw with p ∝ w.
        race = np.log(rng.random((B, S)) + 1e-300) * self._inv_slot_weight  # (B, S)
        slots = np.argsort(-race, axis=1, kind="stable")[:, :n]  # (B, n); key i is queried in slots[:, i]
        query_pos = self.context_len + 2 * slots  # (B, n)

        if self.random_non_queries:
            inputs = rng.integers(V, size=(B, T), dtype=np.int64)
        else:
            inputs = np.zeros((B, T), dtype=np.int64)
        inputs[:, 0 : self.context_len : 2] = keys
        inputs[:, 1 : self.context_len : 2] = values
        inputs[rows, query_pos] = keys
        targets = np.full((B, T), IGNORE_INDEX, dtype=np.int64)
        targets[rows, query_pos] = values
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    def eval_batches(self, n: int, batch_size: int, seed: int = 1234) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n`` fixed batches from their own generator, independent of training draws."""
        g = torch.Generator().manual_seed(seed)
        return [self.batch(batch_size, g) for _ in range(_check_int("n", n, 0))]


# --------------------------------------------------------------------------- bytes tokenizer


def decode_bytes(tokens) -> str:
    """Inverse of :func:`encode_bytes`; invalid UTF-8 (e.g. a cut character) becomes U+FFFD."""
    arr = np.asarray(tokens)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"decode_bytes needs byte tokens in [0, 255], got range [{arr.min()}, {arr.max()}]")
    return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def write_token_file(path: str | os.PathLike, text_or_array, dtype: str = "uint16") -> Path:
    """Write tokens (or a string, byte-encoded) as a flat binary file, atomically.

    The file is raw ``dtype`` values in native (little-endian on every supported
    machine) order, the format nanoGPT's ``train.bin`` uses. Returns the path.
    """
    path = Path(path)
    np_dtype = np.dtype(dtype)
    if np_dtype.kind not in "ui":
        raise ValueError(f"dtype must be an integer type such as 'uint16' or 'uint32', got {dtype!r}")
    arr = encode_bytes(text_or_array) if isinstance(text_or_array, str) else np.asarray(text_or_array)
    if arr.dtype.kind not in "ui" and arr.size:
        raise ValueError(f"tokens must be integers, got dtype {arr.dtype}")
    info = np.iinfo(np_dtype)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise ValueError(f"tokens range [{arr.min()}, {arr.max()}] does not fit dtype {dtype!r}; use a wider dtype such as 'uint32'")
    data = np.ascontiguousarray(arr.reshape(-1), dtype=np_dtype)
    atomic_write(path, data.tobytes())
    return path


# --------------------------------------------------------------------------- language modelling


class TokenFileTask:
    """Next-token prediction over a flat binary token file (read-only memmap).

    The last ``eval_fraction`` of the file (at least one window) is held out: training
    windows come only from before it, :meth:`eval_batches` only from inside it.
    ``vocab_size`` defaults to ``max token + 1``; when given, every token is checked
    to be below it.
    """

    name = "lm"

    def __init__(
        self,
        path: str | os.PathLike,
        seq_len: int,
        dtype: str = "uint16",
        vocab_size: int | None = None,
        eval_fraction: float = 0.1,
    ):
        self.path = Path(path)
        self.seq_len = _check_int("seq_len", seq_len, 1)
        if not (0 < eval_fraction < 1):
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
        np_dtype = np.dtype(dtype)
        if np_dtype.kind not in "ui":
            raise ValueError(f"dtype must be an integer type such as 'uint16' or 'uint32', got {dtype!r}")
        if not self.path.is_file():
            raise FileNotFoundError(
                f"token file {self.path} does not exist; point train.token_file at an existing {np_dtype.name} "
                f"token file (asiarch.job.tasks.write_token_file writes one), or {PREPARE_HINT} and set train.data"
            )
        size = self.path.stat().st_size
        if size % np_dtype.itemsize:
            raise ValueError(
                f"token file {self.path} has {size} bytes, not a multiple of {np_dtype.itemsize} "
                f"({np_dtype.name}); check its dtype"
            )
        window = self.seq_len + 1
        num_tokens = size // np_dtype.itemsize
        if num_tokens < window:
            raise ValueError(
                f"token file {self.path} holds {num_tokens} tokens, shorter than seq_len + 1 = {window}; "
                f"use a longer file or a shorter seq_len"
            )
        held_out = max(int(num_tokens * eval_fraction), window)
        if num_tokens - held_out < window:
            raise ValueError(
                f"token file {self.path} holds {num_tokens} tokens, too few for a training window and a "
                f"held-out eval window of seq_len + 1 = {window} each; needs at least {2 * window}"
            )
        self.tokens = np.memmap(self.path, dtype=np_dtype, mode="r")
        self.num_tokens = num_tokens
        self.split = num_tokens - held_out  # training: [0, split), eval: [split, num_tokens)
        max_token = self._max_token()
        if vocab_size is None:
            self.vocab_size = max_token + 1
        else:
            self.vocab_size = _check_int("vocab_size", vocab_size, 1)
            if max_token >= self.vocab_size:
                raise ValueError(
                    f"token file {self.path} holds token {max_token} >= vocab_size {self.vocab_size}; "
                    f"raise vocab_size or check the tokenizer and dtype the file was written with"
                )

    def __repr__(self) -> str:
        return f"TokenFileTask(path={str(self.path)!r}, seq_len={self.seq_len}, vocab_size={self.vocab_size})"

    def _max_token(self, chunk: int = 1 << 24) -> int:
        # Chunked, so a multi-GB file is scanned without loading it whole.
        return int(max(self.tokens[i : i + chunk].max() for i in range(0, self.num_tokens, chunk)))

    def _windows(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = starts[:, None] + np.arange(self.seq_len + 1)  # (B, T+1)
        w = torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))
        return w[:, :-1], w[:, 1:]  # inputs, targets: (B, T) each

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random training windows: ``inputs = w[:-1]``, ``targets = w[1:]``, int64 ``[B, seq_len]``."""
        B = _check_int("batch_size", batch_size, 1)
        high = self.split - self.seq_len  # window [s, s + seq_len] must end before split
        starts = torch.randint(high, (B,), generator=generator).numpy()
        return self._windows(starts)

    def eval_starts(self, count: int) -> np.ndarray:
        """``count`` window starts spread evenly over the held-out tail (overlapping only if it is short)."""
        last = self.num_tokens - (self.seq_len + 1)
        return np.linspace(self.split, last, count).round().astype(np.int64)

    def eval_batches(self, n: int, batch_size: int, seed: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n`` fixed batches from the held-out tail; ``seed`` is accepted for symmetry and unused."""
        n, B = _check_int("n", n, 0), _check_int("batch_size", batch_size, 1)
        starts = self.eval_starts(n * B)
        return [self._windows(starts[i * B : (i + 1) * B]) for i in range(n)]


class PreparedDataTask:
    """Next-token prediction over a directory written by `asiarch data prepare` (:mod:`asiarch.job.data`).

    Training windows of ``seq_len + 1`` tokens are drawn uniformly from every window start of every
    train shard (each shard a read-only memmap; a window never spans two shards), from the generator
    the trainer seeds per rank. The val split is scored in non-overlapping windows (stride
    ``seq_len``: each val token after a shard's first is a target once), the same windows for any
    number of ranks: :meth:`eval_shard` gives a rank its part. Documents are separated by the
    manifest's end-of-text token in the stream, so a window that spans two documents sees it
    between them. ``vocab_size`` is the manifest's, or the given one when larger (padding, e.g. 50,304
    for GPT-2's 50,257); a given one that is smaller is refused by the head (asiarch.config).
    """

    name = "lm"

    def __init__(self, directory: str | os.PathLike, seq_len: int, vocab_size: int = 0):
        self.directory = Path(directory)
        self.seq_len = _check_int("seq_len", seq_len, 1)
        self.manifest = m = read_manifest(self.directory)  # DataError names a missing or truncated shard
        self.vocab_size = max(m.vocab_size, int(vocab_size or 0))
        self.eot = m.eot
        window = self.seq_len + 1
        train = [s for s in m.splits["train"].shards if s.tokens >= window]
        if not train:
            raise DataError(f"{self.directory}: no train shard holds seq_len + 1 = {window} tokens (largest: "
                            f"{max((s.tokens for s in m.splits['train'].shards), default=0)}); use a shorter "
                            f"train.seq_len or prepare more text")
        val = [s for s in m.splits["val"].shards if s.tokens >= window]
        if not val:
            raise DataError(f"{self.directory}: its val split ({m.splits['val'].tokens} tokens) holds no window of "
                            f"seq_len + 1 = {window} tokens; prepare it again with a larger --val-tokens")
        self._train = [open_shard(self.directory, m, s) for s in train]
        self._val = [open_shard(self.directory, m, s) for s in val]
        # window starts: shard k has tokens_k - seq_len of them; _train_ends[k] = starts in shards 0..k
        self._train_ends = np.cumsum([len(t) - self.seq_len for t in self._train])
        # val windows in order: shard k holds (tokens_k - 1) // seq_len of them
        self._val_ends = np.cumsum([(len(t) - 1) // self.seq_len for t in self._val])
        self.num_eval_windows = int(self._val_ends[-1])

    def __repr__(self) -> str:
        return (f"PreparedDataTask(directory={str(self.directory)!r}, seq_len={self.seq_len}, "
                f"vocab_size={self.vocab_size}, tokenizer={self.manifest.tokenizer!r})")

    @staticmethod
    def _gather(shards, ends, index: np.ndarray, stride: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows ``index`` (global numbers; window j of shard k starts at (j - ends[k-1]) * stride)."""
        which = np.searchsorted(ends, index, side="right")  # (B,) shard of each window
        offset = index - np.concatenate([[0], ends])[which]
        rows = [np.asarray(shards[k][o * stride: o * stride + length], dtype=np.int64) for k, o in zip(which, offset)]
        w = torch.from_numpy(np.stack(rows)) if rows else torch.zeros((0, length), dtype=torch.int64)
        return w[:, :-1], w[:, 1:]  # inputs, targets: (B, T) each

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random training windows: ``inputs = w[:-1]``, ``targets = w[1:]``, int64 ``[B, seq_len]``."""
        B = _check_int("batch_size", batch_size, 1)
        starts = torch.randint(int(self._train_ends[-1]), (B,), generator=generator).numpy()
        return self._gather(self._train, self._train_ends, starts, 1, self.seq_len + 1)

    def eval_windows(self, count: int) -> np.ndarray:
        """The global numbers of the first ``count`` val windows (all of them when there are fewer)."""
        return np.arange(min(_check_int("count", count, 0), self.num_eval_windows))

    def eval_batches(self, n: int, batch_size: int, seed: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``n * batch_size`` val windows in batches (the last may be short); ``seed`` unused."""
        B = _check_int("batch_size", batch_size, 1)
        idx = self.eval_windows(_check_int("n", n, 0) * B)
        return [self._gather(self._val, self._val_ends, idx[i:i + B], self.seq_len, self.seq_len + 1)
                for i in range(0, len(idx), B)]

    def eval_shard(self, rank: int, world: int, count: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Rank ``rank``'s part of the first ``count`` val windows (window j goes to rank j % world), in
        batches of ``batch_size``: the ranks' parts are disjoint and together every window once."""
        idx = self.eval_windows(count)[rank::world]
        B = _check_int("batch_size", batch_size, 1)
        return [self._gather(self._val, self._val_ends, idx[i:i + B], self.seq_len, self.seq_len + 1)
                for i in range(0, len(idx), B)]


# --------------------------------------------------------------------------- factory

TASKS = {"mqar": MQARTask, "lm": TokenFileTask}


def make_task(name: str, **params):
    """Build a task by name; unknown names or parameters raise ValueError listing the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    cls = TASKS[name]
    sig = inspect.signature(cls.__init__)
    valid = {k: p for k, p in sig.parameters.items() if k != "self"}
    unknown = sorted(set(params) - set(valid))
    missing = sorted(k for k, p in valid.items() if p.default is inspect.Parameter.empty and k not in params)
    if unknown or missing:
        listing = ", ".join(
            k if p.default is inspect.Parameter.empty else f"{k}={p.default!r}" for k, p in valid.items()
        )
        problem = f"unknown parameter(s) {unknown}" if unknown else f"missing parameter(s) {missing}"
        raise ValueError(f"task {name!r}: {problem}; valid parameters: {listing}")
    return cls(**params)
