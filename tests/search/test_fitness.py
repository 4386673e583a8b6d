import math

import pytest

from asiarch.search.fitness import Reference, bench_score, compute_fitness, sigmoid

REF = Reference(loss=4.0, bench=0.5)


def test_baseline_scores_one_half():
    f = compute_fitness(4.0, 0.5, REF)
    assert f.value == pytest.approx(0.5)
    assert f.terms == {"loss": 0.5, "bench": 0.5}


def test_improvement_raises_fitness_and_saturates_at_scale():
    better = compute_fitness(3.8, 0.55, REF).value        # 5 % lower loss, 10 % higher score
    assert better > 0.5
    # ASI-Arch: clamp at +-10 % relative change, so 20 % better is no better than 10 %
    assert compute_fitness(3.6, 0.55, REF).terms["loss"] == pytest.approx(sigmoid(6.0))
    assert compute_fitness(3.2, 0.55, REF).terms["loss"] == pytest.approx(sigmoid(6.0))
    assert compute_fitness(4.4, 0.5, REF).terms["loss"] == pytest.approx(sigmoid(-6.0))


def test_formula_matches_asi_arch():
    loss, bench = 3.9, 0.52
    lt = sigmoid(6 * max(-1, min(1, (4.0 - loss) / (0.1 * 4.0))))
    bt = sigmoid(6 * max(-1, min(1, (bench - 0.5) / (0.1 * 0.5))))
    assert compute_fitness(loss, bench, REF).value == pytest.approx((lt + bt) / 2)
    assert compute_fitness(loss, bench, REF, combine="sum").value == pytest.approx(lt + bt)


def test_judge_term_and_missing_inputs():
    f = compute_fitness(4.0, 0.5, REF, judge=10.0, judge_weight=1.0)
    assert f.terms["judge"] == 1.0 and f.value == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert "judge" not in compute_fitness(4.0, 0.5, REF, judge=10.0, judge_weight=0.0).terms
    assert compute_fitness(float("nan"), 0.5, REF) is None
    assert compute_fitness(None, 0.5, REF) is None
    only_loss = compute_fitness(3.9, None, REF)
    assert set(only_loss.terms) == {"loss"}


def test_bench_score_is_mean_of_accuracies():
    assert bench_score({"eval/loss": 3.0, "mqar/accuracy": 0.25, "mqar64/accuracy": 0.75}) == 0.5
    assert bench_score({"eval/loss": 3.0}) is None
    assert bench_score({"mqar/accuracy": math.nan}) is None


def test_task_score_takes_one_accuracy_per_lm_eval_task():
    """lm-eval's acc_norm where a task has it, else acc; stderr and perplexities never enter the score; MQAR's
    accuracies as before."""
    from asiarch.search.fitness import bench_score, task_accuracies

    metrics = {"eval/loss": 2.0, "lm_eval/piqa/acc": 0.6, "lm_eval/piqa/acc_norm": 0.7, "lm_eval/piqa/acc_stderr": 0.1,
               "lm_eval/boolq/acc": 0.5, "lm_eval/wikitext/word_perplexity": 80.0, "mqar/accuracy": 0.9}
    assert task_accuracies(metrics) == {"piqa": 0.7, "boolq": 0.5, "mqar/accuracy": 0.9}
    assert bench_score(metrics) == pytest.approx((0.7 + 0.5 + 0.9) / 3)
    assert bench_score({"lm_eval/wikitext/word_perplexity": 80.0}) is None


def test_leaderboard_table_shows_one_column_per_lm_eval_task():
    from asiarch.analysis.views import _table_tasks, _task_label

    keys = ["lm_eval/piqa/acc", "lm_eval/piqa/acc_norm", "lm_eval/wikitext/bits_per_byte",
            "lm_eval/wikitext/word_perplexity", "mqar_8x128/accuracy"]
    shown = _table_tasks(keys)
    assert shown == ["lm_eval/piqa/acc_norm", "lm_eval/wikitext/bits_per_byte", "mqar_8x128/accuracy"]
    assert [_task_label(k) for k in shown] == ["piqa", "wikitext", "mqar_8x128"]
