"""The FHIR server on a real PostgreSQL: migrations, the conditional-create race,
transactions and search."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services.common.fhir import builders as b
from services.common.fhir import codes
from tests.harness.outcomes import OutcomesServer
from tests.harness.postgres import PostgresServer

pytestmark = pytest.mark.integration


def test_fhir_server_on_postgresql(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.fresh_database("outcomes_test")
    with OutcomesServer(tmp_path / "outcomes", database_url=url) as server:
        query = f"identifier={codes.MRN_SYSTEM_DEFAULT}|MRN-PG"

        def create(_: int) -> int:
            with server.client() as client:
                response = client.post(
                    "/Patient", json=b.patient("MRN-PG"), headers={"If-None-Exist": query}
                )
                return response.status_code

        with ThreadPoolExecutor(max_workers=20) as pool:
            statuses = list(pool.map(create, range(20)))
        assert statuses.count(201) == 1 and statuses.count(200) == 19

        with server.client() as client:
            pid = client.get("/Patient", params={"identifier": query.split("=", 1)[1]}).json()[
                "entry"
            ][0]["resource"]["id"]
            entries = [
                {
                    "resource": b.measurement(f"Patient/{pid}", "odi", v, effective=d),
                    "request": {"method": "POST", "url": "Observation"},
                }
                for v, d in ((50, "2025-01-01"), (30, "2025-03-01"), (20, "2025-06-01"))
            ]
            tx = client.post(
                "", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}
            )
            assert tx.status_code == 200
            bad = client.post(
                "",
                json={
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": [
                        *entries,
                        {
                            "resource": b.measurement(
                                f"Patient/{pid}", "odi", 101, effective="2025"
                            ),
                            "request": {"method": "POST", "url": "Observation"},
                        },
                    ],
                },
            )
            assert bad.status_code == 422
            found = client.get(
                "/Observation", params={"patient": pid, "date": "ge2025-02-01", "_sort": "-date"}
            ).json()
            assert [e["resource"]["valueQuantity"]["value"] for e in found["entry"]] == [20, 30]
            assert client.get("/Observation", params={"_summary": "count"}).json()["total"] == 3
