"""The FHIR server's authorization, tried as an attacker would: every interaction x scope
kind x resource type, through REST and through batch entries; type confusion between a
URL and a body; _include of types the token cannot read; patient-context scopes;
constrained scopes. Real server, real tokens."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from services.common.fhir import builders as b
from services.common.fhir import codes
from services.outcomes.fhir.resource_types import RESOURCE_TYPES
from tests.harness.outcomes import OutcomesServer

TYPES = sorted(RESOURCE_TYPES)
LETTERS = "cruds"


class World:
    """Two patients with a resource of every type each, made with a full token."""

    def __init__(self, server: OutcomesServer) -> None:
        self.server = server
        self.admin = server.client("system/*.cruds")
        self.p1 = self._post(b.patient("AUTHZ-1"))["id"]
        self.p2 = self._post(b.patient("AUTHZ-2", family="Roe"))["id"]
        self.doctor = self._post(b.practitioner("9", "House", "Greg"))["id"]
        self.own: dict[str, dict[str, str]] = {}
        for pid in (self.p1, self.p2):
            made = {t: self._post(self.body(t, pid))["id"] for t in TYPES if t != "Patient"}
            self.own[pid] = made
            self.own[pid]["Patient"] = pid

    def _post(self, resource: dict[str, Any]) -> dict[str, Any]:
        response = self.admin.post(f"/{resource['resourceType']}", json=resource)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def body(self, resource_type: str, pid: str) -> dict[str, Any]:
        ref = f"Patient/{pid}"
        return {
            "Patient": lambda: b.patient(f"NEW-{pid}"),
            "Practitioner": lambda: b.practitioner("77", "Grey", "Meredith"),
            "Procedure": lambda: b.procedure(
                ref,
                f"Practitioner/{self.doctor}",
                group="central-stenosis",
                levels=["L4-L5"],
                performed="2025-01-10",
            ),
            "Encounter": lambda: b.encounter(ref, start="2025-01-09", end="2025-01-12"),
            "Observation": lambda: b.measurement(ref, "odi", 40, effective="2025-01-01"),
            "QuestionnaireResponse": lambda: b.odi_response(ref, [1] * 10, authored="2025-01-01"),
            "ImagingStudy": lambda: b.imaging_study(ref, "1.2.3.4", started="2025", modality="CT"),
        }[resource_type]()

    def count(self, resource_type: str) -> int:
        found = self.admin.get(f"/{resource_type}", params={"_summary": "count"}).json()
        return int(found["total"])

    def client(self, scope: str, patient: str | None = None) -> httpx.Client:
        token = self.server.authenticator.issue_token("attacker", scope, patient=patient)
        return httpx.Client(
            base_url=self.server.fhir_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with OutcomesServer(tmp_path_factory.mktemp("authz")) as server:
        yield World(server)


Operation = Callable[[httpx.Client, World, str], int]


def _create(client: httpx.Client, w: World, t: str) -> int:
    return client.post(f"/{t}", json=w.body(t, w.p1)).status_code


def _read(client: httpx.Client, w: World, t: str) -> int:
    return client.get(f"/{t}/{w.own[w.p1][t]}").status_code


def _update(client: httpx.Client, w: World, t: str) -> int:
    current = w.admin.get(f"/{t}/{w.own[w.p1][t]}").json()
    return client.put(f"/{t}/{current['id']}", json=current).status_code


def _delete(client: httpx.Client, w: World, t: str) -> int:
    victim = w._post(w.body(t, w.p1))["id"]
    return client.delete(f"/{t}/{victim}").status_code


def _search(client: httpx.Client, w: World, t: str) -> int:
    return client.get(f"/{t}").status_code


OPERATIONS: dict[str, Operation] = {
    "c": _create,
    "r": _read,
    "u": _update,
    "d": _delete,
    "s": _search,
}


def _batch(client: httpx.Client, entry: dict[str, Any]) -> int:
    response = client.post("/", json={"resourceType": "Bundle", "type": "batch", "entry": [entry]})
    assert response.status_code == 200, response.text
    return int(response.json()["entry"][0]["response"]["status"].split()[0])


def _batch_entry(w: World, t: str, letter: str) -> dict[str, Any]:
    if letter == "c":
        return {"resource": w.body(t, w.p1), "request": {"method": "POST", "url": t}}
    if letter == "u":
        current = w.admin.get(f"/{t}/{w.own[w.p1][t]}").json()
        return {"resource": current, "request": {"method": "PUT", "url": f"{t}/{current['id']}"}}
    if letter == "d":
        victim = w._post(w.body(t, w.p1))["id"]
        return {"request": {"method": "DELETE", "url": f"{t}/{victim}"}}
    if letter == "r":
        return {"request": {"method": "GET", "url": f"{t}/{w.own[w.p1][t]}"}}
    return {"request": {"method": "GET", "url": t}}


@pytest.mark.parametrize("granted_type", TYPES)
@pytest.mark.parametrize("granted", LETTERS)
def test_each_scope_allows_exactly_its_type_and_permission(
    world: World, granted_type: str, granted: str
) -> None:
    client = world.client(f"system/{granted_type}.{granted}")
    wrong: list[str] = []
    for t in TYPES:
        for letter, operation in OPERATIONS.items():
            allowed = t == granted_type and letter == granted
            status = operation(client, world, t)
            batch = _batch(client, _batch_entry(world, t, letter))
            for how, code in (("rest", status), ("batch", batch)):
                if allowed != (code < 400) or (not allowed and code != 403):
                    wrong.append(f"{how} {letter} {t}: {code}")
    assert not wrong, wrong


def test_a_body_of_another_type_never_gets_written(world: World) -> None:
    """A1: the scope is for Patient; the body is an Observation, whatever the URL says."""
    client = world.client("system/Patient.cruds")
    before = world.count("Observation")
    observation = world.body("Observation", world.p1)
    attempts = [
        _batch(client, {"resource": observation, "request": {"method": "POST", "url": "Patient"}}),
        client.put("/Patient", params={"identifier": "nomatch"}, json=observation).status_code,
        client.post("/Patient", json=observation).status_code,
    ]
    for entry in (
        {
            "resource": observation,
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=x|y"},
        },
        {"resource": observation, "request": {"method": "PUT", "url": "Patient?identifier=x|y"}},
        {"resource": observation, "request": {"method": "POST", "url": "Patient"}},
    ):
        tx = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
        attempts.append(client.post("/", json=tx).status_code)
    assert all(400 <= code < 500 for code in attempts), attempts
    assert world.count("Observation") == before


@pytest.mark.parametrize(
    ("scope", "search", "include"),
    [
        ("system/Observation.rs", "Observation", "Observation:part-of"),
        ("system/Observation.rs", "Observation", "Observation:derived-from"),
        ("system/Observation.rs", "Observation", "Observation:focus"),
        ("system/Observation.rs", "Observation", "Observation:patient"),
        ("system/Procedure.rs", "Procedure", "Procedure:encounter"),
        ("system/Procedure.rs", "Procedure", "Procedure:performer"),
    ],
)
def test_include_never_returns_a_type_the_token_cannot_read(
    world: World, scope: str, search: str, include: str
) -> None:
    """A2."""
    # Link the first patient's Observation to its Procedure, so part-of has a target.
    obs = world.admin.get(f"/Observation/{world.own[world.p1]['Observation']}").json()
    obs["partOf"] = [{"reference": f"Procedure/{world.own[world.p1]['Procedure']}"}]
    obs["focus"] = [{"reference": f"Encounter/{world.own[world.p1]['Encounter']}"}]
    obs["derivedFrom"] = [{"reference": f"ImagingStudy/{world.own[world.p1]['ImagingStudy']}"}]
    assert world.admin.put(f"/Observation/{obs['id']}", json=obs).status_code == 200
    proc = world.admin.get(f"/Procedure/{world.own[world.p1]['Procedure']}").json()
    proc["encounter"] = {"reference": f"Encounter/{world.own[world.p1]['Encounter']}"}
    assert world.admin.put(f"/Procedure/{proc['id']}", json=proc).status_code == 200
    response = world.client(scope).get(f"/{search}", params={"_include": include})
    assert response.status_code == 403, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    wide = world.client("system/*.rs").get(f"/{search}", params={"_include": include})
    included = [e for e in wide.json()["entry"] if e["search"]["mode"] == "include"]
    assert wide.status_code == 200 and included


def test_patient_scopes_stay_in_the_patient_compartment(world: World) -> None:
    """A3."""
    mine, other = world.p1, world.p2
    client = world.client("patient/*.cruds", patient=mine)
    patients = client.get("/Patient").json()
    assert [e["resource"]["id"] for e in patients["entry"]] == [mine]
    assert client.get(f"/Patient/{other}").status_code == 403
    observations = client.get("/Observation", params={"_count": 100}).json()
    subjects = {e["resource"]["subject"]["reference"] for e in observations["entry"]}
    assert subjects == {f"Patient/{mine}"}
    for t in TYPES:
        assert client.get(f"/{t}/{world.own[other][t]}").status_code == 403, t
        assert client.get(f"/{t}/{world.own[other][t]}/_history").status_code == 403, t
        # Practitioners are outside any patient's compartment.
        expected = 403 if t == "Practitioner" else 200
        assert client.get(f"/{t}/{world.own[mine][t]}").status_code == expected, t
    assert client.get("/AuditEvent").status_code == 403
    assert client.get("/Observation/_history").status_code == 403
    # Writes: only inside the compartment, and nothing can be moved out of it or into it.
    assert client.post("/Observation", json=world.body("Observation", other)).status_code == 403
    assert client.post("/Observation", json=world.body("Observation", mine)).status_code == 201
    theirs = world.admin.get(f"/Observation/{world.own[other]['Observation']}").json()
    assert client.put(f"/Observation/{theirs['id']}", json=theirs).status_code == 403
    assert client.delete(f"/Observation/{theirs['id']}").status_code == 403
    ours = world.admin.get(f"/Observation/{world.own[mine]['Observation']}").json()
    moved = {**ours, "subject": {"reference": f"Patient/{other}"}}
    assert client.put(f"/Observation/{ours['id']}", json=moved).status_code == 403
    before = world.count("Observation")
    gone = client.delete("/Observation", params={"subject": f"Patient/{other}", "code": "odi"})
    assert gone.status_code in (204, 412) and world.count("Observation") == before
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Observation/{theirs['id']}"}},
            {"request": {"method": "GET", "url": "Patient"}},
        ],
    }
    answered = client.post("/", json=batch).json()["entry"]
    assert answered[0]["response"]["status"].startswith("403")
    listed = answered[1]["resource"]["entry"]
    assert [e["resource"]["id"] for e in listed] == [mine]
    # Without a patient in context, patient/ scopes grant nothing.
    assert world.client("patient/*.rs").get("/Observation").status_code == 403


@pytest.mark.parametrize(
    "scope",
    ["system/*.cruds?foo=bar", "system/Observation.rs?category=prom", "user/*.read?x=1"],
)
def test_constrained_scopes_are_refused_not_widened(world: World, scope: str) -> None:
    """A4: this server does not evaluate scope constraints, so they grant nothing."""
    client = world.client(scope)
    response = client.get("/Observation")
    assert response.status_code == 403
    assert "constrained" in response.json()["issue"][0]["diagnostics"]
    assert client.post("/Patient", json=b.patient("CONSTRAINED")).status_code == 403


def test_published_definitions_are_open_to_any_authenticated_caller(world: World) -> None:
    """CodeSystem and Questionnaire hold no patient data: any valid token reads them (a
    decision, documented in the CapabilityStatement); no token gets 401."""
    client = world.client("imaging.read")
    assert client.get("/CodeSystem/spine-outcomes").status_code == 200
    assert client.get("/Questionnaire/odi").status_code == 200
    anonymous = httpx.get(f"{world.server.fhir_url}/Questionnaire/odi")
    assert anonymous.status_code == 401
    assert client.get("/Patient").status_code == 403
    assert client.get(f"/CodeSystem?url={codes.PROJECT}").status_code == 200
