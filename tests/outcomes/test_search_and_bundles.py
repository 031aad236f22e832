"""Search parameters, paging, _include, _sort, _summary; transaction and batch Bundles;
Observations derived from QuestionnaireResponses and Encounters."""

from __future__ import annotations

from typing import Any

import httpx

from services.common.fhir import builders as b
from services.common.fhir import codes
from tests.harness.outcomes import OutcomesServer


def _ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [
        e["resource"]["id"]
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode", "match") == mode
    ]


def _seed(client: httpx.Client) -> dict[str, str]:
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:pat-1",
                "resource": b.patient("MRN-S1"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:pat-2",
                "resource": b.patient("MRN-S2", family="Roe"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:doc",
                "resource": b.practitioner("111", "House", "Greg"),
                "request": {"method": "POST", "url": "Practitioner"},
            },
            {
                "fullUrl": "urn:uuid:proc",
                "resource": b.procedure(
                    "urn:uuid:pat-1",
                    "urn:uuid:doc",
                    group="foraminal-stenosis",
                    levels=["L4-L5", "L5-S1"],
                    performed="2025-02-10",
                ),
                "request": {"method": "POST", "url": "Procedure"},
            },
            *[
                {
                    "resource": b.measurement(
                        "urn:uuid:pat-1", "odi", v, effective=d, time_point=t
                    ),
                    "request": {"method": "POST", "url": "Observation"},
                }
                for v, d, t in (
                    (48, "2025-02-01", "baseline"),
                    (30, "2025-03-24", "week-6"),
                    (22, "2025-05-10", "month-3"),
                    (18, "2025-08-10", "month-6"),
                )
            ],
            {
                "resource": b.measurement("urn:uuid:pat-2", "odi", 55, effective="2025-01-15"),
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": b.measurement(
                    "urn:uuid:pat-1",
                    "back-pain-nrs",
                    7,
                    effective="2025-02-01",
                    time_point="baseline",
                ),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    response = client.post("", json=tx)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created"] * len(entries)
    return {
        "pat1": entries[0]["resource"]["id"],
        "pat2": entries[1]["resource"]["id"],
        "doc": entries[2]["resource"]["id"],
        "proc": entries[3]["resource"]["id"],
    }


def test_transaction_resolves_urn_uuid_references(outcomes: OutcomesServer) -> None:
    with outcomes.client() as client:
        ids = _seed(client)
        procedure = client.get(f"/Procedure/{ids['proc']}").json()
    assert procedure["subject"]["reference"] == f"Patient/{ids['pat1']}"
    assert procedure["performer"][0]["actor"]["reference"] == f"Practitioner/{ids['doc']}"


def test_search_parameters(outcomes: OutcomesServer) -> None:
    odi = f"{codes.PROJECT}|odi"
    with outcomes.client() as client:
        ids = _seed(client)
        pat1 = f"Patient/{ids['pat1']}"
        by_patient = client.get("/Observation", params={"patient": pat1, "code": odi}).json()
        assert by_patient["total"] == 4
        assert client.get("/Observation", params={"subject": ids["pat1"]}).status_code == 400
        by_bare_id = client.get("/Observation", params={"patient": ids["pat1"]}).json()
        assert by_bare_id["total"] == 5
        ge = client.get("/Observation", params={"patient": pat1, "date": "ge2025-03-24"}).json()
        assert ge["total"] == 3
        window = client.get(
            "/Observation", params=[("date", "gt2025-02-01"), ("date", "lt2025-08-10")]
        ).json()
        assert window["total"] == 2
        eq_month = client.get("/Observation", params={"date": "2025-02"}).json()
        assert eq_month["total"] == 2
        by_code_only = client.get("/Observation", params={"code": "odi"}).json()
        assert by_code_only["total"] == 5
        category = client.get(
            "/Observation", params={"category": f"{codes.PROJECT}|prom", "status": "final"}
        ).json()
        assert category["total"] == 6
        time_point = client.get("/Observation", params={"time-point": "baseline"}).json()
        assert time_point["total"] == 2
        by_id = client.get("/Patient", params={"_id": f"{ids['pat1']},{ids['pat2']}"}).json()
        assert by_id["total"] == 2
        name = client.get("/Patient", params={"name": "ro"}).json()
        assert _ids(name) == [ids["pat2"]]
        identifier = client.get(
            "/Patient", params={"identifier": f"{codes.MRN_SYSTEM_DEFAULT}|MRN-S1"}
        )
        assert _ids(identifier.json()) == [ids["pat1"]]
        procs = client.get(
            "/Procedure",
            params={
                "patient": pat1,
                "date": "ge2025-01-01",
                "performer": f"Practitioner/{ids['doc']}",
            },
        )
        assert _ids(procs.json()) == [ids["proc"]]
        group = client.get("/Procedure", params={"reason-code": "foraminal-stenosis"}).json()
        assert group["total"] == 1
        assert client.get("/Observation", params={"bogus": "1"}).status_code == 400
        assert client.get("/Observation", params={"date": "yesterday"}).status_code == 400


def test_paging_sort_include_and_summary(outcomes: OutcomesServer) -> None:
    with outcomes.client() as client:
        ids = _seed(client)
        first = client.get("/Observation", params={"_count": 2, "_sort": "-date"}).json()
        dates = [e["resource"]["effectiveDateTime"] for e in first["entry"]]
        assert dates == ["2025-08-10", "2025-05-10"]
        seen = [*_ids(first)]
        page = first
        while next_link := next((x["url"] for x in page["link"] if x["relation"] == "next"), None):
            page = httpx.get(next_link, headers=client.headers).json()
            seen.extend(_ids(page))
        assert len(seen) == len(set(seen)) == 6
        ascending = client.get("/Observation", params={"_sort": "date", "_count": 100}).json()
        all_dates = [e["resource"]["effectiveDateTime"] for e in ascending["entry"]]
        assert all_dates == sorted(all_dates)
        included = client.get(
            "/Observation", params={"code": "back-pain-nrs", "_include": "Observation:patient"}
        ).json()
        assert _ids(included, "include") == [ids["pat1"]]
        count = client.get("/Observation", params={"_summary": "count"}).json()
        assert count == {"resourceType": "Bundle", "type": "searchset", "total": 6}


def test_transaction_is_all_or_nothing(outcomes: OutcomesServer) -> None:
    with outcomes.client() as client:
        tx = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:p",
                    "resource": b.patient("MRN-TX"),
                    "request": {"method": "POST", "url": "Patient"},
                },
                {
                    "resource": b.measurement("urn:uuid:p", "odi", 140, effective="2025-01-01"),
                    "request": {"method": "POST", "url": "Observation"},
                },
            ],
        }
        failed = client.post("", json=tx)
        assert failed.status_code == 422
        assert "Bundle.entry[1]" in failed.json()["issue"][0]["diagnostics"] or any(
            "Observation.valueQuantity.value" in i.get("expression", [])
            for i in failed.json()["issue"]
        )
        assert client.get("/Patient", params={"_summary": "count"}).json()["total"] == 0


def test_conditional_entries_in_a_transaction_and_batch(outcomes: OutcomesServer) -> None:
    query = f"identifier={codes.MRN_SYSTEM_DEFAULT}|MRN-C"

    def tx(value: int) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:p",
                    "resource": b.patient("MRN-C"),
                    "request": {"method": "POST", "url": "Patient", "ifNoneExist": query},
                },
                {
                    "resource": b.measurement("urn:uuid:p", "odi", value, effective="2025-01-01"),
                    "request": {"method": "POST", "url": "Observation"},
                },
            ],
        }

    with outcomes.client() as client:
        first = client.post("", json=tx(40)).json()
        second = client.post("", json=tx(35)).json()
        assert first["entry"][0]["response"]["status"] == "201 Created"
        assert second["entry"][0]["response"]["status"] == "200 OK"
        pid = first["entry"][0]["resource"]["id"]
        assert second["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{pid}"
        assert client.get("/Patient", params={"_summary": "count"}).json()["total"] == 1

        batch = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"resource": b.patient("MRN-B1"), "request": {"method": "POST", "url": "Patient"}},
                {
                    "resource": b.measurement(
                        f"Patient/{pid}", "leg-pain-nrs", 12, effective="2025-01-01"
                    ),
                    "request": {"method": "POST", "url": "Observation"},
                },
                {"request": {"method": "GET", "url": f"Patient/{pid}"}},
                {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
            ],
        }
        result = client.post("", json=batch).json()
        statuses = [e["response"]["status"] for e in result["entry"]]
        assert statuses == ["201 Created", "422", "200 OK", "404"]
        assert result["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_odi_questionnaire_response_is_scored_into_an_observation(
    outcomes: OutcomesServer,
) -> None:
    with outcomes.client() as client:
        pid = client.post("/Patient", json=b.patient("MRN-Q")).json()["id"]
        response = b.odi_response(
            f"Patient/{pid}",
            [2, 3, 1, 0, 4, 2, 1, None, 3, 2],
            authored="2025-04-01",
            time_point="month-3",
        )
        created = client.post("/QuestionnaireResponse", json=response)
        assert created.status_code == 201
        qr = created.json()
        derived = client.get(
            "/Observation", params={"derived-from": f"QuestionnaireResponse/{qr['id']}"}
        ).json()
        assert derived["total"] == 1
        observation = derived["entry"][0]["resource"]
        assert observation["valueQuantity"]["value"] == 40.0
        assert observation["code"]["coding"][0]["code"] == "odi"
        assert "odi-8" in observation["note"][0]["text"]
        # The corrected response updates the same Observation (amended), no duplicate.
        qr["item"][7]["answer"] = [{"valueInteger": 0}]
        assert client.put(f"/QuestionnaireResponse/{qr['id']}", json=qr).status_code == 200
        again = client.get(
            "/Observation", params={"derived-from": f"QuestionnaireResponse/{qr['id']}"}
        ).json()
        assert again["total"] == 1
        assert again["entry"][0]["resource"]["valueQuantity"]["value"] == 36.0
        assert again["entry"][0]["resource"]["status"] == "amended"
        bad = b.odi_response(f"Patient/{pid}", [7] + [0] * 9, authored="2025-04-01")
        refused = client.post("/QuestionnaireResponse", json=bad)
        assert refused.status_code == 422
        assert refused.json()["issue"][0]["expression"] == [
            "QuestionnaireResponse.item[0].answer[0]"
        ]


def test_finished_encounter_yields_its_length_of_stay(outcomes: OutcomesServer) -> None:
    with outcomes.client() as client:
        pid = client.post("/Patient", json=b.patient("MRN-E")).json()["id"]
        enc = client.post(
            "/Encounter",
            json=b.encounter(
                f"Patient/{pid}", start="2025-02-09T08:00:00Z", end="2025-02-13T11:00:00Z"
            ),
        ).json()
        los = client.get("/Observation", params={"encounter": f"Encounter/{enc['id']}"}).json()
    assert los["total"] == 1
    assert los["entry"][0]["resource"]["valueQuantity"] == {
        "value": 4,
        "unit": "d",
        "system": codes.UCUM,
        "code": "d",
    }


def test_imaging_metrics_derive_from_their_imaging_study(outcomes: OutcomesServer) -> None:
    with outcomes.client() as client:
        pid = client.post("/Patient", json=b.patient("MRN-I")).json()["id"]
        study = client.post(
            "/ImagingStudy",
            json=b.imaging_study(
                f"Patient/{pid}", "1.2.840.1234.5", started="2025-03-01", modality="CT"
            ),
        ).json()
        ref = f"ImagingStudy/{study['id']}"
        for side, value in (("left", 14.2), ("right", 15.1)):
            metric = b.imaging_metric(
                f"Patient/{pid}",
                "foraminal-height",
                value,
                level="L4-L5",
                side=side,
                imaging_study_ref=ref,
                effective="2025-03-01",
                algorithm="spine-metrics 0.1",
            )
            assert client.post("/Observation", json=metric).status_code == 201
        found = client.get(
            "/Observation", params={"derived-from": ref, "code": "foraminal-height"}
        ).json()
        by_study = client.get(
            "/ImagingStudy", params={"identifier": "urn:dicom:uid|urn:oid:1.2.840.1234.5"}
        ).json()
    assert found["total"] == 2
    sides = sorted(
        e["resource"]["component"][0]["valueCodeableConcept"]["coding"][0]["code"]
        for e in found["entry"]
    )
    assert sides == ["left", "right"]
    assert by_study["total"] == 1


def test_a_retried_transaction_starts_again_from_the_bundles_own_entries(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """A transaction retried after a lost race (SQLite busy, a concurrent writer) runs again
    on the Bundle's entries as sent, not on what the first attempt stamped into them: a
    conditional PUT that created a Patient on the first attempt updates the match a
    concurrent writer committed before the retry (200), instead of refusing the first
    attempt's server-assigned id."""
    import copy

    from sqlalchemy.exc import OperationalError

    from services.common.db import make_engine, upgrade_schema
    from services.outcomes import bundles, interactions
    from services.outcomes.access import Access
    from services.outcomes.app import MIGRATIONS

    engine = make_engine(f"sqlite:///{tmp_path}/outcomes.db")
    upgrade_schema(engine, MIGRATIONS)
    access = Access(["system/*.cruds"])
    patient = b.patient("MRN-RETRY")
    identifier = patient["identifier"][0]
    criteria = f"identifier={identifier['system']}|{identifier['value']}"
    original = bundles._transaction
    attempts = []

    def racing(conn: Any, requests: Any, base: str, caller: Access) -> Any:
        attempts.append(1)
        if len(attempts) == 2:  # the concurrent writer's match, committed in between
            interactions.create(
                conn, copy.deepcopy(patient), resource_type="Patient", access=caller
            )
        out = original(conn, requests, base, caller)
        if len(attempts) == 1:
            raise OperationalError("COMMIT", {}, Exception("database is locked"))
        return out

    monkeypatch.setattr(bundles, "_transaction", racing)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": copy.deepcopy(patient),
                "request": {"method": "PUT", "url": f"Patient?{criteria}"},
            }
        ],
    }
    response = bundles.process(engine, bundle, "http://outcomes/fhir", access)
    assert len(attempts) == 2
    assert response["entry"][0]["response"]["status"] == "200 OK"
    assert "id" not in bundle["entry"][0]["resource"]  # the Bundle's entry as sent
    engine.dispose()
