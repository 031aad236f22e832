"""End to end: a post-operative scan auto-routed by the PACS ends up, measured against its
fetched pre-operative comparison, in the PACS (SR), the FHIR store (Observations) and the
gateway's case — in the embedded engine and in the PostgreSQL + Celery engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fhirpy import SyncFHIRClient
from sqlmodel import Session, func, select

from services.common.fhir import codes
from services.imaging.models import JobState, MeasurementSet, ResultDelivery
from tests.e2e.conftest import Hospital
from tests.harness.dcmtk import storescu
from tests.harness.net import wait_until
from tests.harness.outcomes import post_cohort
from tools.demo.cohort import PatientPlan, phantom_specs, plan_patient
from tools.phantom import write_phantom

pytestmark = [pytest.mark.integration, pytest.mark.slow]
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _send_to_pacs(hospital: Hospital, plan: PatientPlan) -> dict[str, dict[str, Any]]:
    """Render the plan's pre- and post-op phantoms and store both into Orthanc (dcmtk)."""
    pre, post = phantom_specs(
        plan,
        pixel_spacing=1.2 if plan.modality == "CT" else None,
        slice_spacing=1.5 if plan.modality == "CT" else None,
    )
    truth = {}
    for name, spec in (("pre", pre), ("post", post)):
        folder = hospital.root / f"{plan.mrn}-{name}"
        truth[name] = write_phantom(spec, folder)
        files = sorted(folder.glob("*.dcm"))
        sent = storescu(hospital.orthanc.dicom_port, hospital.orthanc.aet, files)
        assert sent.returncode == 0, sent.stderr
    return truth


def _results(hospital: Hospital, mrn: str) -> list[dict[str, Any]]:
    with hospital.imaging.client() as client:
        return list(client.get("/api/results", params={"PatientID": mrn}).json()["items"])


def _post_uid(hospital: Hospital, mrn: str) -> str:
    latest = max(_results(hospital, mrn), key=lambda r: r["study_date"])
    return str(latest["study_instance_uid"])


def _analysed(hospital: Hospital, mrn: str, count: int) -> Callable[[], bool]:
    def check() -> bool:
        items = _results(hospital, mrn)
        return len(items) == count and all(i["analysis_state"] == "done" for i in items)

    return check


def _deliveries(hospital: Hospital) -> list[tuple[str, str, str | None]]:
    with Session(hospital.imaging.app.state.engine) as session:
        rows = session.exec(
            select(ResultDelivery.target, ResultDelivery.state, ResultDelivery.last_error)
        ).all()
    return [(t, str(s), e) for t, s, e in rows]


def _deliveries_done(hospital: Hospital) -> bool:
    rows = _deliveries(hospital)
    return bool(rows) and all(state == "done" for _, state, _ in rows)


def _pacs_srs(hospital: Hospital, study_uid: str) -> list[dict[str, Any]]:
    orthanc = hospital.orthanc
    try:
        study = orthanc.study_id(study_uid)
    except StopIteration:
        return []
    found = []
    for series in orthanc.get(f"/studies/{study}/series"):
        if series["MainDicomTags"].get("Modality") != "SR":
            continue
        for instance in series["Instances"]:
            found.append(orthanc.get(f"/instances/{instance}/tags?simplify"))
    return found


def _truth(truth: dict[str, Any], quantity: str, level: str, side: str | None) -> float:
    for m in truth["measurements"]:
        if (m["quantity"], m["true_level"], m["side"]) == (quantity, level, side):
            return float(m["value"])
    raise KeyError((quantity, level, side))


def _check_flow(hospital: Hospital, plan: PatientPlan, case_id: str) -> None:
    mrn = plan.mrn
    truth = _send_to_pacs(hospital, plan)
    pre_uid, post_uid = truth["pre"]["study_instance_uid"], truth["post"]["study_instance_uid"]
    # Only the post-op study is routed; its arrival fetches the pre-op one from the PACS.
    assert wait_until(_analysed(hospital, mrn, 2), timeout=300, interval=1.0), _results(
        hospital, mrn
    )
    with hospital.imaging.client() as client:
        sources = {
            uid: client.get(f"/api/studies/{uid}").json()["source"] for uid in (pre_uid, post_uid)
        }
    assert sources == {pre_uid: "pull", post_uid: "push"}
    assert wait_until(lambda: _deliveries_done(hospital), 60, 0.5), _deliveries(hospital)

    # The SR of each study is in the PACS.
    for uid in (pre_uid, post_uid):
        srs = _pacs_srs(hospital, uid)
        assert len(srs) == 1, uid
        assert srs[0]["SOPClassUID"] == COMPREHENSIVE_3D_SR
        assert srs[0]["PatientID"] == mrn and srs[0]["StudyInstanceUID"] == uid

    # The metrics are Observations derived from ImagingStudy resources, on the EHR's Patient.
    fhir = SyncFHIRClient(
        hospital.outcomes.fhir_url, authorization=f"Bearer {hospital.outcomes.token()}"
    )
    patients = fhir.resources("Patient").search(identifier=f"{codes.MRN_SYSTEM_DEFAULT}|{mrn}")
    assert len(patients.fetch_all()) == 1  # found, not duplicated
    patient_id = patients.fetch_all()[0].id
    quantity = "foraminal-height" if plan.modality == "CT" else "dural-sac-area"
    values: dict[str, dict[tuple[str, str | None], float]] = {}
    for when, uid in (("pre", pre_uid), ("post", post_uid)):
        studies = fhir.resources("ImagingStudy").search(
            identifier=f"{codes.DICOM_UID_SYSTEM}|urn:oid:{uid}"
        )
        found = studies.fetch_all()
        assert len(found) == 1 and found[0]["subject"]["reference"] == f"Patient/{patient_id}"
        observations = (
            fhir.resources("Observation")
            .search(**{"derived-from": f"ImagingStudy/{found[0].id}"})
            .fetch_all()
        )
        assert observations and all(o["status"] == "final" for o in observations)
        values[when] = {}
        for o in observations:
            if o["code"]["coding"][0]["code"] != quantity:
                continue
            side = next(
                (c["valueCodeableConcept"]["coding"][0]["code"] for c in o.get("component", [])),
                None,
            )
            values[when][(o["bodySite"]["coding"][0]["code"], side)] = o["valueQuantity"]["value"]
    sides = ("left", "right") if plan.modality == "CT" else (None,)
    snake = quantity.replace("-", "_")
    for level in plan.levels:
        for side in sides:
            change = values["post"][(level, side)] - values["pre"][(level, side)]
            expected = _truth(truth["post"], snake, level, side) - _truth(
                truth["pre"], snake, level, side
            )
            bound = (
                1.5 if plan.modality == "CT" else 0.12 * _truth(truth["post"], snake, level, side)
            )
            assert abs(change - expected) < bound, (level, side, change, expected)

    # The gateway's case shows the same pair and change.
    with hospital.gateway.client(role="clinician") as client:
        case = client.get(f"/api/cases/{case_id}").json()
    imaging = case["imaging"]
    assert imaging["pre"]["study"] == pre_uid
    assert imaging["post"][0]["study"] == post_uid
    rows = [r for r in imaging["metrics"] if r["quantity"] == snake and r["operated"]]
    assert rows
    for row in rows:
        change = row["post"][0]["change"]
        fhir_change = (
            values["post"][(row["level"], row["side"])] - values["pre"][(row["level"], row["side"])]
        )
        assert change == pytest.approx(fhir_change, abs=0.02)


def _count_sets(hospital: Hospital, uid: str) -> int:
    with Session(hospital.imaging.app.state.engine) as session:
        return int(
            session.exec(
                select(func.count())
                .select_from(MeasurementSet)
                .where(MeasurementSet.study_instance_uid == uid)
            ).one()
        )


def test_embedded_flow_and_reanalysis(hospital_factory: Callable[..., Hospital]) -> None:
    hospital = hospital_factory("embedded")
    plan = plan_patient(0)  # foraminal stenosis, CT
    cases = post_cohort(hospital.outcomes, [plan])
    _check_flow(hospital, plan, cases[plan.mrn])

    # Re-analysis: the SR is replaced (a successor naming its predecessor), the
    # Observations are updated in place, nothing is duplicated.
    post_uid = _post_uid(hospital, plan.mrn)
    old_sr = _pacs_srs(hospital, post_uid)[0]["SOPInstanceUID"]
    fhir = SyncFHIRClient(
        hospital.outcomes.fhir_url, authorization=f"Bearer {hospital.outcomes.token()}"
    )
    before = len(fhir.resources("Observation").search(category="imaging-metric").fetch_all())
    with hospital.imaging.client() as client:
        assert client.post(f"/api/studies/{post_uid}/analyze").status_code == 202
    assert wait_until(lambda: _count_sets(hospital, post_uid) == 2, timeout=120, interval=0.5)
    assert wait_until(lambda: len(_pacs_srs(hospital, post_uid)) == 2, timeout=60, interval=0.5)
    newest = next(s for s in _pacs_srs(hospital, post_uid) if s["SOPInstanceUID"] != old_sr)
    predecessors = newest["PredecessorDocumentsSequence"][0]["ReferencedSeriesSequence"][0]
    assert predecessors["ReferencedSOPSequence"][0]["ReferencedSOPInstanceUID"] == old_sr
    assert wait_until(lambda: _deliveries_done(hospital), 60, 0.5), _deliveries(hospital)
    after = len(fhir.resources("Observation").search(category="imaging-metric").fetch_all())
    assert after == before  # the same values: unchanged, not duplicated


def test_celery_postgres_flow_with_two_workers(hospital_factory: Callable[..., Hospital]) -> None:
    hospital = hospital_factory("celery", workers=2)
    plan = plan_patient(1)  # central stenosis, MR
    cases = post_cohort(hospital.outcomes, [plan])
    _check_flow(hospital, plan, cases[plan.mrn])
    with hospital.imaging.client() as client:
        ready = client.get("/readyz")
        metrics = httpx.get(f"{hospital.imaging.url}/metrics").text
    assert ready.status_code == 200 and ready.json()["checks"]["queue"] == "ok"
    # Key images went to the PACS too, as Secondary Capture, in the post-op study.
    post_uid = _post_uid(hospital, plan.mrn)
    orthanc = hospital.orthanc
    series = orthanc.get(f"/studies/{orthanc.study_id(post_uid)}/series")
    captures = [s for s in series if s["MainDicomTags"].get("Modality") == "OT"]
    assert len(captures) == 1 and captures[0]["Instances"]
    tags = orthanc.get(f"/instances/{captures[0]['Instances'][0]}/tags?simplify")
    assert tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.7" and tags["PatientID"] == plan.mrn
    assert 'imaging_queue_depth{state="done"} 2.0' in metrics


def test_worker_killed_mid_analysis_is_rerun_once(
    hospital_factory: Callable[..., Hospital],
) -> None:
    # One worker first, with a short visibility timeout, so the dead worker's message
    # comes back within the test.
    hospital = hospital_factory("celery", workers=1, visibility=15)
    plan = plan_patient(0)
    pre, _ = phantom_specs(plan, pixel_spacing=1.2, slice_spacing=1.5)
    folder = hospital.root / "pre"
    truth = write_phantom(pre, folder)
    uid = truth["study_instance_uid"]
    sent = storescu(
        hospital.imaging.dicom_port, hospital.imaging.ae_title, sorted(folder.glob("*.dcm"))
    )
    assert sent.returncode == 0, sent.stderr

    def job() -> dict[str, Any] | None:
        with hospital.imaging.client() as client:
            jobs = client.get(f"/api/studies/{uid}/analysis-jobs").json()
        return jobs[0] if isinstance(jobs, list) and jobs else None

    assert wait_until(lambda: (j := job()) is not None and j["state"] == "running", 60, 0.1)
    hospital.workers[0].kill()
    second = hospital.add_worker("w2")
    assert wait_until(lambda: (j := job()) is not None and j["state"] == JobState.DONE, 180, 0.5)
    final = job()
    assert final is not None and final["attempts"] == 2
    assert _count_sets(hospital, uid) == 1  # exactly once
    assert wait_until(lambda: _deliveries_done(hospital), 60, 0.5), _deliveries(hospital)
    assert len(_pacs_srs(hospital, uid)) == 1
    assert second.alive()
