"""Agreement between the automatic measurements and the readers', and between readers.

The values compared are the same measurement (study, quantity, level, side) by two raters:
``automatic`` (the analysis's value it stands behind) and each reader (their latest manual
value of it); intra-reader agreement compares a reader's first and latest reads of the same
measurement. Per quantity and pair of raters:

- ICC(2,1) (two-way random, absolute agreement, single rater) and ICC(3,1) (two-way mixed,
  consistency) with their 95 % CIs — pingouin's ``intraclass_corr`` (Shrout & Fleiss 1979;
  McGraw & Wong 1996 call them ICC(A,1) and ICC(C,1));
- Bland-Altman: the bias (mean of b - a), the 95 % limits of agreement (bias ± 1.96 SD) and
  the CIs of both (Bland & Altman 1999: SE of the bias s/√n, of a limit √(3s²/n));
- Lin's concordance correlation coefficient with its CI by Fisher's z (Lin 1989);
- the mean absolute difference.

Pure: pandas, numpy, scipy, pingouin.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pingouin as pg
from scipy import stats

from services.common import reading
from services.common.contracts import StudyResult
from services.common.vocabulary import READ_ACTIONS

AUTOMATIC = "automatic"
MIN_PAIRS = 3  # below this no statistic is computed (the pair count is still reported)
KEY = ["study", "quantity", "level", "side"]


@dataclass(frozen=True)
class Agreement:
    quantity: str
    rater_a: str
    rater_b: str
    kind: str  # "automatic-reader", "reader-reader" or "intra-reader"
    n: int
    icc2: float | None = None
    icc2_ci: tuple[float, float] | None = None
    icc3: float | None = None
    icc3_ci: tuple[float, float] | None = None
    bias: float | None = None  # mean of b - a
    bias_ci: tuple[float, float] | None = None
    sd: float | None = None
    loa: tuple[float, float] | None = None
    loa_lower_ci: tuple[float, float] | None = None
    loa_upper_ci: tuple[float, float] | None = None
    ccc: float | None = None
    ccc_ci: tuple[float, float] | None = None
    mean_absolute_difference: float | None = None


def reads(results: Iterable[StudyResult]) -> pd.DataFrame:
    """One row per value: the study, quantity, level, side, rater, read number and value
    (the automatic values the analysis stands behind, and every reader's manual values,
    oldest first)."""
    rows: list[dict[str, object]] = []
    for study in results:
        if study.result is not None:
            for m in study.result.measured():
                rows.append(
                    {
                        "study": study.study_instance_uid,
                        "quantity": m.quantity.value,
                        "level": m.level,
                        "side": m.side or "",
                        "rater": AUTOMATIC,
                        "read": 1,
                        "value": float(m.value),  # type: ignore[arg-type]  # measured()
                    }
                )
        counts: dict[tuple[str, str, str, str], int] = {}
        set_id = study.result.measurement_set_id if study.result else None
        kept = reading.current(study.manual_measurements, set_id)  # reads of this result
        for manual in sorted(kept, key=lambda x: (x.created_at, x.id)):
            if manual.value is None:  # rejected: no value to compare (counted in actions())
                continue
            key = (manual.reader_id, manual.quantity.value, manual.level, manual.side or "")
            counts[key] = counts.get(key, 0) + 1
            rows.append(
                {
                    "study": study.study_instance_uid,
                    "quantity": manual.quantity.value,
                    "level": manual.level,
                    "side": manual.side or "",
                    "rater": manual.reader_id,
                    "read": counts[key],
                    "value": manual.value,
                }
            )
    return pd.DataFrame(rows, columns=[*KEY, "rater", "read", "value"])


def actions(results: Iterable[StudyResult]) -> dict[str, dict[str, int]]:
    """Per reader: how many values they accepted, corrected, rejected and measured (their
    latest read of each measurement, whatever its purpose)."""
    latest: dict[tuple[str | None, ...], str] = {}
    for study in results:
        for read in sorted(study.manual_measurements, key=lambda x: (x.created_at, x.id)):
            key: tuple[str | None, ...] = (
                read.reader_id,
                study.study_instance_uid,
                read.quantity.value,
                read.level,
                read.side,
                read.purpose,
            )
            latest[key] = read.action
    out: dict[str, dict[str, int]] = {}
    for (reader, *_), action in latest.items():
        counts = out.setdefault(str(reader), dict.fromkeys(READ_ACTIONS, 0))
        counts[action] += 1
    return out


def _interval(values: Iterable[float]) -> tuple[float, float] | None:
    lo, hi = (float(v) for v in values)
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def _finite(value: float) -> float | None:
    """A statistic, or None where it is undefined (no variance): JSON has no NaN."""
    return value if math.isfinite(value) else None


def compare(
    a: np.ndarray, b: np.ndarray, *, quantity: str, rater_a: str, rater_b: str, kind: str
) -> Agreement:
    """The agreement of paired values ``a`` and ``b`` (same measurements, same order)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = len(a)
    base = Agreement(quantity, rater_a, rater_b, kind, n)
    if n < MIN_PAIRS:
        return base
    long = pd.DataFrame(
        {
            "target": np.concatenate([np.arange(n), np.arange(n)]),
            "rater": ["a"] * n + ["b"] * n,
            "value": np.concatenate([a, b]),
        }
    )
    icc = pg.intraclass_corr(long, targets="target", raters="rater", ratings="value").set_index(
        "Type"
    )
    # pingouin >= 0.7 names them as McGraw & Wong do: ICC(A,1) is Shrout & Fleiss's ICC(2,1),
    # ICC(C,1) their ICC(3,1). Its CIs are rounded to two decimals.
    icc2_name, icc3_name = "ICC(A,1)", "ICC(C,1)"
    diff = b - a
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1))
    t = float(stats.t.ppf(0.975, n - 1))
    se_bias = sd / math.sqrt(n)
    se_limit = math.sqrt(3 * sd**2 / n)
    lower, upper = bias - 1.96 * sd, bias + 1.96 * sd
    ccc, ccc_ci = lins_ccc(a, b)
    return Agreement(
        quantity,
        rater_a,
        rater_b,
        kind,
        n,
        icc2=_finite(float(icc.loc[icc2_name, "ICC"])),
        icc2_ci=_interval(icc.loc[icc2_name, "CI95"]),
        icc3=_finite(float(icc.loc[icc3_name, "ICC"])),
        icc3_ci=_interval(icc.loc[icc3_name, "CI95"]),
        bias=bias,
        bias_ci=(bias - t * se_bias, bias + t * se_bias),
        sd=sd,
        loa=(lower, upper),
        loa_lower_ci=(lower - t * se_limit, lower + t * se_limit),
        loa_upper_ci=(upper - t * se_limit, upper + t * se_limit),
        ccc=_finite(ccc),
        ccc_ci=ccc_ci,
        mean_absolute_difference=float(np.abs(diff).mean()),
    )


def lins_ccc(a: np.ndarray, b: np.ndarray) -> tuple[float, tuple[float, float] | None]:
    """Lin's concordance correlation coefficient and its 95 % CI (Fisher's z)."""
    n = len(a)
    sxy = float(np.cov(a, b, ddof=0)[0, 1])
    sx, sy = float(np.var(a)), float(np.var(b))
    denominator = sx + sy + (float(a.mean()) - float(b.mean())) ** 2
    if denominator == 0:
        return float("nan"), None  # both raters constant and equal: undefined
    ccc = 2 * sxy / denominator
    if sx == 0 or sy == 0:
        return ccc, None  # one rater constant: no correlation, no interval
    r = float(np.corrcoef(a, b)[0, 1])
    if n <= 3 or abs(ccc) >= 1 or r == 0:
        return ccc, None
    u = (float(a.mean()) - float(b.mean())) / (sx * sy) ** 0.25
    se_z = math.sqrt(
        (
            (1 - r**2) * ccc**2 / ((1 - ccc**2) * r**2)
            + 2 * ccc**3 * (1 - ccc) * u**2 / (r * (1 - ccc**2) ** 2)
            - ccc**4 * u**4 / (2 * r**2 * (1 - ccc**2) ** 2)
        )
        / (n - 2)
    )
    z = math.atanh(ccc)
    return ccc, (math.tanh(z - 1.96 * se_z), math.tanh(z + 1.96 * se_z))


def _by_read(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values([*KEY, "rater", "read"], kind="stable")


def _latest(frame: pd.DataFrame) -> pd.DataFrame:
    return _by_read(frame).groupby([*KEY, "rater"], as_index=False).last()


def table(values: pd.DataFrame) -> list[Agreement]:
    """Every comparison the reads allow: automatic vs each reader, each pair of readers
    (their latest reads), and each reader's first vs latest read."""
    out: list[Agreement] = []
    if values.empty:
        return out
    latest = _latest(values)
    for quantity in sorted(values["quantity"].unique()):
        q = latest[latest["quantity"] == quantity]
        wide = q.pivot_table(index=KEY, columns="rater", values="value", aggfunc="last")
        readers = sorted(r for r in wide.columns if r != AUTOMATIC)
        pairs = [(AUTOMATIC, r, "automatic-reader") for r in readers if AUTOMATIC in wide]
        pairs += [
            (r1, r2, "reader-reader") for i, r1 in enumerate(readers) for r2 in readers[i + 1 :]
        ]
        for first, second, kind in pairs:
            both = wide[[first, second]].dropna()
            out.append(
                compare(
                    both[first].to_numpy(),
                    both[second].to_numpy(),
                    quantity=quantity,
                    rater_a=first,
                    rater_b=second,
                    kind=kind,
                )
            )
        reread = _by_read(values[(values["quantity"] == quantity) & (values["rater"] != AUTOMATIC)])
        for reader in sorted(reread["rater"].unique()):
            mine = reread[reread["rater"] == reader].groupby(KEY)["value"]
            repeated = mine.count() >= 2
            if not repeated.any():
                continue
            firsts = mine.first()[repeated].to_numpy()
            lasts = mine.last()[repeated].to_numpy()
            out.append(
                compare(
                    firsts,
                    lasts,
                    quantity=quantity,
                    rater_a=reader,
                    rater_b=reader,
                    kind="intra-reader",
                )
            )
    return out
