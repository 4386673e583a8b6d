"""The one error the search raises to its caller."""

from __future__ import annotations


class SearchError(RuntimeError):
    """The search cannot go on (e.g. the reference baseline failed); the message says what to fix."""
