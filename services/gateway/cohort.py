"""The cohort summary: the protocol's questions answered over a list of cases (pure).

Imaging metrics are compared at the **operated levels** between the pre-operative study
and the **first** post-operative one, in two units of analysis:

- ``patient`` (primary): one value per patient and time, the mean over the operated
  levels (and both sides for the foraminal height). Patients are independent, so the
  paired tests are valid.
- ``site``: one value per operated level (and side). More values, but those of one patient
  are correlated: the tests are descriptive only.

Cases without a usable pre/post pair are counted and listed with the reason, never
silently dropped. Which value counts is the rule of :mod:`services.gateway.cases` (the
readers' review decides); the summary counts the review states of the values it compares
and, when ``reviewed_only``, compares only the values a reader stands behind.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from statistics import fmean

from services.common import vocabulary
from services.common.fhir import codes
from services.gateway.cases import (
    REVIEWED,
    VALUE_STATUSES,
    Case,
    Value,
)
from services.gateway.stats import (
    Descriptive,
    PairedComparison,
    Proportion,
    describe,
    paired,
    wilson,
)


@dataclass(frozen=True)
class MetricSummary:
    quantity: str
    display: str
    unit: str
    unit_of_analysis: str  # patient | site
    pre: Descriptive
    post: Descriptive
    change: PairedComparison


@dataclass(frozen=True)
class MissingCase:
    case_id: str
    patient: str
    quantity: str
    reason: str


@dataclass(frozen=True)
class Rate:
    code: str
    display: str
    proportion: Proportion


@dataclass(frozen=True)
class ComplicationSummary:
    any: Proportion
    early: Proportion
    late: Proportion
    by_type: list[Rate]
    by_grade: list[Rate]
    events: int


@dataclass(frozen=True)
class EarlySummary:
    length_of_stay_days: Descriptive
    blood_loss_ml: Descriptive
    analgesic_mme: dict[str, Descriptive]  # by time point
    pain: dict[str, dict[str, Descriptive]]  # code -> time point -> values


@dataclass(frozen=True)
class PromTimePoint:
    time_point: str
    value: Descriptive
    change: PairedComparison  # baseline vs this time point, same patients
    mcid: Proportion  # among patients with both


@dataclass(frozen=True)
class PromSummary:
    code: str
    display: str
    better: str
    mcid_threshold: float
    mcid_source: str
    points: list[PromTimePoint]


@dataclass(frozen=True)
class Counts:
    cases: int
    by_group: dict[str, int]
    with_pre: int
    with_post: int
    with_pair: int
    with_complication: int


@dataclass(frozen=True)
class CohortSummary:
    group: str | None
    counts: Counts
    metrics: list[MetricSummary]
    missing: list[MissingCase]
    complications: ComplicationSummary
    early: EarlySummary
    proms: list[PromSummary]
    warnings: list[str] = field(default_factory=list)
    # The compared values by review state (see review_states); reviewed_only: the metrics
    # compare only the values a reader stands behind.
    review: dict[str, int] = field(default_factory=dict)
    reviewed_only: bool = False


def _number(value: Value | None, reviewed_only: bool) -> float | None:
    if value is None or (reviewed_only and value.status not in REVIEWED):
        return None
    return value.value


def operated_values(
    case: Case, quantity: str, reviewed_only: bool = False
) -> tuple[list[float | None], list[float | None]]:
    """(pre, first post) per operated site of ``quantity`` in one case, aligned."""
    rows = [r for r in case.imaging.metrics if r.quantity == quantity and r.operated]
    return (
        [_number(r.pre, reviewed_only) for r in rows],
        [_number(r.post[0].value if r.post else None, reviewed_only) for r in rows],
    )


def review_states(cases: list[Case]) -> dict[str, int]:
    """How many of the compared values (the operated sites of the group's quantities, pre
    and first post) are automatic-unreviewed (``ok``), accepted, corrected, rejected,
    a reader's own (``manual``), flagged and unread (``needs_review``), or missing."""
    counts = dict.fromkeys(VALUE_STATUSES, 0)
    for case in cases:
        group = vocabulary.GROUPS.get(case.surgery.group or "")
        for row in case.imaging.metrics:
            if not row.operated or group is None or row.quantity not in group.quantities:
                continue
            counts[row.pre.status] += 1
            counts[row.post[0].value.status if row.post else "missing"] += 1
    return counts


def patient_pair(
    case: Case, quantity: str, reviewed_only: bool = False
) -> tuple[float | None, float | None]:
    """(pre, first post) of one patient: means over the operated sites measured at both."""
    pre, post = operated_values(case, quantity, reviewed_only)
    both = [(a, b) for a, b in zip(pre, post, strict=True) if a is not None and b is not None]
    if not both:
        return None, None
    return fmean(a for a, _ in both), fmean(b for _, b in both)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def metric_summaries(
    cases: list[Case], reviewed_only: bool = False
) -> tuple[list[MetricSummary], list[MissingCase]]:
    """Pre, post and paired change of every imaging quantity at the operated levels."""
    summaries: list[MetricSummary] = []
    missing: list[MissingCase] = []
    for case in cases:
        quantity, reason = case.primary_pair()
        if reason is not None:
            missing.append(MissingCase(case.case_id, case.patient.id, quantity, reason))
    for q in vocabulary.QUANTITIES.values():
        quantity, unit, display = q.name.value, q.unit, q.display
        relevant = [
            c
            for c in cases
            if c.surgery.group in vocabulary.GROUPS
            and q.name in vocabulary.GROUPS[c.surgery.group].quantities
        ]
        if not relevant:
            continue
        patient_pre: list[float | None] = []
        patient_post: list[float | None] = []
        site_pre: list[float | None] = []
        site_post: list[float | None] = []
        for case in relevant:
            pre, post = operated_values(case, quantity, reviewed_only)
            # A patient's mean uses the same sites on both sides of the comparison; without
            # a pair, the values present still count in the descriptive pre or post figures.
            mean_pre, mean_post = patient_pair(case, quantity, reviewed_only)
            patient_pre.append(mean_pre if mean_pre is not None else _mean(pre))
            patient_post.append(mean_post if mean_post is not None else _mean(post))
            site_pre += pre
            site_post += post
        for unit_of_analysis, a, b in (
            ("patient", patient_pre, patient_post),
            ("site", site_pre, site_post),
        ):
            change = paired(a, b)
            if unit_of_analysis == "site":  # correlated within patients: descriptive, no test
                change = replace(
                    change,
                    t_statistic=None,
                    t_p_value=None,
                    wilcoxon_statistic=None,
                    wilcoxon_p_value=None,
                )
            summaries.append(
                MetricSummary(
                    quantity=quantity,
                    display=display,
                    unit=unit,
                    unit_of_analysis=unit_of_analysis,
                    pre=describe(a),
                    post=describe(b),
                    change=change,
                )
            )
    return summaries, missing


def complication_summary(cases: list[Case]) -> ComplicationSummary:
    """Rates per patient (a patient counts once per type or grade) with Wilson 95 % CIs."""
    n = len(cases)
    by_type: Counter[str] = Counter()
    by_grade: Counter[str] = Counter()
    early = late = anyone = events = 0
    for case in cases:
        events += len(case.complications)
        if case.complications:
            anyone += 1
        early += any(c.timing == "early" for c in case.complications)
        late += any(c.timing == "late" for c in case.complications)
        by_type.update({c.type for c in case.complications})
        by_grade.update({c.grade for c in case.complications if c.grade})
    grade_order = [g[3:] for g in vocabulary.CLAVIEN_DINDO_GRADES]
    return ComplicationSummary(
        any=wilson(anyone, n),
        early=wilson(early, n),
        late=wilson(late, n),
        by_type=[
            Rate(t, codes.PROJECT_CODES[t].display if t in codes.PROJECT_CODES else t, wilson(k, n))
            for t, k in sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        by_grade=[
            Rate(g, f"Clavien-Dindo {g}", wilson(by_grade[g], n))
            for g in grade_order
            if by_grade[g]
        ],
        events=events,
    )


def early_summary(cases: list[Case]) -> EarlySummary:
    mme: dict[str, list[float | None]] = defaultdict(list)
    pain: dict[str, dict[str, list[float | None]]] = defaultdict(lambda: defaultdict(list))
    for case in cases:
        for value in case.early.analgesic_mme:
            mme[value.time_point or "unspecified"].append(value.value)
        for value in case.early.pain:
            pain[value.code][value.time_point or "unspecified"].append(value.value)
    order = {tp: i for i, tp in enumerate(vocabulary.EARLY_TIME_POINTS)}

    def by_time(values: dict[str, list[float | None]]) -> dict[str, Descriptive]:
        return {
            tp: describe(v) for tp, v in sorted(values.items(), key=lambda kv: order.get(kv[0], 9))
        }

    return EarlySummary(
        length_of_stay_days=describe([c.early.length_of_stay_days for c in cases]),
        blood_loss_ml=describe([c.early.blood_loss_ml for c in cases]),
        analgesic_mme={
            tp: describe(v) for tp, v in sorted(mme.items(), key=lambda kv: order.get(kv[0], 9))
        },
        pain={
            code: {
                tp: describe(v)
                for tp, v in sorted(by_tp.items(), key=lambda kv: order.get(kv[0], 9))
            }
            for code, by_tp in sorted(pain.items())
        },
    )


def prom_summaries(cases: list[Case]) -> list[PromSummary]:
    """Per PROM and time point: values, paired change from baseline, MCID rate."""
    out = []
    for prom in vocabulary.PROMS.values():
        code = prom.code.value
        series = [(c, next((s for s in c.proms if s.code == code), None)) for c in cases]
        present = [s for _, s in series if s is not None]
        if not present:
            continue
        time_points = sorted(
            {p.time_point for s in present for p in s.points},
            key=lambda tp: (
                vocabulary.TIME_POINT_CODES.index(tp) if tp in vocabulary.TIME_POINT_CODES else 99
            ),
        )
        points = []
        for tp in time_points:
            values: list[float | None] = []
            base: list[float | None] = []
            after: list[float | None] = []
            reached = paired_n = 0
            for s in present:
                point = next((p for p in s.points if p.time_point == tp), None)
                if point is None:
                    continue
                values.append(point.value)
                if tp != "baseline" and s.baseline is not None:
                    base.append(s.baseline)
                    after.append(point.value)
                    paired_n += 1
                    reached += bool(point.mcid_reached)
            points.append(
                PromTimePoint(
                    time_point=tp,
                    value=describe(values),
                    change=paired(base, after),
                    mcid=wilson(reached, paired_n),
                )
            )
        out.append(
            PromSummary(
                code=code,
                display=prom.display,
                better=prom.better,
                mcid_threshold=prom.mcid,
                mcid_source=prom.mcid_source,
                points=points,
            )
        )
    return out


def summarize(
    cases: list[Case], group: str | None = None, reviewed_only: bool = False
) -> CohortSummary:
    """The cohort summary of ``cases`` (already filtered by the caller)."""
    metrics, missing = metric_summaries(cases, reviewed_only)
    with_pre = sum(c.imaging.pre is not None for c in cases)
    with_post = sum(bool(c.imaging.post) for c in cases)
    counts = Counts(
        cases=len(cases),
        by_group=dict(Counter(c.surgery.group or "unknown" for c in cases)),
        with_pre=with_pre,
        with_post=with_post,
        with_pair=len(cases) - len(missing),
        with_complication=sum(bool(c.complications) for c in cases),
    )
    warnings = []
    if len(cases) - len(missing) < 2:
        warnings.append("fewer than 2 cases with a pre/post pair: no paired test is possible")
    return CohortSummary(
        group=group,
        counts=counts,
        metrics=metrics,
        missing=missing,
        complications=complication_summary(cases),
        early=early_summary(cases),
        proms=prom_summaries(cases),
        warnings=warnings,
        review=review_states(cases),
        reviewed_only=reviewed_only,
    )
