"""A fixed, seeded cohort of cases for the statistical report's tests (no servers).

The clinical side comes from the demo's plans (surgeons, levels, complications, early
results, PROMs to 24 months) written as the FHIR resources the EHR would post; the imaging
side is a pre- and a post-operative measurement set per patient at the operated levels,
drawn from a seeded generator, with the defects a real cohort has: a patient without
imaging, one without a post-operative study, a level flagged ``needs_review``, a patient
whose follow-up stops at 3 months, a surgeon with a single case.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np

from services.common.contracts import StudyResult
from services.common.fhir import builders, codes
from services.gateway.cases import Case, ClinicalRecord, View, build_case
from services.gateway.privacy import Pseudonymizer
from tests.gateway.test_cases import study
from tools.demo.cohort import PROM_DAYS, SURGEONS, PatientPlan, plan_patient

IDENTIFIED = View(True, None, codes.MRN_SYSTEM_DEFAULT, lambda c, s, n: f"/{c}/{s}/{n}")
RESEARCHER = View(
    False, Pseudonymizer(b"r" * 32), codes.MRN_SYSTEM_DEFAULT, IDENTIFIED.key_image_url
)
LONE_SURGEON = ("SURG-009", "Nakamura", "Ken")


def _observations(plan: PatientPlan, patient: str, procedure: str) -> list[dict[str, Any]]:
    surgery = plan.surgery_date
    out = [
        builders.measurement(
            patient,
            "59770-8",
            round(plan.blood_loss),
            effective=surgery.isoformat(),
            system=codes.LOINC,
            category="early-postop",
            procedure_ref=procedure,
        ),
        builders.measurement(
            patient,
            "length-of-stay",
            plan.length_of_stay,
            effective=surgery.isoformat(),
            category="early-postop",
            procedure_ref=procedure,
        ),
    ]
    for day, mme in enumerate(plan.mme, start=1):
        out.append(
            builders.measurement(
                patient,
                "analgesic-mme",
                round(mme, 1),
                effective=(surgery + timedelta(days=day)).isoformat(),
                time_point=f"day-{day}",
                category="early-postop",
                procedure_ref=procedure,
            )
        )
    for kind, grade, day in plan.complications:
        out.append(
            builders.complication(
                patient,
                procedure,
                kind=kind,
                grade=grade,
                onset=(surgery + timedelta(days=day)).isoformat(),
                timing="early" if day <= 30 else "late",
            )
        )
    for code, values in plan.proms.items():
        for tp, value in values.items():
            out.append(
                builders.measurement(
                    patient,
                    code,
                    value,
                    effective=(surgery + timedelta(days=PROM_DAYS[tp])).isoformat(),
                    time_point=tp,
                )
            )
    return out


def _imaging(plan: PatientPlan, rng: np.random.Generator, index: int) -> list[StudyResult]:
    modality = plan.modality
    pre: dict[tuple[str, str, str | None], float | None] = {}
    post: dict[tuple[str, str, str | None], float | None] = {}
    for level in plan.levels:
        if modality == "CT":
            for side in ("left", "right"):
                before = float(rng.normal(13.0, 1.5))
                pre[("foraminal_height", level, side)] = before
                post[("foraminal_height", level, side)] = before + float(rng.normal(3.5, 1.2))
            height = float(rng.normal(7.0, 1.0))
            pre[("disc_height", level, None)] = height
            post[("disc_height", level, None)] = height + float(rng.normal(3.0, 0.8))
        else:
            area = float(rng.normal(70.0, 12.0))
            pre[("dural_sac_area", level, None)] = area
            post[("dural_sac_area", level, None)] = area * float(rng.normal(2.0, 0.35))
            volume = float(rng.normal(4500.0, 300.0))
            pre[("dural_sac_volume", level, None)] = volume
            post[("dural_sac_volume", level, None)] = volume + float(rng.normal(1800.0, 250.0))
    if index == 5:  # a level the reader must look at
        key = next(iter(post))
        post[key] = None
    day = f"{plan.pre_imaging_date:%Y%m%d}"
    after = f"{plan.post_imaging_date:%Y%m%d}"
    studies = [study(f"1.2.{index}.1", day, pre, modality=modality)]
    if index != 7:  # no post-operative study
        studies.append(study(f"1.2.{index}.2", after, post, modality=modality))
    return studies


def cohort(patients: int = 24, *, view: View = IDENTIFIED) -> tuple[list[Case], dict[str, int]]:
    """The cases (in ``view``) and each case's surgeon case number (by case id)."""
    rng = np.random.default_rng(17)
    records: list[tuple[PatientPlan, ClinicalRecord, list[StudyResult]]] = []
    for index in range(patients):
        plan = plan_patient(index)
        surgeon = SURGEONS[plan.surgeon]
        if index == patients - 1:
            surgeon = LONE_SURGEON
        if index == 3:  # follow-up stops at 3 months
            plan.proms = {
                code: {tp: v for tp, v in by_tp.items() if PROM_DAYS[tp] <= 91}
                for code, by_tp in plan.proms.items()
            }
        patient_ref, procedure_id = f"Patient/pat-{plan.mrn}", f"proc-{index:03d}"
        practitioner = builders.practitioner(*surgeon) | {"id": surgeon[0].lower()}
        procedure = builders.procedure(
            patient_ref,
            f"Practitioner/{practitioner['id']}",
            group=plan.group,
            levels=plan.levels,
            performed=f"{plan.surgery_date.isoformat()}T09:00:00Z",
            technique=plan.technique,
        ) | {"id": procedure_id}
        patient = builders.patient(
            plan.mrn,
            family=plan.family,
            given=plan.given,
            gender=plan.gender,
            birth_date=plan.birth_date.isoformat(),
        ) | {"id": f"pat-{plan.mrn}"}
        observations = _observations(plan, patient_ref, f"Procedure/{procedure_id}")
        studies = [] if index == 9 else _imaging(plan, rng, index)  # 9: no imaging at all
        records.append(
            (plan, ClinicalRecord(procedure, patient, practitioner, observations), studies)
        )
    # The surgeon's chronological case number, from the real surgery dates.
    numbers: dict[str, int] = {}
    ordered = sorted(
        records,
        key=lambda r: (str(r[1].surgeon and r[1].surgeon["id"]), r[0].surgery_date, r[0].index),
    )
    counter: dict[str, int] = {}
    cases = []
    built = {id(r[1]): build_case(r[1], r[2], view) for r in records}
    for _, record, _ in ordered:
        surgeon_id = str(record.surgeon and record.surgeon["id"])
        counter[surgeon_id] = counter.get(surgeon_id, 0) + 1
        numbers[built[id(record)].case_id] = counter[surgeon_id]
    cases = [built[id(r[1])] for r in records]
    return cases, numbers
