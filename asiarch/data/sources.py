"""The inputs of `asiarch data prepare`, read as documents in a fixed order.

An input is one of:

- a text file (any other suffix): the whole file is one document (UTF-8);
- a JSON-lines file (``.jsonl``, ``.ndjson``): one document per line, its text in ``field``;
  blank lines are skipped;
- a Parquet file (``.parquet``, through pyarrow): one document per row, column ``field``;
- ``hf:NAME[:CONFIG]``: the ``train`` split of a Hugging Face dataset already in the local
  ``datasets`` cache (read offline unless ``HF_DATASETS_OFFLINE=0`` is set), one document per row.

Empty documents are skipped (they would only add an end-of-text token). Every reader yields
``(text, nbytes)``: the document and the input bytes it stands for, which the progress bar counts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
INSTALL_HINT = "pip install 'asiarch[data]'"


class InputError(ValueError):
    """An input that cannot be read as documents: the message names the input (file and line) and
    what to do."""


@dataclass(frozen=True)
class Source:
    """One input, as given on the command line."""

    name: str          # as given: a path, or hf:NAME[:CONFIG]
    kind: str          # 'text', 'jsonl', 'parquet' or 'hf'
    size: int          # bytes on disk (0 for hf: unknown)
    mtime_ns: int      # with size, what tells a resumed run that the input is still the same

    def fingerprint(self) -> list:
        return [self.name, self.kind, self.size, self.mtime_ns]


def open_source(name: str) -> Source:
    """The input called ``name``, checked to exist and be non-empty (InputError otherwise)."""
    if name.startswith("hf:"):
        if not name[3:] or name[3:].startswith(":"):
            raise InputError(f"{name}: give a dataset name, as hf:NAME or hf:NAME:CONFIG")
        return Source(name, "hf", 0, 0)
    path = Path(name)
    if not path.exists():
        raise InputError(f"{name}: no such input file (give text, .jsonl or .parquet files, or hf:NAME[:CONFIG])")
    if path.is_dir():
        raise InputError(f"{name}: a directory; give its files (e.g. {name}/*.jsonl)")
    st = path.stat()
    if st.st_size == 0:
        raise InputError(f"{name}: empty input file; remove it from the inputs or give one with text")
    suffix = path.suffix.lower()
    kind = "jsonl" if suffix in JSONL_SUFFIXES else "parquet" if suffix in PARQUET_SUFFIXES else "text"
    return Source(name, kind, st.st_size, st.st_mtime_ns)


def documents(source: Source, field: str = "text") -> Iterator[tuple[str, int]]:
    """The documents of ``source`` in order, as ``(text, nbytes)``; InputError names what is wrong.
    An input that yields no document at all is an error too."""
    reader = {"text": _text, "jsonl": _jsonl, "parquet": _parquet, "hf": _hf}[source.kind]
    count = 0
    for text, nbytes in reader(source, field):
        if text:
            count += 1
            yield text, nbytes
    if not count:
        raise InputError(f"{source.name}: no documents (every text is empty); remove it from the inputs")


def _text(source: Source, field: str) -> Iterator[tuple[str, int]]:
    data = Path(source.name).read_bytes()
    try:
        yield data.decode("utf-8"), len(data)
    except UnicodeDecodeError as exc:
        raise InputError(f"{source.name}: not UTF-8 text (byte {exc.start}: {exc.reason}); convert it, e.g. "
                         f"iconv -f LATIN1 -t UTF-8") from None


def _jsonl(source: Source, field: str) -> Iterator[tuple[str, int]]:
    # read as text and decode each line with a decoder made once: json.loads on bytes pays for guessing
    # the encoding and decoding again on every line (the main process parses while workers encode, so
    # this is prepare's ceiling: ~0.3 s per 100k lines against ~0.8 s)
    decode = json.JSONDecoder().decode
    no = 0
    # lines end at "\n" only, as in the bytes (a "\r" between JSON tokens is whitespace, not a line end);
    # utf-8-sig: a byte-order mark at the start, as editors on Windows write, is not part of the first line
    with open(source.name, encoding="utf-8-sig", newline="\n") as f:
        lines = iter(f)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                return
            except UnicodeDecodeError:
                raise InputError(_not_utf8_line(source.name)) from None
            no += 1
            if not line.strip():
                continue
            where = f"{source.name}:{no}"
            try:
                obj = decode(line)
            except ValueError as exc:
                raise InputError(f"{where}: not JSON ({exc}); each line must be one JSON object") from None
            if not isinstance(obj, dict) or field not in obj:
                keys = ", ".join(map(repr, obj)) if isinstance(obj, dict) else type(obj).__name__
                raise InputError(f"{where}: no {field!r} field (the line has {keys}); name the text field "
                                 f"with --field")
            text = obj[field]
            if not isinstance(text, str):
                raise InputError(f"{where}: field {field!r} is {type(text).__name__}, not a string; name the "
                                 f"text field with --field")
            yield text, len(line) if line.isascii() else len(line.encode("utf-8"))


def _not_utf8_line(name: str) -> str:
    """Which line of the file ``name`` is not UTF-8, and how to fix it (the text reader fails on a buffer of
    lines; the error path reads the file again line by line to name the line)."""
    with open(name, "rb") as f:
        for no, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (f"{name}:{no}: not UTF-8 (byte {exc.start} of the line: {exc.reason}); convert the file, e.g. "
                        f"iconv -f LATIN1 -t UTF-8")
    return f"{name}: not UTF-8; convert the file, e.g. iconv -f LATIN1 -t UTF-8"


def _parquet(source: Source, field: str) -> Iterator[tuple[str, int]]:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise InputError(f"{source.name}: reading Parquet needs pyarrow: {INSTALL_HINT} (or pip install pyarrow)") \
            from None
    pf = pq.ParquetFile(source.name)
    columns = pf.schema_arrow.names
    if field not in columns:
        raise InputError(f"{source.name}: no column {field!r} (columns: {', '.join(columns)}); name the text "
                         f"column with --field")
    rows = max(1, pf.metadata.num_rows)
    row = 0
    for batch in pf.iter_batches(columns=[field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            row += 1
            if text is not None and not isinstance(text, str):
                raise InputError(f"{source.name}: row {row}: column {field!r} is {type(text).__name__}, not text")
            yield text or "", source.size // rows


def _hf(source: Source, field: str) -> Iterator[tuple[str, int]]:
    name, _, config = source.name[3:].partition(":")
    # read the cache only, unless the user asked for the hub (HF_DATASETS_OFFLINE=0)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", os.environ["HF_DATASETS_OFFLINE"])
    try:
        import datasets
    except ModuleNotFoundError:
        raise InputError(f"{source.name}: Hugging Face datasets need the `datasets` library (pip install datasets) "
                         f"and the dataset in its cache ($HF_HOME; fill it on a machine with internet with "
                         f"datasets.load_dataset({name!r}{', ' + repr(config) if config else ''}))") from None
    try:
        ds = datasets.load_dataset(name, config or None, split="train")
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError...)
        raise InputError(f"{source.name}: cannot load it from the local datasets cache (HF_HOME="
                         f"{os.environ.get('HF_HOME', '~/.cache/huggingface')}): {type(exc).__name__}: {exc}. Fill "
                         f"the cache on a machine with internet (datasets.load_dataset({name!r}"
                         f"{', ' + repr(config) if config else ''})) and share HF_HOME") from None
    if field not in ds.column_names:
        raise InputError(f"{source.name}: no column {field!r} (columns: {', '.join(ds.column_names)}); name the "
                         f"text column with --field")
    for row, record in enumerate(ds, 1):
        text = record[field]
        if text is not None and not isinstance(text, str):
            raise InputError(f"{source.name}: row {row}: column {field!r} is {type(text).__name__}, not text")
        yield text or "", 0
