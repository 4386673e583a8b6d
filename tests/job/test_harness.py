"""lm-evaluation-harness over asiarch models (asiarch.job.harness): lm-eval itself on local tasks (a YAML over
a JSONL file, no network), first in this process over a model whose answers are known exactly, then after a
real 2-rank training job in the sandbox."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval is the [eval] extra: pip install -e '.[test]'")

from asiarch.data.tokenizers import load_tokenizer  # noqa: E402
from asiarch.job import harness  # noqa: E402

QUESTIONS = [
    {"context": "the quick brown fox jumps over the lazy", "choices": ["dog.", "qzqz"], "label": 0},
    {"context": "the quick brown", "choices": ["zqxj", "fox"], "label": 1},
    {"context": "the lazy", "choices": ["dog.", "qqqq"], "label": 1},  # labelled wrong on purpose
]


def write_local_task(directory: Path, name: str, questions) -> Path:
    """An lm-eval multiple-choice task over a JSONL file beside its YAML (the YAML `asiarch data cloze` writes);
    no questions: the YAML alone, its data file missing."""
    from asiarch.data.cloze import TASK_YAML

    directory.mkdir(parents=True, exist_ok=True)
    if questions:
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (directory / f"{name}.yaml").write_text(TASK_YAML.format(name=name, sources="the test"))
    return directory


class Bigram(torch.nn.Module):
    """logits[t] = table[input[t]]: each position sees its own token only, so every answer is known."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, x):
        return self.table[x]


def bigram_from(text: str, vocab: int = 257) -> torch.Tensor:
    counts = torch.full((vocab, vocab), 0.01)
    data = text.encode()
    for a, b in zip(data, data[1:]):
        counts[a, b] += 1
    return counts.log()


@pytest.fixture(scope="module")
def bytes_tok():
    return load_tokenizer("bytes")


def test_loglikelihood_is_the_sum_of_the_continuations_log_probabilities(bytes_tok):
    table = torch.randn(257, 257)
    lm = harness.HarnessLM(Bigram(table), bytes_tok, seq_len=16, batch_size=2)
    logp = torch.log_softmax(table, dim=-1)
    ctx, cont = list(b"abc"), list(b"de")
    want = float(logp[ord("c"), ord("d")] + logp[ord("d"), ord("e")])
    greedy = bool(table[ord("c")].argmax() == ord("d") and table[ord("d")].argmax() == ord("e"))
    # a batch of requests of different lengths (right padding must not change any answer)
    reqs = [(None, ctx, cont), (None, list(b"x"), list(b"yz" * 5)), (None, ctx, cont)]
    got = lm._loglikelihood_tokens(reqs)
    assert got[0][0] == pytest.approx(want, abs=1e-5) and got[0][1] is greedy and got[2] == got[0]
    alone = lm._loglikelihood_tokens([reqs[1]])
    assert alone[0][0] == pytest.approx(got[1][0], abs=1e-5)
    # the continuation is always scored whole when it fits; the context is cut from the left to seq_len
    long_ctx = list(b"q" * 100) + ctx
    assert lm._loglikelihood_tokens([(None, long_ctx, cont)])[0][0] == pytest.approx(want, abs=1e-5)
    # the greedy flag: a continuation made of each row's argmax is greedy
    best = [ord("c")]
    for _ in range(3):
        best.append(int(table[best[-1]].argmax()))
    assert lm._loglikelihood_tokens([(None, best[:1], best[1:])])[0][1] is True


def test_rolling_loglikelihood_scores_every_token_once(bytes_tok):
    class Req:
        def __init__(self, text):
            self.args = (text,)

    table = torch.randn(257, 257)
    logp = torch.log_softmax(table, dim=-1)
    text = "hello world, this text is longer than one window of eight tokens"
    ids = [256] + list(text.encode())  # end-of-text conditions the first token
    want = sum(float(logp[a, b]) for a, b in zip(ids, ids[1:]))
    lm = harness.HarnessLM(Bigram(table), bytes_tok, seq_len=8, batch_size=3)
    (got,) = lm.loglikelihood_rolling([Req(text)])
    assert got == pytest.approx(want, abs=1e-4)


def test_generation_is_refused_with_a_reason(bytes_tok):
    lm = harness.HarnessLM(Bigram(torch.zeros(257, 257)), bytes_tok, seq_len=8, batch_size=1)
    with pytest.raises(NotImplementedError, match="log-likelihoods only"):
        lm.generate_until([])


def test_metric_keys_keep_the_filter_and_drop_what_is_not_a_number():
    out = harness.flatten_results({"piqa": {"alias": "piqa", "acc,none": 0.5, "acc_stderr,none": 0.1,
                                            "sample_len": 3},
                                   "gsm": {"exact_match,strict-match": 0.25, "x,none": float("nan")}})
    assert out == {"lm_eval/piqa/acc": 0.5, "lm_eval/piqa/acc_stderr": 0.1, "lm_eval/gsm/exact_match@strict-match": 0.25}


def test_lm_eval_scores_a_local_task_and_reports_one_that_cannot_run(tmp_path, bytes_tok):
    """lm-eval itself, in this process, over a bigram model fitted to the text the right answers come from:
    two of three questions are answered as labelled (the third is labelled wrong), so acc is exactly 2/3;
    a task whose data file is missing is reported with lm-eval's words and the other task still scores."""
    tasks = write_local_task(tmp_path / "tasks", "toy", QUESTIONS)
    write_local_task(tasks, "gone", [])
    table = bigram_from("the quick brown fox jumps over the lazy dog. " * 20)
    lm = harness.HarnessLM(Bigram(table), bytes_tok, seq_len=64, batch_size=4)
    lines = []
    metrics, errors = harness.evaluate(lm, ["gone", "toy"], include=str(tasks), log=lines.append)
    assert metrics["lm_eval/toy/acc"] == pytest.approx(2 / 3) and metrics["lm_eval/toy/acc_norm"] == pytest.approx(2 / 3)
    assert "lm_eval/toy/acc_stderr" in metrics and not any(k.startswith("lm_eval/gone") for k in metrics)
    assert set(errors) == {"gone"} and "gone.jsonl" in errors["gone"], errors
    assert any("lm-eval toy: acc 0.6667" in line for line in lines), lines
    # the limit: lm-eval scores the first N documents only (the first is answered right)
    metrics, _ = harness.evaluate(lm, ["toy"], include=str(tasks), limit=1, log=lines.append)
    assert metrics["lm_eval/toy/acc"] == 1.0


@pytest.mark.slow
def test_two_rank_job_scores_lm_eval_tasks_in_the_sandbox(tmp_path, capsys):
    """`asiarch train --task lm --data DIR --lm-eval ... --lm-eval-include DIR`: a real 2-rank job in the sandbox
    (the task directory bound read-only) trains on prepared byte tokens of the text the answers come from and
    runs lm-eval; the metrics land in the result file, and the missing task's error too, with the loss kept."""
    from asiarch.cli import main
    from asiarch.job import result as rf
    from tests.job.test_train_job import CUMSUM

    corpus = tmp_path / "corpus.jsonl"  # 60 documents
    corpus.write_text((json.dumps({"text": "the quick brown fox jumps over the lazy dog. " * 10}) + "\n") * 60)
    data = tmp_path / "data"
    assert main(["data", "prepare", str(corpus), "--tokenizer", "bytes", "--out", str(data), "--val-tokens", "2k",
                 "--quiet"]) == 0
    tasks = write_local_task(tmp_path / "tasks", "toy", QUESTIONS)
    write_local_task(tasks, "gone", [])
    layer = tmp_path / "layer.py"
    layer.write_text(CUMSUM.format(extra=""))
    out = tmp_path / "r.h5"
    capsys.readouterr()
    code = main(["train", str(layer), "--out", str(out), "--task", "lm", "--data", str(data), "--steps", "150",
                 "--nproc", "2", "--batch-size", "8", "--seq-len", "64", "--hidden-size", "32", "--lr", "0.01",
                 "--lm-eval", "toy,gone", "--lm-eval-include", str(tasks)])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    rec = rf.read_result(out)
    assert rec.status == "ok" and rec.env["world_size"] == 2 and math.isfinite(rec.eval_loss)
    assert rec.metrics["lm_eval/toy/acc"] == pytest.approx(2 / 3), (rec.metrics, printed.err)
    assert "gone.jsonl" in rec.env["lm_eval_errors"]["gone"]
    assert "lm-eval gone did not run" in printed.err
