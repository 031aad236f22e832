"""The gateway against the real imaging and outcomes services (see conftest.py)."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import zipfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from pypdf import PdfReader

from tests.gateway.conftest import Stack
from tests.harness.gateway import PSEUDONYM_KEY
from tests.harness.imaging import TEST_KEY

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PNG = b"\x89PNG\r\n\x1a\n"


def _truth(stack: Stack, mrn: str, when: str, quantity: str, level: str, side: str | None) -> float:
    for m in stack.truth[mrn][when]["measurements"]:
        if (m["quantity"], m["true_level"], m["side"]) == (quantity, level, side):
            return float(m["value"])
    raise KeyError((mrn, when, quantity, level, side))


def _case(stack: Stack, index: int, role: str) -> dict[str, Any]:
    plan = stack.plans[index]
    with stack.gateway.client(role=role) as client:
        response = client.get(f"/api/cases/{stack.case_id(plan.mrn, role)}")
    assert response.status_code == 200, response.text
    return response.json()


def test_foraminal_case_pairs_ct_and_measures_the_change(stack: Stack) -> None:
    plan = stack.plans[0]
    case = _case(stack, 0, "clinician")
    assert case["identified"] and case["patient"]["id"] == plan.mrn
    assert case["patient"]["name"] == f"{plan.given} {plan.family}"
    assert case["surgery"]["group"] == "foraminal-stenosis"
    assert case["surgery"]["levels"] == plan.levels
    assert case["surgery"]["technique"] == plan.technique
    assert case["surgery"]["date"] == plan.surgery_date.isoformat()
    imaging = case["imaging"]
    assert imaging["modality"] == "CT"
    assert imaging["pre"]["study_date"] == plan.pre_imaging_date.isoformat()
    assert [p["label"] for p in imaging["post"]] == ["day-2"]
    assert imaging["pre"]["interval_days"] < 0 and imaging["post"][0]["interval_days"] == 2
    rows = [r for r in imaging["metrics"] if r["quantity"] == "foraminal_height" and r["operated"]]
    assert {(r["level"], r["side"]) for r in rows} == {
        (lvl, side) for lvl in plan.levels for side in ("left", "right")
    }
    for row in rows:
        pre, post = row["pre"], row["post"][0]
        assert pre["status"] == "ok" and post["value"]["status"] == "ok", row
        expected = _truth(
            stack, plan.mrn, "post", "foraminal_height", row["level"], row["side"]
        ) - (_truth(stack, plan.mrn, "pre", "foraminal_height", row["level"], row["side"]))
        assert expected > 1.0  # the phantom's cage restores the foramen
        assert abs(post["change"] - expected) < 1.5, (row, expected)
        assert post["change_percent"] == pytest.approx(
            100 * post["change"] / pre["value"], abs=0.05
        )
    # Key images come through the gateway.
    images = imaging["post"][0]["key_images"]
    assert images and imaging["post"][0]["sr_sop_instance_uid"]
    with stack.gateway.client(role="clinician") as client:
        png = client.get(images[0]["url"])
    assert png.status_code == 200 and png.content.startswith(PNG)


def test_central_case_pairs_mr_and_measures_the_sac(stack: Stack) -> None:
    plan = stack.plans[1]
    case = _case(stack, 1, "clinician")
    assert case["surgery"]["group"] == "central-stenosis" and case["imaging"]["modality"] == "MR"
    rows = [
        r for r in case["imaging"]["metrics"] if r["quantity"] == "dural_sac_area" and r["operated"]
    ]
    assert rows
    for row in rows:
        true_pre = _truth(stack, plan.mrn, "pre", "dural_sac_area", row["level"], None)
        true_post = _truth(stack, plan.mrn, "post", "dural_sac_area", row["level"], None)
        change = row["post"][0]["change"]
        assert change is not None and change > 0
        assert abs(change - (true_post - true_pre)) < 0.12 * true_post, (row, true_pre, true_post)


def test_outcomes_timeline_mcid_and_complications(stack: Stack) -> None:
    plan = stack.plans[0]
    case = _case(stack, 0, "clinician")
    odi = next(s for s in case["proms"] if s["code"] == "odi")
    assert odi["mcid"] == 12.8 and odi["baseline"] == plan.proms["odi"]["baseline"]
    for point in odi["points"]:
        assert point["value"] == plan.proms["odi"][point["time_point"]]
        if point["time_point"] != "baseline":
            change = point["value"] - odi["baseline"]
            assert point["change"] == pytest.approx(change)
            assert point["mcid_reached"] is (-change >= 12.8)
    early = case["early"]
    assert early["length_of_stay_days"] == plan.length_of_stay + 1  # admitted the day before
    assert early["blood_loss_ml"] == round(plan.blood_loss)
    assert [e["time_point"] for e in early["analgesic_mme"]] == ["day-1", "day-2", "day-3"]
    assert {e["time_point"] for e in early["pain"]} == {"day-1", "day-2"}
    assert len(case["complications"]) == len(plan.complications)


def test_researcher_sees_pseudonyms_and_shifted_dates(stack: Stack) -> None:
    plan = stack.plans[0]
    identified = _case(stack, 0, "clinician")
    case = _case(stack, 0, "researcher")
    text = str(case)
    for secret in (plan.mrn, plan.family, plan.given, identified["imaging"]["pre"]["study"]):
        assert secret not in text
    assert case["patient"]["id"].startswith("P-") and case["patient"]["name"] is None
    assert case["surgery"]["surgeon"]["id"].startswith("S-")
    assert case["imaging"]["post"][0]["sr_sop_instance_uid"] is None
    shift = date.fromisoformat(case["surgery"]["date"]) - plan.surgery_date
    assert shift.days != 0 and abs(shift.days) <= 180
    assert date.fromisoformat(case["imaging"]["pre"]["study_date"]) - plan.pre_imaging_date == shift
    assert case["imaging"]["post"][0]["interval_days"] == 2  # intervals are preserved
    assert case["patient"]["age_at_surgery"] == identified["patient"]["age_at_surgery"]
    # The same values, under the pseudonym; the key image still comes through the gateway.
    assert case["imaging"]["metrics"] == identified["imaging"]["metrics"]
    with stack.gateway.client(role="researcher") as client:
        png = client.get(case["imaging"]["post"][0]["key_images"][0]["url"])
        assert png.status_code == 200 and png.content.startswith(PNG)
        again = client.get(f"/api/cases/{stack.case_id(plan.mrn, 'researcher')}").json()
        # The EHR's Procedure id does not reach a case for a researcher.
        assert client.get(f"/api/cases/{stack.cases[plan.mrn]}").status_code == 404
    assert again["patient"]["id"] == case["patient"]["id"]  # stable pseudonym


def test_case_bundle_is_valid_fhir_and_deidentified_for_researchers(stack: Stack) -> None:
    plan = stack.plans[0]
    case_id = stack.cases[plan.mrn]
    with stack.gateway.client(role="researcher") as client:
        researcher = client.get(f"/api/cases/{stack.case_id(plan.mrn, 'researcher')}/bundle")
    with stack.gateway.client(role="clinician") as client:
        clinician = client.get(f"/api/cases/{case_id}/bundle")
    for response in (researcher, clinician):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/fhir+json")
        Bundle.model_validate(response.json())  # raises when not valid R4
    text = researcher.text
    for secret in (plan.mrn, plan.family, plan.given, plan.surgery_date.isoformat()):
        assert secret not in text
    assert plan.mrn in clinician.text
    kinds = {e["resource"]["resourceType"] for e in researcher.json()["entry"]}
    assert {"Patient", "Procedure", "Observation", "ImagingStudy"} <= kinds


def test_case_list_filters_and_paging(stack: Stack) -> None:
    with stack.gateway.client(role="researcher") as client:
        everything = client.get("/api/cases", params={"refresh": "true"}).json()
        foraminal = client.get("/api/cases", params={"group": "foraminal-stenosis"}).json()
        page = client.get("/api/cases", params={"limit": 1, "offset": 1}).json()
        bad = client.get("/api/cases", params={"group": "spondylolisthesis"})
    assert everything["total"] == 3
    assert foraminal["total"] == 2
    assert all(i["group"] == "foraminal-stenosis" for i in foraminal["items"])
    assert page["total"] == 3 and len(page["items"]) == 1
    assert bad.status_code == 422 and "group" in bad.json()["reason"]
    missing = {i["patient"]: i["missing"] for i in everything["items"]}
    assert sum(1 for reason in missing.values() if reason) == 1
    assert any(reason and "no pre-operative CT" in reason for reason in missing.values())


def test_cohort_summary_matches_scipy_on_the_case_values(stack: Stack) -> None:
    with stack.gateway.client(role="researcher") as client:
        body = client.get("/api/cohort/summary", params={"refresh": "true"}).json()
        cases = [
            client.get(f"/api/cases/{stack.case_id(p.mrn, 'researcher')}").json()
            for p in stack.plans
        ]
    summary = body["summary"]
    assert summary["counts"]["cases"] == 3 and summary["counts"]["with_pair"] == 2
    assert [m["reason"] for m in summary["missing"]] == ["no pre-operative CT"]
    # Independent recomputation from the case endpoint's values (site level: 1 patient).
    pre, post = [], []
    for case in cases:
        for row in case["imaging"]["metrics"]:
            if row["quantity"] == "foraminal_height" and row["operated"] and row["post"]:
                pre.append(row["pre"]["value"])
                post.append(row["post"][0]["value"]["value"])
    site = next(
        m
        for m in summary["metrics"]
        if m["quantity"] == "foraminal_height" and m["unit_of_analysis"] == "site"
    )
    assert site["change"]["n"] == len(pre) >= 2
    diff = [b - a for a, b in zip(pre, post, strict=True)]
    assert site["change"]["mean_difference"] == pytest.approx(sum(diff) / len(diff))
    assert site["change"]["t_p_value"] is None  # sites are correlated: descriptive, no test
    assert site["change"]["wilcoxon_p_value"] is None
    # PROMs: every plan's ODI baseline is counted.
    odi = next(p for p in summary["proms"] if p["code"] == "odi")
    baseline = next(t for t in odi["points"] if t["time_point"] == "baseline")
    assert baseline["value"]["n"] == 3
    expected = [p.proms["odi"]["baseline"] for p in stack.plans]
    assert baseline["value"]["mean"] == pytest.approx(sum(expected) / 3)
    complications = summary["complications"]["any"]
    assert complications["n"] == 3
    assert complications["count"] == sum(bool(p.complications) for p in stack.plans)


def test_csv_export_rows_match_the_cases_and_the_dictionary(stack: Stack) -> None:
    with stack.gateway.client(role="researcher") as client:
        exported = client.get("/api/export/cases.csv")
        dictionary = client.get("/api/export/data-dictionary.csv")
        case = client.get(f"/api/cases/{stack.case_id(stack.plans[0].mrn, 'researcher')}").json()
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    columns = [r["column"] for r in csv.DictReader(io.StringIO(dictionary.text))]
    assert list(rows[0]) == columns
    assert sum(int(r["first_row_of_case"]) for r in rows) == 3
    assert stack.plans[0].mrn not in exported.text
    mine = [r for r in rows if r["case_id"] == case["case_id"]]
    for metric in case["imaging"]["metrics"]:
        side = metric["side"] or "midline"
        row = next(r for r in mine if (r["level"], r["side"]) == (metric["level"], side))
        q = metric["quantity"]
        if metric["pre"]["value"] is not None:
            assert float(row[f"{q}_pre"]) == pytest.approx(metric["pre"]["value"])
        if metric["post"] and metric["post"][0]["change"] is not None:
            assert float(row[f"{q}_change"]) == pytest.approx(metric["post"][0]["change"])
    assert {r["patient"] for r in mine} == {case["patient"]["id"]}


@pytest.mark.parametrize(
    ("path", "media"),
    [
        ("/api/cohort/plots/paired.png?quantity=foraminal_height", "image/png"),
        ("/api/cohort/plots/changes.svg", "image/svg+xml"),
        ("/api/cohort/plots/complications.png", "image/png"),
        ("/api/cohort/plots/proms.svg?prom=leg-pain-nrs", "image/svg+xml"),
    ],
)
def test_cohort_plots(stack: Stack, path: str, media: str) -> None:
    with stack.gateway.client(role="researcher") as client:
        response = client.get(path)
    assert response.status_code == 200 and response.headers["content-type"] == media
    assert response.content.startswith(PNG) if media == "image/png" else b"<svg" in response.content


def test_case_plots(stack: Stack) -> None:
    case_id = stack.case_id(stack.plans[0].mrn, "researcher")
    with stack.gateway.client(role="researcher") as client:
        metrics = client.get(f"/api/cases/{case_id}/plots/metrics.png")
        proms = client.get(f"/api/cases/{case_id}/plots/proms.svg")
        unknown = client.get(f"/api/cases/{case_id}/plots/histogram.png")
    assert metrics.status_code == 200 and metrics.content.startswith(PNG)
    assert proms.status_code == 200 and b"<svg" in proms.content
    assert unknown.status_code == 422


def test_access_control_and_audit(stack: Stack) -> None:
    gateway = stack.gateway
    case_id = stack.cases[stack.plans[0].mrn]
    anonymous = httpx.get(f"{gateway.url}/api/cases/{case_id}")
    assert anonymous.status_code == 401
    with gateway.client(role=None) as client:  # a valid token without a gateway role
        assert client.get(f"/api/cases/{case_id}").status_code == 403
    with gateway.client(scope="imaging.read", role="clinician") as client:
        assert client.get(f"/api/cases/{case_id}").status_code == 403
    with gateway.client(role="researcher") as client:
        assert client.get(f"/api/cases/{stack.case_id(stack.plans[0].mrn, 'researcher')}")
        assert client.get("/api/audit").status_code == 403
        assert client.get("/api/cases/no-such-case").status_code == 404
    with gateway.client(scope="gateway.audit", subject="privacy-officer") as client:
        trail = client.get("/api/audit", params={"case_id": case_id, "limit": 1000}).json()
    roles = {(r["subject"], r["role"]) for r in trail}
    assert ("dr-researcher", "researcher") in roles and ("dr-researcher", "clinician") in roles
    assert any(r["status_code"] == 403 for r in trail)
    assert all(r["path"].startswith(("/api/cases/", "/dashboard/cases/")) for r in trail)


def test_openapi_documents_every_endpoint(stack: Stack) -> None:
    schema = httpx.get(f"{stack.gateway.url}/openapi.json").json()
    for path in (
        "/api/cases",
        "/api/cases/{case}",
        "/api/cases/{case}/bundle",
        "/api/cohort/summary",
        "/api/cohort/plots/{kind}.{fmt}",
        "/api/export/cases.csv",
        "/api/export/data-dictionary.csv",
        "/api/follow-up",
        "/api/report.html",
        "/api/report.pdf",
        "/api/export/analysis.zip",
        "/api/export/follow-up.csv",
        "/api/audit",
        "/readyz",
    ):
        assert path in schema["paths"], path
        for operation in schema["paths"][path].values():
            assert operation.get("description") or operation.get("summary"), path


def test_follow_up_lists_what_each_case_has_and_lacks(stack: Stack) -> None:
    """The coordinator's list through the real services: patients 0 and 1 have their
    imaging and every PROM the demo plan schedules; patient 2 has no imaging at all."""
    with stack.gateway.client(role="clinician") as client:
        page = client.get("/api/follow-up")
        assert page.status_code == 200, page.text
        body = page.json()
        by_patient = {e["patient"]: e for e in body["items"]}
        assert set(by_patient) == {p.mrn for p in stack.plans}

        def status(mrn: str, item: str, time_point: str | None) -> str:
            entry = by_patient[mrn]
            return next(
                i["status"]
                for i in entry["items"]
                if i["item"] == item and i["time_point"] == time_point
            )

        for plan in stack.plans[:2]:
            assert status(plan.mrn, "imaging-pre", None) == "present"
            assert status(plan.mrn, "imaging-post", None) == "present"
            assert status(plan.mrn, "odi", "month-12") == "present"
            assert by_patient[plan.mrn]["surgery_date"] == plan.surgery_date.isoformat()
        no_imaging = stack.plans[2].mrn
        assert status(no_imaging, "imaging-post", None) == "missing"  # years after surgery
        missing = client.get("/api/follow-up", params={"status": "missing"}).json()
        assert no_imaging in {e["patient"] for e in missing["items"]}
        assert missing["totals"]["missing"] >= 2
        # As of a day before the surgeries, nothing after the baseline is expected yet.
        early = client.get("/api/follow-up", params={"as_of": "2023-12-01"}).json()
        assert early["totals"]["overdue"] == early["totals"]["missing"] == 0
        exported = client.get("/api/export/follow-up.csv")
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert {r["patient"] for r in rows} == set(by_patient)
        assert next(r for r in rows if r["patient"] == no_imaging)["imaging-pre"] == "missing"
        assert client.get("/api/follow-up", params={"status": "late"}).status_code == 422
        grid = client.get("/dashboard/follow-up")
        assert grid.status_code == 200 and 'id="follow-up"' in grid.text
    # Due dates computed from real surgery dates would undo the researcher's date shift.
    with stack.gateway.client(role="researcher") as client:
        refused = client.get("/api/follow-up")
        assert refused.status_code == 403 and "identified" in refused.json()["reason"]
        assert client.get("/api/export/follow-up.csv").status_code == 403
        page = client.get("/dashboard/follow-up")
        assert page.status_code == 403 and "date shift" in page.text
        assert stack.plans[0].mrn not in page.text


def test_the_case_list_shows_where_the_pacs_retrieval_stands(stack: Stack) -> None:
    """A cohort retrieval that found no pre-operative study for patient 2 (the imaging
    service's own record of it): the case list and the case say so, in both views."""
    from sqlmodel import Session, delete

    from services.imaging.models import CohortPatient

    plan = stack.plans[2]
    engine = stack.imaging.app.state.engine
    with Session(engine) as session:
        session.add(
            CohortPatient(
                patient_id=plan.mrn,
                surgery_date=f"{plan.surgery_date:%Y%m%d}",
                modality=plan.modality,
                group=plan.group,
                pre_state="missing",
                post_state="missing",
                reason="no CT in the windows",
                updated_at=datetime.now(UTC),
            )
        )
        session.add(  # the same patient's other surgery: not this case's status
            CohortPatient(
                patient_id=plan.mrn,
                surgery_date="20200101",
                modality=plan.modality,
                group=plan.group,
                pre_state="retrieved",
                post_state="retrieved",
                updated_at=datetime.now(UTC),
            )
        )
        session.commit()
    try:
        for role in ("clinician", "researcher"):
            with stack.gateway.client(role=role) as client:
                page = client.get("/api/cases", params={"refresh": "true"}).json()
                shown = {c["patient"]: c["retrieval"] for c in page["items"]}
                case_id = stack.case_id(plan.mrn, role)
                item = next(c for c in page["items"] if c["case_id"] == case_id)
                assert item["retrieval"] == "missing"
                assert list(shown.values()).count(None) == 2  # never in a retrieval
                case = client.get(f"/api/cases/{case_id}").json()
                assert case["imaging"]["retrieval"] == "missing"
    finally:
        with Session(engine) as session:
            session.exec(delete(CohortPatient))  # type: ignore[call-overload]
            session.commit()


def test_the_study_report_and_the_analysis_export_through_the_real_services(
    stack: Stack, tmp_path: Path
) -> None:
    """The researcher's report (HTML, PDF) and export carry pseudonyms only; the command
    line writes the same report from the same upstreams."""
    plan = stack.plans[0]
    with stack.gateway.client(role="researcher") as client:
        page = client.get("/api/report.html")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "Table 1. Baseline characteristics by group" in page.text
        assert plan.mrn not in page.text and plan.family not in page.text
        document = client.get("/api/report.pdf")
        assert document.status_code == 200 and document.content.startswith(b"%PDF")
        text = " ".join(
            " ".join(
                p.extract_text() for p in PdfReader(io.BytesIO(document.content)).pages
            ).split()
        )
        assert "Flow of the consecutive series" in text and plan.mrn not in text
        exported = client.get("/api/export/analysis.zip")
        assert exported.status_code == 200
        archive = zipfile.ZipFile(io.BytesIO(exported.content))
        patients = archive.read("patients.csv").decode()
        assert plan.mrn not in patients and patients.count("\n") == len(stack.plans) + 1
        assert client.get("/api/report.pdf", params={"group": "none"}).status_code == 422
    assert httpx.get(f"{stack.gateway.url}/api/report.pdf").status_code == 401
    settings = stack.gateway.settings
    env = {
        **os.environ,
        "GATEWAY_IMAGING_URL": settings.imaging_url,
        "GATEWAY_OUTCOMES_URL": settings.outcomes_url,
        "GATEWAY_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "GATEWAY_DATA_DIR": str(tmp_path),
        "AUTH_SECRET_KEY": TEST_KEY,
    }
    out = tmp_path / "report.pdf"
    run = subprocess.run(
        [sys.executable, "-m", "services.gateway", "report", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"{len(stack.plans)} cases" in run.stdout
    assert len(PdfReader(out).pages) >= 3


def test_dashboard_errors_are_pages_and_filters_offer_the_viewers_surgeons(stack: Stack) -> None:
    with stack.gateway.client(role="researcher") as client:
        missing = client.get("/dashboard/cases/no-such-case")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("text/html")
        assert "Not found" in missing.text and "<html" in missing.text
        bad = client.get("/dashboard/", params={"group": "bogus"})
        assert bad.status_code == 422 and "not understood" in bad.text
        assert client.get("/api/cases/no-such-case").json()["error"] == "NotFound"  # API: JSON
        cases = client.get("/dashboard/cases")
        assert cases.status_code == 200
        assert '<select name="surgeon">' in cases.text and "S-" in cases.text
        assert "shifted dates" in cases.text
        assert "Foraminal stenosis" in cases.text  # labels, not codes
    with stack.gateway.client(role="clinician") as client:
        cases = client.get("/dashboard/cases").text
        assert "shifted dates" not in cases and "Dr " in cases
