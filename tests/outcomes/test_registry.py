"""The registry import against the real FHIR server: exports in each encoding, separator
and format, re-imports that write nothing, corrections that amend exactly what changed,
bad rows reported cell by cell without stopping the good ones, files that are not tables."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.fhir import codes
from services.outcomes.registry.importer import REGISTRY_SYSTEM
from tests.harness.outcomes import OutcomesServer
from tests.outcomes.registry_exports import as_csv, as_xlsx, row

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[OutcomesServer]:
    with OutcomesServer(tmp_path / "outcomes") as s:
        yield s


def _upload(
    server: OutcomesServer,
    data: bytes,
    name: str,
    *,
    dry_run: bool = False,
    media: str = "text/csv",
) -> httpx.Response:
    with server.client("registry.import") as client:
        return client.post(
            f"{server.url}/registry/import",
            params={"filename": name, "dry_run": str(dry_run).lower()},
            content=data,
            headers={"Content-Type": media},
        )


def _search(server: OutcomesServer, resource_type: str, **params: str) -> list[dict[str, Any]]:
    with server.client("system/*.rs") as client:
        bundle = client.get(f"/{resource_type}", params={"_count": "1000", **params}).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def _versions(server: OutcomesServer) -> int:
    with server.client("system/*.rs") as client:
        return sum(
            int(client.get(f"/{t}/_history", params={"_count": "0"}).json()["total"])
            for t in ("Patient", "Practitioner", "Encounter", "Procedure", "Observation")
        )


@pytest.mark.parametrize(
    ("name", "encode", "media"),
    [
        (
            "keops-utf8.csv",
            lambda rows: as_csv(rows, encoding="utf-8-sig", delimiter=";"),
            "text/csv",
        ),
        (
            "keops-cp1252.csv",
            lambda rows: as_csv(rows, encoding="cp1252", delimiter=","),
            "text/csv",
        ),
        (
            "keops-latin1-tab.csv",
            lambda rows: as_csv(rows, encoding="latin-1", delimiter="\t"),
            "text/csv",
        ),
        ("keops.xlsx", as_xlsx, XLSX),
    ],
)
def test_exports_in_every_encoding_and_layout_load(
    server: OutcomesServer, name: str, encode: Any, media: str
) -> None:
    rows = [row(i) for i in range(6)]
    response = _upload(server, encode(rows), name, media=media)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["summary"]["patients_loaded"] == 6 and report["errors"] == []
    patients = _search(server, "Patient", identifier=f"{codes.MRN_SYSTEM_DEFAULT}|REG00000")
    assert patients[0]["name"][0] == {"family": "Lefèvre", "given": ["Hélène"]}
    procedure = _search(server, "Procedure", identifier=f"{REGISTRY_SYSTEM}|REG00001/2023-02-02")
    assert [c["coding"][0]["code"] for c in procedure[0]["bodySite"]] == ["L4-L5", "L5-S1"]
    assert procedure[0]["reasonCode"][0]["coding"][0]["code"] == "central-stenosis"
    pain = _search(server, "Observation", code=f"{codes.PROJECT}|leg-pain-vas")
    assert {o["valueQuantity"]["value"] for o in pain} == {7.5}  # the decimal comma
    eq5d = _search(server, "Observation", code=f"{codes.PROJECT}|eq5d-index")
    assert {o["valueQuantity"]["value"] for o in eq5d} == {0.512, 0.78}
    stays = _search(server, "Observation", code=f"{codes.PROJECT}|length-of-stay")
    assert len(stays) == 6  # derived by the server from each Encounter
    complications = _search(server, "Observation", category=f"{codes.PROJECT}|complication")
    assert len(complications) == 2 and complications[0]["code"]["coding"][0]["code"] == "dural-tear"


def test_a_second_import_writes_nothing_and_a_correction_amends_what_changed(
    server: OutcomesServer,
) -> None:
    rows = [row(i) for i in range(4)]
    assert _upload(server, as_csv(rows), "first.csv").json()["summary"]["resources_created"] > 30
    before = _versions(server)
    again = _upload(server, as_csv(rows), "again.csv").json()["summary"]
    assert again["resources_created"] == 0 and again["resources_updated"] == 0
    assert again["resources_withdrawn"] == 0 and again["resources_unchanged"] > 30
    assert _versions(server) == before  # the FHIR history: not one new version
    rows[0]["ODI M3"] = "31"  # a corrected value
    rows[3]["Complication 1"] = ""  # a complication withdrawn by the registry
    rows[3]["Clavien-Dindo 1"] = ""
    rows[3]["Date complication 1"] = ""
    report = _upload(server, as_csv(rows), "corrected.csv").json()
    corrected = report["summary"]
    assert (corrected["resources_updated"], corrected["resources_withdrawn"]) == (1, 1)
    assert corrected["resources_created"] == 0
    # The per-value report: exactly what changed, old -> new.
    changes = {(c["row"], c["resource"], c["element"]): c for c in report["changes"]}
    value = changes[(2, "Observation REG00000/2023-01-01/odi/month-3", "valueQuantity.value")]
    assert value["new"] == 31 and value["old"] != 31
    status = changes[(5, "Observation REG00003/2023-04-04/complication/1", "status")]
    assert (status["old"], status["new"]) == ("final", "entered-in-error")
    assert len(changes) == 2
    assert _versions(server) == before + 2
    odi = _search(
        server, "Observation", identifier=f"{REGISTRY_SYSTEM}|REG00000/2023-01-01/odi/month-3"
    )
    assert odi[0]["valueQuantity"]["value"] == 31 and odi[0]["status"] == "amended"
    withdrawn = _search(
        server, "Observation", identifier=f"{REGISTRY_SYSTEM}|REG00003/2023-04-04/complication/1"
    )
    assert withdrawn[0]["status"] == "entered-in-error"


def test_bad_rows_are_reported_cell_by_cell_and_never_stop_the_good_ones(
    server: OutcomesServer,
) -> None:
    rows = [
        row(0),
        row(1, **{"Date intervention": ""}),  # a missing date
        row(2, **{"Complication 1": "Infection", "Clavien-Dindo 1": "IIIc"}),  # mistyped grade
        row(3, **{"Niveaux opérés": "L6-L7", "EVA radiculaire pré-op": "sept"}),
        row(4, **{"Date de naissance": "01/01/2030"}),  # born after the surgery
        row(5),
        row(6, **{"ODI M3": "140"}),
    ]
    response = _upload(server, as_csv(rows), "defects.csv")
    report = response.json()
    assert report["summary"]["patients_loaded"] == 2 and report["summary"]["patients_rejected"] == 5
    cells = {(e["row"], e["column"]) for e in report["errors"]}
    assert {
        (3, "Date intervention"),
        (4, "Clavien-Dindo 1"),
        (5, "Niveaux opérés"),
        (5, "EVA radiculaire pré-op"),
        (6, "Date de naissance"),
        (8, "ODI M3"),
    } <= cells
    grade = next(e for e in report["errors"] if e["column"] == "Clavien-Dindo 1")
    assert grade["value"] == "IIIc" and "Clavien-Dindo" in grade["reason"]
    # Never half-loaded: a rejected row wrote nothing of its patient.
    assert _search(server, "Patient", identifier=f"{codes.MRN_SYSTEM_DEFAULT}|REG00002") == []
    assert len(_search(server, "Procedure")) == 2


def test_files_that_are_not_tables_write_nothing(server: OutcomesServer) -> None:
    workbook = as_xlsx([row(0)])
    for name, data, media in (
        ("truncated.xlsx", workbook[: len(workbook) // 2], XLSX),
        ("binary.csv", bytes(range(256)) * 4, "text/csv"),
        ("empty.csv", b"", "text/csv"),
        ("one-column.csv", b"just some words\nand more words\n", "text/csv"),
    ):
        response = _upload(server, data, name, media=media)
        assert response.status_code == 400, (name, response.text)
        assert "nothing was written" in response.json()["issue"][0]["diagnostics"]
    assert _search(server, "Patient") == []


def test_dry_run_and_scope(server: OutcomesServer) -> None:
    data = as_csv([row(0), row(1)])
    dry = _upload(server, data, "check.csv", dry_run=True).json()
    assert dry["dry_run"] and dry["summary"]["patients_loaded"] == 2
    assert dry["summary"]["resources_created"] > 10
    assert _search(server, "Patient") == []
    with server.client("system/*.cruds") as client:  # a FHIR scope is not enough
        refused = client.post(
            f"{server.url}/registry/import", content=data, headers={"Content-Type": "text/csv"}
        )
    assert refused.status_code == 403


def test_the_command_line_import(server: OutcomesServer, tmp_path: Path) -> None:
    export = tmp_path / "export.csv"
    export.write_bytes(as_csv([row(0), row(1, **{"Sexe": "X"})], encoding="cp1252"))
    env = {
        "OUTCOMES_DATABASE_URL": server.settings.resolved_database_url,
        "PATH": "/usr/bin:/bin",
    }
    run = subprocess.run(
        [sys.executable, "-m", "services.outcomes", "import-registry", str(export), "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert run.returncode == 1, run.stderr  # one rejected row
    report = json.loads(run.stdout)
    assert report["summary"]["patients_loaded"] == 1
    assert report["errors"][0]["column"] == "Sexe" and report["errors"][0]["row"] == 3
    assert len(_search(server, "Patient")) == 1
