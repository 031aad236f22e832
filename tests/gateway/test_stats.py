"""The statistics against scipy (and numpy) computed independently on the same numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from services.gateway.stats import describe, mean_ci, paired, wilson

RNG = np.random.default_rng(7)
PRE = list(RNG.normal(8.0, 1.5, 37))
POST = [a + d for a, d in zip(PRE, RNG.normal(2.1, 1.2, 37), strict=True)]


def test_describe_matches_numpy() -> None:
    d = describe([*PRE, None, math.nan])
    x = np.asarray(PRE)
    assert d.n == 37
    assert d.mean == pytest.approx(x.mean())
    assert d.sd == pytest.approx(x.std(ddof=1))
    assert (d.q1, d.median, d.q3) == pytest.approx(tuple(np.percentile(x, [25, 50, 75])))
    assert describe([]).mean is None and describe([4.0]).sd is None


def test_paired_matches_scipy() -> None:
    c = paired([*PRE, None], [*POST, 5.0])  # the last pair is incomplete and left out
    d = np.asarray(POST) - np.asarray(PRE)
    assert c.n == 37
    assert c.mean_difference == pytest.approx(d.mean())
    low, high = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
    assert (c.ci95_low, c.ci95_high) == pytest.approx((low, high))
    t = sps.ttest_rel(POST, PRE)
    assert (c.t_statistic, c.t_p_value) == pytest.approx((t.statistic, t.pvalue))
    w = sps.wilcoxon(POST, PRE)
    assert (c.wilcoxon_statistic, c.wilcoxon_p_value) == pytest.approx((w.statistic, w.pvalue))
    assert c.median_difference == pytest.approx(np.median(d))
    assert c.mean_percent_change == pytest.approx(np.mean(100 * d / np.asarray(PRE)))


def test_paired_degenerate_inputs_give_no_test() -> None:
    one = paired([1.0], [2.0])
    assert one.n == 1 and one.t_p_value is None and one.ci95_low is None
    same = paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same.mean_difference == 0 and same.t_p_value is None and same.wilcoxon_p_value is None
    assert paired([], []).n == 0
    with pytest.raises(ValueError, match="differ in length"):
        paired([1.0], [1.0, 2.0])


@pytest.mark.parametrize(("k", "n"), [(0, 20), (3, 20), (7, 41), (41, 41), (1, 1), (150, 1000)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    p = wilson(k, n)
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert p.rate == pytest.approx(k / n)
    assert (p.ci95_low, p.ci95_high) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_wilson_edges() -> None:
    assert wilson(0, 0).rate is None
    with pytest.raises(ValueError, match=r"0\.\.n"):
        wilson(5, 3)


def test_mean_ci_matches_scipy() -> None:
    mean, low, high = mean_ci(PRE)
    expected = sps.t.interval(0.95, len(PRE) - 1, loc=np.mean(PRE), scale=sps.sem(PRE))
    assert mean == pytest.approx(np.mean(PRE)) and (low, high) == pytest.approx(expected)
