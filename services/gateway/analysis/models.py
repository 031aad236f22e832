"""Every table of the study report, computed from the analysis tables (pure).

The libraries do the statistics: tableone (Table 1), statsmodels (GEE for levels within
patients, linear mixed models for PROMs over time), scipy (Fisher, Mann-Whitney,
Spearman); :mod:`services.gateway.stats` (Wilson intervals, paired tests) for the rest.
A figure that cannot be computed on the data given (too few patients, a model that does
not converge) is ``None`` with a note, never a number that looks like a result.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats as sps
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from services.common import vocabulary
from services.gateway.analysis.dataset import SHORT, AnalysisData
from services.gateway.analysis.plan import (
    ASSOCIATION_PROM,
    ASSOCIATION_TIME_POINT,
    LEARNING_TIME_POINT,
    MEASURES,
    THRESHOLDS,
    Threshold,
)
from services.gateway.stats import PairedComparison, Proportion, paired, wilson

GROUPS = vocabulary.GROUP_CODES
GROUP_LABELS = {"foraminal-stenosis": "Foraminal stenosis", "central-stenosis": "Central stenosis"}
FOLLOW_UP_POINTS = ("baseline", "week-6", "month-3", "month-6", "month-12", "month-24")


def _f(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# -------------------------------------------------------------------------- the flow
@dataclass(frozen=True)
class FlowStep:
    label: str
    n: int
    by_group: dict[str, int]
    excluded: list[tuple[str, int]] = field(default_factory=list)  # (reason, count) before it


def _reason_class(reason: str) -> str:
    """A reason without its per-case detail (the part in parentheses)."""
    return reason.split(" (", 1)[0]


def flow(data: AnalysisData) -> tuple[list[FlowStep], list[tuple[str, dict[str, int]]]]:
    """The consecutive series from index surgery to measurable pair (STROBE-style), and
    the patients with an ODI at each follow-up time point, by group."""
    p = data.patients

    def groups(frame: pd.DataFrame) -> dict[str, int]:
        return {g: int((frame["study_group"] == g).sum()) for g in GROUPS}

    steps = [FlowStep("Index surgeries (outcomes store)", len(p), groups(p))]
    grouped = p[p["study_group"].isin(GROUPS)]
    no_group = len(p) - len(grouped)
    steps.append(
        FlowStep(
            "Included: study group recorded",
            len(grouped),
            groups(grouped),
            [("no study group", no_group)] if no_group else [],
        )
    )
    why = grouped["not_measurable_why"].fillna("")
    imaging_missing = why.str.startswith(("no pre-operative", "no post-operative"))
    imaged = grouped[~imaging_missing]
    steps.append(
        FlowStep(
            "With pre- and post-operative imaging of the group's modality",
            len(imaged),
            groups(imaged),
            sorted(
                ((str(r), int(n)) for r, n in why[imaging_missing].value_counts().items()),
                key=lambda kv: (-kv[1], kv[0]),
            ),
        )
    )
    measurable = imaged[imaged["measurable"] == 1]
    other = imaged.loc[imaged["measurable"] != 1, "not_measurable_why"].fillna("unknown")
    steps.append(
        FlowStep(
            "Measurable primary pair at the operated levels",
            len(measurable),
            groups(measurable),
            sorted(
                ((str(r), int(n)) for r, n in other.map(_reason_class).value_counts().items()),
                key=lambda kv: (-kv[1], kv[0]),
            ),
        )
    )
    odi = data.proms[(data.proms["measure"] == "odi") & data.proms["value"].notna()]
    included = set(grouped["case_id"])
    follow = []
    for tp in FOLLOW_UP_POINTS:
        at = odi[(odi["time_point"] == tp) & odi["case_id"].isin(included)]
        counts = {g: int(at.loc[at["study_group"] == g, "case_id"].nunique()) for g in GROUPS}
        follow.append((tp, counts))
    return steps, follow


# -------------------------------------------------------------------------- Table 1
TABLE_ONE_COLUMNS = {
    "age": "Age (years)",
    "sex": "Sex",
    "n_levels": "Operated levels (n)",
    "technique": "Technique",
    "surgeon": "Surgeon",
    "odi_baseline": "ODI at baseline (%)",
    "back_pain_baseline": "Back pain at baseline (0-10)",
    "leg_pain_baseline": "Leg pain at baseline (0-10)",
    "eq5d_index_baseline": "EQ-5D index at baseline",
    "fh_pre": "Foraminal height, pre-op (mm)",
    "dsa_pre": "Dural sac area, pre-op (mm2)",
}
TABLE_ONE_CATEGORICAL = ["sex", "n_levels", "technique", "surgeon"]
TABLE_ONE_NONNORMAL = ["back_pain_baseline", "leg_pain_baseline"]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def table_one(data: AnalysisData) -> tuple[Table, pd.DataFrame | None]:
    """Baseline characteristics by group (tableone), and tableone's own frame."""
    p = data.patients[data.patients["study_group"].isin(GROUPS)].copy()
    if p.empty:
        return Table([], [], ["no patient with a study group"]), None
    frame = pd.DataFrame(
        {
            column: p[column].astype("float64")
            if column not in TABLE_ONE_CATEGORICAL
            else p[column].astype("object").where(p[column].notna(), None)
            for column in TABLE_ONE_COLUMNS
        }
    )
    frame["group"] = p["study_group"].map(GROUP_LABELS).astype("object")
    techniques = {c.code: c.display for c in vocabulary.TECHNIQUES}
    frame["technique"] = p["technique"].astype("object").map(lambda t: techniques.get(t, t))
    frame["n_levels"] = p["n_levels"].astype("object")
    present = [c for c in TABLE_ONE_COLUMNS if frame[c].notna().any()]
    categorical = [c for c in TABLE_ONE_CATEGORICAL if c in present]
    from tableone import TableOne

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = TableOne(
            frame,
            columns=present,
            categorical=categorical,
            nonnormal=[c for c in TABLE_ONE_NONNORMAL if c in present],
            groupby="group",
            pval=frame["group"].nunique() > 1,
            missing=True,
            rename={c: TABLE_ONE_COLUMNS[c] for c in present},
            order={"group": [GROUP_LABELS[g] for g in GROUPS]},
            decimals={"eq5d_index_baseline": 3},
            overall=True,
        )
    result: pd.DataFrame = table.tableone
    header = ["Characteristic", ""] + [str(c[1]) for c in result.columns]
    rows = []
    for index, values in result.iterrows():
        variable, level = index if isinstance(index, tuple) else (index, "")
        cells = ["\u2013" if "nan" in str(v) else str(v) for v in values]
        rows.append([str(variable), str(level), *cells])
    notes = [
        "Mean (SD), or median [Q1, Q3] for pain scores; n (%) for categories. P-values: "
        "Welch's t-test, Kruskal-Wallis, chi-squared or Fisher (tableone); Missing: count.",
        "The pre-operative foraminal height is measured in the foraminal group (CT) and the "
        "dural sac area in the central group (MR) only.",
    ]
    return Table(header, rows, notes), result


# ----------------------------------------------------------------- primary endpoint
@dataclass(frozen=True)
class LevelEstimate:
    """The change at the operated levels, levels clustered within patients (GEE)."""

    group: str
    quantity: str
    display: str
    unit: str
    levels: int
    patients: int
    mean_pre: float | None
    mean_post: float | None
    change: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    note: str | None = None
    correlation: str | None = None  # the GEE working correlation used


@dataclass(frozen=True)
class PatientEstimate:
    group: str
    quantity: str
    comparison: PairedComparison
    dz: float | None  # Cohen's dz: mean difference / SD of the differences


@dataclass(frozen=True)
class ThresholdRate:
    threshold: Threshold
    group: str
    proportion: Proportion


def operated_first_post(data: AnalysisData) -> pd.DataFrame:
    """One row per operated level (and side) with the first post-operative value."""
    lv = data.levels
    return lv[(lv["operated"] == 1) & (lv["post_index"] <= 1)].copy()


def gee_change(frame: pd.DataFrame) -> tuple[float, float, float, float, str] | None:
    """(estimate, low, high, p, working correlation) of the mean change, levels within
    patients: GEE with an exchangeable working correlation, or independence (still with
    cluster-robust errors) when too few patients have several levels to estimate it."""
    if frame["patient_id"].nunique() < 2 or len(frame) < 3:
        return None
    work = pd.DataFrame(
        {"change": frame["change"].astype(float), "patient": frame["patient_id"].astype(str)}
    )
    for name, structure in (
        ("exchangeable", sm.cov_struct.Exchangeable()),
        ("independence", sm.cov_struct.Independence()),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = smf.gee(
                "change ~ 1",
                groups="patient",
                data=work,
                cov_struct=structure,
                family=sm.families.Gaussian(),
            ).fit()
        low, high = fit.conf_int().loc["Intercept"]
        values = (float(fit.params["Intercept"]), float(low), float(high))
        p_value = float(fit.pvalues["Intercept"])
        if all(math.isfinite(v) for v in (*values, p_value)):
            return (*values, p_value, name)
    return None


def primary(
    data: AnalysisData,
) -> tuple[list[LevelEstimate], list[PatientEstimate], list[ThresholdRate]]:
    """Per group and quantity: the level analysis (GEE), the patient analysis beside it,
    and the threshold proportions."""
    levels = operated_first_post(data)
    estimates, per_patient, rates = [], [], []
    for group_code in GROUPS:
        group = vocabulary.GROUPS[group_code]
        for name in group.quantities:
            spec = vocabulary.QUANTITIES[name]
            q = name.value
            rows = levels[(levels["study_group"] == group_code) & (levels["quantity"] == q)]
            both = rows[rows["pre"].notna() & rows["post"].notna()]
            fit = gee_change(both)
            estimates.append(
                LevelEstimate(
                    group=group_code,
                    quantity=q,
                    display=spec.display,
                    unit=spec.unit,
                    levels=len(both),
                    patients=int(both["patient_id"].nunique()),
                    mean_pre=_f(both["pre"].mean()) if len(both) else None,
                    mean_post=_f(both["post"].mean()) if len(both) else None,
                    change=fit[0] if fit else None,
                    ci_low=fit[1] if fit else None,
                    ci_high=fit[2] if fit else None,
                    p_value=fit[3] if fit else None,
                    note=None if fit else "fewer than 2 patients or 3 levels: no model",
                    correlation=fit[4] if fit else None,
                )
            )
            patients = data.patients[data.patients["study_group"] == group_code]
            short = SHORT[q]
            comparison = paired(
                [_f(v) for v in patients[f"{short}_pre"]],
                [_f(v) for v in patients[f"{short}_post"]],
            )
            dz = (
                comparison.mean_difference / comparison.sd_difference
                if comparison.mean_difference is not None and comparison.sd_difference
                else None
            )
            per_patient.append(PatientEstimate(group_code, q, comparison, dz))
        for threshold in THRESHOLDS:
            if threshold.quantity not in {n.value for n in group.quantities}:
                continue
            rows = levels[
                (levels["study_group"] == group_code)
                & (levels["quantity"] == threshold.quantity)
                & levels["post"].notna()
            ]
            if threshold.kind == "post_at_least":
                met = rows["post"] >= threshold.value
                n = len(rows)
            else:
                rows = rows[rows["change_pct"].notna()]
                met = rows["change_pct"] >= threshold.value
                n = len(rows)
            rates.append(ThresholdRate(threshold, group_code, wilson(int(met.sum()), n)))
    return estimates, per_patient, rates


# ----------------------------------------------------------------- PROMs over time
@dataclass(frozen=True)
class ChangeEstimate:
    time_point: str
    n: int  # patients with a value at this time point
    estimate: float | None  # model-estimated change from baseline
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    mcid: Proportion  # patients reaching the MCID among those with baseline and this point


@dataclass(frozen=True)
class Trajectory:
    measure: str
    group: str
    patients: int
    baseline_mean: float | None
    points: list[ChangeEstimate]
    converged: bool
    note: str | None = None


def _order(points: list[str]) -> list[str]:
    index = {tp: i for i, tp in enumerate(vocabulary.TIME_POINT_CODES)}
    return sorted(points, key=lambda tp: index.get(tp, 99))


def mixed_model(frame: pd.DataFrame) -> tuple[dict[str, tuple[float, float, float, float]], bool]:
    """Change from baseline per time point: ``value ~ C(time_point)`` (reference
    baseline), random intercept per patient (MixedLM, REML). Returns {time point:
    (estimate, low, high, p)} and whether the fit converged."""
    work = pd.DataFrame(
        {
            "value": frame["value"].astype(float),
            "time_point": frame["time_point"].astype(str),
            "patient": frame["patient_id"].astype(str),
        }
    )
    formula = "value ~ C(time_point, Treatment(reference='baseline'))"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = smf.mixedlm(formula, work, groups=work["patient"])
        fit = model.fit(reml=True)
    converged = bool(getattr(fit, "converged", True)) and not any(
        issubclass(w.category, ConvergenceWarning) for w in caught
    )
    intervals = fit.conf_int()
    out = {}
    prefix = "C(time_point, Treatment(reference='baseline'))[T."
    for name, value in fit.params.items():
        if str(name).startswith(prefix):
            tp = str(name)[len(prefix) : -1]
            low, high = intervals.loc[name]
            out[tp] = (float(value), float(low), float(high), float(fit.pvalues[name]))
    return out, converged


def trajectories(data: AnalysisData) -> list[Trajectory]:
    out = []
    proms = data.proms[data.proms["value"].notna()]
    for measure in MEASURES:
        for group in GROUPS:
            frame = proms[(proms["measure"] == measure) & (proms["study_group"] == group)]
            if frame.empty:
                continue
            patients = int(frame["patient_id"].nunique())
            baseline = frame[frame["time_point"] == "baseline"]
            points = _order(sorted(set(frame["time_point"]) - {"baseline"}))
            fits: dict[str, tuple[float, float, float, float]] = {}
            converged, note = False, None
            if baseline.empty or patients < 3 or not points:
                note = "no baseline, or fewer than 3 patients: no model"
            else:
                try:
                    fits, converged = mixed_model(frame)
                except (ValueError, np.linalg.LinAlgError) as exc:
                    note = f"the mixed model could not be fitted ({type(exc).__name__})"
                if fits and not converged:
                    note = "the mixed model did not converge: estimates are indicative"
            estimates = []
            for tp in points:
                at = frame[frame["time_point"] == tp]
                paired_rows = at[at["mcid"].notna()]
                fit = fits.get(tp)
                estimates.append(
                    ChangeEstimate(
                        time_point=tp,
                        n=int(at["patient_id"].nunique()),
                        estimate=fit[0] if fit else None,
                        ci_low=fit[1] if fit else None,
                        ci_high=fit[2] if fit else None,
                        p_value=fit[3] if fit else None,
                        mcid=wilson(int(paired_rows["mcid"].sum()), len(paired_rows)),
                    )
                )
            out.append(
                Trajectory(
                    measure,
                    group,
                    patients,
                    _f(baseline["value"].mean()) if not baseline.empty else None,
                    estimates,
                    converged,
                    note,
                )
            )
    return out


@dataclass(frozen=True)
class Association:
    group: str
    quantity: str
    n: int
    rho: float | None
    p_value: float | None


def association(data: AnalysisData) -> list[Association]:
    """Spearman correlation, per group, of the primary imaging change (per patient) with
    the change in the association PROM at its time point."""
    proms = data.proms
    outcome = proms[
        (proms["measure"] == ASSOCIATION_PROM)
        & (proms["time_point"] == ASSOCIATION_TIME_POINT)
        & proms["change"].notna()
    ][["case_id", "change"]].rename(columns={"change": "clinical"})
    out = []
    for group in GROUPS:
        quantity = vocabulary.GROUPS[group].primary
        column = f"{SHORT[quantity]}_change"
        patients = data.patients[data.patients["study_group"] == group][["case_id", column]]
        joined = patients.merge(outcome, on="case_id").dropna()
        rho = p = None
        if len(joined) >= 3 and joined[column].nunique() > 1 and joined["clinical"].nunique() > 1:
            result = sps.spearmanr(joined[column].astype(float), joined["clinical"].astype(float))
            rho, p = _f(result.statistic), _f(result.pvalue)
        out.append(Association(group, quantity, len(joined), rho, p))
    return out


# --------------------------------------------------------------- secondary endpoints
@dataclass(frozen=True)
class GroupRate:
    label: str
    by_group: dict[str, Proportion]
    p_value: float | None  # Fisher's exact test between the two groups


def _fisher(by_group: dict[str, Proportion]) -> float | None:
    a, b = (by_group[g] for g in GROUPS)
    if a.n == 0 or b.n == 0:
        return None
    table = [[a.count, a.n - a.count], [b.count, b.n - b.count]]
    return _f(sps.fisher_exact(table).pvalue)


def complications_by_group(data: AnalysisData) -> list[GroupRate]:
    """Patients with each kind of complication, per group (a patient counts once)."""
    patients = data.patients[data.patients["study_group"].isin(GROUPS)]
    n = {g: int((patients["study_group"] == g).sum()) for g in GROUPS}
    comp = data.complications

    def rate(label: str, cases: set[str]) -> GroupRate:
        by_group = {
            g: wilson(
                int(patients[(patients["study_group"] == g)]["case_id"].isin(cases).sum()), n[g]
            )
            for g in GROUPS
        }
        return GroupRate(label, by_group, _fisher(by_group))

    rows = [
        rate("Any complication", set(comp["case_id"])),
        rate("Early (<= 30 days)", set(comp.loc[comp["timing"] == "early", "case_id"])),
        rate("Late (> 30 days)", set(comp.loc[comp["timing"] == "late", "case_id"])),
    ]
    for concept in vocabulary.COMPLICATIONS:
        cases = set(comp.loc[comp["complication"] == concept.code, "case_id"])
        if cases:
            rows.append(rate(concept.display, cases))
    for grade in vocabulary.CLAVIEN_DINDO_GRADES:
        cases = set(comp.loc[comp["clavien_dindo"] == grade[3:], "case_id"])
        if cases:
            rows.append(rate(f"Clavien-Dindo {grade[3:]}", cases))
    return rows


@dataclass(frozen=True)
class GroupMedian:
    label: str
    by_group: dict[str, tuple[int, float | None, float | None, float | None]]  # n, med, q1, q3
    p_value: float | None  # Mann-Whitney U


EARLY_VARIABLES = {
    "los_days": "Length of stay (d)",
    "blood_loss_ml": "Blood loss (mL)",
    "mme_day1": "Opioids day 1 (mg morphine eq.)",
    "mme_day2": "Opioids day 2 (mg morphine eq.)",
    "mme_day3": "Opioids day 3 (mg morphine eq.)",
    "leg_pain_day1": "Leg pain day 1 (0-10)",
    "leg_pain_day2": "Leg pain day 2 (0-10)",
    "back_pain_day1": "Back pain day 1 (0-10)",
    "back_pain_day2": "Back pain day 2 (0-10)",
}


def early_by_group(data: AnalysisData) -> list[GroupMedian]:
    out = []
    for column, label in EARLY_VARIABLES.items():
        values = {
            g: data.patients.loc[data.patients["study_group"] == g, column].dropna().astype(float)
            for g in GROUPS
        }
        if all(v.empty for v in values.values()):
            continue
        summary: dict[str, tuple[int, float | None, float | None, float | None]] = {}
        for g, v in values.items():
            if v.empty:
                summary[g] = (0, None, None, None)
            else:
                q1, med, q3 = np.percentile(v, [25, 50, 75])
                summary[g] = (len(v), float(med), float(q1), float(q3))
        a, b = (values[g] for g in GROUPS)
        p = None
        if len(a) and len(b) and pd.concat([a, b]).nunique() > 1:
            p = _f(sps.mannwhitneyu(a, b, alternative="two-sided").pvalue)
        out.append(GroupMedian(label, summary, p))
    return out


# ------------------------------------------------------------ surgeons and learning
@dataclass(frozen=True)
class SurgeonRow:
    surgeon: str
    cases: int
    by_group: dict[str, int]
    primary_z: float | None  # mean primary imaging change, standardised within group
    complications: Proportion
    odi_mcid: Proportion  # at the learning time point


@dataclass(frozen=True)
class LearningCurve:
    surgeon: str
    case_numbers: list[int]
    cusum: list[float]  # cumulative (failure - cohort failure rate)
    rho: float | None  # Spearman: case number vs standardised primary change
    p_value: float | None


def _standardised_primary(data: AnalysisData) -> pd.Series:
    out = pd.Series(np.nan, index=data.patients.index, dtype="float64")
    for group in GROUPS:
        column = f"{SHORT[vocabulary.GROUPS[group].primary]}_change"
        mask = data.patients["study_group"] == group
        values = data.patients.loc[mask, column].astype(float)
        if values.notna().sum() > 1 and values.std() > 0:
            out[mask] = (values - values.mean()) / values.std()
    return out


def _failures(data: AnalysisData) -> pd.Series:
    """1 when a complication within 30 days or the ODI MCID missed at the learning time
    point; NaN when neither can be said."""
    proms = data.proms
    odi = proms[
        (proms["measure"] == "odi")
        & (proms["time_point"] == LEARNING_TIME_POINT)
        & proms["mcid"].notna()
    ].set_index("case_id")["mcid"]
    missed = data.patients["case_id"].map(lambda c: None if c not in odi.index else 1 - int(odi[c]))
    early = data.patients["early_complication"].astype("float64")
    failure = pd.Series(np.nan, index=data.patients.index, dtype="float64")
    known = missed.notna() | (early == 1)
    failure[known] = ((early[known] == 1) | (missed[known] == 1)).astype(float)
    return failure


def surgeons(data: AnalysisData) -> tuple[list[SurgeonRow], list[LearningCurve], float | None]:
    """Outcomes by surgeon, each surgeon's learning curve, and the cohort failure rate."""
    p = data.patients[data.patients["study_group"].isin(GROUPS)].copy()
    if p.empty:
        return [], [], None
    z = _standardised_primary(data).loc[p.index]
    failure = _failures(data).loc[p.index]
    rate = _f(failure.mean()) if failure.notna().any() else None
    proms = data.proms
    odi = proms[
        (proms["measure"] == "odi")
        & (proms["time_point"] == LEARNING_TIME_POINT)
        & proms["mcid"].notna()
    ]
    rows, curves = [], []
    for surgeon, frame in p.groupby(p["surgeon"].fillna("unknown"), sort=True):
        cases = set(frame["case_id"])
        reached = odi[odi["case_id"].isin(cases)]
        rows.append(
            SurgeonRow(
                surgeon=str(surgeon),
                cases=len(frame),
                by_group={g: int((frame["study_group"] == g).sum()) for g in GROUPS},
                primary_z=_f(z.loc[frame.index].mean())
                if z.loc[frame.index].notna().any()
                else None,
                complications=wilson(int(frame["any_complication"].sum()), len(frame)),
                odi_mcid=wilson(int(reached["mcid"].sum()), len(reached)),
            )
        )
        ordered = frame.assign(_z=z, _f=failure).sort_values("surgeon_case_no", na_position="last")
        numbers = [int(n) for n in ordered["surgeon_case_no"].fillna(0)]
        cusum: list[float] = []
        total = 0.0
        for value in ordered["_f"]:
            if rate is not None and not pd.isna(value):
                total += float(value) - rate
            cusum.append(total)
        rho = pv = None
        known = ordered[ordered["_z"].notna() & ordered["surgeon_case_no"].notna()]
        if len(known) >= 4 and known["_z"].nunique() > 1:
            result = sps.spearmanr(known["surgeon_case_no"].astype(float), known["_z"])
            rho, pv = _f(result.statistic), _f(result.pvalue)
        curves.append(LearningCurve(str(surgeon), numbers, cusum, rho, pv))
    return rows, curves, rate
