# Frozen copy of asiarch/job/preflight.py as it was before issue 13 (probes under no_grad, one
# length, batch 2-3, seed-0 inputs, deep copies of the layer; the loop ran it at 128 tokens), with
# its static check taken from the frozen old deny-list (tests/helpers/old_static_check.py). Kept ONLY
# so that tests/job/test_probes.py can show that every layer of the measurement-cheat corpus got
# past the old battery. Never import it from asiarch.
"""Pre-flight checks of a candidate layer: cheap, on CPU, before it is trained.

    python -m asiarch.job.preflight --source layer.py --json [--class-name DeltaNet]

The head runs this module in a sandboxed child process (``asiarch.search.preflight``), never in
its own, since loading a candidate executes LLM-written code. Checks, in order:

    static              the source passes the static safety check (nothing runs before)
    load                the module executes and defines the layer class
    construct           the class builds with the shell's arguments
    interface           output shape == input shape for batch 1 and 3, odd lengths
    causality           outputs before t0 ignore inputs at t0 and after (train and eval)
    batch_independence  a sample's output ignores the other samples (train and eval)
    finite_step         forward + backward: finite output, loss and gradients; every
                        parameter receives a gradient; the output depends on the input
    params              parameter count, against an optional limit
    complexity          forward time at growing lengths; the log-log slope

A failure of static, load, construct or interface stops the run (later checks would
only repeat it); the others are independent and all run. Every failure's detail is a
sentence an Engineer can act on. The run is deterministic for a given ``seed``.

Job side: torch and the standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from asiarch.job.candidate import DEFAULT_CLASS_NAME, CandidateError, build_layer, call_layer, load_layer_class
# ASI-Arch layers wrap kernels in @torch.compile: on CPU, compiling would cost tens of seconds
# for checks that run each function a few times; the uncompiled function computes the same.
from asiarch.job.compat import torch_compile_disabled
from tests.helpers.old_static_check import format_findings, static_check

__all__ = ["CHECK_NAMES", "run_checks", "main"]

CHECK_NAMES = ("static", "load", "construct", "interface", "causality", "batch_independence",
               "finite_step", "params", "complexity")

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Relative tolerance on "unchanged" outputs, as a fraction of the output's largest magnitude.
# On CPU the same code on the same shapes reproduces earlier positions bitwise (all 80
# published ASI-Arch layers differ by exactly 0); the slack covers FFT convolutions,
# whose round-off spreads over every position.
_RTOL = {torch.float32: 1e-5, torch.float64: 1e-9, torch.bfloat16: 1e-3, torch.float16: 1e-3}
_ATOL = 1e-6
# A forward slower than this at a complexity length stops the timing there (seconds).
_COMPLEXITY_BUDGET_S = 3.0
# Log-log slope of forward time over length above which a layer counts as quadratic.
QUADRATIC_EXPONENT = 1.6

_CAUSALITY_HINT = ("Make every operation causal: left-pad convolutions by kernel_size - 1 (or trim the right "
                   "side), use cumulative sums/means instead of full-sequence ones, mask attention scores with a "
                   "lower-triangular mask, and never flip, sort or roll along the sequence.")


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
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, ValueError, OSError):
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


def _inputs(shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(dtype)


def _forward(layer: torch.nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    # Reseeding before each call gives dropout the same mask, so two calls differ only
    # where their inputs do.
    torch.manual_seed(seed)
    return call_layer(layer, x)


def _fresh(layer: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``layer`` in its current state, for one comparison call.

    Many layers keep state that each training-mode forward advances (ASI-Arch's step
    counters drive temperature and floor schedules), so two calls on the same input
    differ; comparing calls made from the same state isolates the input's effect.
    """
    try:
        return copy.deepcopy(layer)
    except Exception:  # an attribute that cannot be copied: compare on the layer itself
        return layer


def _diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| elementwise in fp32, 0 where both are equal (infinities, NaN and NaN), inf where one is NaN."""
    a, b = a.float(), b.float()
    d = (a - b).abs()
    d = torch.where((a == b) | (a.isnan() & b.isnan()), torch.zeros_like(d), d)
    return torch.nan_to_num(d, nan=math.inf)


def _tolerance(y: torch.Tensor, dtype: torch.dtype) -> float:
    finite = y.float()[y.float().isfinite()]
    scale = finite.abs().max().item() if finite.numel() else 0.0
    return _RTOL.get(dtype, 1e-4) * scale + _ATOL


def _fmt(x: float) -> str:
    return f"{x:.3g}"


# ----------------------------------------------------------------------------------
# the checks after construction; each returns one check dict


def _check_interface(layer, hidden_size, seq_len, dtype, seed, describe, tol_dtype) -> dict:
    odd = 37 if seq_len != 37 else 29
    layer.eval()
    for batch, length in ((1, seq_len), (3, odd)):
        x = _inputs((batch, length, hidden_size), seed, dtype)
        try:
            with torch.no_grad():
                y = _forward(layer, x, seed)
        except (Exception, SystemExit) as exc:
            return _check("interface", False, f"forward on an input of shape {list(x.shape)} raised "
                                              f"{describe(exc)}.", input_shape=list(x.shape))
        if tuple(y.shape) != tuple(x.shape):
            return _check("interface", False, f"for an input of shape {list(x.shape)} [batch, seq, hidden] the "
                                              f"output has shape {list(y.shape)}; return a tensor of the input's "
                                              "shape (project back to hidden_size and keep batch and seq as given).",
                          input_shape=list(x.shape), output_shape=list(y.shape))
        if not y.is_floating_point():
            return _check("interface", False, f"the output has dtype {y.dtype}; return a floating-point tensor.",
                          output_dtype=str(y.dtype))
    return _check("interface", True, f"output shape equals input shape for [1, {seq_len}, {hidden_size}] and "
                                     f"[3, {odd}, {hidden_size}].", lengths=[seq_len, odd])


def _check_causality(layer, hidden_size, seq_len, dtype, seed, describe, tol_dtype) -> dict:
    t0s = sorted({t for t in (1, seq_len // 4, seq_len // 2, seq_len - 1) if 0 < t < seq_len})
    x = _inputs((2, seq_len, hidden_size), seed, dtype)
    worst = 0.0
    tol = 0.0
    for mode in ("train", "eval"):
        layer.train(mode == "train")
        try:
            with torch.no_grad():
                y = _forward(_fresh(layer), x, seed)
                tol = _tolerance(y, tol_dtype)
                for i, t0 in enumerate(t0s):
                    x2 = x.clone()
                    x2[:, t0:] = _inputs((2, seq_len - t0, hidden_size), seed + 1 + i, dtype)
                    y2 = _forward(_fresh(layer), x2, seed)
                    per_pos = _diff(y[:, :t0], y2[:, :t0]).amax(dim=(0, 2))  # (t0,)
                    leaked = (per_pos > tol).nonzero()
                    if leaked.numel():
                        first = int(leaked[0, 0])
                        size = per_pos.max().item()
                        return _check(
                            "causality", False,
                            f"the output at position {first} changed by up to {_fmt(size)} (tolerance {_fmt(tol)}) "
                            f"when only inputs at positions >= {t0} changed ({mode} mode): the layer reads future "
                            f"tokens. {_CAUSALITY_HINT}",
                            first_leak_position=first, perturbed_from=t0, max_leak=size, tolerance=tol, mode=mode)
                    worst = max(worst, per_pos.max().item() if per_pos.numel() else 0.0)
        except (Exception, SystemExit) as exc:
            return _check("causality", False, f"forward raised {describe(exc)} ({mode} mode).", mode=mode)
    return _check("causality", True, f"outputs before t0 are unchanged when inputs from t0 on change, for t0 in "
                                     f"{t0s}, in train and eval mode.",
                  perturbed_from=t0s, max_leak=worst, tolerance=tol)


def _check_batch_independence(layer, hidden_size, seq_len, dtype, seed, describe, tol_dtype) -> dict:
    x = _inputs((3, seq_len, hidden_size), seed, dtype)
    x2 = x.clone()
    x2[1] = _inputs((seq_len, hidden_size), seed + 7, dtype)
    worst = 0.0
    for mode in ("train", "eval"):
        layer.train(mode == "train")
        try:
            with torch.no_grad():
                y = _forward(_fresh(layer), x, seed)
                y2 = _forward(_fresh(layer), x2, seed)
        except (Exception, SystemExit) as exc:
            return _check("batch_independence", False, f"forward raised {describe(exc)} ({mode} mode).", mode=mode)
        tol = _tolerance(y, tol_dtype)
        d = _diff(y[[0, 2]], y2[[0, 2]])
        size = d.max().item()
        if size > tol:
            sample = 0 if d[0].max().item() > tol else 2
            return _check(
                "batch_independence", False,
                f"the output of sample {sample} changed by up to {_fmt(size)} (tolerance {_fmt(tol)}) when only "
                f"sample 1 of the batch changed ({mode} mode): the layer mixes samples. Never reduce over the "
                "batch dimension (dim 0); normalise per token with LayerNorm/RMSNorm instead of BatchNorm.",
                max_leak=size, tolerance=tol, mode=mode)
        worst = max(worst, size)
    return _check("batch_independence", True, "each sample's output is unchanged when another sample changes, "
                                              "in train and eval mode.", max_leak=worst)


def _gradients(layer, x, target, seed):
    """One forward + backward with MSE against ``target``; returns (y, loss, x.grad)."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    y = _forward(layer, x, seed)
    loss = ((y.float() - target) ** 2).mean()
    if loss.isfinite():
        loss.backward()
    return y, loss, x.grad


def _check_finite_step(layer, hidden_size, seq_len, dtype, seed, describe, tol_dtype) -> dict:
    layer.train()
    x = _inputs((2, seq_len, hidden_size), seed, dtype)
    # A random target, not zero: a layer whose output starts at zero (zero-initialised
    # output projection) still gets a nonzero output gradient.
    target = _inputs((2, seq_len, hidden_size), seed + 3, torch.float32)
    try:
        y, loss, x_grad = _gradients(layer, x, target, seed)
    except (Exception, SystemExit) as exc:
        return _check("finite_step", False, f"forward + backward raised {describe(exc)}.")
    bad = ~y.float().isfinite()
    if bad.any():
        b, t, c = (int(i) for i in bad.nonzero()[0])
        kind = "NaN" if y.float()[b, t, c].isnan() else "inf"
        return _check("finite_step", False,
                      f"the output has {int(bad.sum())} non-finite values of {y.numel()} (first: {kind} at batch {b}, "
                      f"position {t}, channel {c}) for a standard-normal input: guard divisions and logs with an "
                      "epsilon, clamp exponents, and normalise running sums.", non_finite=int(bad.sum()))
    if not loss.isfinite():
        return _check("finite_step", False, f"the output is finite but its squared error overflows (largest output "
                                            f"{_fmt(y.float().abs().max().item())}): keep activations of order one "
                                            "with normalisation or scaling.")
    named = [(n, p) for n, p in layer.named_parameters() if p.requires_grad]
    unused = [n for n, p in named if p.grad is None]
    if unused:
        return _check("finite_step", False,
                      f"{len(unused)} parameter(s) receive no gradient: {', '.join(unused[:8])}"
                      f"{' ...' if len(unused) > 8 else ''}. Use them in forward or delete them (unused parameters "
                      "also make distributed training fail).", no_grad=unused)
    non_finite = [n for n, p in named if not p.grad.isfinite().all()]
    if non_finite:
        return _check("finite_step", False,
                      f"the gradients of {', '.join(non_finite[:8])} are not finite although the output is: look for "
                      "sqrt or division at zero, log of zero, or pow with a negative base.", non_finite_grad=non_finite)
    grad_norm = math.sqrt(sum(float(p.grad.float().pow(2).sum()) for _, p in named)) if named else 0.0
    zero = [n for n, p in named if not p.grad.any()]
    input_cut = x_grad is None or not x_grad.any()
    if zero or input_cut:
        zero, input_cut = _still_zero_after_jitter(layer, x, target, seed, zero)
    if input_cut:
        return _check("finite_step", False, "the output does not depend on the input hidden_states (zero gradient "
                                            "with respect to it): a token mixer must compute its output from its "
                                            "input.")
    layer.zero_grad(set_to_none=True)
    # An all-zero gradient is not a failure: published layers that trained well have
    # parameters that act only past a threshold (a clamp floor) or across more chunks
    # than a short input has. Reported, so the Engineer can tell a cut-off parameter.
    note = ""
    if zero:
        note = (f" Note: {len(zero)} of them got an all-zero gradient on this input even with every weight "
                f"jittered ({', '.join(zero[:8])}{' ...' if len(zero) > 8 else ''}): fine if they act only past a "
                "threshold or on longer sequences; otherwise they are cut off from the output (detached, multiplied "
                "by zero, behind argmax/round) and should be connected or deleted.")
    return _check("finite_step", True, f"forward and backward are finite (loss {_fmt(loss.item())}, gradient norm "
                                       f"{_fmt(grad_norm)}) and all {len(named)} trainable parameter tensors receive "
                                       f"a gradient.{note}", loss=loss.item(), grad_norm=grad_norm, zero_grad=zero)


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
    gen = torch.Generator().manual_seed(seed + 11)
    try:
        with torch.no_grad():
            for p in params.values():
                if p.is_floating_point():
                    p.add_(0.02 * torch.randn(p.shape, generator=gen).to(p.dtype))
        try:
            _, _, x_grad = _gradients(layer, x, target, seed)
        except (Exception, SystemExit):
            return zero, False
        still = [n for n in zero if params[n].grad is None or not params[n].grad.any()]
        return still, x_grad is None or not x_grad.any()
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


def _check_complexity(layer, hidden_size, dtype, seed, lengths, allow_quadratic, describe) -> dict:
    layer.eval()
    times: list[tuple[int, float]] = []
    try:
        with torch.no_grad():
            for i, length in enumerate(lengths):
                x = _inputs((1, length, hidden_size), seed, dtype)
                if i == 0:
                    _forward(layer, x, seed)  # warm-up: first-call allocations and caches
                best = math.inf
                for _ in range(3):  # best of three (less noise on a busy node), unless already long
                    # wall clock: process CPU time was seen to tick in 4 ms steps in these VMs
                    start = time.perf_counter()
                    _forward(layer, x, seed)
                    best = min(best, time.perf_counter() - start)
                    if best > 0.25:
                        break
                times.append((length, best))
                if best > _COMPLEXITY_BUDGET_S:
                    break
    except (Exception, SystemExit) as exc:
        return _check("complexity", False, f"forward at length {length} raised {describe(exc)}; the layer must "
                                           "accept any sequence length.", length=length)
    figures = {"lengths": [n for n, _ in times], "seconds": [t for _, t in times]}
    timing = ", ".join(f"{n} tokens {t * 1e3:.1f} ms" for n, t in times)
    if len(times) < 2:
        return _check("complexity", True, f"forward is slow ({timing}); stopped timing before longer lengths.",
                      exponent=None, **figures)
    (n0, t0), (n1, t1) = times[0], times[-1]
    exponent = math.log(max(t1, 1e-9) / max(t0, 1e-9)) / math.log(n1 / n0)
    figures["exponent"] = exponent
    if exponent > QUADRATIC_EXPONENT and not allow_quadratic:
        return _check("complexity", False, f"forward time grows as length^{exponent:.2f} ({timing}): the layer is "
                                           "quadratic or worse in sequence length. Use a linear-time (chunked or "
                                           "recurrent) form, or allow quadratic layers in the search config.",
                      **figures)
    return _check("complexity", True, f"forward time grows as length^{exponent:.2f} ({timing}).", **figures)


# ----------------------------------------------------------------------------------


def run_checks(
    source: str,
    *,
    class_name: str = DEFAULT_CLASS_NAME,
    hidden_size: int = 64,
    num_heads: int = 4,
    seq_len: int = 64,
    max_params: int | None = None,
    dtype: str = "float32",
    seed: int = 0,
    complexity: bool = True,
    complexity_lengths: tuple[int, ...] = (256, 1024),
    allow_quadratic: bool = False,
    autocast: bool = False,
    filename: str = "layer.py",
    progress: Callable[[str, dict | None], None] | None = None,
) -> dict:
    """Run the pre-flight battery on ``source``; return ``{"ok", "checks", "elapsed_s", "skipped"}``.

    ``checks`` lists the checks that ran, in order, each ``{"name", "passed", "detail",
    "figures"}``; ``skipped`` names those a stopping failure left out.

    ``autocast`` runs every forward and backward under bf16 autocast, as the trainer
    does with ``precision = "bf16"``; layers that mix dtypes (many of ASI-Arch's cast a
    matrix to bf16 mid-kernel) run only there. ``complexity_lengths`` are the lengths
    timed for the complexity exponent. ``progress``, if given, is called as
    ``progress(name, None)`` when a check starts and ``progress(name, check)`` when it
    ends (the child reports it on stderr, so a timeout can say how far the run got).

    Executes the candidate in this process, after the static check: call it only inside
    the sandbox (``asiarch.search.preflight``) or in tests.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {sorted(_DTYPES)}")
    torch_dtype = _DTYPES[dtype]
    # Under autocast, compare outputs at bf16 precision.
    tol_dtype = torch.bfloat16 if autocast else torch_dtype
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

    def static() -> dict:
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
        torch.manual_seed(seed)
        try:
            layer = build_layer(state["cls"], hidden_size, num_heads, layer_idx=0)
            layer.to(torch_dtype)
        except CandidateError as exc:
            cause = exc.__cause__
            text = f"constructing {class_name}(hidden_size={hidden_size}, num_heads={num_heads}, layer_idx=0) " \
                   f"raised {describe(cause)}" if cause else str(exc)
            return _check("construct", False, text + ".")
        except (Exception, SystemExit) as exc:
            return _check("construct", False, f"constructing {class_name} raised {describe(exc)}.")
        state["layer"] = layer
        return _check("construct", True, f"{class_name}(hidden_size={hidden_size}, num_heads={num_heads}, "
                                         "layer_idx=0) builds.", hidden_size=hidden_size, num_heads=num_heads)

    args = (hidden_size, seq_len, torch_dtype, seed, describe, tol_dtype)
    try:
        with torch_compile_disabled(), _single_thread(), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            run("static", static, stop_on_failure=True)
            run("load", load, stop_on_failure=True)
            run("construct", construct, stop_on_failure=True)
            layer = state["layer"]
            run("interface", lambda: _check_interface(layer, *args), stop_on_failure=True)
            run("causality", lambda: _check_causality(layer, *args))
            run("batch_independence", lambda: _check_batch_independence(layer, *args))
            run("finite_step", lambda: _check_finite_step(layer, *args))
            run("params", lambda: _check_params(layer, max_params))
            if complexity:
                run("complexity", lambda: _check_complexity(layer, hidden_size, torch_dtype, seed,
                                                            tuple(complexity_lengths), allow_quadratic, describe))
    except _Stop:
        pass
    ran = {c["name"] for c in checks}
    wanted = CHECK_NAMES if complexity else CHECK_NAMES[:-1]
    return {
        "ok": all(c["passed"] for c in checks) and len(checks) == len(wanted),
        "checks": checks,
        "elapsed_s": round(time.perf_counter() - start, 3),
        "skipped": [n for n in wanted if n not in ran],
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
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--max-params", type=int)
    parser.add_argument("--dtype", default="float32", choices=sorted(_DTYPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--autocast", action="store_true", help="run under bf16 autocast, as bf16 training does")
    parser.add_argument("--no-complexity", action="store_true", help="skip the timing check")
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
            seq_len=args.seq_len, max_params=args.max_params, dtype=args.dtype, seed=args.seed,
            complexity=not args.no_complexity, allow_quadratic=args.allow_quadratic, autocast=args.autocast,
            filename=args.filename or args.source, progress=_report_progress,
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
        print(f"{'ok' if report['ok'] else 'FAILED'} in {report['elapsed_s']:.2f} s")
    sys.stdout.flush()
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
