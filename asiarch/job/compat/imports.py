"""Which fla a candidate gets, and how its imports are routed to it.

``backend_for(device)`` decides: ``"fla"`` (the real flash-linear-attention and
transformers) when fla imports and the layer runs on CUDA, else ``"compat"`` (the
plain-PyTorch modules of this package). ``candidate_builtins(backend)`` is the
``__builtins__`` a candidate module executes with: under ``"compat"`` its
``__import__`` maps ``fla.X`` to ``asiarch.job.compat.fla.X`` (and the same for
``transformers``); under both, ``functools`` is ``asiarch.job.compat.functools`` (whose
``cache`` and ``lru_cache`` do not cache: a memo is state no instance holds); every other
import goes to Python's own.
"""

from __future__ import annotations

# Imported under private names: nothing this module holds is a public attribute a
# candidate could reach (the lint refuses asiarch.job.compat and private names anyway).
import builtins as _builtins
import contextlib as _contextlib
import functools as _functools
import importlib as _importlib
from typing import Iterator

import torch as _torch

COMPAT_PACKAGE = "asiarch.job.compat"
# Top-level packages the compat layer stands in for, each a subpackage of COMPAT_PACKAGE.
STAND_INS = ("fla", "transformers")

_PROVIDED = ("fla.modules (RMSNorm, FusedRMSNormGated, ShortConvolution), fla.modules.l2norm (l2norm), "
             "fla.layers.utils (get_unpad_data, index_first_axis, pad_input), fla.models.utils (Cache) and "
             "transformers.processing_utils (Unpack)")


@_functools.cache
def _fla_importable() -> bool:
    try:
        _importlib.import_module("fla.modules")
    except Exception:  # absent, or present without triton: fla raises more than ImportError
        return False
    return True


def fla_usable(device: _torch.device | str | None = None) -> bool:
    """True when flash-linear-attention imports and ``device`` (default: CUDA if any) is CUDA."""
    if device is None:
        device = "cuda" if _torch.cuda.is_available() else "cpu"
    return _torch.device(device).type == "cuda" and _fla_importable()


def backend_for(device: _torch.device | str | None = None) -> str:
    """``"fla"`` where the real kernels can run on ``device``, else ``"compat"``."""
    return "fla" if fla_usable(device) else "compat"


def _missing(name: str) -> str:
    return (f"{name} is not available here: flash-linear-attention runs only on CUDA with the fla package "
            f"installed, and asiarch's plain-PyTorch stand-ins cover {_PROVIDED}. Write the operation in "
            "PyTorch (or use asiarch.job.ops) instead.")


def _candidate_import(name, globals=None, locals=None, fromlist=(), level=0):
    """``__import__`` for candidate code under either backend: ``functools`` is this package's (its caches do not
    cache: ``asiarch.job.compat.functools``), every other import Python's own."""
    if name == "functools" and not level:
        return _importlib.import_module(f"{COMPAT_PACKAGE}.functools")
    return _builtins.__import__(name, globals, locals, fromlist, level)


def _compat_import(name, globals=None, locals=None, fromlist=(), level=0):
    """``__import__`` for candidate code: ``fla.*`` and ``transformers.*`` from this package."""
    root = name.partition(".")[0]
    if level or root not in STAND_INS:
        return _candidate_import(name, globals, locals, fromlist, level)
    target = f"{COMPAT_PACKAGE}.{name}"
    try:
        module = _importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(COMPAT_PACKAGE):
            raise ModuleNotFoundError(_missing(name), name=name) from None
        raise
    if not fromlist:  # `import fla.modules` binds the top-level package
        return _importlib.import_module(f"{COMPAT_PACKAGE}.{root}")
    for item in fromlist:
        if item == "*" or hasattr(module, item):
            continue
        try:  # `from fla.modules import l2norm` may name a submodule
            _importlib.import_module(f"{target}.{item}")
        except ModuleNotFoundError:
            raise ImportError(_missing(f"{name}.{item}"), name=name) from None
    return module


def candidate_builtins(backend: str) -> dict:
    """The ``__builtins__`` mapping a candidate module executes with under ``backend``."""
    if backend not in ("fla", "compat"):
        raise ValueError(f"unknown fla backend {backend!r}; use 'fla' or 'compat'")
    namespace = dict(_builtins.__dict__)
    namespace["__import__"] = _compat_import if backend == "compat" else _candidate_import
    return namespace


@_contextlib.contextmanager
def torch_compile_disabled() -> Iterator[None]:
    """Make ``torch.compile`` the identity while candidate code is loaded or run.

    ASI-Arch layers wrap their kernels in ``@torch.compile`` (decorators run at import).
    On CPU that costs ~35 s cold and ~130 s again for every new sequence length, for
    little gain; the uncompiled function computes the same thing. Covers
    ``@torch.compile``, ``@torch.compile(...)`` and ``torch.compile(fn_or_module, ...)``.
    """
    original = _torch.compile

    def no_compile(model=None, /, **_kwargs):
        return model if model is not None else (lambda fn: fn)

    _torch.compile = no_compile
    try:
        yield
    finally:
        _torch.compile = original
