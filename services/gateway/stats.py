"""Descriptive and paired statistics for the cohort summary (pure: numpy and scipy only).

Every function takes plain sequences of floats and returns a frozen dataclass; ``None``
marks a figure that cannot be computed on the data given (too few values, no spread),
never a number that looks like a result and is not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


@dataclass(frozen=True)
class Descriptive:
    n: int
    mean: float | None
    sd: float | None  # sample standard deviation (ddof = 1)
    median: float | None
    q1: float | None  # 25th percentile (linear interpolation, numpy's default)
    q3: float | None
    min: float | None
    max: float | None


@dataclass(frozen=True)
class PairedComparison:
    """Post minus pre on the pairs where both exist."""

    n: int
    mean_difference: float | None
    sd_difference: float | None
    ci95_low: float | None  # t-based 95 % CI of the mean difference
    ci95_high: float | None
    median_difference: float | None
    t_statistic: float | None  # paired t-test (scipy.stats.ttest_rel)
    t_p_value: float | None
    wilcoxon_statistic: float | None  # Wilcoxon signed-rank (scipy.stats.wilcoxon)
    wilcoxon_p_value: float | None
    mean_percent_change: float | None  # mean of 100 * (post - pre) / pre


@dataclass(frozen=True)
class Proportion:
    count: int
    n: int
    rate: float | None
    ci95_low: float | None  # Wilson score interval
    ci95_high: float | None


def _clean(values: Sequence[float | None]) -> np.ndarray:
    array = np.asarray([v for v in values if v is not None], dtype=float)
    finite: np.ndarray = array[np.isfinite(array)]
    return finite


def _f(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def describe(values: Sequence[float | None]) -> Descriptive:
    """Mean ± SD and median [IQR] of the values present (``None`` ones are skipped)."""
    x = _clean(values)
    if x.size == 0:
        return Descriptive(0, None, None, None, None, None, None, None)
    q1, median, q3 = np.percentile(x, [25, 50, 75])
    return Descriptive(
        n=int(x.size),
        mean=float(x.mean()),
        sd=float(x.std(ddof=1)) if x.size > 1 else None,
        median=float(median),
        q1=float(q1),
        q3=float(q3),
        min=float(x.min()),
        max=float(x.max()),
    )


def paired(pre: Sequence[float | None], post: Sequence[float | None]) -> PairedComparison:
    """Compare paired values: difference, its 95 % CI, paired t-test and Wilcoxon test.

    Parameters
    ----------
    pre, post
        Values of the same units (patients or sites) in the same order; a pair with a
        ``None`` on either side is left out.

    Returns
    -------
    PairedComparison
        Tests need at least 2 pairs with some spread (t) or one non-zero difference
        (Wilcoxon); otherwise their fields are ``None``.
    """
    if len(pre) != len(post):
        raise ValueError(f"pre and post differ in length ({len(pre)} vs {len(post)})")
    pairs = [
        (a, b)
        for a, b in zip(pre, post, strict=True)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
    ]
    n = len(pairs)
    if n == 0:
        return PairedComparison(0, *([None] * 10))
    a = np.asarray([p[0] for p in pairs], dtype=float)
    b = np.asarray([p[1] for p in pairs], dtype=float)
    d = b - a
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else None
    low = high = t_stat = t_p = None
    if sd is not None and sd > 0:
        half = float(sps.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
        test = sps.ttest_rel(b, a)
        t_stat, t_p = _f(test.statistic), _f(test.pvalue)
    w_stat = w_p = None
    if np.any(d != 0):
        wtest = sps.wilcoxon(b, a)
        w_stat, w_p = _f(wtest.statistic), _f(wtest.pvalue)
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = 100.0 * d / a
    pct = pct[np.isfinite(pct)]
    return PairedComparison(
        n=n,
        mean_difference=mean,
        sd_difference=sd,
        ci95_low=low,
        ci95_high=high,
        median_difference=float(np.median(d)),
        t_statistic=t_stat,
        t_p_value=t_p,
        wilcoxon_statistic=w_stat,
        wilcoxon_p_value=w_p,
        mean_percent_change=float(pct.mean()) if pct.size else None,
    )


def wilson(count: int, n: int, z: float = Z95) -> Proportion:
    """A proportion with its Wilson score interval (Wilson 1927; good for small n and 0 %)."""
    if n < 0 or not 0 <= count <= max(n, 0):
        raise ValueError(f"count must lie in 0..n, got {count} of {n}")
    if n == 0:
        return Proportion(count, 0, None, None, None)
    p = count / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Proportion(count, n, p, max(0.0, centre - half), min(1.0, centre + half))


def mean_ci(values: Sequence[float | None]) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high): the mean with its t-based 95 % CI (for trajectory bands)."""
    x = _clean(values)
    if x.size == 0:
        return None, None, None
    mean = float(x.mean())
    if x.size < 2:
        return mean, None, None
    half = float(sps.t.ppf(0.975, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half
