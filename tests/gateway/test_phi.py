"""Researchers receive no identity: PHI is typed into every free-text, identifier and date
field of every resource type the study holds (and into the DICOM header and the imaging
warnings), then every researcher endpoint is read and searched for it."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.fhir import builders as b
from services.gateway.privacy import Pseudonymizer
from tests.harness.gateway import PSEUDONYM_KEY, GatewayServer
from tests.harness.imaging import ImagingServer
from tests.harness.net import wait_until
from tests.harness.outcomes import OutcomesServer
from tests.harness.series import SeriesSpec, make_series, multipart_body, to_bytes

pytestmark = pytest.mark.integration

NAME, FAMILY, MRN = "Zebulon", "Quixote", "MRN-PHI-4711"
BIRTH, SURGERY = "1931-07-04", "2024-05-06"
FREE = f"{NAME} {FAMILY} {MRN} born {BIRTH}, phone 0611223344"
STOW = 'multipart/related; type="application/dicom"; boundary=test-boundary'


def _phi(resource: dict[str, Any]) -> dict[str, Any]:
    """Free text, identifiers and narrative everywhere FHIR allows them."""
    resource["text"] = {"status": "generated", "div": f"<div>{FREE}</div>"}
    identifier = {"system": "urn:ehr", "value": MRN}
    single = resource["resourceType"] == "QuestionnaireResponse"  # 0..1 there
    resource["identifier"] = identifier if single else [*resource.get("identifier", []), identifier]
    resource["extension"] = [
        *resource.get("extension", []),
        {"url": "http://hospital.example/free", "valueString": FREE},
        {"url": "http://hospital.example/when", "valueDateTime": f"{BIRTH}T10:00:00Z"},
    ]
    resource["meta"] = {"tag": [{"system": "urn:ehr", "code": MRN}]}
    return resource


class World:
    def __init__(self, root: Path) -> None:
        self.imaging = ImagingServer(root / "imaging", study_quiet_seconds=0.5).start()
        self.outcomes = OutcomesServer(root / "outcomes").start()
        self.secrets: set[str] = {NAME, FAMILY, MRN, BIRTH, SURGERY, "0611223344", "1931"}
        fhir = self.outcomes.client("system/*.cruds")
        patient = _phi(b.patient(MRN, family=FAMILY, given=NAME, birth_date=BIRTH))
        patient |= {
            "telecom": [{"system": "phone", "value": "0611223344"}],
            "address": [{"text": FREE}],
        }
        pid = self._post(fhir, patient)
        surgeon = self._post(fhir, _phi(b.practitioner("999", "Surgeonname", "Secret")))
        self.secrets |= {"Surgeonname", pid, surgeon}
        encounter = self._post(
            fhir,
            _phi(b.encounter(f"Patient/{pid}", start=f"{SURGERY}T07:00:00Z", end="2024-05-09")),
        )
        procedure = b.procedure(
            f"Patient/{pid}",
            f"Practitioner/{surgeon}",
            group="foraminal-stenosis",
            levels=["L4-L5"],
            performed=f"{SURGERY}T08:30:00Z",
            encounter_ref=f"Encounter/{encounter}",
        )
        procedure["note"] = [{"text": FREE}]
        self.procedure = self._post(fhir, _phi(procedure))
        self.secrets |= {encounter, self.procedure, "2024-05-09"}
        ref, part_of = f"Patient/{pid}", f"Procedure/{self.procedure}"
        for observation in (
            b.measurement(ref, "odi", 44, effective="2024-04-20", time_point="baseline"),
            b.measurement(ref, "odi", 20, effective="2024-08-05", time_point="month-3"),
            b.complication(
                ref, part_of, kind="dural-tear", grade="CD-I", onset=SURGERY, timing="early"
            ),
        ):
            observation["note"] = [{"text": FREE}]
            observation["component"] = [
                *observation.get("component", []),
                {"code": {"text": FREE}, "valueString": FREE},
            ]
            observation["issued"] = f"{SURGERY}T09:00:00Z"
            self.secrets.add(self._post(fhir, _phi(observation)))
        dated = b.measurement(ref, "odi", 30, effective="2024-06-17")
        dated.pop("valueQuantity")
        dated["valueDateTime"] = f"{BIRTH}T00:00:00Z"
        dated["dataAbsentReason"] = {"text": FREE}
        self.secrets.add(self._post(fhir, _phi(dated)))
        answer = {
            "resourceType": "QuestionnaireResponse",
            "questionnaire": "http://hospital.example/Questionnaire/free",
            "status": "completed",
            "subject": {"reference": ref},
            "authored": "2024-04-20",
            "item": [{"linkId": "story", "text": FREE, "answer": [{"valueString": FREE}]}],
        }
        self.secrets.add(self._post(fhir, _phi(answer)))
        study = b.imaging_study(ref, "1.2.3.999", started="2024-04-18", modality="CT")
        study["description"] = FREE
        self.secrets.add(self._post(fhir, _phi(study)))
        self.secrets |= {"2024-04-20", "2024-08-05", "2024-06-17", "2024-04-18"}
        fhir.close()
        self._dicom(pid)
        self.gateway = GatewayServer(
            root / "gateway", imaging_url=self.imaging.url, outcomes_url=self.outcomes.fhir_url
        ).start()

    @staticmethod
    def _post(client: httpx.Client, resource: dict[str, Any]) -> str:
        response = client.post(f"/{resource['resourceType']}", json=resource)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def _dicom(self, pid: str) -> None:
        """A pre-operative CT whose slices are unevenly stepped, completed by an operator:
        its analysis warns about the series by UID."""
        spec = SeriesSpec(
            slices=80,
            patient_id=MRN,
            patient_name=f"{FAMILY}^{NAME}",
            study_date="20240418",
            skip=frozenset({40}),  # a gap
        )
        datasets = make_series(spec)
        for ds in datasets:
            ds.PatientBirthDate = BIRTH.replace("-", "")
        self.series_uid = str(datasets[0].SeriesInstanceUID)
        self.secrets |= {spec.study_uid, self.series_uid, "20240418"}
        with self.imaging.client("imaging.*") as client:
            body = multipart_body([to_bytes(ds) for ds in datasets])
            stored = client.post("/dicomweb/studies", content=body, headers={"Content-Type": STOW})
            assert stored.status_code == 200, stored.text
            assert wait_until(
                lambda: (
                    client.get(f"/api/studies/{spec.study_uid}").json()["state"]
                    in ("incomplete", "complete")
                ),
                timeout=30,
            )
            client.post(f"/api/studies/{spec.study_uid}/complete")
            assert wait_until(
                lambda: (
                    client.get(f"/api/studies/{spec.study_uid}/measurements").status_code
                    in (200, 422)
                ),
                timeout=60,
            )

    def close(self) -> None:
        for server in (self.gateway, self.outcomes, self.imaging):
            server.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("phi"))
    yield w
    w.close()


def test_no_researcher_response_carries_phi(world: World) -> None:
    case = Pseudonymizer(PSEUDONYM_KEY.encode()).case(world.procedure)
    paths = [
        "/api/cases?refresh=true",
        f"/api/cases/{case}",
        f"/api/cases/{case}/bundle",
        f"/api/cases/{case}/plots/metrics.svg",
        f"/api/cases/{case}/plots/proms.svg",
        "/api/cohort/summary",
        "/api/cohort/plots/paired.svg?quantity=foraminal_height",
        "/api/cohort/plots/proms.svg",
        "/api/cohort/plots/complications.svg",
        "/api/export/cases.csv",
        "/dashboard/",
        "/dashboard/cases",
        f"/dashboard/cases/{case}",
    ]
    leaks = []
    with world.gateway.client(role="researcher") as client:
        for path in paths:
            response = client.get(path)
            assert response.status_code == 200, (path, response.status_code, response.text[:300])
            assert "no-store" in response.headers.get("cache-control", "") or "plots" in path
            for secret in world.secrets:
                if secret in response.text:
                    leaks.append(f"{path}: {secret}")
        bundle = client.get(f"/api/cases/{case}/bundle").json()
        rows = list(csv.DictReader(io.StringIO(client.get("/api/export/cases.csv").text)))
        # The EHR's own id of the case is not a way in.
        assert client.get(f"/api/cases/{world.procedure}").status_code == 404
    assert not leaks, leaks
    patient = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    assert set(patient) <= {"resourceType", "id", "gender", "birthDate"}
    assert len(patient["birthDate"]) == 4  # a year, aggregated at 90
    assert rows and all(r["age_at_surgery"] == "90" for r in rows)
    assert all(r["case_id"] == case for r in rows)
    with world.gateway.client(role="clinician") as client:  # the identified view keeps them
        identified = client.get(f"/api/cases/{world.procedure}").text
    assert MRN in identified and NAME in identified
    assert world.series_uid in identified  # the warning that names the series, scrubbed above


def test_the_login_page_masks_the_token(world: World) -> None:
    page = httpx.get(f"{world.gateway.url}/dashboard/login").text
    assert 'name="token" type="password"' in page
