"""Load a candidate layer from source, in isolation, and call it uniformly.

The candidate contract (the README, "The pieces"): one Python source file defining a token-mixing
layer class, by default named ``DeltaNet`` (ASI-Arch's convention). Its constructor
takes keyword arguments including ``hidden_size`` (or ``d_model``), ``num_heads`` and
``layer_idx``; its forward is either ASI-Arch's

    forward(hidden_states, attention_mask=None, past_key_values=None,
            use_cache=False, output_attentions=False, **kwargs)
        -> (output, attn_weights_or_None, past_key_values)

or a plain ``forward(x) -> y``; in both cases ``x`` and ``y`` are [batch, seq, hidden].

Each load executes the source as a fresh module under its own name, so two candidates
that define the same class names never see each other's globals.

ASI-Arch's layers import ``fla`` and ``transformers.processing_utils`` and decorate kernels
with ``@torch.compile``. A load decides, for the device the layer will run on, whether
those imports get flash-linear-attention itself (installed, and CUDA) or the plain-PyTorch
stand-ins of ``asiarch.job.compat`` (routed through the module's own ``__import__``, so
imports inside methods resolve the same way and nothing outside the candidate is
shadowed); off CUDA, ``torch.compile`` is the identity while the module executes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import sys
import types
from pathlib import Path

import torch
from torch import nn

from asiarch.job.compat import backend_for, candidate_builtins, torch_compile_disabled
from asiarch.job.contract import DEFAULT_CLASS_NAME  # re-exported: the loaders' default


class CandidateError(Exception):
    """A candidate could not be loaded, built or called; the message says why and what to do."""


def code_sha256(source: str) -> str:
    """The identity of a candidate's code (hex sha256 of its UTF-8 source)."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def load_module(source: str, *, module_name: str | None = None, filename: str = "<candidate>",
                device: torch.device | str | None = None) -> types.ModuleType:
    """Execute ``source`` as a new module named ``module_name`` and return it.

    The module is registered in ``sys.modules`` while it executes (dataclasses and
    ``torch.compile`` look their module up there) and stays registered under its
    unique name, derived from the code's hash, so it never collides with another
    candidate. ``device`` is where the layer will run (default: CUDA if available): it
    picks real fla or the compat stand-ins (``module.__asiarch_fla__`` says which) and,
    off CUDA, turns ``torch.compile`` into the identity for the decorators run here.
    """
    name = module_name or f"asiarch_candidate_{code_sha256(source)[:16]}"
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = backend_for(device)
    spec = importlib.util.spec_from_loader(name, loader=None, origin=filename)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = filename
    module.__builtins__ = candidate_builtins(backend)
    module.__asiarch_fla__ = backend
    sys.modules[name] = module
    no_compile = torch.device(device).type != "cuda"
    try:
        code = compile(source, filename, "exec")
        with torch_compile_disabled() if no_compile else contextlib.nullcontext():
            exec(code, module.__dict__)  # noqa: S102 -- only ever called inside the checks and the job
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        raise CandidateError(
            f"{filename}: syntax error at line {exc.lineno}: {exc.msg}. Fix the code so that it parses."
        ) from exc
    except Exception as exc:
        sys.modules.pop(name, None)
        raise CandidateError(
            f"{filename}: importing the layer raised {type(exc).__name__}: {exc}. "
            "Only torch, math, einops, typing, functools, fla and asiarch.job.ops may be imported."
        ) from exc
    return module


def load_layer_class(source: str, class_name: str = DEFAULT_CLASS_NAME, *, filename: str = "<candidate>",
                     device: torch.device | str | None = None) -> type:
    """Load ``source`` and return its layer class ``class_name`` (an ``nn.Module`` subclass)."""
    module = load_module(source, filename=filename, device=device)
    cls = getattr(module, class_name, None)
    if cls is None:
        classes = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module))
        raise CandidateError(
            f"{filename}: no class named {class_name!r}; nn.Module classes defined: {classes or 'none'}. "
            "Name the layer class as configured (search.class_name) or rename it."
        )
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise CandidateError(f"{filename}: {class_name!r} is not a torch.nn.Module subclass.")
    return cls


def load_layer_file(path: str | Path, class_name: str = DEFAULT_CLASS_NAME, *,
                    device: torch.device | str | None = None) -> type:
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CandidateError(f"cannot read layer file {path}: {exc.strerror}") from exc
    return load_layer_class(source, class_name, filename=str(path), device=device)


def build_layer(cls: type, hidden_size: int, num_heads: int, layer_idx: int = 0, **kwargs) -> nn.Module:
    """Construct a layer with the shell's arguments, passing ``d_model`` to layers that want it."""
    params = inspect.signature(cls.__init__).parameters
    accepts_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    args = dict(kwargs)
    args["num_heads"] = num_heads
    args["layer_idx"] = layer_idx
    if "hidden_size" in params or accepts_var_kw:
        args["hidden_size"] = hidden_size
    if "d_model" in params:
        args["d_model"] = hidden_size
    if not accepts_var_kw:
        args = {k: v for k, v in args.items() if k in params}
    try:
        return cls(**args)
    except Exception as exc:
        raise CandidateError(
            f"constructing {cls.__name__}(hidden_size={hidden_size}, num_heads={num_heads}, "
            f"layer_idx={layer_idx}) raised {type(exc).__name__}: {exc}"
        ) from exc


def call_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``layer`` on ``x`` [B, T, D] and return its output [B, T, D], whatever the forward style."""
    out = layer(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise CandidateError(
            f"{type(layer).__name__}.forward returned {type(out).__name__}; "
            "return a tensor or a tuple (output, attn_weights, past_key_values)."
        )
    return out
