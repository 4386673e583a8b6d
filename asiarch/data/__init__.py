"""Language-modelling data, head side: `asiarch data prepare` turns text, JSON lines, Parquet or a
cached Hugging Face dataset into token shards and a manifest, which the job reads through
:mod:`asiarch.job.data`.

    tokenizers.py   gpt2 (tiktoken, from local BPE files), tokenizer.json (Hugging Face), bytes
    sources.py      the inputs, read as documents
    prepare.py      the stream, its splits and shards, in parallel and resumable
    defaults.py     the command's defaults (standard library only)

Nothing is imported here, so that ``asiarch --help`` never waits for numpy or a tokenizer library.
"""
