"""lm-evaluation-harness over a trained candidate: the LM path's benchmark scores.

After training, every rank runs lm-eval (``lm_eval.simple_evaluate``) on ``train.lm_eval_tasks`` with
the same :class:`HarnessLM`: the tasks and their requests are built identically on every rank, each
rank scores its share of each batch of requests (request i goes to rank i % world) and one all-reduce
puts the answers together, so every rank hands lm-eval the same numbers and the work is split
``world`` ways. lm-eval itself sees one process (``world_size`` 1) and never reaches for its own
distributed code.

Scoring is lm-eval's for a causal model: a request's context and continuation are cut from the left
to the trained length (``train.seq_len``) and the continuation's log-probability summed, with
``is_greedy`` true when every continuation token is the argmax; rolling log-likelihoods (perplexity
tasks, e.g. wikitext) use lm-eval's own disjoint windows. Log-probabilities are taken with
:mod:`asiarch.job.trusted`'s functions, so a candidate that reassigns ``log_softmax`` does not change
them. ``generate_until`` is not supported (a 20M-parameter model's generations carry no signal, and
the search ranks on likelihoods): a generation task fails with that message and the run keeps its
loss.

The tokenizer is the experiment's, from the prepared directory's manifest (``gpt2``, ``bytes``, or
the directory's ``tokenizer.json``). lm-eval runs offline (``HF_DATASETS_OFFLINE``, ``HF_HUB_OFFLINE``):
a task's data must be on disk, a local YAML in ``train.lm_eval_include`` (its relative ``data_files``
resolved against that directory) or a registered task whose dataset is in the HF cache. A task that
cannot run records lm-eval's own words in the result's ``env["lm_eval_errors"]``; the others still run.

Job side: imported only when ``train.lm_eval_tasks`` is set (lm-eval is the optional ``[eval]`` extra).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import torch

# Offline before lm-eval or datasets are imported: nothing in a job may reach the network.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.model import TemplateLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from asiarch.job import trusted  # noqa: E402

#: Bootstrap resamples lm-eval draws for the standard error of metrics that are not means (its
#: default, 100,000, takes minutes on a perplexity task; 1,000 gives the error to about 3 %).
BOOTSTRAP_ITERS = 1000
#: A metric's key in the result file: lm_eval/<task>/<metric>, the filter appended when not 'none'.
PREFIX = "lm_eval/"


class HarnessLM(TemplateLM):
    """lm-eval's model interface over an asiarch :class:`~asiarch.job.model.LanguageModel`."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, seq_len: int, batch_size: int, rank: int = 0,
                 world: int = 1, device: torch.device | str = "cpu", autocast=contextlib.nullcontext):
        super().__init__()
        self.model, self.tokenizer_, self.seq_len = model, tokenizer, int(seq_len)
        self.batch, self.shard, self.world = max(1, int(batch_size)), int(rank), max(1, int(world))
        self.device_, self.autocast = torch.device(device), autocast

    # -- what TemplateLM asks of a model

    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer_.eot)

    @property
    def max_length(self) -> int:
        return self.seq_len

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return [int(t) for t in self.tokenizer_.encode_batch([string])[0]]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """``requests``: ``(key, context_ids, continuation_ids)`` each; the same list on every rank."""
        answers = torch.zeros((len(requests), 2), dtype=torch.float64)  # (logprob, is_greedy) per request
        mine = sorted(range(self.shard, len(requests), self.world),
                      key=lambda i: -len(requests[i][1]) - len(requests[i][2]))  # longest first: tight batches
        for start in range(0, len(mine), self.batch):
            part = mine[start:start + self.batch]
            for i, (logprob, greedy) in zip(part, self._score([requests[i][1:] for i in part])):
                answers[i, 0], answers[i, 1] = logprob, float(greedy)
        if self.world > 1:
            trusted.all_reduce(answers)
        return [(float(lp), bool(g > 0.5)) for lp, g in trusted.tolist(answers)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's total log-likelihood over lm-eval's disjoint windows of the trained length."""
        windows, owner = [], []
        for n, (text,) in enumerate(req.args for req in requests):
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    self.tok_encode(text), prefix_token=self.eot_token_id, max_seq_len=self.seq_len, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows)):
            totals[n] += logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        raise NotImplementedError(
            "asiarch scores log-likelihoods only (loglikelihood, loglikelihood_rolling): generation tasks "
            "(output_type generate_until) are not supported; choose multiple-choice or perplexity tasks")

    # -- the forward passes

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """One batch: each (context, continuation) cut from the left to seq_len + 1 tokens, right-padded
        (a causal model's earlier positions do not see the padding), its continuation scored."""
        wholes = [(list(ctx) + list(cont))[-(self.seq_len + 1):] for ctx, cont in pairs]
        spans = [min(len(cont), len(whole) - 1) for (_, cont), whole in zip(pairs, wholes)]
        width = max(len(w) - 1 for w in wholes)
        inputs = torch.full((len(wholes), width), self.eot_token_id, dtype=torch.int64)
        targets = torch.full((len(wholes), width), self.eot_token_id, dtype=torch.int64)
        for b, whole in enumerate(wholes):
            inputs[b, :len(whole) - 1] = torch.tensor(whole[:-1])
            targets[b, :len(whole) - 1] = torch.tensor(whole[1:])
        with torch.no_grad(), self.autocast():
            logits = self.model(inputs.to(self.device_))  # [B, T, V]
        out = []
        for b, n in enumerate(spans):
            end = len(wholes[b]) - 1
            logp = trusted.log_softmax(logits[b, end - n:end])  # [n, V] in fp32: the continuation's positions only
            target = targets[b, end - n:end].to(self.device_)
            picked = logp.gather(-1, target[:, None])[:, 0]
            greedy = trusted.tolist(trusted.amax(logp, dim=-1) <= picked)
            out.append((float(trusted.item(picked.sum())), all(greedy)))
        return out


def metric_key(task: str, name: str) -> str:
    """lm-eval's 'acc,none' of task 'piqa' -> 'lm_eval/piqa/acc'; a filter other than 'none' is kept."""
    metric, _, filt = name.partition(",")
    return f"{PREFIX}{task}/{metric}" + (f"@{filt}" if filt and filt != "none" else "")


def flatten_results(results: dict) -> dict[str, float]:
    """lm-eval's ``results`` (task -> {'acc,none': ..., 'alias': ...}) as result-file metrics: the finite
    numbers only, under :func:`metric_key`."""
    out = {}
    for task, values in results.items():
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "," in name \
                    and math.isfinite(value):
                out[metric_key(task, name)] = float(value)
    return out


@contextlib.contextmanager
def _cwd(path: str | None):
    """In ``path`` for the duration (a local YAML's relative data_files are read from there)."""
    if not path:
        yield
        return
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def task_manager(tasks: list[str], include: str | None) -> TaskManager:
    """lm-eval's task index: the local YAMLs of ``include`` alone when they hold every task asked for
    (indexing lm-eval's thousands of built-in tasks takes ~20 s), else those and the built-in ones."""
    if include:
        local = TaskManager(include_path=include, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    return TaskManager(include_path=include or None)


def _loads(task: str, manager: TaskManager, include: str | None, lm: HarnessLM) -> str | None:
    """Whether ``task`` loads on every rank: None, or the first failing rank's error (lm-eval's words: an
    unknown task, a missing dataset). Rank 0 loads first, the others after it (from the datasets cache it
    filled: no two ranks build one cache), and the ranks agree before any of them scores, so that no rank
    waits in a collective for a peer that gave the task up."""
    error = None
    for turn in (0, 1) if lm.world > 1 else (0,):
        if (lm.shard == 0) == (turn == 0):
            try:
                with _cwd(include):
                    manager.load([task])
            except Exception as exc:  # datasets and lm-eval raise many types
                error = f"{type(exc).__name__}: {exc}"
        if lm.world > 1:
            trusted.all_reduce(torch.zeros(1))  # a barrier on the job's own process group
    if lm.world > 1:
        failed = torch.tensor([0.0 if error is None else float(lm.shard + 1)])
        trusted.all_reduce(failed, op=torch.distributed.ReduceOp.MAX)
        if trusted.item(failed) and error is None:
            error = f"it did not load on rank {int(trusted.item(failed)) - 1} (that rank's log says why)"
    return error


def _quiet(_line: str) -> None:
    pass


def evaluate(lm: HarnessLM, tasks: list[str], *, include: str | None = None, limit: int = 0,
             log=_quiet) -> tuple[dict[str, float], dict[str, str]]:
    """Run lm-eval on each task in turn: (metrics under lm_eval/<task>/..., task -> lm-eval's error for
    the tasks that could not run). A failing task never stops the others. Every rank calls this with the
    same arguments; ``log`` gets a line per task (the trainer passes print on rank 0, and on the others a
    print of the errors alone, which start with the rank)."""
    include = str(Path(include).resolve()) if include else None
    manager = task_manager(tasks, include)
    metrics, errors = {}, {}
    for task in tasks:
        try:
            error = _loads(task, manager, include, lm)
            if error is None:
                with _cwd(include):
                    out = simple_evaluate(model=lm, tasks=[task], task_manager=manager, limit=limit or None,
                                          log_samples=False, bootstrap_iters=BOOTSTRAP_ITERS, verbosity="ERROR")
        except Exception as exc:  # lm-eval's words: e.g. a generation task
            error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            errors[task] = error
            log(f"asiarch: {f'rank {lm.shard}: ' if lm.shard else ''}lm-eval {task}: {error}")
            continue
        found = flatten_results((out or {}).get("results", {}))
        metrics.update(found)
        own = f"{PREFIX}{task}/"
        log(f"asiarch: lm-eval {task}: " + ", ".join(f"{k[len(own):]} {v:.4f}" for k, v in sorted(found.items())
                                                     if k.startswith(own) and not k.endswith("_stderr")))
    return metrics, errors
