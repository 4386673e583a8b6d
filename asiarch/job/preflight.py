"""Pre-flight checks of a candidate layer: on CPU, before it is trained, at the training conditions.

    python -m asiarch.job.preflight --source layer.py --json [--class-name DeltaNet] [--seq-len 64]
                                    [--batch-size 8] [--autocast]

The head runs this module in a sandboxed child process (``asiarch.search.preflight``), never in
its own, since loading a candidate executes LLM-written code. Checks, in order:

    static              the source passes the static safety check (nothing runs before)
    load                the module executes and defines the layer class
    construct           the class builds with the shell's arguments
    interface           output shape == input shape for batch 1 and 3, odd lengths; the layer copies
                        faithfully (the job's leak probe copies it: asiarch.job.probe.twin)
    causality           outputs at positions <= t ignore every input after t (perturbation probes)
    batch_independence  a sample's output ignores the other samples of its batch
    finite_step         forward + backward: finite output, loss and gradients; every parameter
                        receives a gradient; the output depends on the input; and all of it stays
                        finite over TRAIN_STEPS AdamW steps
    params              parameter count, against an optional limit
    complexity          forward + backward time and the memory saved for backward at lengths
                        beyond the training length; the log-log slopes

A failure of static, load, construct or interface stops the run (later checks would only
repeat it); the others are independent and all run. Every failure's detail is a sentence an
Engineer can act on.

The probes measure at the conditions the layer is scored under, since a layer can behave one
way for a check and another in training (issue 13):

- causality and batch independence in train mode with autograd on (inputs that require grad,
  as the model's hidden states do), and in eval mode under no_grad (as the evaluation runs);
  at the training length ``seq_len``, twice and four times it, a short and an odd length; batch
  sizes 1, 3 and 8 (and the training batch per rank, up to 16);
- on fresh instances built by the constructor from the same initialisation seed -- never a
  ``copy.deepcopy`` of the layer, which the candidate controls -- and again on a pair trained
  identically for TRAIN_STEPS AdamW steps, so a layer that leaks only after some calls, or whose
  zero-initialised output hides a leak at initialisation, is seen too;
- inputs, perturbation positions and seeds drawn from ``os.urandom`` (unless ``seed`` is given,
  to reproduce a report): the layer cannot recognise the check's inputs. The verdicts do not
  depend on the draw: a causal layer reproduces earlier positions exactly, a leak shows at any
  perturbation position;
- the comparisons use ``asiarch.job.trusted`` (functions captured before the layer loads), so
  a layer that reassigns ``torch.Tensor.amax`` or returns a lying tensor subclass hides nothing;
- complexity timed with autograd (forward + backward, as training runs), on a fresh input for
  every call (a layer that memoises outputs is refused: its output stops depending on the input),
  with the bytes of the tensors autograd saves for backward per length (a saved-tensor hook
  counts each storage once: the activation memory of training) and the process's peak RSS; the
  sandbox's address-space limit turns an allocation like (T, T, T) at the longest length into a
  refusal ("out of memory").

What a pre-flight cannot see -- a layer that behaves differently under torch.compile, on CUDA,
on a rank > 0 or with torch.distributed initialised -- the in-job probe (``asiarch.job.probe``)
checks in the training job itself.

Job side: torch and the standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from asiarch.job import trusted
from asiarch.job.probe import ProbeError, twin
from asiarch.job.candidate import DEFAULT_CLASS_NAME, CandidateError, build_layer, call_layer, load_layer_class
# ASI-Arch layers wrap kernels in @torch.compile: on CPU, compiling would cost tens of seconds
# for checks that run each function a few times; the uncompiled function computes the same.
from asiarch.job.compat import torch_compile_disabled
from asiarch.job.static_check import format_findings, static_check

__all__ = ["CHECK_NAMES", "TRAIN_STEPS", "QUADRATIC_EXPONENT", "run_checks", "probe_settings", "main"]

CHECK_NAMES = ("static", "load", "construct", "interface", "causality", "batch_independence",
               "finite_step", "params", "complexity")

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Relative tolerance on "unchanged" outputs, as a fraction of the output's largest magnitude.
# On CPU the same code on the same shapes reproduces earlier positions bitwise (all 80
# published ASI-Arch layers differ by exactly 0); the slack covers FFT convolutions,
# whose round-off spreads over every position.
_RTOL = {torch.float32: 1e-5, torch.float64: 1e-9, torch.bfloat16: 1e-3, torch.float16: 1e-3}
_ATOL = 1e-6
# AdamW steps of the replayed training (finite_step, and the probes after training), and its
# settings: the trainer's betas, weight decay and clip; a learning rate of the trainer's order.
TRAIN_STEPS = 25
_TRAIN_LR = 1e-3
# A forward + backward slower than this at a complexity length stops the timing there (seconds).
_COMPLEXITY_BUDGET_S = 3.0
# Log-log slope of time (or saved memory) over length above which a layer counts as quadratic.
QUADRATIC_EXPONENT = 1.6
# A slope within this below QUADRATIC_EXPONENT, or above it, is timed again before the verdict.
RETIME_BAND = 0.4
# Memory growing faster than this is refused even where quadratic layers are allowed.
CUBIC_EXPONENT = 2.5
# Bytes saved for backward above which the next (longer) complexity length is not run.
_SAVED_BUDGET = 1 << 30

_CAUSALITY_HINT = ("Make every operation causal: left-pad convolutions by kernel_size - 1 (or trim the right "
                   "side), use cumulative sums/means instead of full-sequence ones, mask attention scores with a "
                   "lower-triangular mask, and never flip, sort or roll along the sequence.")
_BATCH_HINT = ("Never reduce over the batch dimension (dim 0); normalise per token with LayerNorm/RMSNorm "
               "instead of BatchNorm.")


def _check(name: str, passed: bool, detail: str, **figures) -> dict:
    return {"name": name, "passed": bool(passed), "detail": detail, "figures": figures}


class _Stop(Exception):
    """Raised inside run_checks after a failure that makes the remaining checks meaningless."""


@contextlib.contextmanager
def _single_thread():
    """One intra-op thread, as in the sandbox: on a busy head node a thread pool's wake-up
    latency (milliseconds) would swamp the complexity timings of small inputs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _memory_limit_mb() -> int | None:
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ValueError, OSError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft >> 20


def _describe(exc: BaseException, filename: str, source_lines: list[str]) -> str:
    """``RuntimeError: <message> at layer.py line 12: `code```, trimmed for a failure reason."""
    message = str(exc).strip().replace("\n", " ")
    if len(message) > 400:
        message = message[:400] + "..."
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    where = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    if where:
        line = where[-1].lineno or 0
        code = source_lines[line - 1].strip() if 0 < line <= len(source_lines) else ""
        text += f" at {filename} line {line}" + (f": `{code}`" if code else "")
    if isinstance(exc, MemoryError) or "can't allocate memory" in message or "not enough memory" in message:
        limit = _memory_limit_mb()
        text = (f"out of memory (the pre-flight limit is {limit} MB; " if limit else "out of memory (") + \
            "allocate tensors proportional to batch x seq x hidden, never a fixed huge size or seq^3): " + text
    return text


def _tolerance(y: torch.Tensor, dtype: torch.dtype) -> float:
    return _RTOL.get(dtype, 1e-4) * float(trusted.item(trusted.max_abs(y))) + _ATOL


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _draw_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") >> 2


def probe_settings(seq_len: int, batch_size: int | None = None) -> dict:
    """The probe conditions for a training length (and batch per rank): ``{"causality": [(length,
    batch), ...], "batch_independence": [...], "complexity": [lengths]}``."""
    short = 16 if seq_len > 16 else max(2, seq_len // 2 - (seq_len // 2) % 2 + 1)
    odd = next(n for n in ((97, 37, 29) if seq_len >= 64 else (37, 29, 23)) if n != seq_len)
    train_batch = max(8, min(batch_size or 8, 16))
    base = max(256, 2 * seq_len)
    return {
        "causality": list(dict.fromkeys([(seq_len, 3), (2 * seq_len, 1), (4 * seq_len, 1), (short, 8), (odd, 3)])),
        "batch_independence": list(dict.fromkeys([(seq_len, train_batch), (odd, 3)])),
        "complexity": [base, 2 * base, 4 * base, 8 * base],
    }


# ----------------------------------------------------------------------------------
# the shared machinery: random draws, fresh instances, the replayed training


@dataclasses.dataclass
class _Replay:
    """Two instances trained identically for TRAIN_STEPS steps, and how the training went."""

    layers: tuple = ()
    losses: list = dataclasses.field(default_factory=list)
    with_grad: set = dataclasses.field(default_factory=set)  # parameters that received a gradient
    failure: str = ""          # why the training stopped early ("" if it did not)
    failed_step: int = 0


class _Battery:
    """What the checks after construction share: the settings, the random draws, fresh instances and
    the replayed training."""

    def __init__(self, cls, *, hidden_size, num_heads, seq_len, batch_size, dtype, tol_dtype, seed, describe,
                 reload: Callable[[], type] | None = None):
        self.cls, self.hidden_size, self.num_heads = cls, hidden_size, num_heads
        self.reload = reload
        self.seq_len, self.batch_size = seq_len, batch_size
        self.dtype, self.tol_dtype, self.describe = dtype, tol_dtype, describe
        self.rng = random.Random(seed)
        self.init_seed = self.draw()
        self.settings = probe_settings(seq_len, batch_size)
        self._replay: _Replay | None = None

    def draw(self) -> int:
        return self.rng.getrandbits(62)

    def fresh(self) -> torch.nn.Module:
        """A new instance from the constructor, initialised from the battery's init seed (so every
        fresh instance is the same layer), of the class of a fresh execution of the source (``reload``):
        the two instances of a probe share no module globals, class attributes or default arguments,
        so a layer cannot replay the first call's output for the second (a cache of recent inputs kept
        in its file's globals passed every probe of stop 23 while leaking the next token in training)."""
        cls = self.reload() if self.reload is not None else self.cls
        torch.manual_seed(self.init_seed)
        return build_layer(cls, self.hidden_size, self.num_heads, layer_idx=0).to(self.dtype)

    def inputs(self, batch: int, length: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.draw())
        return torch.randn(batch, length, self.hidden_size, generator=gen).to(dtype or self.dtype)

    @staticmethod
    def forward(layer, x: torch.Tensor, call_seed: int, *, grad: bool) -> torch.Tensor:
        """The layer's output on ``x`` as a plain fp32 tensor. ``grad``: autograd on and ``x`` a leaf
        that requires grad (as the model's hidden states in training); else under no_grad. The
        global RNG is seeded with ``call_seed`` first, so dropout draws the same mask for two calls."""
        torch.manual_seed(call_seed)
        if grad:
            with torch.enable_grad():
                return trusted.plain(call_layer(layer, x.detach().requires_grad_(True)))
        with torch.no_grad():
            return trusted.plain(call_layer(layer, x))

    def replay(self) -> _Replay:
        """Train two fresh instances identically (same inputs, targets and seeds) for TRAIN_STEPS AdamW
        steps on a random regression loss; computed once, by the first check that needs it."""
        if self._replay is None:
            self._replay = self._train()
        return self._replay

    def _train(self) -> _Replay:
        out = _Replay()
        try:
            layers = (self.fresh(), self.fresh())
        except (Exception, SystemExit) as exc:
            out.failure = f"constructing the layer raised {self.describe(exc)}"
            return out
        opts = [torch.optim.AdamW(l.parameters(), lr=_TRAIN_LR, weight_decay=0.1, betas=(0.9, 0.95)) for l in layers]
        for step in range(1, TRAIN_STEPS + 1):
            x = self.inputs(2, self.seq_len)
            target = self.inputs(2, self.seq_len, torch.float32)
            call_seed = self.draw()
            for i, (layer, opt) in enumerate(zip(layers, opts)):
                layer.train()
                opt.zero_grad(set_to_none=True)
                try:
                    torch.manual_seed(call_seed)
                    y = call_layer(layer, x.detach().requires_grad_(True))
                    if i == 0 and not trusted.all_finite(y):
                        out.failure, out.failed_step = "the output became non-finite (NaN or inf)", step
                        return out
                    loss = ((y.float() - target) ** 2).mean()
                    if i == 0:
                        value = float(trusted.item(loss))
                        if not math.isfinite(value):
                            out.failure, out.failed_step = f"the loss became {value}", step
                            return out
                        out.losses.append(value)
                    loss.backward()
                    params = [p for p in layer.parameters() if p.grad is not None]
                    bad = [n for n, p in layer.named_parameters() if p.grad is not None and not trusted.all_finite(p.grad)]
                    if i == 0:
                        out.with_grad.update(n for n, p in layer.named_parameters() if p.grad is not None)
                    if i == 0 and bad:
                        out.failure, out.failed_step = f"the gradients of {', '.join(bad[:8])} became non-finite", step
                        return out
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    opt.step()
                except (Exception, SystemExit) as exc:
                    out.failure, out.failed_step = f"forward + backward raised {self.describe(exc)}", step
                    return out
        out.layers = layers
        return out


@dataclasses.dataclass
class _Finding:
    """One probe's outcome."""

    kind: str           # "causality" | "batch_independence" | "determinism"
    mode: str           # "train" (autograd on) | "eval" (no_grad)
    when: str           # "fresh" | "trained"
    length: int
    batch: int
    changed: int        # causality: the first perturbed position; batch: the changed sample
    first: int | None   # the first position (causality) or sample (batch) that changed, or None
    size: float         # the largest change where nothing should have changed
    tol: float

    def where(self) -> str:
        grad = "train mode, autograd on" if self.mode == "train" else "eval mode, no_grad"
        state = "a freshly built instance" if self.when == "fresh" else f"an instance trained {TRAIN_STEPS} steps"
        return f"batch {self.batch} x length {self.length}, {grad}, {state}"


def _probe(b: _Battery, kind: str, pair: tuple, *, mode: str, when: str, length: int, batch: int) -> _Finding:
    """One perturbation probe on ``pair`` (two instances in the same state): the first sees ``x``,
    the second ``x`` changed after a random position (causality), in one random sample (batch
    independence), or not at all (determinism)."""
    a, c = pair
    train = mode == "train"
    a.train(train)
    c.train(train)
    x = b.inputs(batch, length)
    call_seed = b.draw()
    x2 = x.clone()
    changed = 0
    if kind == "causality":
        changed = b.rng.randrange(1, length)  # inputs at positions >= changed get new values
        x2[:, changed:] = b.inputs(batch, length - changed)
    elif kind == "batch_independence":
        changed = b.rng.randrange(batch)
        x2[changed] = b.inputs(1, length)[0]
    y = b.forward(a, x, call_seed, grad=train)
    y2 = b.forward(c, x2, call_seed, grad=train)
    tol = _tolerance(y, b.tol_dtype)
    d = trusted.diff(y, y2)  # (B, T, D)
    if kind == "causality":
        per = trusted.tolist(trusted.amax(d[:, :changed], (0, 2)))  # per position before `changed`
        idx = list(range(changed))
    elif kind == "batch_independence":
        per = trusted.tolist(trusted.amax(d, (1, 2)))
        idx = [i for i in range(batch) if i != changed]
        per = [per[i] for i in idx]
    else:
        per = trusted.tolist(trusted.amax(d, (0, 2)))
        idx = list(range(length))
    leaked = [i for i, v in zip(idx, per) if not v <= tol]  # `not <=`: NaN counts as a change
    size = max(per, default=0.0)
    return _Finding(kind, mode, when, length, batch, changed, leaked[0] if leaked else None, size, tol)


def _probes(b: _Battery, kind: str) -> tuple[_Finding | None, list[_Finding], str]:
    """Every probe of ``kind``: fresh instances in train and eval mode, then the trained pair.
    Returns (the first leaking finding or None, all findings, a note on probes that could not run)."""
    conditions = b.settings[kind]
    plan = [("train", "fresh", n, bs) for n, bs in conditions]
    plan += [("eval", "fresh", n, bs) for n, bs in conditions[:1]]
    trained = [("eval", "trained", conditions[0][0], 3)] + [("train", "trained", n, bs) for n, bs in conditions[:2]]
    findings: list[_Finding] = []
    if kind == "causality":
        # determinism first: two fresh instances on the same input must agree, or no comparison means anything
        f = _probe(b, "determinism", (b.fresh(), b.fresh()), mode="train", when="fresh", length=conditions[0][0],
                   batch=conditions[0][1])
        findings.append(f)
        if f.first is not None:
            return f, findings, ""
    for mode, when, n, bs in plan:
        f = _probe(b, kind, (b.fresh(), b.fresh()), mode=mode, when=when, length=n, batch=bs)
        findings.append(f)
        if f.first is not None:
            return f, findings, ""
    replay = b.replay()
    if replay.failure:
        return None, findings, (f" The probes after training did not run: the replayed training stopped at step "
                                f"{replay.failed_step} (see finite_step).")
    for mode, when, n, bs in trained:
        states = [trusted.ModuleState(layer) for layer in replay.layers]
        try:
            f = _probe(b, kind, replay.layers, mode=mode, when=when, length=n, batch=bs)
        finally:
            for s in states:
                s.restore()
            for layer in replay.layers:
                layer.train()
        findings.append(f)
        if f.first is not None:
            return f, findings, ""
    return None, findings, ""


def _summary(findings: list[_Finding]) -> dict:
    return {"max_leak": max((f.size for f in findings), default=0.0),
            "tolerance": max((f.tol for f in findings), default=0.0),
            "probes": [f"{f.mode}/{f.when}/{f.batch}x{f.length}" for f in findings]}


# ----------------------------------------------------------------------------------
# the checks after construction; each returns one check dict


def _check_interface(layer, b: _Battery) -> dict:
    seq_len, hidden_size = b.seq_len, b.hidden_size
    odd = 37 if seq_len != 37 else 29
    layer.eval()
    for batch, length in ((1, seq_len), (3, odd)):
        x = b.inputs(batch, length)
        try:
            with torch.no_grad():
                torch.manual_seed(b.draw())
                y = call_layer(layer, x)
        except (Exception, SystemExit) as exc:
            return _check("interface", False, f"forward on an input of shape {list(x.shape)} raised "
                                              f"{b.describe(exc)}.", input_shape=list(x.shape))
        if not isinstance(y, torch.Tensor):
            return _check("interface", False, f"forward returned {type(y).__name__}; return a tensor.")
        if tuple(y.shape) != tuple(x.shape):
            return _check("interface", False, f"for an input of shape {list(x.shape)} [batch, seq, hidden] the "
                                              f"output has shape {list(y.shape)}; return a tensor of the input's "
                                              "shape (project back to hidden_size and keep batch and seq as given).",
                          input_shape=list(x.shape), output_shape=list(y.shape))
        if not y.is_floating_point():
            return _check("interface", False, f"the output has dtype {y.dtype}; return a floating-point tensor.",
                          output_dtype=str(y.dtype))
    try:  # the job's leak probe copies the model: a layer it cannot copy faithfully would fail its job half-way
        twin(layer, "layer")
    except ProbeError as exc:
        return _check("interface", False, f"{exc}.")
    return _check("interface", True, f"output shape equals input shape for [1, {seq_len}, {hidden_size}] and "
                                     f"[3, {odd}, {hidden_size}].", lengths=[seq_len, odd])


def _check_causality(b: _Battery) -> dict:
    try:
        leak, findings, note = _probes(b, "causality")
    except (Exception, SystemExit) as exc:
        return _check("causality", False, f"forward raised {b.describe(exc)} during the causality probes.")
    if leak is not None and leak.kind == "determinism":
        return _check(
            "causality", False,
            f"two instances built with the same seed gave different outputs for the same input (by up to "
            f"{_fmt(leak.size)} at position {leak.first}, tolerance {_fmt(leak.tol)}; {leak.where()}), so no "
            "comparison can tell whether the layer reads future tokens. Draw randomness only from torch's global "
            "generator (torch.rand*, dropout) and keep no state outside the module instance.",
            first_leak_position=leak.first, max_leak=leak.size, tolerance=leak.tol, mode=leak.mode,
            nondeterministic=True)
    if leak is not None:
        return _check(
            "causality", False,
            f"the output at position {leak.first} changed by up to {_fmt(leak.size)} (tolerance {_fmt(leak.tol)}) "
            f"when only inputs at positions >= {leak.changed} changed ({leak.where()}): the layer reads future "
            f"tokens. {_CAUSALITY_HINT}",
            first_leak_position=leak.first, perturbed_from=leak.changed, max_leak=leak.size, tolerance=leak.tol,
            mode=leak.mode, state=leak.when, length=leak.length, batch=leak.batch)
    lengths = sorted({f.length for f in findings if f.kind == "causality"})
    batches = sorted({f.batch for f in findings if f.kind == "causality"})
    return _check("causality", True,
                  f"outputs before a random position t are unchanged when inputs from t on change, at lengths "
                  f"{lengths} and batch sizes {batches}, in train mode with autograd on and in eval mode, on fresh "
                  f"instances and after {TRAIN_STEPS} training steps.{note}", lengths=lengths, batches=batches,
                  **_summary(findings))


def _check_batch_independence(b: _Battery) -> dict:
    try:
        leak, findings, note = _probes(b, "batch_independence")
    except (Exception, SystemExit) as exc:
        return _check("batch_independence", False, f"forward raised {b.describe(exc)} during the batch "
                                                   "independence probes.")
    if leak is not None:
        return _check(
            "batch_independence", False,
            f"the output of sample {leak.first} changed by up to {_fmt(leak.size)} (tolerance {_fmt(leak.tol)}) "
            f"when only sample {leak.changed} of the batch changed ({leak.where()}): the layer mixes samples. "
            f"{_BATCH_HINT}", max_leak=leak.size, tolerance=leak.tol, mode=leak.mode, state=leak.when,
            length=leak.length, batch=leak.batch, changed_sample=leak.changed, first_changed_sample=leak.first)
    batches = sorted({f.batch for f in findings})
    return _check("batch_independence", True,
                  f"each sample's output is unchanged when another sample changes, for batch sizes {batches}, in "
                  f"train mode with autograd on and in eval mode, on fresh instances and after {TRAIN_STEPS} "
                  f"training steps.{note}", batches=batches, **_summary(findings))


def _gradients(layer, x, target, seed):
    """One forward + backward with MSE against ``target``; returns (y, loss, x.grad)."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    torch.manual_seed(seed)
    y = call_layer(layer, x)
    loss = ((y.float() - target) ** 2).mean()
    if trusted.all_finite(loss):
        loss.backward()
    return y, loss, x.grad


def _check_finite_step(b: _Battery) -> dict:
    try:
        layer = b.fresh()
    except (Exception, SystemExit) as exc:
        return _check("finite_step", False, f"constructing the layer raised {b.describe(exc)}.")
    layer.train()
    x = b.inputs(2, b.seq_len)
    # A random target, not zero: a layer whose output starts at zero (zero-initialised
    # output projection) still gets a nonzero output gradient.
    target = b.inputs(2, b.seq_len, torch.float32)
    seed = b.draw()
    try:
        y, loss, x_grad = _gradients(layer, x, target, seed)
    except (Exception, SystemExit) as exc:
        return _check("finite_step", False, f"forward + backward raised {b.describe(exc)}.")
    if not trusted.all_finite(y):
        bad = ~trusted.plain(y).isfinite()
        bi, t, c = (int(i) for i in bad.nonzero()[0])
        kind = "NaN" if trusted.plain(y)[bi, t, c].isnan() else "inf"
        return _check("finite_step", False,
                      f"the output has {int(bad.sum())} non-finite values of {y.numel()} (first: {kind} at batch {bi}, "
                      f"position {t}, channel {c}) for a standard-normal input: guard divisions and logs with an "
                      "epsilon, clamp exponents, and normalise running sums.", non_finite=int(bad.sum()))
    loss_value = float(trusted.item(loss))
    if not math.isfinite(loss_value):
        return _check("finite_step", False, f"the output is finite but its squared error overflows (largest output "
                                            f"{_fmt(float(trusted.item(trusted.max_abs(y))))}): keep activations of "
                                            "order one with normalisation or scaling.")
    named = [(n, p) for n, p in layer.named_parameters() if p.requires_grad]
    replay = b.replay()
    # a parameter may start to act after some steps (a schedule driven by a step counter): unused
    # only if it gets no gradient on the first step nor in the replayed training
    unused = [n for n, p in named if p.grad is None and n not in replay.with_grad]
    if unused:
        return _check("finite_step", False,
                      f"{len(unused)} parameter(s) receive no gradient: {', '.join(unused[:8])}"
                      f"{' ...' if len(unused) > 8 else ''}. Use them in forward or delete them (unused parameters "
                      "also make distributed training fail).", no_grad=unused)
    non_finite = [n for n, p in named if p.grad is not None and not trusted.all_finite(p.grad)]
    if non_finite:
        return _check("finite_step", False,
                      f"the gradients of {', '.join(non_finite[:8])} are not finite although the output is: look for "
                      "sqrt or division at zero, log of zero, or pow with a negative base.", non_finite_grad=non_finite)
    grad_norm = math.sqrt(sum(float(trusted.item(trusted.dot(p.grad, p.grad))) for _, p in named
                              if p.grad is not None))
    zero = [n for n, p in named if p.grad is None or not trusted.any_nonzero(p.grad)]
    input_cut = x_grad is None or not trusted.any_nonzero(x_grad)
    if zero or input_cut:
        zero, input_cut = _still_zero_after_jitter(layer, x, target, seed, zero)
    if input_cut:
        return _check("finite_step", False, "the output does not depend on the input hidden_states (zero gradient "
                                            "with respect to it): a token mixer must compute its output from its "
                                            "input.")
    layer.zero_grad(set_to_none=True)
    if replay.failure:
        return _check("finite_step", False,
                      f"the first step is finite, but training with AdamW (lr {_TRAIN_LR:g}, clip 1.0, a random "
                      f"regression target) {replay.failure} at step {replay.failed_step} of {TRAIN_STEPS}: guard "
                      "divisions and logs with an epsilon, clamp exponents, normalise running sums and state that "
                      "grows with the number of calls.", failed_step=replay.failed_step, steps=TRAIN_STEPS,
                      losses=replay.losses)
    # An all-zero gradient is not a failure: published layers that trained well have
    # parameters that act only past a threshold (a clamp floor) or across more chunks
    # than a short input has. Reported, so the Engineer can tell a cut-off parameter.
    note = ""
    if zero:
        note = (f" Note: {len(zero)} of them got an all-zero gradient on this input even with every weight "
                f"jittered ({', '.join(zero[:8])}{' ...' if len(zero) > 8 else ''}): fine if they act only past a "
                "threshold or on longer sequences; otherwise they are cut off from the output (detached, multiplied "
                "by zero, behind argmax/round) and should be connected or deleted.")
    return _check("finite_step", True, f"forward and backward are finite (loss {_fmt(loss_value)}, gradient norm "
                                       f"{_fmt(grad_norm)}), all {len(named)} trainable parameter tensors receive "
                                       f"a gradient, and {TRAIN_STEPS} AdamW steps stay finite (loss "
                                       f"{_fmt(replay.losses[0])} -> {_fmt(replay.losses[-1])}).{note}",
                  loss=loss_value, grad_norm=grad_norm, zero_grad=zero, steps=TRAIN_STEPS, losses=replay.losses)


def _jitter(layer, seed: int, scale: float = 0.02) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            if p.is_floating_point():
                p.add_(scale * torch.randn(p.shape, generator=gen).to(p.dtype))


def _still_zero_after_jitter(layer, x, target, seed, zero: list[str]) -> tuple[list[str], bool]:
    """Recheck gradients after a small random change to every weight.

    A zero-initialised layer downstream (a common trick for the output projection)
    zeroes the gradient of everything upstream, the input included, at initialisation;
    jittering the weights tells such parameters apart from ones truly cut off. Returns
    the names in ``zero`` still without gradient, and whether the input gradient is
    still zero.
    """
    params = dict(layer.named_parameters())
    saved = {n: p.detach().clone() for n, p in params.items()}
    try:
        _jitter(layer, seed + 11)
        try:
            _, _, x_grad = _gradients(layer, x, target, seed)
        except (Exception, SystemExit):
            return zero, False
        still = [n for n in zero if params[n].grad is None or not trusted.any_nonzero(params[n].grad)]
        return still, x_grad is None or not trusted.any_nonzero(x_grad)
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])
        layer.zero_grad(set_to_none=True)


def _check_params(layer, max_params: int | None) -> dict:
    total = sum(p.numel() for p in layer.parameters())
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    if max_params is not None and total > max_params:
        return _check("params", False, f"the layer has {total:,} parameters, over this stage's limit of "
                                       f"{max_params:,}: reduce expansion factors, heads or projection sizes.",
                      params=total, trainable=trainable, max_params=max_params)
    limit = f" (limit {max_params:,})" if max_params is not None else ""
    return _check("params", True, f"{total:,} parameters{limit}.", params=total, trainable=trainable,
                  max_params=max_params)


class _SavedBytes:
    """Bytes of the distinct storages autograd saves for backward during a forward (a saved-tensor
    hook sees each one as it is saved): the activation memory a training step holds."""

    def __init__(self):
        self.storages: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            self.storages[storage.data_ptr()] = max(self.storages.get(storage.data_ptr(), 0), storage.nbytes())
        except (RuntimeError, NotImplementedError):  # a tensor without storage (sparse, meta)
            pass
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class _Memoised(Exception):
    def __init__(self, length: int, why: str):
        super().__init__(why)
        self.length = length


def _time_length(b: _Battery, layer, length: int, reps: int, weights: torch.Tensor, *,
                 early_stop: bool = True) -> tuple[float, int]:
    """Best forward + backward CPU time (seconds) over ``reps`` calls at ``length`` (a fresh input each), and the
    bytes saved for backward; raises _Memoised if the output does not follow the input."""
    best, saved, previous = math.inf, 0, None
    for rep in range(reps):
        x = b.inputs(1, length).requires_grad_(True)
        call_seed = b.draw()
        counter = _SavedBytes()
        hooks = torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack) if rep == 0 \
            else contextlib.nullcontext()
        # CPU time, not wall time: on a shared node wall time also counts the time other processes
        # hold the core, which made linear layers look quadratic. This thread's clock is fine-grained;
        # the process's counts every thread (a layer that starts more) but ticks in 4 ms steps under
        # the sandbox's CPU limit: the larger of the two.
        start, start_process = time.thread_time(), time.process_time()
        with hooks:
            torch.manual_seed(call_seed)
            y = call_layer(layer, x)
        if not y.requires_grad:
            raise _Memoised(length, "the output is not connected to this call's input (it needs no gradient)")
        try:
            trusted.dot(y, weights).backward()
        except RuntimeError as exc:
            if "backward through the graph a second time" in str(exc):
                raise _Memoised(length, "the output belongs to an earlier call's graph") from exc
            raise
        elapsed = max(time.thread_time() - start, time.process_time() - start_process)
        if rep == 0:
            saved = counter.total
        out = trusted.plain(y)
        if x.grad is None or not trusted.any_nonzero(x.grad):
            raise _Memoised(length, "no gradient reaches this call's input")
        if previous is not None and float(trusted.item(trusted.amax(trusted.diff(out, previous)))) == 0.0:
            raise _Memoised(length, "two different inputs gave the very same output")
        previous = out
        best = min(best, elapsed)
        if early_stop and best > 1.0:  # long enough to time once
            break
    return best, saved


def _slope(n0: int, v0: float, n1: int, v1: float) -> float:
    return math.log(max(v1, 1e-9) / max(v0, 1e-9)) / math.log(n1 / n0)


def _fit(rows: list[list], column: int = 1) -> float:
    """Least-squares slope of log(value) over log(length) for the (up to) three longest lengths: where
    the asymptotic cost shows, and one noisy timing moves it less than a two-point slope."""
    pts = [(math.log(r[0]), math.log(max(r[column], 1e-9))) for r in rows[-3:]]
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def _check_complexity(b: _Battery, lengths: tuple[int, ...], allow_quadratic: bool) -> dict:
    try:
        layer = b.fresh()
        _jitter(layer, b.draw())  # a zero-initialised output would make every output equal
    except (Exception, SystemExit) as exc:
        return _check("complexity", False, f"constructing the layer raised {b.describe(exc)}.")
    layer.train()
    rows: list[list] = []  # [length, seconds, saved bytes, peak RSS MB]
    stopped = ""
    length = lengths[0]
    try:
        for i, length in enumerate(lengths):
            if len(rows) >= 2 and rows[-2][2] > 0:
                growth = max(1.0, _slope(rows[-2][0], rows[-2][2], rows[-1][0], rows[-1][2]))
                if rows[-1][2] * (length / rows[-1][0]) ** growth > _SAVED_BUDGET:
                    stopped = f" Stopped before {length} tokens: its saved activations would pass " \
                              f"{_SAVED_BUDGET >> 20} MB."
                    break
            weights = b.inputs(1, length, torch.float32)
            if i == 0:
                _time_length(b, layer, length, 1, weights)  # warm-up: first-call allocations and caches
            seconds, saved = _time_length(b, layer, length, 3, weights)
            rows.append([length, seconds, saved, round(_peak_rss_mb(), 1)])
            if seconds > _COMPLEXITY_BUDGET_S:
                break
        # the verdict's slope is fitted over the longest lengths (where the asymptotics show); one near or
        # above the threshold is timed again (every length three more times, in turn, the best kept) before
        # it counts, so that a busy node neither refuses a linear layer nor, by a slow spell at the shorter
        # lengths, passes a quadratic one (a Python loop over pairs measured 1.4 one time in six here)
        if len(rows) >= 2 and _fit(rows) > QUADRATIC_EXPONENT - RETIME_BAND and not allow_quadratic:
            for _ in range(3):
                for r in rows[-3:]:
                    again, _ = _time_length(b, layer, r[0], 1, b.inputs(1, r[0], torch.float32), early_stop=False)
                    r[1] = min(r[1], again)
    except _Memoised as exc:
        return _check("complexity", False, f"at length {exc.length} {exc}: the layer returns stored results instead "
                                           "of computing them from its input (a cache keyed on the shape or the call "
                                           "count). Compute every output from the current input.",
                      length=exc.length, memoised=True)
    except (Exception, SystemExit) as exc:
        text = b.describe(exc)
        hint = "" if text.startswith("out of memory") else "; the layer must accept any sequence length"
        return _check("complexity", False, f"forward + backward at length {length} raised {text}{hint}.",
                      length=length, out_of_memory=text.startswith("out of memory"))
    figures = {"lengths": [r[0] for r in rows], "seconds": [r[1] for r in rows],
               "saved_mb": [round(r[2] / 2**20, 2) for r in rows], "peak_rss_mb": [r[3] for r in rows]}
    timing = ", ".join(f"{r[0]} tokens {r[1] * 1e3:.1f} ms CPU, {r[2] / 2**20:.1f} MB saved" for r in rows)
    if len(rows) < 2:
        return _check("complexity", True, f"forward + backward is slow ({timing}); stopped timing before longer "
                                          f"lengths.{stopped}", exponent=None, memory_exponent=None, **figures)
    exponent = _fit(rows)
    memory_exponent = _fit(rows, 2)
    figures.update(exponent=exponent, memory_exponent=memory_exponent,
                   exponents=[_slope(r0[0], r0[1], r1[0], r1[1]) for r0, r1 in zip(rows, rows[1:])])
    if exponent > QUADRATIC_EXPONENT and not allow_quadratic:
        return _check("complexity", False, f"forward + backward time grows as length^{exponent:.2f} ({timing}): the "
                                           "layer is quadratic or worse in sequence length. Use a linear-time "
                                           "(chunked or recurrent) form, or allow quadratic layers in the search "
                                           "config.", **figures)
    if memory_exponent > CUBIC_EXPONENT or (memory_exponent > QUADRATIC_EXPONENT and not allow_quadratic):
        return _check("complexity", False, f"the memory saved for backward grows as length^{memory_exponent:.2f} "
                                           f"({timing}): allocate tensors proportional to batch x seq x hidden (or "
                                           "chunk x chunk), never seq x seq" +
                      (" or seq^3" if allow_quadratic else "") + ".", **figures)
    return _check("complexity", True, f"forward + backward time grows as length^{exponent:.2f}, saved memory as "
                                      f"length^{memory_exponent:.2f} ({timing}).{stopped}", **figures)


# ----------------------------------------------------------------------------------


def run_checks(
    source: str,
    *,
    class_name: str = DEFAULT_CLASS_NAME,
    hidden_size: int = 64,
    num_heads: int = 4,
    seq_len: int = 64,
    batch_size: int | None = None,
    max_params: int | None = None,
    dtype: str = "float32",
    seed: int | None = None,
    complexity: bool = True,
    complexity_lengths: tuple[int, ...] | None = None,
    allow_quadratic: bool = False,
    autocast: bool = False,
    static: bool = True,
    filename: str = "layer.py",
    progress: Callable[[str, dict | None], None] | None = None,
) -> dict:
    """Run the pre-flight battery on ``source``; return ``{"ok", "checks", "elapsed_s", "skipped", "seed",
    "settings"}``.

    ``checks`` lists the checks that ran, in order, each ``{"name", "passed", "detail",
    "figures"}``; ``skipped`` names those a stopping failure left out.

    ``seq_len`` is the training length and ``batch_size`` the training batch per rank: the
    probes run there and around it (:func:`probe_settings`). ``seed`` makes the draws
    reproducible; by default they come from ``os.urandom`` (and the report says which seed).
    ``autocast`` runs every forward and backward under bf16 autocast, as the trainer does with
    ``precision = "bf16"``; layers that mix dtypes (many of ASI-Arch's cast a matrix to bf16
    mid-kernel) run only there. ``complexity_lengths`` are the lengths timed for the complexity
    exponents (default: four lengths from max(256, 2 x seq_len) up, doubling). ``static=False``
    skips the static check (tests of the probes themselves; the head always runs it).
    ``progress``, if given, is called as ``progress(name, None)`` when a check starts and
    ``progress(name, check)`` when it ends (the child reports it on stderr, so a timeout can say
    how far the run got).

    Executes the candidate in this process, after the static check: call it only inside
    the sandbox (``asiarch.search.preflight``) or in tests.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {sorted(_DTYPES)}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (a causality probe needs a past and a future), got {seq_len}")
    torch_dtype = _DTYPES[dtype]
    seed = _draw_seed() if seed is None else int(seed)
    # Under autocast, compare outputs at bf16 precision.
    tol_dtype = torch.bfloat16 if autocast else torch_dtype
    lengths = tuple(complexity_lengths) if complexity_lengths else tuple(probe_settings(seq_len)["complexity"])
    start = time.perf_counter()
    checks: list[dict] = []
    source_lines = source.splitlines()

    def describe(exc: BaseException) -> str:
        return _describe(exc, filename, source_lines)

    def run(name: str, fn: Callable[[], dict], *, stop_on_failure: bool = False) -> dict:
        if progress:
            progress(name, None)
        check = fn()
        checks.append(check)
        if progress:
            progress(name, check)
        if stop_on_failure and not check["passed"]:
            raise _Stop
        return check

    state: dict = {}

    def static_() -> dict:
        findings = static_check(source)
        if findings:
            return _check("static", False, f"the code uses constructs a layer may not: {format_findings(findings)}",
                          findings=[dataclasses.asdict(f) for f in findings])
        return _check("static", True, "no forbidden imports, calls or attributes.")

    def load() -> dict:
        try:
            state["cls"] = load_layer_class(source, class_name, filename=filename, device="cpu")  # checks run on CPU
        except CandidateError as exc:
            cause = exc.__cause__
            if cause is None or isinstance(cause, SyntaxError):
                return _check("load", False, str(exc))
            return _check("load", False, f"executing the module raised {describe(cause)}.")
        except (Exception, SystemExit) as exc:
            return _check("load", False, f"loading the module raised {describe(exc)}.")
        return _check("load", True, f"the module loads and defines {class_name}.", torch_compile="disabled")

    def construct() -> dict:
        b = _Battery(state["cls"], hidden_size=hidden_size, num_heads=num_heads, seq_len=seq_len,
                     batch_size=batch_size, dtype=torch_dtype, tol_dtype=tol_dtype, seed=seed, describe=describe,
                     reload=lambda: load_layer_class(source, class_name, filename=filename, device="cpu"))
        try:
            layer = b.fresh()
        except CandidateError as exc:
            cause = exc.__cause__
            text = f"constructing {class_name}(hidden_size={hidden_size}, num_heads={num_heads}, layer_idx=0) " \
                   f"raised {describe(cause)}" if cause else str(exc)
            return _check("construct", False, text + ".")
        except (Exception, SystemExit) as exc:
            return _check("construct", False, f"constructing {class_name} raised {describe(exc)}.")
        state["layer"], state["battery"] = layer, b
        return _check("construct", True, f"{class_name}(hidden_size={hidden_size}, num_heads={num_heads}, "
                                         "layer_idx=0) builds.", hidden_size=hidden_size, num_heads=num_heads)

    names = CHECK_NAMES if static else CHECK_NAMES[1:]
    try:
        with torch_compile_disabled(), _single_thread(), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if static:
                run("static", static_, stop_on_failure=True)
            run("load", load, stop_on_failure=True)
            run("construct", construct, stop_on_failure=True)
            layer, b = state["layer"], state["battery"]
            run("interface", lambda: _check_interface(layer, b), stop_on_failure=True)
            run("causality", lambda: _check_causality(b))
            run("batch_independence", lambda: _check_batch_independence(b))
            run("finite_step", lambda: _check_finite_step(b))
            run("params", lambda: _check_params(layer, max_params))
            if complexity:
                run("complexity", lambda: _check_complexity(b, lengths, allow_quadratic))
    except _Stop:
        pass
    ran = {c["name"] for c in checks}
    wanted = names if complexity else names[:-1]
    return {
        "ok": all(c["passed"] for c in checks) and len(checks) == len(wanted),
        "checks": checks,
        "elapsed_s": round(time.perf_counter() - start, 3),
        "skipped": [n for n in wanted if n not in ran],
        "seed": seed,
        "settings": {"seq_len": seq_len, "batch_size": batch_size, "hidden_size": hidden_size, "num_heads": num_heads,
                     "dtype": dtype, "autocast": autocast, "complexity_lengths": list(lengths)},
    }


# ----------------------------------------------------------------------------------
# command line (the sandboxed child process)

# Prefix of the progress lines written to stderr; asiarch.search.preflight reads them back.
PROGRESS_PREFIX = "asiarch-preflight:"


def _report_progress(name: str, check: dict | None) -> None:
    if check is None:
        print(f"{PROGRESS_PREFIX} start {name}", file=sys.stderr, flush=True)
    else:
        print(f"{PROGRESS_PREFIX} done {json.dumps(check)}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asiarch.job.preflight", description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="the candidate's Python file")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--class-name", default=DEFAULT_CLASS_NAME)
    parser.add_argument("--filename", help="name to cite in messages (default: --source)")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64, help="the training length (the probes run there and "
                                                                "around it)")
    parser.add_argument("--batch-size", type=int, help="the training batch per rank")
    parser.add_argument("--max-params", type=int)
    parser.add_argument("--dtype", default="float32", choices=sorted(_DTYPES))
    parser.add_argument("--seed", type=int, help="reproduce a report's draws (default: from os.urandom)")
    parser.add_argument("--autocast", action="store_true", help="run under bf16 autocast, as bf16 training does")
    parser.add_argument("--no-complexity", action="store_true", help="skip the timing check")
    parser.add_argument("--no-static", action="store_true", help="skip the static check (tests of the probes; the "
                                                                 "head runs it before starting this process)")
    parser.add_argument("--allow-quadratic", action="store_true", help="accept a complexity exponent above "
                                                                        f"{QUADRATIC_EXPONENT}")
    args = parser.parse_args(argv)
    try:
        source = Path(args.source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"preflight: cannot read {args.source}: {exc}", file=sys.stderr)
        return 2

    # Whatever the candidate prints goes to stderr, so stdout carries only the report.
    sys.stdout.flush()
    report_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        report = run_checks(
            source, class_name=args.class_name, hidden_size=args.hidden_size, num_heads=args.num_heads,
            seq_len=args.seq_len, batch_size=args.batch_size, max_params=args.max_params, dtype=args.dtype,
            seed=args.seed, complexity=not args.no_complexity, allow_quadratic=args.allow_quadratic,
            autocast=args.autocast, static=not args.no_static, filename=args.filename or args.source,
            progress=_report_progress,
        )
    finally:
        sys.stdout.flush()
        os.dup2(report_fd, 1)
        os.close(report_fd)
    if args.json:
        print(json.dumps(report))
    else:
        for c in report["checks"]:
            print(f"{c['name']:<20} {'pass' if c['passed'] else 'FAIL':<5} {c['detail']}")
        print(f"{'ok' if report['ok'] else 'FAILED'} in {report['elapsed_s']:.2f} s (seed {report['seed']})")
    sys.stdout.flush()
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
