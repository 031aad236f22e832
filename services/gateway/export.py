"""Exports (pure): the cohort CSV with its data dictionary, and a case as a FHIR Bundle.

CSV layout: one row per case x level x side. ``side`` is ``left`` or ``right`` for the
per-side quantity (foraminal height) and ``midline`` for the per-level ones (disc height,
dural sac area and volume), so each measured value appears exactly once. Case-level
columns (surgery, complications, early results, PROMs) repeat on every row of a case;
``first_row_of_case`` is 1 on one row per case, to count cases and not rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from services.common import vocabulary
from services.common.fhir import builders
from services.gateway.analysis.dataset import variable_name
from services.gateway.cases import (
    VALUE_STATUSES,
    Case,
    ClinicalRecord,
    MetricRow,
    View,
    mrn_of,
)
from services.gateway.privacy import AGE_CAP, ResearchSerializer

STATUS_DOC = " | ".join(VALUE_STATUSES)  # the rule: services.gateway.cases


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # string | integer | number | date | boolean (1/0)
    unit: str
    description: str

    def __post_init__(self) -> None:  # names that SPSS, Stata and R accept
        object.__setattr__(self, "name", variable_name(self.name))


def _metric_columns() -> list[Column]:
    out = []
    for q in vocabulary.QUANTITIES.values():
        quantity, unit, display = q.name.value, q.unit, q.display
        out += [
            Column(f"{quantity}_pre", "number", unit, f"{display}, pre-operative study"),
            Column(f"{quantity}_pre_status", "string", "", STATUS_DOC),
            Column(f"{quantity}_post", "number", unit, f"{display}, first post-operative study"),
            Column(f"{quantity}_post_status", "string", "", STATUS_DOC),
            Column(f"{quantity}_change", "number", unit, "post - pre"),
            Column(f"{quantity}_change_percent", "number", "%", "100 x (post - pre) / pre"),
        ]
    return out


def _prom_columns() -> list[Column]:
    out = []
    for prom in vocabulary.PROMS.values():
        code = prom.code.value
        for tp in vocabulary.TIME_POINT_CODES:
            out.append(Column(f"{code}_{tp}", "number", prom.scale, f"{prom.display} at {tp}"))
        out.append(
            Column(
                f"{code}_mcid_last",
                "boolean",
                "",
                f"MCID ({prom.mcid:g}, {prom.mcid_source}) reached at the last time point",
            )
        )
    return out


_EARLY = vocabulary.EARLY_RESULTS
COLUMNS: tuple[Column, ...] = (
    Column("case_id", "string", "", "The index surgery (FHIR Procedure id)"),
    Column("patient", "string", "", "MRN (identified) or keyed-HMAC pseudonym (researchers)"),
    Column("first_row_of_case", "integer", "", "1 on one row per case, else 0"),
    Column("group", "string", "", "foraminal-stenosis | central-stenosis"),
    Column("surgery_date", "date", "", "Surgery date (shifted per patient for researchers)"),
    Column("surgeon", "string", "", "Surgeon (pseudonym for researchers)"),
    Column("technique", "string", "", "mis-tlif | mis-plif | olif | xlif"),
    Column("operated_levels", "string", "", "Operated levels, ';'-separated"),
    Column("sex", "string", "", "FHIR administrative gender"),
    Column("age_at_surgery", "integer", "years", "Whole years; 90 and over reported as 90"),
    Column("level", "string", "", "Lumbar motion segment (L1-L2 ... L5-S1)"),
    Column("side", "string", "", "left | right (foraminal height) or midline (the others)"),
    Column("operated", "boolean", "", "Whether this level was operated"),
    Column("modality", "string", "", "CT (foraminal group) or MR (central group)"),
    Column("pre_study_date", "date", "", "Date of the pre-operative study"),
    Column("post_study_date", "date", "", "Date of the first post-operative study"),
    Column("post_interval_days", "integer", "d", "Days from surgery to that study"),
    Column("post_label", "string", "", "Protocol time point nearest that interval"),
    *_metric_columns(),
    Column("complications", "integer", "", "Number of complications"),
    Column("complication_types", "string", "", "Complication types, ';'-separated"),
    Column("max_clavien_dindo", "string", "", "Highest Clavien-Dindo grade"),
    Column("early_complication", "boolean", "", "Any complication within 30 days"),
    Column(
        "length_of_stay_days", "number", _EARLY["length-of-stay"].unit, "Admission to discharge"
    ),
    Column("blood_loss_ml", "number", _EARLY["blood-loss"].unit, _EARLY["blood-loss"].definition),
    *(
        Column(
            f"analgesic_mme_{tp}",
            "number",
            _EARLY["analgesic-mme"].unit,
            f"Opioids, morphine equivalents, {tp}",
        )
        for tp in vocabulary.EARLY_TIME_POINTS
    ),
    *_prom_columns(),
)
HEADER = [c.name for c in COLUMNS]
GRADE_ORDER = [g[3:] for g in vocabulary.CLAVIEN_DINDO_GRADES]


def data_dictionary_rows() -> Iterator[list[str]]:
    yield ["column", "type", "unit", "description"]
    for column in COLUMNS:
        yield [column.name, column.type, column.unit, column.description]


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _case_columns(case: Case) -> dict[str, Any]:
    grades = [c.grade for c in case.complications if c.grade in GRADE_ORDER]
    out: dict[str, Any] = {
        "case_id": case.case_id,
        "patient": case.patient.id,
        "group": case.surgery.group,
        "surgery_date": case.surgery.date,
        "surgeon": case.surgery.surgeon.id if case.surgery.surgeon else None,
        "technique": case.surgery.technique,
        "operated_levels": ";".join(case.surgery.levels),
        "sex": case.patient.sex,
        "age_at_surgery": case.patient.age_at_surgery,
        "modality": case.imaging.modality,
        "pre_study_date": case.imaging.pre.study_date if case.imaging.pre else None,
        "complications": len(case.complications),
        "complication_types": ";".join(sorted({c.type for c in case.complications})),
        "max_clavien_dindo": max(grades, key=GRADE_ORDER.index) if grades else None,
        "early_complication": any(c.timing == "early" for c in case.complications),
        "length_of_stay_days": case.early.length_of_stay_days,
        "blood_loss_ml": case.early.blood_loss_ml,
    }
    if case.imaging.post:
        first = case.imaging.post[0]
        out |= {
            "post_study_date": first.study_date,
            "post_interval_days": first.interval_days,
            "post_label": first.label,
        }
    for value in case.early.analgesic_mme:
        out[f"analgesic_mme_{value.time_point}"] = value.value
    for series in case.proms:
        for point in series.points:
            out[f"{series.code}_{point.time_point}"] = point.value
        last = series.points[-1] if series.points else None
        out[f"{series.code}_mcid_last"] = last.mcid_reached if last else None
    return out


def _metric_columns_of(row: MetricRow) -> dict[str, Any]:
    q = row.quantity
    first = row.post[0] if row.post else None
    return {
        f"{q}_pre": row.pre.value,
        f"{q}_pre_status": row.pre.status,
        f"{q}_post": first.value.value if first else None,
        f"{q}_post_status": first.value.status if first else "missing",
        f"{q}_change": first.change if first else None,
        f"{q}_change_percent": first.change_percent if first else None,
    }


def case_rows(case: Case) -> Iterator[list[str]]:
    """The CSV rows of one case (without the header)."""
    common = {variable_name(k): v for k, v in _case_columns(case).items()}
    sites: dict[tuple[str, str], dict[str, Any]] = {}
    for row in case.imaging.metrics:
        key = (row.level, row.side or "midline")
        sites.setdefault(key, {"operated": row.operated}).update(_metric_columns_of(row))
    if not sites:  # no imaging rows (no group): one row per operated level keeps the case
        for level in case.surgery.levels:
            sites[(level, "midline")] = {"operated": True}
    if not sites:
        yield [_fmt((common | {"first_row_of_case": 1}).get(name)) for name in HEADER]
        return
    order = {"left": 0, "right": 1, "midline": 2}
    first = True
    for (level, side), values in sorted(
        sites.items(), key=lambda kv: (vocabulary.LEVELS.index(kv[0][0]), order[kv[0][1]])
    ):
        record = common | values | {"level": level, "side": side, "first_row_of_case": int(first)}
        first = False
        yield [_fmt(record.get(name)) for name in HEADER]


def csv_lines(rows: Iterable[list[str]]) -> Iterator[str]:
    """Rows as CSV text, one line at a time (for streaming)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for row in rows:
        writer.writerow(row)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


PSEUDONYM_SYSTEM = "urn:spine-outcomes:pseudonym"


def _imaging_resources(patient_ref: str, case: Case) -> list[dict[str, Any]]:
    """ImagingStudy and metric Observations of the paired studies (values in use only)."""
    out: list[dict[str, Any]] = []
    refs = [r for r in (case.imaging.pre, *case.imaging.post) if r is not None]
    for index, ref in enumerate(refs):
        uid = ref.study if case.identified else f"2.25.{index}"  # no real UID leaves
        full_url = f"urn:uuid:imaging-study-{index}"
        resource = builders.imaging_study(
            patient_ref,
            uid,
            started=ref.study_date.isoformat() if ref.study_date else "",
            modality=ref.modality or "OT",
            description=f"{ref.slot} ({ref.label})",
        )
        if not case.identified:
            resource.pop("identifier", None)
        if not resource["started"]:
            del resource["started"]
        out.append({"fullUrl": full_url, "resource": resource})
        for row in case.imaging.metrics:
            value = (
                row.pre
                if ref.slot == "pre"
                else next((p.value for p in row.post if p.slot == ref.slot), None)
            )
            if value is None or value.value is None:
                continue
            observation = builders.imaging_metric(
                patient_ref,
                vocabulary.QUANTITIES[vocabulary.QuantityName(row.quantity)].code,
                value.value,
                level=row.level,
                side=row.side,
                imaging_study_ref=full_url,
                effective=resource.get("started", ""),
                algorithm=ref.algorithm_version and f"spine-decompression {ref.algorithm_version}",
            )
            # Provenance the FHIR way: how it was measured (method), and a corrected value
            # is an amendment of the automatic one (status amended).
            method = {
                "ok": "automatic (unreviewed)",
                "needs_review": "automatic (flagged for review)",
                "accepted": "automatic, accepted by a reader",
                "corrected": "automatic, corrected by a reader",
                "manual": "measured by a reader",
            }.get(value.status)
            if method:
                observation["method"] = {"text": method}
            if value.status == "corrected":
                observation["status"] = "amended"
            if not observation["effectiveDateTime"]:
                del observation["effectiveDateTime"]
            out.append({"resource": observation})
    return out


def case_bundle(record: ClinicalRecord, case: Case, view: View) -> dict[str, Any]:
    """The case as a FHIR ``collection`` Bundle, in the viewer's frame.

    Researchers get the allow-list of :class:`services.gateway.privacy.ResearchSerializer`:
    no identifier, name, free text, extension (but the time point) or real date; every id
    and reference pseudonymous; the birth date as a year, 90 and over aggregated.
    """
    resources = [r for r in (record.patient, record.surgeon, record.procedure) if r]
    resources += record.observations
    patient_ref = (record.procedure.get("subject") or {}).get("reference", "")
    entries: list[dict[str, Any]] = []
    if view.identified:
        entries = [{"resource": r} for r in resources]
    else:
        assert view.pseudonymizer is not None
        pseudonymizer = view.pseudonymizer
        mrn = mrn_of(record, view.mrn_system) or ""
        pseudonym = pseudonymizer.patient(mrn, view.mrn_system)
        references = {patient_ref: f"Patient/{pseudonym}"}
        if record.surgeon is not None and case.surgery.surgeon is not None:
            references[f"Practitioner/{record.surgeon.get('id')}"] = (
                f"Practitioner/{case.surgery.surgeon.id}"
            )
        references[f"Procedure/{record.procedure.get('id')}"] = f"Procedure/{case.case_id}"
        for resource in resources:
            real = f"{resource.get('resourceType')}/{resource.get('id')}"
            references.setdefault(
                real,
                f"{resource.get('resourceType')}/"
                + pseudonymizer.resource(
                    str(resource.get("resourceType")), str(resource.get("id"))
                ),
            )
        serializer = ResearchSerializer(
            pseudonymizer,
            shift=pseudonymizer.shift_days(mrn, view.mrn_system),
            references=references,
            birth_year_floor=_birth_year_floor(record, case),
        )
        for resource in resources:
            clean = serializer.serialize(resource)
            if clean is not None:
                entries.append({"resource": clean})
        patient_ref = f"Patient/{pseudonym}"
    entries += _imaging_resources(patient_ref, case)
    return {
        "resourceType": "Bundle",
        "type": "collection",  # no ``total``: FHIR allows it on searchset/history only
        "entry": entries,
    }


def _birth_year_floor(record: ClinicalRecord, case: Case) -> int | None:
    """For a patient aged 90 or over at surgery, the birth year that makes them 90."""
    performed = record.procedure.get("performedDateTime") or (
        record.procedure.get("performedPeriod") or {}
    ).get("start")
    if case.patient.age_at_surgery != AGE_CAP or not isinstance(performed, str):
        return None
    return int(performed[:4]) - AGE_CAP
