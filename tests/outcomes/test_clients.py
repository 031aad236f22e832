"""Real FHIR clients drive the server as EHR integrations do: fhirpy and fhirclient."""

from __future__ import annotations

import pytest
from fhirclient import client as smart_client
from fhirclient.models.observation import Observation as FcObservation
from fhirclient.models.patient import Patient as FcPatient
from fhirpy import SyncFHIRClient

from services.common.fhir import builders as b
from services.common.fhir import codes
from tests.harness.outcomes import OutcomesServer

pytestmark = pytest.mark.integration


def _fhirpy(server: OutcomesServer) -> SyncFHIRClient:
    return SyncFHIRClient(
        server.fhir_url,
        authorization=f"Bearer {server.token()}",
        extra_headers={"Content-Type": "application/fhir+json"},
    )


def test_fhirpy_conditional_create_transaction_and_paged_search(outcomes: OutcomesServer) -> None:
    client = _fhirpy(outcomes)
    patients = client.resources("Patient").search(identifier=f"{codes.MRN_SYSTEM_DEFAULT}|MRN-FP")
    first, created = patients.get_or_create(client.resource("Patient", **b.patient("MRN-FP")))
    again, created_again = patients.get_or_create(client.resource("Patient", **b.patient("MRN-FP")))
    assert created and not created_again and first.id == again.id

    entries = [
        {
            "resource": b.measurement(
                f"Patient/{first.id}", "back-pain-nrs", (i % 10), effective=f"2025-01-{i + 1:02d}"
            ),
            "request": {"method": "POST", "url": "Observation"},
        }
        for i in range(25)
    ]
    bundle = client.execute(
        "", method="post", data={"resourceType": "Bundle", "type": "transaction", "entry": entries}
    )
    assert len(bundle["entry"]) == 25

    search = client.resources("Observation").search(patient=f"Patient/{first.id}").limit(10)
    fetched = search.fetch_all()  # follows the next links: three pages
    assert len(fetched) == 25 and len({o.id for o in fetched}) == 25
    assert search.count() == 25
    latest = client.resources("Observation").search(patient=first.id).sort("-date").first()
    assert latest is not None and latest["effectiveDateTime"] == "2025-01-25"

    observation = fetched[0]
    observation["status"] = "amended"
    observation.save()
    refreshed = client.reference("Observation", observation.id).to_resource()
    assert refreshed["status"] == "amended" and refreshed["meta"]["versionId"] == "2"
    refreshed.delete()
    assert client.resources("Observation").search(patient=first.id).count() == 24


def test_fhirclient_reads_searches_and_creates(outcomes: OutcomesServer) -> None:
    smart = smart_client.FHIRClient(
        settings={"app_id": "ehr-test", "api_base": outcomes.fhir_url + "/"}
    )
    smart.server.session.headers["Authorization"] = f"Bearer {outcomes.token()}"
    patient = FcPatient(b.patient("MRN-FC"))
    created = patient.create(smart.server)
    assert created is not None and created["id"]
    pid = created["id"]
    read = FcPatient.read(pid, smart.server)
    assert read.identifier[0].value == "MRN-FC"
    for value in (48, 22):
        FcObservation(b.measurement(f"Patient/{pid}", "odi", value, effective="2025-02-01")).create(
            smart.server
        )
    found = FcObservation.where(
        struct={"patient": f"Patient/{pid}", "code": f"{codes.PROJECT}|odi"}
    ).perform_resources_iter(smart.server)
    assert sorted(o.valueQuantity.value for o in list(found)) == [22, 48]
