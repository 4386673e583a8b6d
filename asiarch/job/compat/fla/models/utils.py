"""``fla.models.utils.Cache``: per-layer states for incremental decoding.

ASI-Arch's layers read ``past_key_values[self.layer_idx]`` and call
``past_key_values.update(recurrent_state=..., conv_state=..., layer_idx=..., offset=...)``
only when decoding with ``use_cache=True``; training never builds one. This keeps fla
0.2.x's interface for those calls (a list of state dicts; the token count advances at
layer 0) without transformers' Cache base class. Attention-window states are stored as
given, not concatenated.
"""

from __future__ import annotations

from typing import Any, Iterator

__all__ = ["Cache"]


class Cache:
    """States of every layer: ``cache[layer_idx]`` is a dict with recurrent_state,
    attn_state, conv_state and ffn_state."""

    def __init__(self, seen_tokens: int = 0) -> None:
        self.states: list[dict[str, Any]] = []
        self._seen_tokens = seen_tokens

    def __getitem__(self, layer_idx: int) -> dict[str, Any]:
        if layer_idx < len(self.states):
            return self.states[layer_idx]
        raise KeyError(f"Cache only has {len(self.states)} layers, attempted to access layer with index {layer_idx}")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.states)

    def __len__(self) -> int:
        return len(self.states)

    def update(self, recurrent_state: Any = None, attn_state: Any = None, conv_state: Any = None,
               ffn_state: Any = None, layer_idx: int = 0, offset: int | None = 1,
               cache_kwargs: dict | None = None) -> dict[str, Any]:
        """Store the given states for ``layer_idx`` (a new layer is appended) and return its dict."""
        if layer_idx == 0:
            self._seen_tokens += offset or 0
        given = {"recurrent_state": recurrent_state, "attn_state": attn_state, "conv_state": conv_state,
                 "ffn_state": ffn_state}
        if len(self.states) <= layer_idx:
            self.states.append(given)
        else:
            self.states[layer_idx].update({k: v for k, v in given.items() if v is not None})
        return self.states[layer_idx]

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        """Tokens seen so far (0 before layer ``layer_idx`` stored anything)."""
        return self._seen_tokens if len(self.states) > (layer_idx or 0) else 0
