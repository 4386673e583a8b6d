"""A prepared token directory: its manifest, read and checked (standard library and numpy only).

``asiarch data prepare`` (head side, :mod:`asiarch.data.prepare`) writes the directory; the job
reads it through this module, so both sides agree on one format::

    DIR/manifest.json          {"format": 1, "tokenizer": "gpt2", "vocab_size": 50257, "eot": 50256,
                                "dtype": "uint16", "sources": [...],
                                "splits": {"train": {"tokens": N, "shards": [{"file", "tokens", "sha256"}]},
                                           "val":   {...}}}
    DIR/train_000000.bin ...   flat arrays of ``dtype`` token ids (native, little-endian order), the
    DIR/val_000000.bin ...     documents of the corpus in order, each followed by the ``eot`` token

Checking a directory comes in two strengths: :func:`read_manifest` (every shard present with the size
its token count implies: cheap, done by every rank at job start) and :func:`verify_shards` (each
shard's sha256 against the manifest: reads every byte, done on the head before submitting).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asiarch.job.contract import atomic_write

MANIFEST_NAME = "manifest.json"
FORMAT = 1
SPLITS = ("train", "val")
DTYPES = ("uint16", "uint32")
#: A tokenizer.json the directory was prepared with, copied into it (jobs load it from there).
TOKENIZER_COPY = "tokenizer.json"
PREPARE_HINT = "prepare one with `asiarch data prepare INPUT... --tokenizer gpt2 --out DIR`"


class DataError(ValueError):
    """A prepared directory that is missing, incomplete or altered: the message names the file and
    what to do."""


def encode_bytes(text: str) -> np.ndarray:
    """UTF-8 bytes of ``text`` as uint16 tokens (vocabulary 256); needs no download. (Here, not in
    asiarch.job.tasks, which re-exports it: `asiarch data prepare --tokenizer bytes` needs no torch.)"""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)


def dtype_for(vocab_size: int) -> str:
    """The narrowest shard dtype that holds every id below ``vocab_size``: uint16 up to 65,536 ids."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


@dataclass(frozen=True)
class Shard:
    file: str      # name inside the directory
    tokens: int
    sha256: str    # of the file's bytes

    def to_dict(self) -> dict:
        return {"file": self.file, "tokens": self.tokens, "sha256": self.sha256}


@dataclass(frozen=True)
class Split:
    tokens: int
    shards: tuple[Shard, ...]

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "shards": [s.to_dict() for s in self.shards]}


@dataclass(frozen=True)
class Manifest:
    """What ``DIR/manifest.json`` holds (see the module docstring)."""

    tokenizer: str        # 'gpt2', 'bytes', or the absolute path of a tokenizer.json
    vocab_size: int       # ids are in [0, vocab_size); the model's vocabulary is at least this
    eot: int              # the end-of-text id that follows every document
    dtype: str            # of the shards: uint16, or uint32 when vocab_size > 65,536
    splits: dict          # 'train', 'val' -> Split
    sources: tuple[str, ...] = ()   # the inputs, as given (provenance only)
    format: int = FORMAT

    def to_dict(self) -> dict:
        return {"format": self.format, "tokenizer": self.tokenizer, "vocab_size": self.vocab_size,
                "eot": self.eot, "dtype": self.dtype, "sources": list(self.sources),
                "splits": {name: self.splits[name].to_dict() for name in SPLITS}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data, *, source: str = MANIFEST_NAME) -> Manifest:
        """The manifest in ``data`` (manifest.json's object); :class:`DataError` names what is wrong."""
        def bad(what: str) -> DataError:
            return DataError(f"{source}: {what}; {PREPARE_HINT}")

        if not isinstance(data, dict):
            raise bad("not a JSON object")
        keys = {"format", "tokenizer", "vocab_size", "eot", "dtype", "splits", "sources"}
        unknown, missing = sorted(set(data) - keys), sorted(keys - {"sources"} - set(data))
        if unknown or missing:
            raise bad(f"unknown key(s) {unknown}, missing key(s) {missing} (valid: {', '.join(sorted(keys))})")
        if data["format"] != FORMAT:
            raise bad(f"format {data['format']!r}, this asiarch reads format {FORMAT}")
        for key in ("vocab_size", "eot"):
            if not _is_int(data[key]) or data[key] < 0:
                raise bad(f"{key} must be a non-negative integer, got {data[key]!r}")
        if not data["eot"] < data["vocab_size"]:
            raise bad(f"eot {data['eot']} is outside the vocabulary of {data['vocab_size']}")
        if data["dtype"] not in DTYPES or np.iinfo(data["dtype"]).max < data["vocab_size"] - 1:
            raise bad(f"dtype {data['dtype']!r} cannot hold a vocabulary of {data['vocab_size']} "
                      f"(valid: {', '.join(DTYPES)})")
        if not isinstance(data["tokenizer"], str) or not data["tokenizer"]:
            raise bad("tokenizer must be a non-empty string")
        splits = data["splits"]
        if not isinstance(splits, dict) or sorted(splits) != sorted(SPLITS):
            raise bad(f"splits must hold exactly {', '.join(SPLITS)}")
        parsed = {}
        for name in SPLITS:
            split = splits[name]
            if not isinstance(split, dict) or not isinstance(split.get("shards"), list) or not _is_int(split.get("tokens")):
                raise bad(f"splits.{name} must be {{\"tokens\": N, \"shards\": [...]}}")
            shards = []
            for i, s in enumerate(split["shards"]):
                if not (isinstance(s, dict) and set(s) == {"file", "tokens", "sha256"} and isinstance(s["file"], str)
                        and _is_int(s["tokens"]) and s["tokens"] > 0 and isinstance(s["sha256"], str)):
                    raise bad(f"splits.{name}.shards[{i}] must be {{\"file\", \"tokens\" (> 0), \"sha256\"}}")
                if Path(s["file"]).name != s["file"]:
                    raise bad(f"splits.{name}.shards[{i}].file {s['file']!r} must be a plain file name in the directory")
                shards.append(Shard(s["file"], s["tokens"], s["sha256"]))
            if sum(s.tokens for s in shards) != split["tokens"]:
                raise bad(f"splits.{name}.tokens {split['tokens']} is not the sum of its shards' tokens")
            parsed[name] = Split(split["tokens"], tuple(shards))
        sources = data.get("sources", [])
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise bad("sources must be a list of strings")
        return cls(tokenizer=data["tokenizer"], vocab_size=data["vocab_size"], eot=data["eot"], dtype=data["dtype"],
                   splits=parsed, sources=tuple(sources), format=data["format"])

    def shards(self):
        """Every (split name, Shard), train first."""
        return [(name, s) for name in SPLITS for s in self.splits[name].shards]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_manifest(directory: str | os.PathLike, *, check_files: bool = True) -> Manifest:
    """The manifest of the prepared ``directory``; with ``check_files``, each shard must exist with
    the size its token count implies (no hashing). Raises :class:`DataError` naming the file."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory of prepared tokens; {PREPARE_HINT}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no manifest, so {directory} is not a prepared directory (or its "
                        f"`asiarch data prepare` did not finish: run it again to resume); {PREPARE_HINT}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{path}: not JSON ({exc}); {PREPARE_HINT}") from None
    manifest = Manifest.from_dict(data, source=str(path))
    if check_files:
        itemsize = np.dtype(manifest.dtype).itemsize
        for name, shard in manifest.shards():
            file = directory / shard.file
            try:
                size = file.stat().st_size
            except FileNotFoundError:
                raise DataError(f"{file}: shard of split {name!r} listed in {path} is missing; copy the whole "
                                f"directory again or prepare it anew") from None
            if size != shard.tokens * itemsize:
                raise DataError(f"{file}: {size} bytes, but {path} lists {shard.tokens} {manifest.dtype} tokens "
                                f"({shard.tokens * itemsize} bytes); the shard is truncated or altered: copy the "
                                f"directory again or prepare it anew")
    return manifest


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_shards(directory: str | os.PathLike, manifest: Manifest | None = None) -> Manifest:
    """Check every shard's size and sha256 against the manifest (reads every byte); returns the
    manifest, or raises :class:`DataError` naming the first shard that differs."""
    directory = Path(directory)
    manifest = manifest or read_manifest(directory)
    for name, shard in manifest.shards():
        digest = sha256_file(directory / shard.file)
        if digest != shard.sha256:
            raise DataError(f"{directory / shard.file}: sha256 {digest[:16]}... differs from {shard.sha256[:16]}... "
                            f"in {directory / MANIFEST_NAME} (split {name!r}): the shard was altered or damaged; "
                            f"copy the directory again or prepare it anew")
    return manifest


def write_manifest(directory: str | os.PathLike, manifest: Manifest) -> Path:
    """Write DIR/manifest.json atomically: a reader sees no manifest or the whole one."""
    path = Path(directory) / MANIFEST_NAME
    atomic_write(path, manifest.to_json())
    return path


def open_shard(directory: str | os.PathLike, manifest: Manifest, shard: Shard) -> np.memmap:
    """The shard's tokens as a read-only memmap of ``manifest.dtype``."""
    return np.memmap(Path(directory) / shard.file, dtype=manifest.dtype, mode="r", shape=(shard.tokens,))
