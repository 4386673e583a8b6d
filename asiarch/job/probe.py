"""The causality probe inside the training job, where the real conditions are.

A pre-flight runs on one CPU process: a layer can tell it from training (a rank > 0, an
initialised process group, CUDA, torch.compile, the thousandth call) and leak only there.
So the job probes itself, twice:

- at one training step, drawn from ``os.urandom`` on rank 0 and broadcast (within the first
  half of the run, so the layer cannot know which step and a leak ends the attempt early): on
  every rank, on that rank's real batch, in train mode with autograd on, through the model as
  trained (on its device, with the layer's compiled kernels where training compiles them);
- before the evaluation, on the first evaluation batch, in eval mode under no_grad, as the
  evaluation runs.

Each probe is one extra forward pair: the batch as it is, and the batch with every token after
a random position replaced by random tokens; the final hidden states (the input of the LM head)
at the positions up to that one must not change. A change beyond the tolerance on any rank
raises :class:`Leak` on every rank (the figures are gathered first), and the attempt ends with
status ``leak``.

A probe does not change the training: no backward and no optimizer step (the forwards' graphs are
dropped unused); the first forward runs on the model, the second on a deep copy taken before it, so
both start from the training's own state (buffers, counters, caches of any depth); the global RNG
state and the model's state (``asiarch.job.trusted.ModuleState``) are restored after. The
comparison uses ``asiarch.job.trusted``. Not copied: state a layer keeps outside its module
objects (globals of its file, class attributes), which a layer could replay from; the static
check's rule ``state`` refuses such state, and candidate code's ``functools`` caches do not cache.

Job side: torch and the standard library only.
"""

from __future__ import annotations

import copy
import functools
import os
import types
from typing import Callable

import torch
import torch.distributed as dist

from asiarch.job import trusted

__all__ = ["Leak", "LeakProbe", "ProbeError", "probe_batch", "twin", "RTOL", "ATOL"]

# "Unchanged", as a fraction of the hidden states' largest magnitude: above what kernels that are
# not bitwise reproducible between two calls produce (GPU reductions, bf16), far below the change a
# leak that helps the loss makes (of the order of the hidden states themselves).
RTOL = {"fp32": 1e-4, "bf16": 2e-2}
ATOL = 1e-5


class ProbeError(Exception):
    """The probe could not run (the model cannot be copied); the attempt fails with this message."""


class Leak(Exception):
    """A probe saw earlier positions change with later tokens; ``figures`` says where and how much."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


def twin(model: torch.nn.Module, what: str = "model") -> torch.nn.Module:
    """A deep copy of ``model`` (named ``what`` in messages) that shares no mutable object with it, with every
    attribute a layer keeps: those on its parameters (``Parameter.__deepcopy__`` drops them: a call counter kept as
    ``self.proj.weight.calls`` would start again in the copy), closures with cells of their own, and tensors a
    forward kept (not graph leaves: deepcopy refuses them) detached. Raises :class:`ProbeError` when it cannot."""
    for name, m in model.named_modules():  # before any copy: a dunder-named child answers copy's own lookups
        for kind in ("_modules", "_parameters", "_buffers"):
            odd = [k for k in vars(m).get(kind, {}) if str(k).startswith("__")]
            if odd:
                raise ProbeError(f"the leak probe will not copy the {what}: {name or what} has a "
                                 f"{kind[1:-1].rstrip('s')} named {odd[0]!r}, and nn.Module answers an attribute "
                                 f"lookup such as copy's __deepcopy__ with a child of that name; name it plainly")
    memo: dict = {}
    for m in model.modules():
        for value in vars(m).values():
            _seed_detached(value, memo)
    try:
        out = copy.deepcopy(model, memo)
        for p in model.parameters():
            if vars(p) and id(p) in memo:
                vars(memo[id(p)]).update(copy.deepcopy(vars(p), memo))
        for m in model.modules():
            mine = vars(memo[id(m)])
            for name, value in vars(m).items():
                if name not in trusted.NN_INTERNAL:  # nn.Module's registries (hooks): the copy's own, as deepcopy made
                    mine[name] = _recell(value, memo, mine[name])
    except Exception as exc:  # (a module whose own __deepcopy__ left the memo without it, among others)
        raise ProbeError(f"the leak probe could not copy the {what} ({type(exc).__name__}: {exc}): keep the "
                         "layer's state in tensors, numbers and containers") from exc
    shared = _shared_state(model, out, what)
    if shared:
        raise ProbeError(f"the leak probe cannot copy the {what} faithfully: its copy would share {shared[0]} with it "
                         f"({len(shared)} such object{'s' * (len(shared) > 1)}), state a forward of one could pass to "
                         "the other (kept behind a function, a bound method or a partial); keep the layer's state in "
                         "plain attributes (self.x = ...), not reachable through callables")
    return out


# Values nothing can change: a copy may share them. (Modules and classes are shared too: what a layer may do to them
# is the static check's concern.)
_FROZEN = (int, float, complex, bool, str, bytes, type(None), range, slice, torch.dtype, torch.device, torch.Size,
           types.CodeType, type(Ellipsis), type(NotImplemented))


def _reachable(root, where: str) -> dict[int, tuple[object, str]]:
    """Every mutable object reachable from ``root`` through attributes, containers, closures, defaults, bound methods
    and partials: id -> (object, a path to it). Functions, methods and partials are looked through, not counted
    (their own attributes are refused to a layer); modules, classes and frozen values are not entered."""
    found: dict[int, tuple[object, str]] = {}
    seen: set[int] = set()
    stack = [(root, where)]
    while stack:
        obj, path = stack.pop()
        if id(obj) in seen or isinstance(obj, _FROZEN) or isinstance(obj, (types.ModuleType, type)):
            continue
        seen.add(id(obj))
        children: list = []
        if isinstance(obj, types.FunctionType):
            cells = []
            for i, cell in enumerate(obj.__closure__ or ()):
                try:
                    cells.append((cell.cell_contents, f"{path}.<closure {i}>"))
                except ValueError:
                    pass
            children = cells + [(d, f"{path}.<default>") for d in (obj.__defaults__ or ())] + \
                [(d, f"{path}.<default {k}>") for k, d in (obj.__kwdefaults__ or {}).items()]
        elif isinstance(obj, (types.MethodType, types.BuiltinMethodType, types.MethodWrapperType)):
            children = [(getattr(obj, "__self__", None), f"{path}.<bound to>"),
                        (getattr(obj, "__func__", None), f"{path}.<function>")]
        elif isinstance(obj, functools.partial):
            children = [(obj.func, f"{path}.func"), *((a, f"{path}.args[{i}]") for i, a in enumerate(obj.args)),
                        *((v, f"{path}.keywords[{k!r}]") for k, v in obj.keywords.items())]
        else:
            if not isinstance(obj, (tuple, frozenset)):
                found[id(obj)] = (obj, path)
            if isinstance(obj, torch.Tensor):
                continue
            if isinstance(obj, dict):
                children = [(v, f"{path}[{k!r}]") for k, v in obj.items()] + [(k, f"{path}.<key>") for k in obj]
            elif isinstance(obj, (list, tuple, set, frozenset)) or type(obj).__name__ == "deque":
                children = [(v, f"{path}[{i}]") for i, v in enumerate(obj)]
            if hasattr(obj, "__dict__"):
                for k, v in vars(obj).items():
                    if k in ("_modules", "_parameters", "_buffers") and isinstance(v, dict):  # model.blocks.0.mixer
                        children += [(child, f"{path}.{name}") for name, child in v.items()]
                    else:
                        children.append((v, f"{path}.{k}"))
            for slot in getattr(type(obj), "__slots__", ()):
                if isinstance(slot, str) and hasattr(obj, slot):
                    children.append((getattr(obj, slot), f"{path}.{slot}"))
        stack.extend(children)
    return found


def _shared_state(model: torch.nn.Module, copied: torch.nn.Module, what: str = "model") -> list[str]:
    """The paths (from the model, named ``what``) of the mutable objects the model and its copy both reach."""
    mine = _reachable(model, what)
    theirs = _reachable(copied, "copy")
    return sorted(path for key, (_, path) in mine.items() if key in theirs)


def _seed_detached(value, memo: dict, depth: int = 0) -> None:
    """Put a detached copy of every tensor in ``value`` that autograd made (not a leaf) into ``memo``, so that the
    deep copy takes it (``Tensor.__deepcopy__`` refuses them); containers are looked into four levels deep."""
    if isinstance(value, torch.Tensor):
        if value.grad_fn is not None and id(value) not in memo:
            memo[id(value)] = value.detach().clone()
    elif depth < 4 and (isinstance(value, (list, tuple, set, frozenset, dict)) or type(value).__name__ == "deque"):
        for item in (value.values() if isinstance(value, dict) else value):
            _seed_detached(item, memo, depth + 1)


def _closure(f) -> bool:
    return isinstance(f, types.FunctionType) and bool(f.__closure__)


def _recell(value, memo: dict, copied):
    """``copied`` (deepcopy's copy of the attribute ``value``) with a closure, directly or one level inside a list,
    tuple or dict, given cells of its own: deepcopy shares functions, and so their cells."""
    if _closure(value):
        return _copy_closure(value, memo)
    if isinstance(value, (list, tuple)) and any(map(_closure, value)):
        return type(value)(_copy_closure(v, memo) for v in value)
    if isinstance(value, dict) and any(map(_closure, value.values())):
        return {k: _copy_closure(v, memo) for k, v in value.items()}
    return copied


def _copy_closure(f, memo: dict):
    """``f`` with its own cells, their contents deep-copied (with ``memo``: a cell holding the layer holds the
    copy); anything else deep-copied."""
    if not _closure(f):
        return copy.deepcopy(f, memo)
    cells = []
    for cell in f.__closure__:
        try:
            cells.append(types.CellType(copy.deepcopy(cell.cell_contents, memo)))
        except ValueError:  # an empty cell
            cells.append(types.CellType())
    g = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__, tuple(cells))
    g.__kwdefaults__ = copy.deepcopy(f.__kwdefaults__, memo)
    vars(g).update(copy.deepcopy(vars(f), memo))
    return g


def probe_batch(model: torch.nn.Module, inputs: torch.Tensor, *, position: int, replacement: torch.Tensor,
                autocast: Callable, train: bool, rtol: float) -> dict:
    """One forward pair on ``inputs`` [B, T] and on ``inputs`` with the tokens after ``position``
    replaced by ``replacement`` [B, T - position - 1]; compares the final hidden states (the output of
    ``model.norm``) at positions 0..``position``. Leaves the model, its state and the RNG as found.

    The first forward runs on the model itself, the second on a deep copy of it (:func:`twin`) taken
    before the first: both start from the training's exact state (a deque or a nested cache on the
    layer included) and the copy never sees the first call, so a layer cannot replay its outputs for
    the second's shared prefix (``cheat_replay_late``); and a layer that behaves otherwise in a copy
    than in the model that trains (``cheat_copy_aware``) shows as a difference too. The model's state
    is restored after (:class:`asiarch.job.trusted.ModuleState`). A model that cannot be copied
    raises :class:`ProbeError`.

    Returns ``{"position", "length", "batch", "max_leak", "tolerance", "first_leak_position"}``
    (``first_leak_position`` None when nothing changed beyond the tolerance).
    """
    changed = inputs.clone()
    changed[:, position + 1:] = replacement
    hidden: list[torch.Tensor] = []
    state = trusted.ModuleState(model)
    rng = trusted.RNGState(inputs.device)
    copied = twin(model)  # before the first forward: the state the second starts from
    was_training = model.training
    try:
        for net, x in ((model, inputs), (copied, changed)):
            handle = net.norm.register_forward_hook(lambda _m, _args, out: hidden.append(trusted.plain(out)))
            try:
                net.train(train)
                rng.restore()
                with (torch.enable_grad() if train else torch.no_grad()), autocast():
                    net(x)  # the logits and their graph are dropped: no backward
            finally:
                handle.remove()
    finally:
        del copied
        state.restore()
        rng.restore()
        model.train(was_training)
    ref, other = hidden[0][:, :position + 1], hidden[1][:, :position + 1]
    per = trusted.tolist(trusted.amax(trusted.diff(ref, other), (0, 2)))  # (position + 1,)
    tol = rtol * float(trusted.item(trusted.max_abs(ref))) + ATOL
    leaked = [i for i, v in enumerate(per) if not v <= tol]  # `not <=`: NaN counts as a change
    return {"position": position, "length": int(inputs.shape[1]), "batch": int(inputs.shape[0]),
            "max_leak": max(per, default=0.0), "tolerance": tol,
            "first_leak_position": leaked[0] if leaked else None}


class LeakProbe:
    """The job's probes: :meth:`plan` on every rank before the training loop (a collective), then
    :meth:`at_step` for every step's batch and :meth:`before_eval` before the evaluation. Results go
    to ``record.env["leak_probe"]``; a leak raises :class:`Leak` on every rank."""

    def __init__(self, *, step: int | None, seed: int, rank: int, world: int, device: torch.device,
                 precision: str, vocab_size: int, record=None):
        self.step, self.seed = step, seed
        self.rank, self.world, self.device = rank, world, device
        self.rtol = RTOL.get(precision, RTOL["bf16"])
        self.vocab_size = vocab_size
        self.record = record
        self.results: list[dict] = []

    @classmethod
    def plan(cls, *, steps: int, start: int, rank: int, world: int, device: torch.device, precision: str,
             vocab_size: int, record=None) -> "LeakProbe":
        """Draw the probed step and the probe's seed on rank 0 (from os.urandom) and broadcast them."""
        span = max(1, (steps - start) // 2)
        drawn = int.from_bytes(os.urandom(8), "little")
        t = torch.tensor([start + drawn % span, drawn >> 3], dtype=torch.int64, device=device)
        if world > 1:
            dist.broadcast(t, src=0)
        step, seed = (int(v) for v in trusted.tolist(t))
        return cls(step=step if step < steps else None, seed=seed, rank=rank, world=world, device=device,
                   precision=precision, vocab_size=vocab_size, record=record)

    def at_step(self, step: int, model: torch.nn.Module, inputs: torch.Tensor, autocast: Callable) -> None:
        """Probe ``inputs`` (this rank's batch of training step ``step``) if it is the drawn step."""
        if step == self.step:
            self._run(model, inputs, autocast, train=True, when=f"training step {step + 1}")

    def before_eval(self, model: torch.nn.Module, task, per_rank: int, autocast: Callable) -> None:
        """Probe the first evaluation batch in eval mode under no_grad, as the evaluation runs."""
        batches = task.eval_batches(1, per_rank)
        if batches:
            self._run(model, batches[0][0].to(self.device), autocast, train=False, when="evaluation")

    def _run(self, model, inputs: torch.Tensor, autocast: Callable, *, train: bool, when: str) -> None:
        B, T = inputs.shape
        if T < 2:
            return
        gen = torch.Generator().manual_seed((self.seed + 7919 * self.rank + len(self.results)) % (1 << 62))
        position = int(torch.randint(0, T - 1, (1,), generator=gen))
        replacement = torch.randint(0, self.vocab_size, (B, T - position - 1), generator=gen).to(inputs.device)
        mine = probe_batch(model, inputs, position=position, replacement=replacement, autocast=autocast,
                           train=train, rtol=self.rtol)
        ranks = self._gather(mine)
        result = {"when": when, "mode": "train" if train else "eval", "leaked": any(
            r["first_leak_position"] is not None for r in ranks), "ranks": ranks}
        self.results.append(result)
        if self.record is not None:
            self.record.env["leak_probe"] = self.results
        if result["leaked"]:
            bad = [r for r in ranks if r["first_leak_position"] is not None]
            r = max(bad, key=lambda r: r["max_leak"])
            message = (f"the leak probe at {when} ({result['mode']} mode) saw the hidden state at position "
                       f"{r['first_leak_position']} change by up to {r['max_leak']:.3g} (tolerance "
                       f"{r['tolerance']:.3g}) when only the tokens after position {r['position']} changed, on "
                       f"rank{'s' if len(bad) > 1 else ''} {', '.join(str(x['rank']) for x in bad)} of "
                       f"{self.world}: the layer reads future tokens in training")
            raise Leak(message, {"probes": self.results})

    def _gather(self, mine: dict) -> list[dict]:
        """Every rank's figures, on every rank (one all_gather of six numbers)."""
        first = mine["first_leak_position"]
        values = [float(self.rank), mine["position"], mine["length"], mine["max_leak"], mine["tolerance"],
                  -1.0 if first is None else float(first)]
        if self.world == 1:
            rows = [values]
        else:
            t = torch.tensor(values, dtype=torch.float64, device=self.device)
            out = [torch.zeros_like(t) for _ in range(self.world)]
            dist.all_gather(out, t)
            rows = [trusted.tolist(x) for x in out]
        return [{"rank": int(r[0]), "position": int(r[1]), "length": int(r[2]), "max_leak": r[3], "tolerance": r[4],
                 "first_leak_position": None if r[5] < 0 else int(r[5])} for r in rows]
