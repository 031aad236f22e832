"""The FHIR REST interactions over HTTP: CRUD, versions, history, conditional create,
validation, security and audit."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from services.common.fhir import builders as b
from services.common.fhir import codes
from services.common.logging import JsonFormatter
from tests.harness.outcomes import OutcomesServer


def _post(client: httpx.Client, resource: dict[str, Any], **headers: str) -> httpx.Response:
    return client.post(f"/{resource['resourceType']}", json=resource, headers=headers)


def test_create_read_update_vread_delete_and_history(outcomes: OutcomesServer) -> None:
    with outcomes.client() as client:
        created = _post(client, b.patient("MRN-1"))
        assert created.status_code == 201
        assert created.headers["content-type"].startswith("application/fhir+json")
        patient = created.json()
        pid = patient["id"]
        assert created.headers["etag"] == 'W/"1"'
        assert created.headers["location"].endswith(f"/fhir/Patient/{pid}/_history/1")
        assert "last-modified" in created.headers
        assert patient["meta"]["versionId"] == "1"

        read = client.get(f"/Patient/{pid}")
        assert read.status_code == 200 and read.json()["identifier"][0]["value"] == "MRN-1"

        patient["gender"] = "other"
        updated = client.put(f"/Patient/{pid}", json=patient, headers={"If-Match": 'W/"1"'})
        assert updated.status_code == 200 and updated.headers["etag"] == 'W/"2"'
        stale = client.put(f"/Patient/{pid}", json=patient, headers={"If-Match": 'W/"1"'})
        assert stale.status_code == 412
        assert stale.json()["resourceType"] == "OperationOutcome"

        assert client.get(f"/Patient/{pid}/_history/1").json()["gender"] == "female"
        assert client.get(f"/Patient/{pid}/_history/2").json()["gender"] == "other"

        assert client.delete(f"/Patient/{pid}").status_code == 204
        assert client.get(f"/Patient/{pid}").status_code == 410
        history = client.get(f"/Patient/{pid}/_history").json()
        assert history["type"] == "history" and history["total"] == 3
        assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]
        type_history = client.get("/Patient/_history").json()
        assert type_history["total"] == 3

        # Update-as-create with the client's id.
        own = b.patient("MRN-2") | {"id": "mrn-2"}
        assert client.put("/Patient/mrn-2", json=own).status_code == 201
        assert client.get("/Patient/unknown-id").status_code == 404
        # An id or version with a trailing newline is not one ("$" in a pattern allows it).
        newline = b.patient("MRN-3") | {"id": "mrn-3\n"}
        refused = client.put("/Patient/mrn-3%0A", json=newline)
        assert refused.status_code in (400, 422), refused.text
        assert refused.json()["resourceType"] == "OperationOutcome"
        assert client.get(f"/Patient/{pid}/_history/1%0A").status_code == 400


def test_conditional_create(outcomes: OutcomesServer) -> None:
    query = f"identifier={codes.MRN_SYSTEM_DEFAULT}|MRN-7"
    with outcomes.client() as client:
        first = _post(client, b.patient("MRN-7"), **{"If-None-Exist": query})
        again = _post(client, b.patient("MRN-7"), **{"If-None-Exist": query})
        assert first.status_code == 201 and again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
        # Two resources matching: ambiguous -> 412.
        _post(client, b.patient("MRN-8"))
        _post(client, b.patient("MRN-8"))
        ambiguous = _post(
            client,
            b.patient("MRN-8"),
            **{"If-None-Exist": f"identifier={codes.MRN_SYSTEM_DEFAULT}|MRN-8"},
        )
        assert ambiguous.status_code == 412


def test_twenty_parallel_conditional_creates_make_one_resource(outcomes: OutcomesServer) -> None:
    query = f"identifier={codes.MRN_SYSTEM_DEFAULT}|MRN-RACE"

    def create(_: int) -> int:
        with outcomes.client() as client:
            return _post(client, b.patient("MRN-RACE"), **{"If-None-Exist": query}).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(create, range(20)))
    assert statuses.count(201) == 1 and statuses.count(200) == 19
    with outcomes.client() as client:
        found = client.get(
            "/Patient", params={"identifier": f"{codes.MRN_SYSTEM_DEFAULT}|MRN-RACE"}
        )
    assert found.json()["total"] == 1


def test_validation_errors_are_operation_outcomes_with_expressions(
    outcomes: OutcomesServer,
) -> None:
    with outcomes.client() as client:
        pid = _post(client, b.patient("MRN-V")).json()["id"]
        ref = f"Patient/{pid}"
        bad = client.post(
            "/Observation", content=b"{not json", headers={"Content-Type": "application/fhir+json"}
        )
        assert bad.status_code == 400
        assert bad.json()["issue"][0]["code"] == "invalid"

        cases = [
            (
                b.measurement(ref, "odi", 120, effective="2025-01-01"),
                "Observation.valueQuantity.value",
            ),
            (
                b.measurement(ref, "back-pain-nrs", 11, effective="2025-01-01"),
                "Observation.valueQuantity.value",
            ),
            (
                b.complication(
                    ref,
                    "Procedure/x",
                    kind="infection",
                    grade="CD-VI",
                    onset="2025-01-03",
                    timing="early",
                ),
                "Observation.component[0].valueCodeableConcept",
            ),
            (
                {
                    k: v
                    for k, v in b.measurement(ref, "odi", 30, effective="2025-01-01").items()
                    if k != "subject"
                },
                "Observation.subject",
            ),
            (b.patient("X") | {"birthDate": "1999-13-40"}, "Patient.birthDate"),
        ]
        for resource, expression in cases:
            response = _post(client, resource)
            assert response.status_code == 422, resource
            outcome = response.json()
            assert outcome["resourceType"] == "OperationOutcome"
            assert expression in [e for i in outcome["issue"] for e in i.get("expression", [])]

        assert client.get("/Medication").status_code == 404
        assert client.post("/Medication", json={"resourceType": "Medication"}).status_code == 404
        assert client.patch(f"/Patient/{pid}", json={}).status_code == 405
        wrong_type = client.post(
            "/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"}
        )
        assert wrong_type.status_code == 415
        mismatch = client.post("/Observation", json=b.patient("Y"))
        assert mismatch.status_code == 400
        # Nothing of the refused writes was stored.
        assert client.get("/Observation", params={"_summary": "count"}).json()["total"] == 0


def test_authentication_scopes_and_audit(outcomes: OutcomesServer) -> None:
    with httpx.Client(base_url=outcomes.fhir_url) as anonymous:
        refused = anonymous.post("/Patient", json=b.patient("MRN-A"))
        assert refused.status_code == 401
        assert refused.json()["resourceType"] == "OperationOutcome"
        assert anonymous.get("/Patient").status_code == 401
        assert anonymous.get("/metadata").status_code == 200  # public, as clients expect
    with outcomes.client(scope="user/Observation.rs", subject="researcher-1") as reader:
        assert reader.get("/Observation").status_code == 200
        assert _post(reader, b.patient("MRN-A")).status_code == 403
        assert reader.get("/Patient").status_code == 403
    with outcomes.client(scope="system/Patient.write system/Patient.read") as v1:
        pid = _post(v1, b.patient("MRN-A")).json()["id"]
        assert v1.get(f"/Patient/{pid}").status_code == 200
    with outcomes.client(subject="auditor", scope="system/AuditEvent.rs") as auditor:
        events = auditor.get("/AuditEvent", params={"_count": 50}).json()
    actions = {
        (e["agent"][0]["who"]["display"], e["action"], e["outcome"])
        for e in (x["resource"] for x in events["entry"])
    }
    assert ("researcher-1", "E", "0") in actions  # a search of patient data
    assert ("researcher-1", "C", "4") in actions  # the refused create
    assert ("anonymous", "C", "4") in actions
    assert ("ehr-integration", "C", "0") in actions
    assert ("ehr-integration", "R", "0") in actions


def test_capability_statement_and_published_terminology(outcomes: OutcomesServer) -> None:
    with outcomes.client() as client:
        capability = client.get("/metadata").json()
        code_system = client.get("/CodeSystem/spine-outcomes").json()
        questionnaire = client.get("/Questionnaire/odi").json()
    assert capability["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in capability["rest"][0]["resource"]}
    assert {
        "Patient",
        "Observation",
        "Procedure",
        "Encounter",
        "QuestionnaireResponse",
        "Practitioner",
        "AuditEvent",
    } <= set(resources)
    observation_params = {p["name"] for p in resources["Observation"]["searchParam"]}
    assert {"patient", "subject", "code", "date", "category", "status", "_id"} <= observation_params
    assert resources["Patient"]["conditionalCreate"] is True
    assert {i["code"] for i in capability["rest"][0]["interaction"]} == {"transaction", "batch"}
    codes_published = {c["code"] for c in code_system["concept"]}
    assert {
        "foraminal-stenosis",
        "central-stenosis",
        "CD-IIIb",
        "dural-tear",
        "month-24",
    } <= codes_published
    assert len(questionnaire["item"]) == 10


def test_logs_carry_no_patient_identifiers(
    outcomes: OutcomesServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with outcomes.client() as client:
        patient = b.patient("MRN-SECRET-99", family="Nightingale", given="Florence")
        pid = _post(client, patient).json()["id"]
        client.get(
            "/Patient",
            params={
                "identifier": f"{codes.MRN_SYSTEM_DEFAULT}|MRN-SECRET-99",
                "name": "Nightingale",
            },
        )
        _post(client, b.measurement(f"Patient/{pid}", "odi", 150, effective="2025-01-01"))
        client.post(
            "/Patient",
            content=b'{"resourceType": "Patient", "name": "MRN-SECRET-99"',
            headers={"Content-Type": "application/fhir+json"},
        )
    records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert any(r.name == "services.outcomes.access" for r in records)
    text = "\n".join(JsonFormatter().format(r) for r in records)
    for secret in ("MRN-SECRET-99", "Nightingale", "Florence"):
        assert secret not in text
