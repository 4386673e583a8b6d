"""Seed statistics a reviewer would believe, for comparing architectures.

A candidate architecture is trained with several seeds and compared with a baseline
trained with the *same* seeds. The comparison is paired: per seed ``s`` the difference
``d_s = candidate_s - baseline_s`` (sign flipped when lower is better, so positive
always means "candidate better"), and a Student-t interval of the mean difference

    mean(d) +/- t(1 - (1 - level) / 2, n - 1) * sd(d) / sqrt(n)       sd with ddof = 1

decides: the candidate *beats* the baseline only when the whole interval lies above 0.
A candidate identical to the baseline has d = 0 on every seed, sd = 0, interval
[0, 0], and so never beats it.

No scipy: the t quantile inverts the t CDF, written with the regularized incomplete
beta function (continued fraction, Numerical Recipes' ``betacf`` / Lentz's method),
by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from numbers import Real

__all__ = [
    "Interval",
    "Paired",
    "aggregate_seeds",
    "incomplete_beta",
    "paired_difference",
    "rank_average",
    "spearman",
    "summarize",
    "t_cdf",
    "t_quantile",
]

_NAN = float("nan")


# ---------------------------------------------------------------------------
# Student t distribution
# ---------------------------------------------------------------------------

def _betacf(a: float, b: float, x: float, max_iter: int = 100_000, eps: float = 1e-15) -> float:
    """Continued fraction for I_x(a, b) (modified Lentz's method).

    I_x(a, b) = x^a (1-x)^b / (a B(a, b)) * 1 / (1 + d1 / (1 + d2 / (1 + ...))) with
    d_{2m+1} = -(a+m)(a+b+m) x / ((a+2m)(a+2m+1)),  d_{2m} = m(b-m) x / ((a+2m-1)(a+2m)).
    Converges quickly for x < (a+1)/(a+b+2); needs O(sqrt(max(a, b))) terms.
    """
    tiny = 1e-300

    def lentz(aa: float, c: float, d: float) -> tuple[float, float]:
        """One Lentz step with term aa: the new (C, 1/D), kept away from zero."""
        d = 1.0 + aa * d
        c = 1.0 + aa / c
        return (c if abs(c) >= tiny else tiny), 1.0 / (d if abs(d) >= tiny else tiny)

    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = lentz(-qab * x / qap, 1.0, 1.0)
    c, h = 1.0, d  # the first step has no C factor
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        c, d = lentz(m * (b - m) * x / ((qam + m2) * (a + m2)), c, d)
        h *= d * c
        c, d = lentz(-(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)), c, d)
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def incomplete_beta(a: float, b: float, x: float, one_minus_x: float | None = None) -> float:
    """Regularized incomplete beta I_x(a, b) = B(x; a, b) / B(a, b), for a, b > 0.

    ``one_minus_x`` may be given when 1 - x is known more precisely than by
    subtraction (x near 1). Uses the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) so the
    continued fraction is always evaluated where it converges fast.
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"incomplete_beta needs a, b > 0, got a={a}, b={b}")
    y = 1.0 - x if one_minus_x is None else one_minus_x
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise ValueError(f"incomplete_beta needs 0 <= x <= 1, got x={x}")
    if x == 0.0:
        return 0.0
    if y == 0.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log(y))
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, y) / b


def t_cdf(t: float, df: float) -> float:
    """Student-t CDF: F(t) = 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 for t >= 0, F(-t) = 1 - F(t)."""
    if df <= 0:
        raise ValueError(f"t_cdf needs df > 0, got {df}")
    if math.isnan(t):
        return _NAN
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    t2 = t * t
    x = df / (df + t2)
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, x, one_minus_x=t2 / (df + t2))
    return 1.0 - tail if t >= 0 else tail


@lru_cache(maxsize=1024)
def t_quantile(p: float, df: int) -> float:
    """Student-t quantile: the t with F_df(t) = p (F the t CDF with df degrees of freedom).

    Solves (1/2) I_{df/(df+t^2)}(df/2, 1/2) = 1 - p for t >= 0 by bisection (the upper
    tail is monotone decreasing in t) to relative precision ~1e-13; p < 0.5 uses
    t(p) = -t(1 - p). Accurate to better than 1e-6 relative for df >= 1 and
    p in [0.5, 0.9995]; as df -> infinity it tends to the normal quantile.
    """
    p = float(p)
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile needs 0 < p < 1, got {p}")
    if df < 1:
        raise ValueError(f"t_quantile needs df >= 1, got {df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    target = 1.0 - p  # upper-tail probability

    def upper_tail(t: float) -> float:
        t2 = t * t
        return 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t2), one_minus_x=t2 / (df + t2))

    lo, hi = 0.0, 1.0
    while upper_tail(hi) > target:
        lo, hi = hi, hi * 2.0
        if hi > 1e300:
            raise ArithmeticError(f"t_quantile could not bracket p={p}, df={df}")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if upper_tail(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------
# Intervals
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided t confidence interval [low, high] at ``level``."""

    mean: float
    sd: float
    n: int
    low: float
    high: float
    level: float

    @property
    def half_width(self) -> float:
        """(high - low) / 2 = t(1 - (1 - level)/2, n - 1) * sd / sqrt(n); nan for n < 2."""
        return (self.high - self.low) / 2.0

    @property
    def excludes_zero(self) -> bool:
        """True when 0 lies outside [low, high] (low > 0 or high < 0); False when nan."""
        return self.low > 0.0 or self.high < 0.0


def _finite_floats(values: Iterable[float], what: str) -> list[float]:
    out: list[float] = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, Real):
            raise ValueError(f"{what}: value #{i} is not a number: {v!r}")
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"{what}: value #{i} is not finite ({f}); drop or fix the run first")
        out.append(f)
    return out


def summarize(values: Iterable[float], level: float = 0.95) -> Interval:
    """Mean, sample sd and t confidence interval of ``values`` (one value per seed).

    mean = sum(x) / n;  sd = sqrt(sum((x - mean)^2) / (n - 1));
    [low, high] = mean -/+ t(1 - (1 - level)/2, n - 1) * sd / sqrt(n).

    An interval needs at least two seeds: with n == 1 the sd, low and high are nan
    (the mean is the single value). n == 0 and non-finite values raise ValueError.
    Identical values give sd = 0 and the degenerate interval [mean, mean].
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"summarize: level must be in (0, 1), got {level}")
    xs = _finite_floats(values, "summarize")
    n = len(xs)
    if n == 0:
        raise ValueError("summarize: no values (need at least one seed, two for an interval)")
    if n == 1:
        return Interval(mean=xs[0], sd=_NAN, n=1, low=_NAN, high=_NAN, level=level)
    if min(xs) == max(xs):
        mean, sd = xs[0], 0.0  # exact: no rounding noise for identical values
    else:
        mean = math.fsum(xs) / n
        sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(1.0 - (1.0 - level) / 2.0, n - 1) * sd / math.sqrt(n)
    return Interval(mean=mean, sd=sd, n=n, low=mean - half, high=mean + half, level=level)


# ---------------------------------------------------------------------------
# Paired comparison
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Paired:
    """A seed-paired comparison of a candidate with a baseline.

    ``differences`` are d_s for ``seeds`` (sorted), oriented so positive means the
    candidate is better. ``interval`` is summarize(d); nan when fewer than 2 seeds
    are common to both sides, which ``note`` explains.
    """

    interval: Interval
    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    missing_in_candidate: tuple[int, ...]
    missing_in_baseline: tuple[int, ...]
    higher_is_better: bool
    note: str = ""

    @property
    def beats(self) -> bool:
        """Candidate better with confidence: interval low > 0 (False when nan)."""
        return self.interval.low > 0.0

    @property
    def worse(self) -> bool:
        """Candidate worse with confidence: interval high < 0 (False when nan)."""
        return self.interval.high < 0.0


def paired_difference(
    candidate: Mapping[int, float],
    baseline: Mapping[int, float],
    level: float = 0.95,
    higher_is_better: bool = True,
) -> Paired:
    """Paired t comparison over the seeds present on both sides.

    d_s = candidate_s - baseline_s when higher is better, baseline_s - candidate_s
    otherwise (so d > 0 always means "candidate better"), for s in the common seeds;
    interval = summarize(d, level). ``beats`` = low > 0, ``worse`` = high < 0.
    Seeds present on only one side are recorded, not used. With fewer than two common
    seeds the interval is nan (beats and worse False) and ``note`` says why.
    A non-finite metric on a common seed raises ValueError naming the seed.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"paired_difference: level must be in (0, 1), got {level}")
    common = sorted(set(candidate) & set(baseline))
    missing_in_candidate = tuple(sorted(set(baseline) - set(candidate)))
    missing_in_baseline = tuple(sorted(set(candidate) - set(baseline)))
    sign = 1.0 if higher_is_better else -1.0
    diffs: list[float] = []
    for s in common:
        c, b = candidate[s], baseline[s]
        for side, v in (("candidate", c), ("baseline", b)):
            if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(float(v)):
                raise ValueError(f"paired_difference: {side} value for seed {s} is not a finite number: {v!r}")
        diffs.append(sign * (float(c) - float(b)))

    notes: list[str] = []
    if missing_in_candidate:
        notes.append(f"seeds {list(missing_in_candidate)} missing from the candidate")
    if missing_in_baseline:
        notes.append(f"seeds {list(missing_in_baseline)} missing from the baseline")
    if len(diffs) >= 2:
        interval = summarize(diffs, level)
    else:
        mean = diffs[0] if diffs else _NAN
        interval = Interval(mean=mean, sd=_NAN, n=len(diffs), low=_NAN, high=_NAN, level=level)
        notes.insert(0, f"only {len(diffs)} seed(s) common to candidate and baseline; "
                        "an interval needs at least 2, so no verdict")
    return Paired(
        interval=interval,
        seeds=tuple(common),
        differences=tuple(diffs),
        missing_in_candidate=missing_in_candidate,
        missing_in_baseline=missing_in_baseline,
        higher_is_better=higher_is_better,
        note="; ".join(notes),
    )


# ---------------------------------------------------------------------------
# Rank correlation
# ---------------------------------------------------------------------------

def rank_average(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the average of the ranks they span.

    For a tie group occupying sorted positions i..j (1-based), each gets (i + j) / 2.
    """
    xs = _finite_floats(values, "rank_average")
    order = sorted(range(len(xs)), key=lambda k: xs[k])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        avg = (i + j) / 2.0 + 1.0
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        i = j + 1
    return ranks


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """r = sum((x - mx)(y - my)) / sqrt(sum((x - mx)^2) sum((y - my)^2)); nan if a side is constant."""
    n = len(x)
    mx, my = math.fsum(x) / n, math.fsum(y) / n
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    if sxx == 0.0 or syy == 0.0:
        return _NAN
    r = sxy / math.sqrt(sxx * syy)
    return max(-1.0, min(1.0, r))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation: Pearson's r of rank_average(x) and rank_average(y).

    With average ranks this is exact under ties (the 1 - 6 sum d^2 / (n(n^2-1)) shortcut
    is not). nan when n < 3 or when either side is constant. Lengths must match.
    """
    if len(x) != len(y):
        raise ValueError(f"spearman: x and y differ in length ({len(x)} vs {len(y)})")
    rx, ry = rank_average(x), rank_average(y)
    if len(rx) < 3:
        return _NAN
    return _pearson(rx, ry)


# ---------------------------------------------------------------------------
# Seed aggregation
# ---------------------------------------------------------------------------

def aggregate_seeds(rows: Sequence[Mapping[str, object]], level: float = 0.95) -> dict[str, Interval]:
    """{metric: summarize([row[metric] for row in rows], level)} for each metric.

    rows are {"seed": int, **metrics}, one per seed. A metric is aggregated when it
    is numeric (a real number, not bool) in every row; others are skipped. Duplicate
    seeds raise ValueError (a seed counted twice would narrow the interval falsely),
    as does a non-finite value of an aggregated metric. No rows gives {}.
    """
    if not rows:
        return {}
    seeds = [row.get("seed") for row in rows]
    dup = sorted({s for s in seeds if s is not None and seeds.count(s) > 1}, key=repr)
    if dup:
        raise ValueError(f"aggregate_seeds: seeds appear more than once: {dup}")
    names = [k for k in rows[0] if k != "seed"]
    out: dict[str, Interval] = {}
    for name in names:
        vals = [row.get(name) for row in rows]
        if all(isinstance(v, Real) and not isinstance(v, bool) for v in vals):
            try:
                out[name] = summarize(vals, level)  # type: ignore[arg-type]
            except ValueError as e:
                raise ValueError(f"aggregate_seeds: metric {name!r}: {e}") from None
    return out
