"""Metrics to the real outcomes FHIR server: conditional creates, amended updates, no
duplicates, whatever the order and repetition of the publications."""

from __future__ import annotations

import copy
from typing import Any

import httpx
from fhirpy import SyncFHIRClient

from services.common.auth import Authenticator, ServiceBearer
from services.common.contracts import AnalysisResult
from services.common.fhir import builders, codes
from services.imaging.results.to_fhir import FhirPublisher, StudyFacts
from services.imaging.runtime import FHIR_SCOPE
from tests.harness.outcomes import OutcomesServer

UID = "1.2.826.0.1.3680043.8.498.1234"
FACTS = StudyFacts(UID, "MRN777", "20260105", "101500", "CT", "CT LUMBAR SPINE", 1, 120)


def _result(fh_left: float, fh_right: float | None) -> AnalysisResult:
    def m(side: str, value: float | None) -> dict[str, Any]:
        return {
            "quantity": "foraminal_height",
            "level": "L4-L5",
            "level_index": 3,
            "side": side,
            "value": value,
            "unit": "mm",
            "series_instance_uid": "1.2.3",
            "status": "ok" if value is not None else "needs_review",
        }

    return AnalysisResult.model_validate(
        {
            "study_instance_uid": UID,
            "modality": "CT",
            "status": "needs_review",
            "algorithm": {"name": "spine-decompression", "version": "1.0.0"},
            "measurements": [
                m("left", fh_left),
                m("right", fh_right),
                {**m("left", 11.0), "level": None},  # an unnamed level is never posted
            ],
        }
    )


def _publisher(outcomes: OutcomesServer) -> FhirPublisher:
    client = httpx.Client(
        base_url=outcomes.fhir_url + "/",
        auth=ServiceBearer(Authenticator(outcomes.settings.auth), "imaging", FHIR_SCOPE),
    )
    return FhirPublisher(client, mrn_system=codes.MRN_SYSTEM_DEFAULT)


def test_publications_create_then_amend_never_duplicate(outcomes: OutcomesServer) -> None:
    fhir = SyncFHIRClient(outcomes.fhir_url, authorization=f"Bearer {outcomes.token()}")
    # The EHR registered the patient first: the imaging service must find, not duplicate.
    ehr_patient = fhir.resource("Patient", **builders.patient("MRN777"))
    ehr_patient.save()
    publisher = _publisher(outcomes)

    first = publisher.publish(FACTS, _result(9.1, 8.7))
    assert (first.created, first.amended, first.unchanged, first.withdrawn) == (2, 0, 0, 0)
    again = publisher.publish(FACTS, copy.deepcopy(_result(9.1, 8.7)))
    assert (again.created, again.amended, again.unchanged) == (0, 0, 2)
    assert again.imaging_study == first.imaging_study

    # A new analysis: the left value changed, the right one is no longer stood behind.
    third = publisher.publish(FACTS, _result(9.6, None))
    assert (third.created, third.amended, third.withdrawn) == (0, 1, 1)

    observations = fhir.resources("Observation").search(category="imaging-metric").fetch_all()
    assert len(observations) == 2
    by_side = {
        o["component"][0]["valueCodeableConcept"]["coding"][0]["code"]: o for o in observations
    }
    left, right = by_side["left"], by_side["right"]
    assert left["status"] == "amended" and left["valueQuantity"]["value"] == 9.6
    assert left["meta"]["versionId"] == "2"
    assert left["derivedFrom"][0]["reference"] == first.imaging_study
    assert left["subject"]["reference"] == f"Patient/{ehr_patient.id}"
    assert right["status"] == "amended" and "valueQuantity" not in right
    assert right["dataAbsentReason"]["text"]
    history = fhir.execute(f"Observation/{left['id']}/_history", method="get")
    assert history["total"] == 2
    assert len(fhir.resources("Patient").fetch_all()) == 1
    assert len(fhir.resources("ImagingStudy").fetch_all()) == 1


def _read(n: int, side: str, action: str, value: float | None, purpose: str = "review") -> Any:
    from datetime import UTC, datetime

    from services.common.contracts import ManualMeasurement

    return ManualMeasurement.model_validate(
        {
            "id": n,
            "study_instance_uid": UID,
            "reader_id": "dr-rita",
            "level": "L4-L5",
            "side": side,
            "quantity": "foraminal_height",
            "value": value,
            "unit": "mm",
            "note": None,
            "created_at": datetime(2026, 12, 2, 9, n, tzinfo=UTC),
            "action": action,
            "purpose": purpose,
            "reason": "wrong-level" if action == "rejected" else None,
        }
    )


def test_a_review_is_published_with_its_provenance(outcomes: OutcomesServer) -> None:
    """A corrected value amends the Observation (method and performer say who and how);
    a rejected one is withdrawn; a blinded second read changes nothing."""
    fhir = SyncFHIRClient(outcomes.fhir_url, authorization=f"Bearer {outcomes.token()}")
    publisher = _publisher(outcomes)
    result = _result(9.1, 8.7)
    assert publisher.publish(FACTS, result).created == 2
    second = [_read(1, "left", "measured", 12.0, purpose="second")]
    assert publisher.publish(FACTS, result, second).unchanged == 2
    reads = [
        _read(2, "left", "accepted", 9.1),
        _read(3, "left", "corrected", 10.4),  # the latest read wins
        _read(4, "right", "rejected", None),
    ]
    report = publisher.publish(FACTS, result, reads)
    assert (report.amended, report.withdrawn) == (1, 1)
    observations = fhir.resources("Observation").search(category="imaging-metric").fetch_all()
    by_side = {
        o["component"][0]["valueCodeableConcept"]["coding"][0]["code"]: o for o in observations
    }
    left, right = by_side["left"], by_side["right"]
    assert left["status"] == "amended" and left["valueQuantity"]["value"] == 10.4
    assert left["method"]["text"] == "spine-decompression 1.0.0, corrected by a reader"
    assert left["performer"] == [{"display": "reader dr-rita"}]
    assert "valueQuantity" not in right and right["dataAbsentReason"]["text"]
    assert publisher.publish(FACTS, result, reads).unchanged == 1  # idempotent
