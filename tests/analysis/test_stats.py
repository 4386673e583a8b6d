"""Tests for asiarch.analysis.stats: t quantiles, seed intervals, paired comparisons, Spearman."""

from __future__ import annotations

import math

import numpy as np
import pytest

from asiarch.analysis.stats import (
    Interval,
    aggregate_seeds,
    incomplete_beta,
    paired_difference,
    rank_average,
    spearman,
    summarize,
    t_cdf,
    t_quantile,
)

Z975 = 1.959963985  # standard normal 0.975 quantile


# --------------------------------------------------------------------------- t quantile

@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 1, 12.706204736),
        (0.975, 2, 4.302652730),
        (0.975, 4, 2.776445105),
        (0.975, 10, 2.228138852),
        (0.975, 30, 2.042272456),
        (0.995, 5, 4.032142984),
        (0.9995, 1, 636.6192487),
    ],
)
def test_t_quantile_table_values(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, rel=1e-8)


def test_t_quantile_tends_to_normal() -> None:
    z = Z975
    nu = 10**6
    t = t_quantile(0.975, nu)
    assert t == pytest.approx(z, rel=2e-6)
    # Cornish-Fisher: t = z + (z^3 + z)/(4 nu) + (5z^5 + 16z^3 + 3z)/(96 nu^2) + ...
    assert t == pytest.approx(z + (z**3 + z) / (4 * nu), rel=1e-9)
    assert t > z  # t tails are heavier at any finite df


@pytest.mark.parametrize("p", [0.5, 0.55, 0.6, 0.75, 0.9, 0.95, 0.975, 0.99, 0.995, 0.999, 0.9995])
def test_t_quantile_closed_forms(p: float) -> None:
    # df = 1 (Cauchy): tan(pi (p - 1/2));  df = 2: (2p - 1) / sqrt(2 p (1 - p)).
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9, abs=1e-12)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("df", [1, 3, 7, 25, 200])
def test_t_quantile_inverts_cdf_and_is_symmetric(df: int) -> None:
    for p in (0.6, 0.9, 0.975, 0.9995):
        q = t_quantile(p, df)
        assert t_cdf(q, df) == pytest.approx(p, abs=1e-12)
        assert t_quantile(1 - p, df) == pytest.approx(-q, rel=1e-12)
    # monotone in df for a fixed upper p
    assert t_quantile(0.975, df) > t_quantile(0.975, df + 1)


def test_t_quantile_rejects_bad_arguments() -> None:
    for p in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            t_quantile(p, 3)
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)


def test_incomplete_beta_known_values() -> None:
    # I_x(1, 1) = x;  I_x(a, 1) = x^a;  I_x(1, b) = 1 - (1 - x)^b;  I_x(a, b) = 1 - I_{1-x}(b, a)
    assert incomplete_beta(1, 1, 0.3) == pytest.approx(0.3, rel=1e-13)
    assert incomplete_beta(2.5, 1, 0.7) == pytest.approx(0.7**2.5, rel=1e-12)
    assert incomplete_beta(1, 3.5, 0.2) == pytest.approx(1 - 0.8**3.5, rel=1e-12)
    assert incomplete_beta(3, 7, 0.4) == pytest.approx(1 - incomplete_beta(7, 3, 0.6), rel=1e-12)
    assert incomplete_beta(2, 3, 0.0) == 0.0 and incomplete_beta(2, 3, 1.0) == 1.0


# --------------------------------------------------------------------------- summarize

def test_summarize_formula() -> None:
    xs = [1.0, 2.0, 4.0, 7.0]
    iv = summarize(xs)
    mean = 3.5
    sd = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2 + (7 - mean) ** 2) / 3)
    half = 3.182446305 * sd / 2.0  # t(0.975, 3) = 3.182446305
    assert iv.n == 4 and iv.level == 0.95
    assert iv.mean == pytest.approx(mean)
    assert iv.sd == pytest.approx(sd)
    assert iv.sd == pytest.approx(float(np.std(xs, ddof=1)))
    assert iv.low == pytest.approx(mean - half, rel=1e-8)
    assert iv.high == pytest.approx(mean + half, rel=1e-8)
    assert iv.half_width == pytest.approx(half, rel=1e-8)
    assert iv.low < 0 < iv.high and not iv.excludes_zero  # 4 noisy seeds: -0.71 .. 7.71
    # a higher level widens the interval
    assert summarize(xs, level=0.99).half_width > iv.half_width


def test_summarize_interval_around_zero_does_not_exclude_it() -> None:
    iv = summarize([-1.0, 0.5, 1.0])
    assert iv.low < 0 < iv.high
    assert not iv.excludes_zero
    assert summarize([-3.0, -2.9, -3.1]).excludes_zero


def test_summarize_single_seed_has_no_interval() -> None:
    iv = summarize([0.42])
    assert iv.mean == 0.42 and iv.n == 1
    assert math.isnan(iv.sd) and math.isnan(iv.low) and math.isnan(iv.high)
    assert math.isnan(iv.half_width)
    assert not iv.excludes_zero


def test_summarize_zero_sd() -> None:
    iv = summarize([0.1, 0.1, 0.1])
    assert iv.sd == 0.0
    assert iv.low == iv.high == iv.mean == 0.1
    assert iv.excludes_zero  # [0.1, 0.1] does exclude 0
    zero = summarize([0.0, 0.0, 0.0])
    assert (zero.low, zero.high) == (0.0, 0.0) and not zero.excludes_zero


def test_summarize_rejects_empty_and_non_finite() -> None:
    with pytest.raises(ValueError, match="no values"):
        summarize([])
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="not finite"):
            summarize([1.0, bad, 2.0])
    with pytest.raises(ValueError):
        summarize([1.0, 2.0], level=1.0)


def test_interval_coverage_n3() -> None:
    """The 95% t interval with n = 3 covers the true mean in ~95% of samples."""
    rng = np.random.default_rng(20250718)
    true_mean = 1.7
    samples = rng.normal(true_mean, 2.3, size=(2000, 3))
    covered = 0
    for row in samples:
        iv = summarize(row.tolist())
        covered += iv.low <= true_mean <= iv.high
    rate = covered / len(samples)
    assert 0.935 <= rate <= 0.965, rate
    # and a z interval (ignoring small-n uncertainty) would under-cover badly
    z_cov = np.mean(np.abs(samples.mean(1) - true_mean) <= Z975 * samples.std(1, ddof=1) / math.sqrt(3))
    assert z_cov < 0.90


# --------------------------------------------------------------------------- paired comparison

SEEDS = list(range(5))


def _baseline() -> dict[int, float]:
    rng = np.random.default_rng(7)
    return {s: float(v) for s, v in zip(SEEDS, rng.normal(60.0, 3.0, size=len(SEEDS)))}


def test_identical_candidate_never_beats() -> None:
    base = _baseline()
    for hib in (True, False):
        pr = paired_difference(dict(base), base, higher_is_better=hib)
        assert pr.differences == (0.0,) * len(SEEDS)
        assert pr.interval.sd == 0.0
        assert (pr.interval.low, pr.interval.high) == (0.0, 0.0)
        assert not pr.beats and not pr.worse
    # nor with awkward floats whose differences are exactly zero
    awkward = {0: 0.1 + 0.2, 1: 1e-17, 2: 123456.789}
    assert not paired_difference(dict(awkward), awkward).beats


def test_better_candidate_beats_worse_candidate_is_worse() -> None:
    base = _baseline()
    rng = np.random.default_rng(11)
    noise = rng.normal(0.0, 0.05, size=len(SEEDS))
    better = {s: base[s] + 0.5 + float(e) for s, e in zip(SEEDS, noise)}
    worse = {s: base[s] - 0.5 + float(e) for s, e in zip(SEEDS, noise)}
    pb = paired_difference(better, base)
    assert pb.beats and not pb.worse
    assert pb.interval.mean == pytest.approx(0.5, abs=0.1)
    pw = paired_difference(worse, base)
    assert pw.worse and not pw.beats
    # the same improvement is invisible unpaired: seed-to-seed sd (3.0) swamps 0.5
    assert summarize(better.values()).low < summarize(base.values()).high


def test_lower_is_better_flips_sign() -> None:
    base_loss = {0: 3.0, 1: 3.2, 2: 2.9, 3: 3.1}
    cand_loss = {s: v - 0.2 for s, v in base_loss.items()}  # lower loss: better
    pr = paired_difference(cand_loss, base_loss, higher_is_better=False)
    assert pr.interval.mean == pytest.approx(0.2)
    assert pr.interval.sd == pytest.approx(0.0, abs=1e-12)
    assert pr.beats
    assert paired_difference(cand_loss, base_loss, higher_is_better=True).worse


def test_constant_nonzero_difference_gives_point_interval() -> None:
    base = {0: 1.0, 1: 2.0, 2: 3.0}
    cand = {0: 1.5, 1: 2.5, 2: 3.5}
    pr = paired_difference(cand, base)
    assert pr.interval.sd == 0.0
    assert pr.interval.low == pr.interval.high == pr.interval.mean == 0.5
    assert pr.beats


def test_missing_seeds_recorded_and_not_used() -> None:
    base = {0: 1.0, 1: 1.1, 2: 0.9, 3: 1.0, 9: 5.0}
    cand = {0: 2.0, 1: 2.1, 2: 1.9, 4: 100.0}
    pr = paired_difference(cand, base)
    assert pr.seeds == (0, 1, 2)
    assert pr.missing_in_candidate == (3, 9)
    assert pr.missing_in_baseline == (4,)
    assert pr.interval.n == 3
    assert pr.interval.mean == pytest.approx(1.0)
    assert "missing from the candidate" in pr.note and "missing from the baseline" in pr.note


@pytest.mark.parametrize("n_common", [0, 1])
def test_too_few_common_seeds_gives_no_verdict(n_common: int) -> None:
    base = {s: 1.0 for s in range(n_common)} | {10: 1.0}
    cand = {s: 9.0 for s in range(n_common)} | {20: 9.0}
    pr = paired_difference(cand, base)
    assert pr.interval.n == n_common
    assert math.isnan(pr.interval.low) and math.isnan(pr.interval.high)
    assert not pr.beats and not pr.worse
    assert "at least 2" in pr.note


def test_paired_rejects_non_finite() -> None:
    with pytest.raises(ValueError, match="seed 1"):
        paired_difference({0: 1.0, 1: float("nan")}, {0: 1.0, 1: 1.0})


# --------------------------------------------------------------------------- Spearman

def test_rank_average_ties() -> None:
    assert rank_average([10.0, 20.0, 20.0, 5.0, 20.0]) == [2.0, 4.0, 4.0, 1.0, 4.0]
    assert rank_average([3.0, 1.0, 2.0]) == [3.0, 1.0, 2.0]
    assert rank_average([]) == []


def test_spearman_monotone_and_reversed() -> None:
    x = [0.3, 1.2, 2.5, 4.0, 7.7, 9.1]
    y = [math.exp(v) for v in x]
    assert spearman(x, y) == pytest.approx(1.0)
    assert spearman(x, [-v for v in y]) == pytest.approx(-1.0)


def test_spearman_tied_by_hand() -> None:
    # x = [1, 2, 2, 3] -> ranks [1, 2.5, 2.5, 4];  y = [1, 3, 2, 4] -> ranks [1, 3, 2, 4]
    # centred (mean 2.5): rx = [-1.5, 0, 0, 1.5], ry = [-1.5, 0.5, -0.5, 1.5]
    # sum rx*ry = 4.5, sum rx^2 = 4.5, sum ry^2 = 5  ->  r = 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert spearman([1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(math.sqrt(0.9), rel=1e-12)


def test_spearman_invariant_to_monotone_transforms() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    y = x + rng.normal(scale=1.0, size=30)
    r = spearman(x.tolist(), y.tolist())
    assert -1.0 < r < 1.0 and r > 0.3
    assert spearman(np.exp(x).tolist(), (y**3).tolist()) == pytest.approx(r, rel=1e-12)
    assert spearman((-x).tolist(), y.tolist()) == pytest.approx(-r, rel=1e-12)


def test_spearman_degenerate_cases() -> None:
    assert math.isnan(spearman([1.0, 2.0], [2.0, 1.0]))
    assert math.isnan(spearman([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]))
    assert math.isnan(spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))
    with pytest.raises(ValueError):
        spearman([1.0, 2.0, 3.0], [1.0, 2.0])


# --------------------------------------------------------------------------- aggregate_seeds

def test_aggregate_seeds() -> None:
    rows = [
        {"seed": 0, "loss": 3.0, "acc": 0.5, "name": "a", "steps": 100},
        {"seed": 1, "loss": 3.2, "acc": 0.6, "name": "a", "steps": 100},
        {"seed": 2, "loss": 3.1, "acc": 0.7, "name": "a"},
    ]
    agg = aggregate_seeds(rows)
    assert set(agg) == {"loss", "acc"}  # "name" not numeric, "steps" not in every row
    assert isinstance(agg["loss"], Interval)
    assert agg["loss"].n == 3 and agg["loss"].mean == pytest.approx(3.1)
    assert agg["acc"].sd == pytest.approx(0.1)
    assert aggregate_seeds([]) == {}
    with pytest.raises(ValueError, match="more than once"):
        aggregate_seeds([{"seed": 0, "loss": 1.0}, {"seed": 0, "loss": 2.0}])
    with pytest.raises(ValueError, match="'loss'"):
        aggregate_seeds([{"seed": 0, "loss": 1.0}, {"seed": 1, "loss": float("nan")}])
