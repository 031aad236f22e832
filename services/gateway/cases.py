"""One case = one patient's index surgery (a FHIR Procedure), with its imaging, outcomes
and complications side by side. Pure: built from the FHIR JSON the outcomes service
returns and the study results the imaging service returns; no web framework here.

Rules a researcher needs to know (also in the README):

- **Pairing.** The group decides the modality: foraminal stenosis → CT, central
  stenosis → MR. *Pre* is the latest study of that modality before the surgery; every
  later one is a *post*, labelled by its interval (the nearest protocol time point,
  e.g. ``day-2``, ``month-3``). A study on the day of surgery without times on both
  sides cannot be placed and is left out with a warning. The cohort compares *pre*
  with the **first** post-operative study.
- **Which value.** The primary reading's latest read of a value (any reader; the blinded
  second reads and re-reads serve the agreement statistics only) decides it: ``accepted``
  keeps the automatic value, ``corrected`` replaces it, ``rejected`` excludes it (no
  number), a reader's value where there was no automatic one is ``manual``. Without a
  read, an automatic value counts when its status is ``ok`` (unreviewed) and
  ``needs_review`` values have no number. The automatic value is kept alongside
  (``automatic``); the cohort summary counts each state and can be restricted to the
  reviewed values (accepted, corrected, manual).
- **PROMs.** Baseline is the ``baseline`` time point, else the latest value before
  surgery. Change = value - baseline. The MCID is reached when the improvement is at
  least the PROM's MCID in :data:`services.common.vocabulary.PROMS` (lower is better for
  ODI and pain, higher for EQ-5D).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any, Literal, get_args

from pydantic import BaseModel

from services.common import reading, vocabulary
from services.common.contracts import StudyResult
from services.common.fhir import codes
from services.gateway.privacy import Pseudonymizer, age_at, scrub_text

TIME_POINT_ORDER = {tp: i for i, tp in enumerate(vocabulary.TIME_POINT_CODES)}
# Codes of other systems that mean one of ours.
ALIASES: dict[tuple[str, str], str] = {
    **{alias: p.code.value for p in vocabulary.PROMS.values() for alias in p.aliases},
    **{e.coding: e.code for e in vocabulary.EARLY_RESULTS.values() if e.system != codes.PROJECT},
}
INACTIVE_STATUSES = {"entered-in-error", "cancelled"}


# ---------------------------------------------------------------------------- output


ValueStatus = Literal[
    "ok", "needs_review", "accepted", "corrected", "rejected", "manual", "missing"
]
VALUE_STATUSES: tuple[str, ...] = get_args(ValueStatus)
REVIEWED: tuple[str, ...] = reading.REVIEWED
READ_REASONS = {"accepted": "accepted by a reader", "corrected": "corrected by a reader"}


class Value(BaseModel):
    value: float | None
    status: ValueStatus
    reason: str | None = None
    automatic: float | None = None  # the automatic value when a reader's read decided


class KeyImage(BaseModel):
    name: str
    url: str


class StudyRef(BaseModel):
    slot: str  # "pre", "post-1", "post-2", ... or "other-1" (stable within a case)
    study: str  # StudyInstanceUID (identified) or a pseudonym
    study_date: date | None
    modality: str | None
    interval_days: int | None  # days from surgery (negative before)
    label: str  # "baseline" or the nearest time point
    analysis_state: str
    result_status: str | None  # ok | needs_review | failed
    algorithm_version: str | None
    key_images: list[KeyImage]
    sr_sop_instance_uid: str | None  # identified views only
    warnings: list[str]


class PostValue(BaseModel):
    slot: str
    label: str
    interval_days: int | None
    value: Value
    change: float | None
    change_percent: float | None


class MetricRow(BaseModel):
    quantity: str
    unit: str
    level: str
    side: str | None
    operated: bool
    pre: Value
    post: list[PostValue]


class ImagingSection(BaseModel):
    modality: str | None
    pre: StudyRef | None
    post: list[StudyRef]
    other: list[StudyRef]
    metrics: list[MetricRow]
    # Where the retrospective retrieval from the PACS stands for this patient (found,
    # retrieving, retrieved, analysed, missing pre-op, missing post-op, missing,
    # ambiguous, failed); None when the patient is not in a cohort retrieval.
    retrieval: str | None = None


class Surgeon(BaseModel):
    id: str
    display: str


class Surgery(BaseModel):
    date: date | None
    levels: list[str]
    surgeon: Surgeon | None
    group: str | None
    technique: str | None


class PatientView(BaseModel):
    id: str  # MRN (identified) or pseudonym
    name: str | None
    sex: str | None
    age_at_surgery: int | None
    date_shift_applied: bool


class ComplicationOut(BaseModel):
    type: str
    display: str
    grade: str | None
    timing: Literal["early", "late"] | None
    date: date | None
    days_after_surgery: int | None


class PromPoint(BaseModel):
    time_point: str
    date: date | None
    value: float
    change: float | None
    mcid_reached: bool | None


class PromSeries(BaseModel):
    code: str
    display: str
    unit: str
    better: str
    mcid: float
    baseline: float | None
    points: list[PromPoint]


class EarlyValue(BaseModel):
    code: str
    time_point: str | None
    value: float


class EarlyResults(BaseModel):
    pain: list[EarlyValue]
    analgesic_mme: list[EarlyValue]
    length_of_stay_days: float | None
    blood_loss_ml: float | None


class Case(BaseModel):
    case_id: str
    identified: bool
    patient: PatientView
    surgery: Surgery
    imaging: ImagingSection
    complications: list[ComplicationOut]
    early: EarlyResults
    proms: list[PromSeries]
    warnings: list[str]

    def primary_pair(self) -> tuple[str, str | None]:
        """(quantity, reason): reason is None when pre and first post exist for it."""
        group = vocabulary.GROUPS.get(self.surgery.group or "")
        if group is None:
            return "", "the surgery has no study group"
        modality, primary = group.modality, group.primary
        if self.imaging.pre is None:
            return primary, f"no pre-operative {modality}"
        if not self.imaging.post:
            return primary, f"no post-operative {modality}"
        rows = [r for r in self.imaging.metrics if r.quantity == primary and r.operated]
        if not rows:
            return primary, f"no {primary} at the operated levels"
        if not any(r.pre.value is not None and r.post and r.post[0].value.value for r in rows):
            pre, post = self.imaging.pre, self.imaging.post[0]
            notes = [*pre.warnings, *post.warnings]
            detail = notes[0] if notes else f"analysis {pre.analysis_state}/{post.analysis_state}"
            return primary, f"no usable pre/post pair at the operated levels ({detail})"
        return primary, None


# ----------------------------------------------------------------------------- input


@dataclass
class ClinicalRecord:
    """What the outcomes service holds about one index surgery."""

    procedure: dict[str, Any]
    patient: dict[str, Any] | None
    surgeon: dict[str, Any] | None
    observations: list[dict[str, Any]]


@dataclass(frozen=True)
class View:
    """Who is looking: identified (clinician, integration) or pseudonymised (researcher)."""

    identified: bool
    pseudonymizer: Pseudonymizer | None
    mrn_system: str
    key_image_url: Callable[[str, str, str], str]  # (case_id, slot, name) -> URL

    def __post_init__(self) -> None:
        if not self.identified and self.pseudonymizer is None:
            raise ValueError("a pseudonymised view needs a pseudonymizer")


# --------------------------------------------------------------------------- helpers


def _project_code(concept: dict[str, Any] | None) -> str | None:
    for coding in (concept or {}).get("coding", []):
        system, code = coding.get("system"), coding.get("code")
        if system == codes.PROJECT:
            return str(code)
        if (system, code) in ALIASES:
            return ALIASES[(system, code)]
    return None


def _codes(concepts: Iterable[dict[str, Any]]) -> list[str]:
    return [c for c in (_project_code(x) for x in concepts) if c]


def parse_fhir_datetime(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time())
        return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        return None


def _dicom_datetime(day: str | None, clock: str | None) -> tuple[date | None, time | None]:
    if not day or len(day) != 8 or not day.isdigit():
        return None, None
    try:
        d = date(int(day[:4]), int(day[4:6]), int(day[6:]))
    except ValueError:
        return None, None
    t = None
    if clock and len(clock) >= 4 and clock[:4].isdigit():
        try:
            t = time(int(clock[:2]), int(clock[2:4]), int(clock[4:6] or 0))
        except ValueError:
            t = None
    return d, t


def interval_label(days: int) -> str:
    """The protocol time point of a day after surgery: the one whose window holds it (the
    nearest nominal day, on a log scale, where windows meet), else the nearest one."""
    if days <= 0:
        return "baseline"
    after = [tp for tp in vocabulary.TIME_POINTS if tp.day is not None]
    inside = [tp for tp in after if tp.window[0] <= days <= tp.window[1]]
    nearest = min(
        inside or after,
        key=lambda tp: abs(math.log(days) - math.log(tp.day or 1)),
    )
    return nearest.code


def _time_point(resource: dict[str, Any]) -> str | None:
    for ext in resource.get("extension", []):
        if ext.get("url") == codes.TIME_POINT_EXTENSION:
            code = (ext.get("valueCoding") or {}).get("code")
            return str(code) if code else None
    return None


def _quantity(resource: dict[str, Any]) -> float | None:
    value = (resource.get("valueQuantity") or {}).get("value")
    return float(value) if isinstance(value, int | float) else None


def _component(resource: dict[str, Any], code: str) -> str | None:
    for component in resource.get("component", []):
        if _project_code(component.get("code")) == code:
            return _project_code(component.get("valueCodeableConcept"))
    return None


def _mrn(patient: dict[str, Any] | None, system: str) -> str | None:
    identifiers = (patient or {}).get("identifier", [])
    for ident in identifiers:
        if ident.get("system") == system and ident.get("value"):
            return str(ident["value"])
    for ident in identifiers:
        types = (ident.get("type") or {}).get("coding", [])
        if any(c.get("code") == "MR" for c in types) and ident.get("value"):
            return str(ident["value"])
    return None


def _person_name(resource: dict[str, Any] | None) -> str | None:
    names = (resource or {}).get("name") or []
    if not names:
        return None
    name = names[0]
    parts = [*name.get("prefix", []), *name.get("given", []), name.get("family", "")]
    return " ".join(p for p in parts if p) or name.get("text")


# ------------------------------------------------------------------------- the build


def surgery_time(record: ClinicalRecord) -> datetime | None:
    """When the index surgery was performed (``performedDateTime``, else the period's start)."""
    procedure = record.procedure
    when = parse_fhir_datetime(procedure.get("performedDateTime"))
    if when is None:
        when = parse_fhir_datetime((procedure.get("performedPeriod") or {}).get("start"))
    return when


def mrn_of(record: ClinicalRecord, mrn_system: str) -> str | None:
    """The patient's MRN (the DICOM PatientID the imaging service files studies under)."""
    return _mrn(record.patient, mrn_system)


class _Builder:
    def __init__(
        self,
        record: ClinicalRecord,
        studies: list[StudyResult],
        view: View,
        retrieval: str | None = None,
    ) -> None:
        self.record, self.studies, self.view = record, studies, view
        self.retrieval = retrieval
        self.procedure_id = str(record.procedure.get("id"))
        # Researchers see a keyed pseudonym: the EHR's Procedure id links back to the record.
        self.case_id = (
            self.procedure_id
            if view.identified or view.pseudonymizer is None
            else view.pseudonymizer.case(self.procedure_id)
        )
        self.warnings: list[str] = []
        self.surgery_at = surgery_time(record)
        self.surgery_day = self.surgery_at.date() if self.surgery_at else None
        mrn = mrn_of(record, view.mrn_system) or ""
        self.mrn = mrn
        self.shift = 0
        if not view.identified:
            assert view.pseudonymizer is not None
            self.shift = view.pseudonymizer.shift_days(mrn, view.mrn_system)

    def out_date(self, day: date | None) -> date | None:
        if day is None:
            return None
        return day if self.view.identified else date.fromordinal(day.toordinal() + self.shift)

    def days_after(self, day: date | None) -> int | None:
        if day is None or self.surgery_day is None:
            return None
        return (day - self.surgery_day).days

    # -- parts

    def patient(self) -> PatientView:
        patient = self.record.patient or {}
        birth = parse_fhir_datetime(patient.get("birthDate"))
        age = (
            age_at(birth.date() if birth else None, self.surgery_day) if self.surgery_day else None
        )
        if self.view.identified:
            ident = self.mrn or str(patient.get("id", ""))
            return PatientView(
                id=ident,
                name=_person_name(patient),
                sex=patient.get("gender"),
                age_at_surgery=age,
                date_shift_applied=False,
            )
        assert self.view.pseudonymizer is not None
        return PatientView(
            id=self.view.pseudonymizer.patient(self.mrn, self.view.mrn_system),
            name=None,
            sex=patient.get("gender"),
            age_at_surgery=age,
            date_shift_applied=True,
        )

    def surgery(self) -> Surgery:
        procedure = self.record.procedure
        group = next(
            (c for c in _codes(procedure.get("reasonCode", [])) if c in vocabulary.GROUPS), None
        )
        if group is None:
            self.warnings.append("the surgery has no study group (Procedure.reasonCode)")
        levels = sorted(
            (c for c in _codes(procedure.get("bodySite", [])) if c in vocabulary.LEVELS),
            key=vocabulary.LEVELS.index,
        )
        techniques = [
            str(coding.get("code"))
            for coding in (procedure.get("code") or {}).get("coding", [])
            if coding.get("system") == codes.PROJECT
            and getattr(codes.PROJECT_CODES.get(coding.get("code", "")), "group", "") == "technique"
        ]
        surgeon = None
        performers = procedure.get("performer") or []
        reference = ((performers[0].get("actor") or {}).get("reference")) if performers else None
        if reference:
            if self.view.identified:
                display = _person_name(self.record.surgeon) or reference
                surgeon = Surgeon(id=reference, display=display)
            else:
                assert self.view.pseudonymizer is not None
                alias = self.view.pseudonymizer.surgeon(reference)
                surgeon = Surgeon(id=alias, display=alias)
        if self.surgery_day is None:
            self.warnings.append("the surgery has no date; imaging cannot be paired")
        return Surgery(
            date=self.out_date(self.surgery_day),
            levels=levels,
            surgeon=surgeon,
            group=group,
            technique=techniques[0] if techniques else None,
        )

    def _study_ref(self, study: StudyResult, slot: str) -> StudyRef:
        day, _ = _dicom_datetime(study.study_date, study.study_time)
        result = study.result
        uid = study.study_instance_uid
        days = self.days_after(day)
        warnings = list(result.warnings) if result else []
        if study.analysis_state == "failed":
            warnings.append("the analysis failed")
        if not self.view.identified:  # imaging's messages may quote series UIDs or dates
            warnings = [scrub_text(w) for w in warnings]
        names = [k.name for k in result.key_images] if result else []
        if self.view.identified:
            shown = uid
        else:
            assert self.view.pseudonymizer is not None
            shown = self.view.pseudonymizer.study(uid)
        return StudyRef(
            slot=slot,
            study=shown,
            study_date=self.out_date(day),
            modality=(result.modality if result else None) or ",".join(study.modalities) or None,
            interval_days=days,
            label="baseline" if days is None or days <= 0 else interval_label(days),
            analysis_state=study.analysis_state,
            result_status=result.status if result else None,
            algorithm_version=result.algorithm.version if result else None,
            key_images=[
                KeyImage(name=n, url=self.view.key_image_url(self.case_id, slot, n)) for n in names
            ],
            sr_sop_instance_uid=result.sr.sop_instance_uid
            if self.view.identified and result and result.sr
            else None,
            warnings=warnings,
        )

    def pair_studies(
        self, modality: str | None
    ) -> tuple[StudyResult | None, list[StudyResult], list[StudyResult]]:
        """(pre, posts, others) among the patient's studies."""
        if self.surgery_at is None or modality is None:
            return None, [], list(self.studies)
        pre: list[tuple[datetime, StudyResult]] = []
        post: list[tuple[datetime, StudyResult]] = []
        other: list[StudyResult] = []
        surgery_has_time = (
            len(self.record.procedure.get("performedDateTime") or "") > 10
            or self.surgery_at.time() != time()
        )
        for study in self.studies:
            if modality not in study.modalities:
                other.append(study)
                continue
            day, clock = _dicom_datetime(study.study_date, study.study_time)
            if day is None:
                self.warnings.append("a study without a StudyDate was left out of the pairing")
                other.append(study)
                continue
            when = datetime.combine(day, clock or time())
            if day < self.surgery_at.date():
                pre.append((when, study))
            elif day > self.surgery_at.date():
                post.append((when, study))
            elif clock is not None and surgery_has_time:
                (pre if when < self.surgery_at else post).append((when, study))
            else:
                self.warnings.append(
                    f"a {modality} study on the day of surgery has no time to place it before "
                    "or after; left out of the pairing"
                )
                other.append(study)
        pre.sort(key=lambda p: p[0])
        post.sort(key=lambda p: p[0])
        # Older pre-operative studies are listed with the others.
        other.extend(s for _, s in pre[:-1])
        return (pre[-1][1] if pre else None), [s for _, s in post], other

    @staticmethod
    def _values(study: StudyResult | None) -> dict[tuple[str, str, str | None], Value]:
        """Each value of the study as the cohort counts it (:mod:`services.common.reading`);
        the reader's identity stays in imaging."""
        if study is None:
            return {}
        measured = study.result.measurements if study.result else []
        out: dict[tuple[str, str, str | None], Value] = {}
        set_id = study.result.measurement_set_id if study.result else None
        decisions = reading.decide(measured, study.manual_measurements, set_id)
        for key, decided in decisions.items():
            read, state = decided.read, decided.state
            if read is None:
                out[key] = Value(
                    value=decided.value,
                    status="missing" if state == "not_measurable" else state,
                    reason=decided.automatic.reason if decided.automatic else None,
                )
                continue
            if state == "rejected":
                why = vocabulary.REJECT_REASONS.get(read.reason or "", "rejected")
                reason = f"rejected: {why}"
            else:
                reason = READ_REASONS.get(state, "a reader's measurement")
            out[key] = Value(
                value=decided.value,
                status=state,
                reason=reason,
                automatic=decided.automatic_value,
            )
        return out

    def imaging(self, group_code: str | None, levels: list[str]) -> ImagingSection:
        group = vocabulary.GROUPS.get(group_code or "")
        modality = group.modality if group else None
        quantities: tuple[str, ...] = group.quantities if group else ()
        pre, posts, others = self.pair_studies(modality)
        pre_ref = self._study_ref(pre, "pre") if pre else None
        post_refs = [self._study_ref(s, f"post-{i}") for i, s in enumerate(posts, start=1)]
        other_refs = [self._study_ref(s, f"other-{i}") for i, s in enumerate(others, start=1)]
        pre_values = self._values(pre)
        post_values = [self._values(s) for s in posts]
        keys = {k for k in pre_values if k[0] in quantities}
        for values in post_values:
            keys |= {k for k in values if k[0] in quantities}
        for level in levels:
            for quantity in quantities:
                per_side = vocabulary.QUANTITIES[vocabulary.QuantityName(quantity)].per_side
                for side in vocabulary.SIDES if per_side else (None,):
                    keys.add((quantity, level, side))
        missing = Value(value=None, status="missing")
        rows = []
        for quantity, level, side in sorted(
            keys,
            key=lambda k: (
                quantities.index(k[0]),
                vocabulary.LEVELS.index(k[1]),
                vocabulary.SIDES.index(k[2] or "left"),
            ),
        ):
            before = pre_values.get((quantity, level, side), missing)
            after = []
            for ref, values in zip(post_refs, post_values, strict=True):
                value = values.get((quantity, level, side), missing)
                change = pct = None
                if before.value is not None and value.value is not None:
                    change = round(value.value - before.value, 3)
                    pct = round(100 * change / before.value, 2) if before.value else None
                after.append(
                    PostValue(
                        slot=ref.slot,
                        label=ref.label,
                        interval_days=ref.interval_days,
                        value=value,
                        change=change,
                        change_percent=pct,
                    )
                )
            rows.append(
                MetricRow(
                    quantity=quantity,
                    unit=vocabulary.QUANTITIES[vocabulary.QuantityName(quantity)].unit,
                    level=level,
                    side=side,
                    operated=level in levels,
                    pre=before,
                    post=after,
                )
            )
        return ImagingSection(
            modality=modality,
            pre=pre_ref,
            post=post_refs,
            other=other_refs,
            metrics=rows,
            retrieval=self.retrieval,
        )

    def _active(self) -> list[dict[str, Any]]:
        own = f"Procedure/{self.procedure_id}"
        out = []
        for obs in self.record.observations:
            if obs.get("status") in INACTIVE_STATUSES:
                continue
            part_of = [p.get("reference") for p in obs.get("partOf") or []]
            if (
                part_of
                and own not in part_of
                and any(str(p).startswith("Procedure/") for p in part_of)
            ):
                continue  # belongs to another surgery of the same patient
            out.append(obs)
        return out

    def complications(self, observations: list[dict[str, Any]]) -> list[ComplicationOut]:
        out = []
        for obs in observations:
            if "complication" not in _codes(obs.get("category", [])):
                continue
            kind = _project_code(obs.get("code")) or "other-complication"
            if obs.get("valueBoolean") is False:
                continue  # explicitly absent
            onset = parse_fhir_datetime(obs.get("effectiveDateTime"))
            days = self.days_after(onset.date() if onset else None)
            timing = _component(obs, "complication-timing")
            if timing not in ("early", "late"):
                timing = (
                    None
                    if days is None
                    else ("early" if days <= vocabulary.EARLY_LIMIT_DAYS else "late")
                )
            grade = _component(obs, "clavien-dindo-grade")
            concept = codes.PROJECT_CODES.get(kind)
            out.append(
                ComplicationOut(
                    type=kind,
                    display=concept.display if concept else kind,
                    grade=grade[3:] if grade and grade.startswith("CD-") else grade,
                    timing=timing,
                    date=self.out_date(onset.date() if onset else None),
                    days_after_surgery=days,
                )
            )
        out.sort(key=lambda c: (c.days_after_surgery is None, c.days_after_surgery or 0))
        return out

    def _point_of(self, obs: dict[str, Any]) -> tuple[str | None, date | None]:
        when = parse_fhir_datetime(obs.get("effectiveDateTime"))
        day = when.date() if when else None
        tp = _time_point(obs)
        if tp is None and day is not None and self.surgery_day is not None:
            days = (day - self.surgery_day).days
            tp = "baseline" if days <= 0 else interval_label(days)
        return tp, day

    def proms(self, observations: list[dict[str, Any]]) -> list[PromSeries]:
        latest: dict[tuple[str, str], tuple[date | None, float]] = {}
        for obs in observations:
            code = _project_code(obs.get("code"))
            value = _quantity(obs)
            if code not in vocabulary.PROMS or value is None:
                continue
            tp, day = self._point_of(obs)
            if tp is None:
                continue
            key = (code, tp)
            if key not in latest or (day or date.min) >= (latest[key][0] or date.min):
                latest[key] = (day, value)
        series = []
        for prom in vocabulary.PROMS.values():
            code = prom.code.value
            points = sorted(
                ((tp, d, v) for (c, tp), (d, v) in latest.items() if c == code),
                key=lambda p: TIME_POINT_ORDER.get(p[0], 99),
            )
            if not points:
                continue
            baseline = next((v for tp, _, v in points if tp == "baseline"), None)
            out_points = []
            for tp, day, value in points:
                change = mcid = None
                if baseline is not None and tp != "baseline":
                    change = round(value - baseline, 3)
                    gain = -change if prom.better == "lower" else change
                    mcid = gain >= prom.mcid - 1e-9
                out_points.append(
                    PromPoint(
                        time_point=tp,
                        date=self.out_date(day),
                        value=value,
                        change=change,
                        mcid_reached=mcid,
                    )
                )
            series.append(
                PromSeries(
                    code=code,
                    display=prom.display,
                    unit=prom.scale,
                    better=prom.better,
                    mcid=prom.mcid,
                    baseline=baseline,
                    points=out_points,
                )
            )
        return series

    def early(self, observations: list[dict[str, Any]]) -> EarlyResults:
        pain, mme = [], []
        los = blood = None
        for obs in observations:
            code = _project_code(obs.get("code"))
            value = _quantity(obs)
            if value is None:
                continue
            tp, _ = self._point_of(obs)
            if code in vocabulary.PAIN_SCORES:
                if tp in vocabulary.EARLY_TIME_POINTS:
                    pain.append(EarlyValue(code=code, time_point=tp, value=value))
            elif code == "analgesic-mme":
                mme.append(EarlyValue(code=code, time_point=tp, value=value))
            elif code == "length-of-stay":
                los = value
            elif code == "blood-loss":
                blood = value
        order = {tp: i for i, tp in enumerate(vocabulary.EARLY_TIME_POINTS)}
        pain.sort(key=lambda e: (e.code, order.get(e.time_point or "", 9)))
        mme.sort(key=lambda e: order.get(e.time_point or "", 9))
        return EarlyResults(
            pain=pain, analgesic_mme=mme, length_of_stay_days=los, blood_loss_ml=blood
        )

    def build(self) -> Case:
        patient = self.patient()
        surgery = self.surgery()
        imaging = self.imaging(surgery.group, surgery.levels)
        observations = self._active()
        return Case(
            case_id=self.case_id,
            identified=self.view.identified,
            patient=patient,
            surgery=surgery,
            imaging=imaging,
            complications=self.complications(observations),
            early=self.early(observations),
            proms=self.proms(observations),
            warnings=self.warnings
            if self.view.identified
            else [scrub_text(w) for w in self.warnings],
        )


def build_case(
    record: ClinicalRecord,
    studies: list[StudyResult],
    view: View,
    retrieval: str | None = None,
) -> Case:
    """Assemble one case.

    Parameters
    ----------
    record
        The Procedure, its Patient and surgeon, and the patient's Observations.
    studies
        The patient's studies as the imaging service's ``/api/results`` lists them.
    view
        Identified or pseudonymised.
    retrieval
        The patient's cohort retrieval status in the imaging service, if any.

    Returns
    -------
    Case
        Everything in the viewer's frame (pseudonyms and shifted dates for researchers).
    """
    return _Builder(record, studies, view, retrieval).build()
