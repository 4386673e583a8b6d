"""What the measurements compute with, captured before any candidate is loaded.

A candidate layer runs in the same process as the trainer and the pre-flight battery, so
it can reassign what it can reach: ``F.cross_entropy = ...``, ``torch.Tensor.item = ...``,
``torch.Tensor.amax = ...``, ``torch.distributed.all_reduce = ...``; it can also return a
tensor subclass whose ``__torch_function__`` lies. Those names are looked up when they are
called, so a patch made while the layer's module executes would change the loss the
trainer records or hide a leak from the checks.

This module holds references taken when it is first imported -- the trainer and the
pre-flight import it before they load a candidate -- to the C implementations (methods
of ``torch._C.TensorBase``, an immutable type, and builtins of ``torch._C``), and calls
them with ``__torch_function__`` dispatch disabled, so neither a reassigned attribute nor
a lying subclass reaches the figures computed here. It does not stand against code that
replaces kernels below Python (``torch.library``, dispatch modes, ctypes): keeping the
layer from reaching those is the static check's work (``asiarch.job.static_check``).

It also snapshots and restores a module's state (buffers and plain attributes) without
``copy.deepcopy``, whose behaviour a candidate can define.

Job side: torch and the standard library only.
"""

from __future__ import annotations

import copy as _copy_module
import math

import torch
import torch.distributed as _dist

__all__ = ["plain", "diff", "amax", "max_abs", "all_finite", "any_nonzero", "dot", "item", "tolist", "cross_entropy", "log_softmax", "masked_accuracy", "all_reduce",
           "ModuleState", "RNGState", "IGNORE_INDEX"]

IGNORE_INDEX = -100  # targets of unscored positions (asiarch.job.tasks.IGNORE_INDEX)

_TB = torch._C.TensorBase
_VF = torch._C._VariableFunctions
_NN = torch._C._nn
_NO_TORCH_FUNCTION = torch._C.DisableTorchFunction
_TENSOR = torch.Tensor
_MEAN = 1  # at::Reduction::Mean

_float = _TB.float
_detach = _TB.detach
_clone = _TB.clone
_abs = _TB.abs
_sub = _TB.sub
_eq = _TB.eq
_ne = _TB.ne
_isnan = _TB.isnan
_isfinite = _TB.isfinite
_logical_or = _TB.logical_or
_logical_and = _TB.logical_and
_amax = _TB.amax
_sum = _TB.sum
_argmax = _TB.argmax
_flatten = _TB.flatten
_item = _TB.item
_tolist = _TB.tolist
_numel = _TB.numel
_new_zeros = _TB.new_zeros
_copy = _TB.copy_
_deepcopy = _copy_module.deepcopy
_where = _VF.where
_zeros_like = _VF.zeros_like
_nan_to_num = _VF.nan_to_num
_log_softmax = _VF.log_softmax
_cross_entropy = _NN.cross_entropy_loss
_all_reduce = _dist.all_reduce
_get_rng_state = torch.get_rng_state
_set_rng_state = torch.set_rng_state
_is_tensor = torch.is_tensor


def plain(t: torch.Tensor) -> torch.Tensor:
    """A detached fp32 copy of ``t`` as a plain ``torch.Tensor`` (never a subclass)."""
    with _NO_TORCH_FUNCTION():
        out = _clone(_float(_detach(t)))
    return out if type(out) is _TENSOR else _TENSOR._make_subclass(_TENSOR, out)


def diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| elementwise in fp32: 0 where both are equal (infinities, NaN and NaN), inf where one is NaN."""
    with _NO_TORCH_FUNCTION():
        a, b = _float(_detach(a)), _float(_detach(b))
        d = _abs(_sub(a, b))
        same = _logical_or(_eq(a, b), _logical_and(_isnan(a), _isnan(b)))
        return _nan_to_num(_where(same, _zeros_like(d), d), nan=math.inf)


def amax(t: torch.Tensor, dim=None) -> torch.Tensor:
    """max of ``t`` over ``dim`` (all dimensions when None)."""
    with _NO_TORCH_FUNCTION():
        return _amax(t) if dim is None else _amax(t, dim)


def all_finite(t: torch.Tensor) -> bool:
    with _NO_TORCH_FUNCTION():
        return bool(_item(_TB.all(_isfinite(_detach(t)))))


def any_nonzero(t: torch.Tensor) -> bool:
    with _NO_TORCH_FUNCTION():
        return bool(_item(_TB.any(_ne(_detach(t), 0))))


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b) in fp32; differentiable (a random projection of an output, for a backward pass)."""
    with _NO_TORCH_FUNCTION():
        return _sum(_TB.mul(_float(a), _float(b)))


def max_abs(t: torch.Tensor, dim=None) -> torch.Tensor:
    """max |t| over ``dim`` (all dimensions when None), over the finite entries; 0 where none is finite."""
    with _NO_TORCH_FUNCTION():
        t = _float(_detach(t))
        t = _where(_isfinite(t), _abs(t), _zeros_like(t))
        if _numel(t) == 0:
            return _new_zeros(t, ())
        return _amax(t) if dim is None else _amax(t, dim)


def item(t: torch.Tensor):
    """``t.item()`` through the C method."""
    with _NO_TORCH_FUNCTION():
        return _item(t)


def tolist(t: torch.Tensor) -> list:
    with _NO_TORCH_FUNCTION():
        return _tolist(t)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` [B, T, V] (any float dtype; computed in fp32) against ``targets``
    [B, T] over the positions whose target is not ``ignore_index``; differentiable."""
    with _NO_TORCH_FUNCTION():
        return _cross_entropy(_flatten(_float(logits), 0, 1), _flatten(targets), None, _MEAN, ignore_index, 0.0)


def log_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log_softmax of ``logits`` in fp32."""
    with _NO_TORCH_FUNCTION():
        return _log_softmax(_float(logits), dim)


def masked_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of scored positions (target != -100) whose argmax is the target; nan when none is scored.
    The same figure as ``asiarch.job.tasks.masked_accuracy``."""
    with _NO_TORCH_FUNCTION():
        mask = _ne(targets, IGNORE_INDEX)
        total = int(_item(_sum(mask)))
        if total == 0:
            return float("nan")
        correct = _logical_and(_eq(_argmax(logits, -1), targets), mask)
        return int(_item(_sum(correct))) / total


def all_reduce(t: torch.Tensor, op=None) -> None:
    """``torch.distributed.all_reduce`` as it was before the candidate loaded."""
    if op is None:
        _all_reduce(t)
    else:
        _all_reduce(t, op=op)


class RNGState:
    """The global torch RNG states (CPU, and the current CUDA device's when CUDA is in use)."""

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else None
        self.cpu = _get_rng_state()
        self.cuda = torch.cuda.get_rng_state(self.device) if self._cuda() else None

    def _cuda(self) -> bool:
        return self.device is not None and self.device.type == "cuda"

    def restore(self) -> None:
        _set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


class _Deep:
    """A deep copy ModuleState keeps of an attribute that is neither a number, a tensor nor a plain container."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


_SCALARS = (bool, int, float, complex, str, bytes, type(None))
# nn.Module's own attributes (parameters, buffers, submodules, hook registries: a hook's handle holds a weak reference
# to its registry, which must stay the same object), never snapshotted
NN_INTERNAL = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "training"}
                         | set(vars(torch.nn.Module())))


class ModuleState:
    """The mutable state of every submodule of ``module``, taken without ``copy.deepcopy``: buffer
    values, and plain attributes (numbers, strings, tensors kept as attributes, and the contents of
    lists and dicts one level deep, e.g. a step counter or a cache, and a deep copy of any other value
    but submodules and functions, e.g. a deque). ``restore()`` puts them back, so a forward made for a
    measurement leaves the layer as it found it (and two measurement forwards start from the same
    state). Parameters are not copied: a forward does not change them.

    Not covered: state kept outside the module objects (module-level globals of the candidate's
    file, closures: the static check's rule ``state`` refuses them), objects inside a list or dict
    changed in place, and attributes a forward adds.
    """

    def __init__(self, module: torch.nn.Module):
        self._items: list[tuple] = []
        with torch.no_grad(), _NO_TORCH_FUNCTION():
            for m in module.modules():
                d = vars(m)
                for name, buf in d.get("_buffers", {}).items():
                    if buf is not None:
                        self._items.append(("buffer", m, name, buf, _clone(_detach(buf))))
                for name, value in d.items():
                    if name in NN_INTERNAL:
                        continue
                    self._items.append(("attr", m, name, value, self._copy(value)))

    @staticmethod
    def _copy(value):
        if isinstance(value, _SCALARS):
            return value
        if _is_tensor(value) and not isinstance(value, torch.nn.Parameter):
            return _clone(_detach(value))
        if type(value) in (list, dict, set):
            return type(value)(value)  # one level: counters and caches kept in containers
        if isinstance(value, torch.nn.Module) or callable(value):
            return None  # submodules are snapshotted themselves; functions are not state
        try:  # anything else (a deque, a nested cache): a deep copy, put back afresh at every restore
            return _Deep(_deepcopy(value))
        except Exception:
            return None

    def restore(self) -> None:
        with torch.no_grad(), _NO_TORCH_FUNCTION():
            for kind, m, name, ref, saved in self._items:
                if kind == "buffer":
                    m._buffers[name] = ref
                    if ref.shape == saved.shape and ref.dtype == saved.dtype:
                        _copy(ref, saved)
                    else:
                        m._buffers[name] = saved
                    continue
                d = vars(m)
                if _is_tensor(ref) and not isinstance(ref, torch.nn.Parameter):
                    if ref.shape == saved.shape and ref.dtype == saved.dtype and ref.device == saved.device:
                        _copy(ref, saved)
                    d[name] = ref
                elif type(ref) in (list, dict, set) and saved is not None:
                    ref.clear()
                    (ref.extend if isinstance(ref, list) else ref.update)(saved)
                    d[name] = ref
                elif isinstance(saved, _Deep):
                    d[name] = _deepcopy(saved.value)
                else:
                    d[name] = ref if saved is None else saved
