"""Builders of the study's FHIR resources, as an EHR integration (or the demo) posts
them. Each returns plain FHIR JSON using the codes of :mod:`codes`."""

from __future__ import annotations

from typing import Any

from services.common.fhir import codes


def coding(code: str, system: str = codes.PROJECT) -> dict[str, Any]:
    out: dict[str, Any] = {"system": system, "code": code}
    concept = codes.PROJECT_CODES.get(code) if system == codes.PROJECT else None
    if concept is not None:
        out["display"] = concept.display
    return out


def concept(code: str, system: str = codes.PROJECT) -> dict[str, Any]:
    return {"coding": [coding(code, system)]}


def patient(
    mrn: str,
    *,
    system: str = codes.MRN_SYSTEM_DEFAULT,
    family: str = "Doe",
    given: str = "Jane",
    gender: str = "female",
    birth_date: str = "1960-01-01",
) -> dict[str, Any]:
    return placeholder_patient(mrn, system=system) | {
        "name": [{"family": family, "given": [given]}],
        "gender": gender,
        "birthDate": birth_date,
    }


def placeholder_patient(mrn: str, *, system: str = codes.MRN_SYSTEM_DEFAULT) -> dict[str, Any]:
    """A Patient known only by its MRN: what a service that does not own the demographics
    (the imaging service) creates when the EHR has not registered the patient yet."""
    return {
        "resourceType": "Patient",
        "identifier": [
            {
                "system": system,
                "value": mrn,
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                    ]
                },
            }
        ],
    }


def practitioner(identifier: str, family: str, given: str) -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.6", "value": identifier}],
        "name": [{"family": family, "given": [given], "prefix": ["Dr"]}],
    }


def procedure(
    patient_ref: str,
    surgeon_ref: str,
    *,
    group: str,
    levels: list[str],
    performed: str,
    technique: str = "mis-tlif",
    encounter_ref: str | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Procedure",
        "status": "completed",
        "code": {"coding": [coding("mis-lumbar-fusion"), coding(technique)]},
        "subject": {"reference": patient_ref},
        "performedDateTime": performed,
        "performer": [{"actor": {"reference": surgeon_ref}}],
        "reasonCode": [concept(group)],
        "bodySite": [concept(level) for level in levels],
    }
    if encounter_ref:
        resource["encounter"] = {"reference": encounter_ref}
    return resource


def encounter(patient_ref: str, *, start: str, end: str | None) -> dict[str, Any]:
    period = {"start": start} | ({"end": end} if end else {})
    return {
        "resourceType": "Encounter",
        "status": "finished" if end else "in-progress",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "IMP",
            "display": "inpatient encounter",
        },
        "subject": {"reference": patient_ref},
        "period": period,
    }


def _time_point(time_point: str | None) -> list[dict[str, Any]]:
    if time_point is None:
        return []
    return [{"url": codes.TIME_POINT_EXTENSION, "valueCoding": coding(time_point)}]


def measurement(
    patient_ref: str,
    code: str,
    value: float,
    *,
    effective: str,
    time_point: str | None = None,
    system: str = codes.PROJECT,
    category: str = "prom",
    procedure_ref: str | None = None,
) -> dict[str, Any]:
    """A quantitative Observation (PROM, early result, imaging metric)."""
    measure = codes.MEASURE_BY_CODE[(system, code)]
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [concept(category)],
        "code": {"coding": [coding(code, system)], "text": measure.display},
        "subject": {"reference": patient_ref},
        "effectiveDateTime": effective,
        "valueQuantity": {
            "value": value,
            "unit": measure.unit,
            "system": codes.UCUM,
            "code": measure.ucum,
        },
    }
    if time_point:
        resource["extension"] = _time_point(time_point)
    if procedure_ref:
        resource["partOf"] = [{"reference": procedure_ref}]
    return resource


def complication(
    patient_ref: str, procedure_ref: str, *, kind: str, grade: str, onset: str, timing: str
) -> dict[str, Any]:
    """One complication: type as code, Clavien-Dindo grade and timing as components."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [concept("complication")],
        "code": concept(kind),
        "subject": {"reference": patient_ref},
        "partOf": [{"reference": procedure_ref}],
        "effectiveDateTime": onset,
        "valueBoolean": True,
        "component": [
            {"code": concept("clavien-dindo-grade"), "valueCodeableConcept": concept(grade)},
            {"code": concept("complication-timing"), "valueCodeableConcept": concept(timing)},
        ],
    }


def questionnaire_response(
    questionnaire: str,
    patient_ref: str,
    answers: list[tuple[str, int | None]],
    *,
    authored: str,
    time_point: str | None = None,
) -> dict[str, Any]:
    """A QuestionnaireResponse of integer answers (``None``: the item was skipped)."""
    items = []
    for link_id, value in answers:
        item: dict[str, Any] = {"linkId": link_id}
        if value is not None:
            item["answer"] = [{"valueInteger": value}]
        items.append(item)
    resource: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": questionnaire,
        "status": "completed",
        "subject": {"reference": patient_ref},
        "authored": authored,
        "item": items,
    }
    if time_point:
        resource["extension"] = _time_point(time_point)
    return resource


def odi_response(
    patient_ref: str, answers: list[int | None], *, authored: str, time_point: str | None = None
) -> dict[str, Any]:
    """An ODI QuestionnaireResponse; ``None`` answers are skipped sections."""
    return questionnaire_response(
        codes.ODI_QUESTIONNAIRE,
        patient_ref,
        [(f"odi-{n}", value) for n, value in enumerate(answers, start=1)],
        authored=authored,
        time_point=time_point,
    )


def imaging_study(
    patient_ref: str,
    study_instance_uid: str,
    *,
    started: str,
    modality: str,
    description: str | None = None,
    series: int = 1,
    instances: int = 0,
) -> dict[str, Any]:
    """The ImagingStudy the imaging service posts for a measured DICOM study."""
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "status": "available",
        "identifier": [
            {"system": codes.DICOM_UID_SYSTEM, "value": f"urn:oid:{study_instance_uid}"}
        ],
        "subject": {"reference": patient_ref},
        "started": started,
        "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": modality}],
        "numberOfSeries": series,
        "numberOfInstances": instances,
    }
    if description:
        resource["description"] = description
    return resource


def imaging_metric(
    patient_ref: str,
    quantity: str,
    value: float,
    *,
    level: str | None,
    side: str | None,
    imaging_study_ref: str,
    effective: str,
    status: str = "final",
    algorithm: str | None = None,
    performer: str | None = None,
) -> dict[str, Any]:
    """A decompression metric per level and side, derived from an ImagingStudy; the
    ``performer`` is the reader who reviewed it (by name: readers are staff users)."""
    resource = measurement(
        patient_ref, quantity, value, effective=effective, category="imaging-metric"
    )
    resource["status"] = status
    resource["derivedFrom"] = [{"reference": imaging_study_ref}]
    if level:
        resource["bodySite"] = concept(level)
    if side:
        resource["component"] = [{"code": concept("side"), "valueCodeableConcept": concept(side)}]
    if algorithm:
        resource["method"] = {"text": algorithm}
    if performer:
        resource["performer"] = [{"display": performer}]
    return resource
