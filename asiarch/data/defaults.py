"""The defaults of `asiarch data prepare` (standard library only: the CLI's --help shows them)."""

DEFAULT_VAL_TOKENS = 1_000_000
DEFAULT_SHARD_TOKENS = 100_000_000   # llm.c's FineWeb shards: 200 MB at uint16
DEFAULT_UNIT_CHARS = 1 << 20         # ~250k GPT-2 tokens per work unit: amortises a worker round trip
