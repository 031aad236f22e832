"""A synthetic study cohort (pure, seeded): patients, surgeries, complications, early
results and PROMs as FHIR resources, and the imaging each patient should have.

Used by the demo, the gateway's tests and the benchmarks. The numbers follow published
orders of magnitude for MIS lumbar fusion (ODI about 45 falling to about 20, leg pain
NRS about 7 falling to about 2.5, complications in about 15 % of patients, length of
stay 2-5 days), with noise, and some patients who do not improve. Nothing here claims to
be clinical truth; it is there to exercise the pipeline and the statistics.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np

from services.common import vocabulary
from services.common.fhir import builders, codes
from tools.phantom import PhantomSpec

SURGEONS = (
    ("SURG-001", "Moreau", "Claire"),
    ("SURG-002", "Okafor", "Daniel"),
    ("SURG-003", "Lindqvist", "Anna"),
)
FAMILY = ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand")
GIVEN = ("Louise", "Jules", "Emma", "Hugo", "Alice", "Louis", "Lina", "Arthur")
PROM_DAYS = {"baseline": -7, **vocabulary.TIME_POINT_DAYS}  # baseline: a week before surgery
FULL_SCHEDULE = ("baseline", "week-6", "month-3", "month-6", "month-12", "month-24")
PAIN_SCHEDULE = (
    "baseline",
    "day-1",
    "day-2",
    "week-6",
    "month-3",
    "month-6",
    "month-12",
    "month-24",
)
COMPLICATIONS = (
    ("dural-tear", "CD-I", 0),
    ("urinary-retention", "CD-I", 1),
    ("infection", "CD-II", 12),
    ("haematoma", "CD-IIIb", 2),
    ("neurological-deficit", "CD-II", 1),
    ("implant-malposition", "CD-IIIb", 60),
    ("thromboembolism", "CD-II", 9),
)


@dataclass
class PatientPlan:
    index: int
    mrn: str
    family: str
    given: str
    gender: str
    birth_date: date
    group: str  # foraminal-stenosis | central-stenosis
    levels: list[str]
    surgeon: int  # index into SURGEONS
    technique: str
    surgery_date: date
    severity: float  # stenosis severity of the pre-operative phantom, 0..1
    length_of_stay: int
    blood_loss: float
    mme: list[float]  # day-1, day-2, day-3
    complications: list[tuple[str, str, int]] = field(default_factory=list)  # kind, grade, day
    proms: dict[str, dict[str, float]] = field(default_factory=dict)  # code -> tp -> value

    @property
    def modality(self) -> str:
        return "CT" if self.group == "foraminal-stenosis" else "MR"

    @property
    def pre_imaging_date(self) -> date:
        return self.surgery_date - timedelta(days=14 + self.index % 20)

    @property
    def post_imaging_date(self) -> date:
        return self.surgery_date + timedelta(days=2)


def plan_patient(index: int, *, seed: int = 2026, start: date = date(2024, 1, 8)) -> PatientPlan:
    """One synthetic patient, deterministic in (index, seed)."""
    rng = np.random.default_rng([seed, index])
    group = vocabulary.GROUP_CODES[index % 2]
    levels = ["L4-L5"] if rng.random() < 0.7 else ["L4-L5", "L5-S1"]
    if rng.random() < 0.15:
        levels = ["L3-L4"]
    responder = rng.random() > 0.15
    plan = PatientPlan(
        index=index,
        mrn=f"MRN{100000 + index}",
        family=FAMILY[index % len(FAMILY)],
        given=GIVEN[(index // len(FAMILY)) % len(GIVEN)],
        gender="female" if rng.random() < 0.55 else "male",
        birth_date=date(1940, 1, 1) + timedelta(days=int(rng.integers(0, 365 * 40))),
        group=group,
        levels=levels,
        surgeon=int(rng.integers(0, len(SURGEONS))),
        technique="mis-tlif" if rng.random() < 0.8 else "mis-plif",
        surgery_date=start + timedelta(days=7 * index // 2 + int(rng.integers(0, 5))),
        severity=float(rng.uniform(0.45, 0.8)),
        length_of_stay=int(rng.choice([1, 2, 2, 3, 3, 3, 4, 5, 7])),
        blood_loss=float(np.clip(rng.normal(180, 80), 30, 900)),
        mme=[float(max(0.0, rng.normal(m, m / 3))) for m in (45, 30, 15)],
    )
    if rng.random() < 0.17:
        kind, grade, day = COMPLICATIONS[int(rng.integers(0, len(COMPLICATIONS)))]
        plan.complications.append((kind, grade, day + int(rng.integers(0, 3))))
    gain = 1.0 if responder else 0.15
    odi0 = float(np.clip(rng.normal(46, 12), 16, 90))
    back0 = float(np.clip(rng.normal(6.5, 1.5), 2, 10))
    leg0 = float(np.clip(rng.normal(7.2, 1.4), 3, 10))
    eq0 = float(np.clip(rng.normal(0.42, 0.15), -0.2, 0.85))
    recovery = {
        "baseline": 0.0,
        "day-1": 0.25,
        "day-2": 0.35,
        "week-6": 0.6,
        "month-3": 0.8,
        "month-6": 0.9,
        "month-12": 1.0,
        "month-24": 0.95,
    }
    for tp in PAIN_SCHEDULE:
        r = recovery[tp] * gain
        plan.proms.setdefault("back-pain-nrs", {})[tp] = _score(rng, back0 - 3.5 * r, 1.2, 0, 10)
        plan.proms.setdefault("leg-pain-nrs", {})[tp] = _score(rng, leg0 - 4.8 * r, 1.2, 0, 10)
    for tp in FULL_SCHEDULE:
        r = recovery[tp] * gain
        plan.proms.setdefault("odi", {})[tp] = _score(rng, odi0 - 26 * r, 6, 0, 100, step=2)
        plan.proms.setdefault("eq5d-index", {})[tp] = round(
            float(np.clip(eq0 + 0.3 * r + rng.normal(0, 0.06), -0.594, 1.0)), 3
        )
    return plan


def _score(
    rng: np.random.Generator, mean: float, sd: float, low: float, high: float, step: float = 1
) -> float:
    value = float(np.clip(rng.normal(mean, sd), low, high))
    return float(round(value / step) * step)


def surgeon_resources() -> list[dict[str, Any]]:
    return [builders.practitioner(i, family, given) for i, family, given in SURGEONS]


def transaction(plan: PatientPlan, surgeon_refs: list[str]) -> dict[str, Any]:
    """A FHIR transaction Bundle with everything the EHR knows about one patient.

    The Patient is a conditional create on its MRN, so posting it twice does not
    duplicate the patient.
    """
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    procedure_url = f"urn:uuid:{uuid.uuid4()}"
    encounter_url = f"urn:uuid:{uuid.uuid4()}"
    surgery = plan.surgery_date
    admitted = surgery - timedelta(days=1)
    patient = builders.patient(
        plan.mrn,
        family=plan.family,
        given=plan.given,
        gender=plan.gender,
        birth_date=plan.birth_date.isoformat(),
    )
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": patient_url,
            "resource": patient,
            "request": {
                "method": "POST",
                "url": "Patient",
                "ifNoneExist": f"identifier={codes.MRN_SYSTEM_DEFAULT}|{plan.mrn}",
            },
        },
        _post(
            encounter_url,
            builders.encounter(
                patient_url,
                start=admitted.isoformat(),
                end=(admitted + timedelta(days=plan.length_of_stay + 1)).isoformat(),
            ),
        ),
        _post(
            procedure_url,
            builders.procedure(
                patient_url,
                surgeon_refs[plan.surgeon],
                group=plan.group,
                levels=plan.levels,
                performed=f"{surgery.isoformat()}T09:00:00Z",
                technique=plan.technique,
                encounter_ref=encounter_url,
            ),
        ),
        _post(
            None,
            builders.measurement(
                patient_url,
                "59770-8",
                round(plan.blood_loss),
                effective=surgery.isoformat(),
                system=codes.LOINC,
                category="early-postop",
                procedure_ref=procedure_url,
            ),
        ),
    ]
    for day, mme in enumerate(plan.mme, start=1):
        entries.append(
            _post(
                None,
                builders.measurement(
                    patient_url,
                    "analgesic-mme",
                    round(mme, 1),
                    effective=(surgery + timedelta(days=day)).isoformat(),
                    time_point=f"day-{day}",
                    category="early-postop",
                    procedure_ref=procedure_url,
                ),
            )
        )
    for kind, grade, day in plan.complications:
        entries.append(
            _post(
                None,
                builders.complication(
                    patient_url,
                    procedure_url,
                    kind=kind,
                    grade=grade,
                    onset=(surgery + timedelta(days=day)).isoformat(),
                    timing="early" if day <= 30 else "late",
                ),
            )
        )
    for code, values in plan.proms.items():
        for tp, value in values.items():
            entries.append(
                _post(
                    None,
                    builders.measurement(
                        patient_url,
                        code,
                        value,
                        effective=(surgery + timedelta(days=PROM_DAYS[tp])).isoformat(),
                        time_point=tp,
                    ),
                )
            )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _post(full_url: str | None, resource: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }
    entry["fullUrl"] = full_url or f"urn:uuid:{uuid.uuid4()}"
    return entry


def phantom_specs(
    plan: PatientPlan,
    *,
    pixel_spacing: float | None = None,
    slice_spacing: float | None = None,
    mr_protocols: bool = False,
) -> tuple[PhantomSpec, PhantomSpec]:
    """The pre-operative (stenotic) and post-operative (decompressed) studies of a plan:
    the same anatomy (same seed), CT for foraminal and axial T2 MR for central stenosis.
    With ``mr_protocols``, every other MR patient is examined as most centres do: the axial
    T2 in angled blocks per disc plus a sagittal T2 (the others: one contiguous stack)."""
    ct = plan.modality == "CT"
    blocks = mr_protocols and not ct and plan.index % 4 == 1
    common: dict[str, Any] = {
        "modality": plan.modality,
        "pixel_spacing": pixel_spacing or (1.0 if ct else 0.8),
        "slice_spacing": slice_spacing or (1.0 if ct else 4.0),
        "stenosis": "foraminal" if ct else "central",
        "stenosis_levels": tuple(plan.levels),
        "severity": plan.severity,
        "seed": 1000 + plan.index,
        "patient_id": plan.mrn,
        **({"protocol": "blocks", "sagittal": True} if blocks else {}),
    }
    pre = PhantomSpec(**common, study_date=plan.pre_imaging_date.strftime("%Y%m%d"))
    post = PhantomSpec(**common, postop=True, study_date=plan.post_imaging_date.strftime("%Y%m%d"))
    return pre, post
