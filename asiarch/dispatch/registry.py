"""Backends by name: ``cluster.scheduler = "slurm"`` -> :class:`asiarch.dispatch.slurm.SlurmScheduler`.

A backend registers itself with ``@register("name")`` on its class (a subclass of
:class:`asiarch.dispatch.base.Scheduler` with a ``from_config``). The built-in backends are
imported only when asked for, so that naming ``local`` never imports what ``slurm`` needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from asiarch.dispatch.base import Scheduler, SchedulerError

if TYPE_CHECKING:
    from asiarch.config import Config
    from asiarch.layout import ExperimentDir

# name -> module that registers it when imported
_BUILTIN = {"local": "asiarch.dispatch.local", "slurm": "asiarch.dispatch.slurm"}
_REGISTRY: dict[str, type[Scheduler]] = {}


def register(name: str) -> Callable[[type[Scheduler]], type[Scheduler]]:
    """Class decorator: make the backend available as ``cluster.scheduler = name``."""
    def decorate(cls: type[Scheduler]) -> type[Scheduler]:
        if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
            raise TypeError(f"@register({name!r}): {cls!r} is not a subclass of asiarch.dispatch.base.Scheduler")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"scheduler {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        _REGISTRY[name] = cls
        return cls
    return decorate


def scheduler_names() -> list[str]:
    """Every name ``cluster.scheduler`` may take."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def scheduler_class(name: str) -> type[Scheduler]:
    """The backend registered as ``name``; :class:`SchedulerError` listing the valid names otherwise."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SchedulerError(f"cluster.scheduler: no scheduler named {name!r}; "
                             f"valid: {', '.join(map(repr, scheduler_names()))}") from None


def make_scheduler(exp: ExperimentDir, cfg: Config, *, check: bool = True) -> Scheduler:
    """The backend ``cfg.cluster.scheduler`` names, for experiment ``exp``; with ``check``, its
    :meth:`~asiarch.dispatch.base.Scheduler.check` has passed (else :class:`SchedulerError`)."""
    sched = scheduler_class(cfg.cluster.scheduler).from_config(exp, cfg)
    if check:
        sched.check()
    return sched
