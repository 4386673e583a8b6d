"""``functools`` as candidate code gets it: the standard module, except that ``cache`` and ``lru_cache``
do not cache.

A memoised function in a layer's file is state that no instance holds: shared by every instance,
outliving the probes' copies of the model, and a store for anything (``@lru_cache def box(k): return
[]``), from which a layer could replay an earlier call's outputs or count its calls. So in a
candidate they return the function unchanged; what it computes is the same, recomputed (ASI-Arch's
one use, a rotary frequency table, costs microseconds). Everything else is the standard module's.
"""

from functools import *  # noqa: F401,F403 -- the rest of the module, unchanged
from functools import __all__ as _std_all

__all__ = list(_std_all)


def lru_cache(maxsize=128, typed=False):
    """The function itself: ``@lru_cache``, ``@lru_cache()`` and ``@lru_cache(maxsize=N)`` all leave it as it is."""
    if callable(maxsize) and not isinstance(maxsize, (int, bool)):
        return maxsize
    return lambda user_function: user_function


def cache(user_function):
    """The function itself (see the module's docstring)."""
    return user_function
