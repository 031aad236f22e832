"""Cases as analysis-ready long tables, with their data dictionary (pure).

Four tables, each variable declared once in :data:`VARIABLES` (name, type, unit, label,
value labels):

- ``patients``: one row per case (index surgery);
- ``levels``: one row per case x quantity x level x side x post-operative study (every
  post-operative study, ``post_index`` 1 being the first; a level without any has one row
  with ``post_index`` 0);
- ``proms``: one row per case x PROM measure x time point;
- ``complications``: one row per complication.

Variable names are valid in SPSS, Stata and R (a letter, then letters, digits or ``_``, at
most 32 characters); booleans are 0/1; codes keep the study's vocabulary as values, with
their labels in the dictionary. Dates and identifiers are the viewer's (pseudonyms and
shifted dates for researchers); ``surgeon_case_no`` is the surgeon's chronological case
number, computed on the real dates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

import pandas as pd

from services.common import vocabulary
from services.gateway.analysis.plan import MEASURE_CODES, MEASURES
from services.gateway.cases import VALUE_STATUSES, Case
from services.gateway.cohort import patient_pair

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
TABLES = ("patients", "levels", "proms", "complications")
SHORT = {
    "foraminal_height": "fh",
    "disc_height": "dh",
    "dural_sac_area": "dsa",
    "dural_sac_volume": "dsv",
}


def variable_name(text: str) -> str:
    """A column name valid in SPSS, Stata and R (``odi_month-3`` -> ``odi_month_3``).

    Raises
    ------
    ValueError
        When the result would still be invalid (too long, not starting with a letter).
    """
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    if not NAME.fullmatch(name):
        raise ValueError(f"{text!r} is no valid variable name (letters, digits, _, <= 32)")
    return name


@dataclass(frozen=True)
class Variable:
    table: str
    name: str
    type: str  # string | integer | number | date | boolean (0/1)
    label: str
    unit: str = ""
    values: Mapping[str, str] = field(default_factory=dict)  # value -> label


def _labels(concepts: tuple[vocabulary.Concept, ...]) -> dict[str, str]:
    return {c.code: c.display for c in concepts}


GROUP_LABELS = {
    "foraminal-stenosis": "Foraminal stenosis",
    "central-stenosis": "Central stenosis",
}
YES_NO = {"0": "no", "1": "yes"}
SEX = {"female": "female", "male": "male", "other": "other", "unknown": "unknown"}
TIME_POINT_LABELS = {tp.code: tp.display for tp in vocabulary.TIME_POINTS}
GRADES = {g[3:]: f"Clavien-Dindo {g[3:]}" for g in vocabulary.CLAVIEN_DINDO_GRADES}


def _patient_variables() -> list[Variable]:
    v = [
        Variable(
            "patients", "case_id", "string", "Case (index surgery; pseudonym for researchers)"
        ),
        Variable("patients", "patient_id", "string", "Patient (MRN, or pseudonym)"),
        Variable("patients", "study_group", "string", "Study group", values=GROUP_LABELS),
        Variable("patients", "sex", "string", "Sex (FHIR administrative gender)", values=SEX),
        Variable("patients", "age", "integer", "Age at surgery (90 and over: 90)", "years"),
        Variable("patients", "surgeon", "string", "Surgeon (pseudonym for researchers)"),
        Variable("patients", "surgeon_case_no", "integer", "Surgeon's chronological case number"),
        Variable("patients", "surgery_date", "date", "Surgery date (shifted for researchers)"),
        Variable(
            "patients",
            "technique",
            "string",
            "Technique",
            values=_labels(vocabulary.TECHNIQUES),
        ),
        Variable("patients", "n_levels", "integer", "Number of operated levels"),
        Variable("patients", "levels", "string", "Operated levels, ';'-separated"),
        Variable(
            "patients", "pre_study_days", "integer", "Days from surgery to the pre-op study", "d"
        ),
        Variable("patients", "post_studies", "integer", "Number of post-operative studies"),
        Variable(
            "patients",
            "post_study_days",
            "integer",
            "Days from surgery to the first post-op study",
            "d",
        ),
    ]
    for q in vocabulary.QUANTITIES.values():
        short, unit = SHORT[q.name.value], q.unit
        v += [
            Variable(
                "patients",
                f"{short}_pre",
                "number",
                f"{q.display}, pre-op, mean of operated levels",
                unit,
            ),
            Variable(
                "patients",
                f"{short}_post",
                "number",
                f"{q.display}, first post-op, same levels",
                unit,
            ),
            Variable(
                "patients", f"{short}_change", "number", f"{q.display}, change (post - pre)", unit
            ),
        ]
    v += [
        Variable(
            "patients", "measurable", "boolean", "Primary pre/post pair measurable", values=YES_NO
        ),
        Variable("patients", "not_measurable_why", "string", "Why the primary pair is missing"),
    ]
    for measure, label in MEASURES.items():
        v.append(Variable("patients", f"{measure}_baseline", "number", f"{label}, baseline"))
    v += [
        Variable("patients", "n_complications", "integer", "Number of complications"),
        Variable("patients", "any_complication", "boolean", "Any complication", values=YES_NO),
        Variable(
            "patients",
            "early_complication",
            "boolean",
            "Complication within 30 days",
            values=YES_NO,
        ),
        Variable(
            "patients", "max_clavien_dindo", "string", "Highest Clavien-Dindo grade", values=GRADES
        ),
        Variable("patients", "los_days", "number", "Length of stay", "d"),
        Variable("patients", "blood_loss_ml", "number", "Estimated blood loss", "mL"),
    ]
    for tp in vocabulary.EARLY_TIME_POINTS:
        day = tp.replace("-", "")
        v += [
            Variable(
                "patients", f"mme_{day}", "number", f"Opioids, morphine equivalents, {tp}", "mg/d"
            ),
            Variable("patients", f"leg_pain_{day}", "number", f"Leg pain (0-10), {tp}"),
            Variable("patients", f"back_pain_{day}", "number", f"Back pain (0-10), {tp}"),
        ]
    return v


VARIABLES: tuple[Variable, ...] = (
    *_patient_variables(),
    Variable("levels", "case_id", "string", "Case"),
    Variable("levels", "patient_id", "string", "Patient"),
    Variable("levels", "study_group", "string", "Study group", values=GROUP_LABELS),
    Variable("levels", "surgeon", "string", "Surgeon"),
    Variable(
        "levels",
        "quantity",
        "string",
        "Measured quantity",
        values={q.name.value: q.display for q in vocabulary.QUANTITIES.values()},
    ),
    Variable("levels", "unit", "string", "Unit (UCUM)"),
    Variable("levels", "level", "string", "Lumbar motion segment"),
    Variable("levels", "side", "string", "left | right (foraminal height), midline (the others)"),
    Variable("levels", "operated", "boolean", "Operated level", values=YES_NO),
    Variable("levels", "pre", "number", "Pre-operative value"),
    Variable("levels", "pre_status", "string", " | ".join(VALUE_STATUSES)),
    Variable("levels", "post_index", "integer", "Post-operative study, 1 = first (0: none)"),
    Variable("levels", "post_days", "integer", "Days from surgery to that study", "d"),
    Variable(
        "levels",
        "post_label",
        "string",
        "Protocol time point of that study",
        values=TIME_POINT_LABELS,
    ),
    Variable("levels", "post", "number", "Post-operative value"),
    Variable("levels", "post_status", "string", " | ".join(VALUE_STATUSES)),
    Variable("levels", "change", "number", "post - pre"),
    Variable("levels", "change_pct", "number", "100 x (post - pre) / pre", "%"),
    Variable("proms", "case_id", "string", "Case"),
    Variable("proms", "patient_id", "string", "Patient"),
    Variable("proms", "study_group", "string", "Study group", values=GROUP_LABELS),
    Variable("proms", "surgeon", "string", "Surgeon"),
    Variable("proms", "measure", "string", "PROM measure", values=dict(MEASURES)),
    Variable(
        "proms",
        "instrument",
        "string",
        "Instrument (project code)",
        values={p.code.value: p.display for p in vocabulary.PROMS.values()},
    ),
    Variable("proms", "time_point", "string", "Time point", values=TIME_POINT_LABELS),
    Variable("proms", "time_order", "integer", "Order of the time point (0 = baseline)"),
    Variable("proms", "days", "integer", "Days from surgery to the answer", "d"),
    Variable("proms", "value", "number", "Score"),
    Variable("proms", "baseline", "number", "Baseline score of the same measure"),
    Variable("proms", "change", "number", "value - baseline"),
    Variable(
        "proms", "mcid", "boolean", "Minimal clinically important difference reached", values=YES_NO
    ),
    Variable("complications", "case_id", "string", "Case"),
    Variable("complications", "patient_id", "string", "Patient"),
    Variable("complications", "study_group", "string", "Study group", values=GROUP_LABELS),
    Variable(
        "complications",
        "complication",
        "string",
        "Complication type",
        values=_labels(vocabulary.COMPLICATIONS),
    ),
    Variable("complications", "clavien_dindo", "string", "Clavien-Dindo grade", values=GRADES),
    Variable("complications", "timing", "string", "early (<= 30 days) | late"),
    Variable("complications", "days", "integer", "Days from surgery to onset", "d"),
    Variable("complications", "onset_date", "date", "Onset date (shifted for researchers)"),
)


def columns(table: str) -> list[str]:
    return [v.name for v in VARIABLES if v.table == table]


@dataclass
class AnalysisData:
    patients: pd.DataFrame
    levels: pd.DataFrame
    proms: pd.DataFrame
    complications: pd.DataFrame

    def table(self, name: str) -> pd.DataFrame:
        frame: pd.DataFrame = getattr(self, name)
        return frame


def _measure_of(code: str) -> str | None:
    return next((m for m, members in MEASURE_CODES.items() if code in members), None)


def _patient_row(case: Case, case_no: int | None) -> dict[str, Any]:
    surgery, imaging = case.surgery, case.imaging
    quantity, reason = case.primary_pair()
    row: dict[str, Any] = {
        "case_id": case.case_id,
        "patient_id": case.patient.id,
        "study_group": surgery.group,
        "sex": case.patient.sex,
        "age": case.patient.age_at_surgery,
        "surgeon": surgery.surgeon.display if surgery.surgeon else None,
        "surgeon_case_no": case_no,
        "surgery_date": surgery.date,
        "technique": surgery.technique,
        "n_levels": len(surgery.levels),
        "levels": ";".join(surgery.levels),
        "pre_study_days": imaging.pre.interval_days if imaging.pre else None,
        "post_studies": len(imaging.post),
        "post_study_days": imaging.post[0].interval_days if imaging.post else None,
        "measurable": int(reason is None) if quantity else 0,
        "not_measurable_why": reason,
    }
    for q in vocabulary.QUANTITIES.values():
        short = SHORT[q.name.value]
        pre, post = patient_pair(case, q.name.value)
        if pre is None:  # no pair: the values present still describe the patient
            rows = [r for r in imaging.metrics if r.quantity == q.name.value and r.operated]
            present = [r.pre.value for r in rows if r.pre.value is not None]
            pre = fmean(present) if present else None
        row[f"{short}_pre"] = pre
        row[f"{short}_post"] = post
        row[f"{short}_change"] = None if pre is None or post is None else post - pre
    latest: dict[tuple[str, str], float] = {}
    preferred = {
        code: rank for members in MEASURE_CODES.values() for rank, code in enumerate(members)
    }
    chosen: dict[tuple[str, str], int] = {}
    for series in case.proms:
        measure = _measure_of(series.code)
        if measure is None:
            continue
        for point in series.points:
            key = (measure, point.time_point)
            rank = preferred[series.code]
            if key not in chosen or rank < chosen[key]:
                chosen[key], latest[key] = rank, point.value
    for measure in MEASURES:
        row[f"{measure}_baseline"] = latest.get((measure, "baseline"))
    grades = [c.grade for c in case.complications if c.grade]
    order = [g[3:] for g in vocabulary.CLAVIEN_DINDO_GRADES]
    row.update(
        n_complications=len(case.complications),
        any_complication=int(bool(case.complications)),
        early_complication=int(any(c.timing == "early" for c in case.complications)),
        max_clavien_dindo=max(grades, key=order.index) if grades else None,
        los_days=case.early.length_of_stay_days,
        blood_loss_ml=case.early.blood_loss_ml,
    )
    for tp in vocabulary.EARLY_TIME_POINTS:
        day = tp.replace("-", "")
        row[f"mme_{day}"] = next(
            (e.value for e in case.early.analgesic_mme if e.time_point == tp), None
        )
        row[f"leg_pain_{day}"] = latest.get(("leg_pain", tp))
        row[f"back_pain_{day}"] = latest.get(("back_pain", tp))
    return row


def _level_rows(case: Case) -> list[dict[str, Any]]:
    out = []
    base = {
        "case_id": case.case_id,
        "patient_id": case.patient.id,
        "study_group": case.surgery.group,
        "surgeon": case.surgery.surgeon.display if case.surgery.surgeon else None,
    }
    for metric in case.imaging.metrics:
        common = {
            **base,
            "quantity": metric.quantity,
            "unit": metric.unit,
            "level": metric.level,
            "side": metric.side or "midline",
            "operated": int(metric.operated),
            "pre": metric.pre.value,
            "pre_status": metric.pre.status,
        }
        if not metric.post:
            out.append({**common, "post_index": 0, "post_status": "missing"})
            continue
        for index, post in enumerate(metric.post, start=1):
            out.append(
                {
                    **common,
                    "post_index": index,
                    "post_days": post.interval_days,
                    "post_label": post.label,
                    "post": post.value.value,
                    "post_status": post.value.status,
                    "change": post.change,
                    "change_pct": post.change_percent,
                }
            )
    return out


def _prom_rows(case: Case) -> list[dict[str, Any]]:
    order = {tp: i for i, tp in enumerate(vocabulary.TIME_POINT_CODES)}
    base = {
        "case_id": case.case_id,
        "patient_id": case.patient.id,
        "study_group": case.surgery.group,
        "surgeon": case.surgery.surgeon.display if case.surgery.surgeon else None,
    }
    seen: set[tuple[str, str]] = set()
    rows = []
    # One instrument per measure and time point: NRS before VAS, in MEASURE_CODES order.
    ranked = sorted(
        case.proms,
        key=lambda s: next(
            (i for m in MEASURE_CODES.values() for i, c in enumerate(m) if c == s.code), 9
        ),
    )
    for series in ranked:
        measure = _measure_of(series.code)
        if measure is None:
            continue
        baseline = next((p.value for p in series.points if p.time_point == "baseline"), None)
        for point in series.points:
            if (measure, point.time_point) in seen:
                continue
            seen.add((measure, point.time_point))
            days = (
                (point.date - case.surgery.date).days
                if point.date is not None and case.surgery.date is not None
                else None
            )
            rows.append(
                {
                    **base,
                    "measure": measure,
                    "instrument": series.code,
                    "time_point": point.time_point,
                    "time_order": order.get(point.time_point, 99),
                    "days": days,
                    "value": point.value,
                    "baseline": baseline,
                    "change": point.change,
                    "mcid": None if point.mcid_reached is None else int(point.mcid_reached),
                }
            )
    return rows


def _complication_rows(case: Case) -> list[dict[str, Any]]:
    return [
        {
            "case_id": case.case_id,
            "patient_id": case.patient.id,
            "study_group": case.surgery.group,
            "complication": c.type,
            "clavien_dindo": c.grade,
            "timing": c.timing,
            "days": c.days_after_surgery,
            "onset_date": c.date,
        }
        for c in case.complications
    ]


def _frame(rows: list[dict[str, Any]], table: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns(table))
    for variable in VARIABLES:
        if variable.table != table:
            continue
        if variable.type in ("integer", "boolean"):
            frame[variable.name] = pd.to_numeric(frame[variable.name]).astype("Int64")
        elif variable.type == "number":
            frame[variable.name] = pd.to_numeric(frame[variable.name]).astype("float64")
        elif variable.type == "date":
            frame[variable.name] = pd.to_datetime(frame[variable.name]).dt.date
        else:
            frame[variable.name] = frame[variable.name].astype("string")
    return frame


def build(cases: list[Case], case_numbers: Mapping[str, int] | None = None) -> AnalysisData:
    """The four tables of ``cases`` (in the viewer's frame); ``case_numbers`` maps a case
    id to its surgeon's chronological case number."""
    numbers = case_numbers or {}
    ordered = sorted(cases, key=lambda c: c.case_id)
    return AnalysisData(
        patients=_frame([_patient_row(c, numbers.get(c.case_id)) for c in ordered], "patients"),
        levels=_frame([r for c in ordered for r in _level_rows(c)], "levels"),
        proms=_frame([r for c in ordered for r in _prom_rows(c)], "proms"),
        complications=_frame([r for c in ordered for r in _complication_rows(c)], "complications"),
    )


def invalid_names() -> list[str]:
    """Variable names that SPSS, Stata or R would refuse (the tests keep this empty)."""
    return [v.name for v in VARIABLES if not NAME.fullmatch(v.name)]
