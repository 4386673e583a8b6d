"""``ast.parse`` for code that may be parsed on several threads at once.

CPython 3.11 builds an AST with interpreter-wide state that two threads parsing at the same time
can corrupt: ``SystemError: AST constructor recursion depth mismatch`` (python/cpython#106905),
seen here when the steady pipeline's workers checked several LLM proposals at once. Every parse of
candidate code goes through :func:`parse`, one at a time (a parse takes about a millisecond).
Standard library only: the job side uses it too.
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.Lock()


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse(source, filename)``, never at the same time as another thread's."""
    with _LOCK:
        return ast.parse(source, filename)
