"""A real Orthanc as the PACS: auto-routing to our SCP, STOW-RS push, pulls and priors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.dcmtk import storescu
from tests.harness.imaging import ImagingServer
from tests.harness.net import wait_until
from tests.harness.orthanc import OrthancServer
from tests.harness.series import SeriesSpec, make_series, to_bytes, write_series

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("dcmtk")]


def _study_state(server: ImagingServer, study: str) -> dict[str, object] | None:
    with server.client() as client:
        response = client.get(f"/api/studies/{study}")
    return response.json() if response.status_code == 200 else None


def _complete(server: ImagingServer, study: str, instances: int) -> Callable[[], bool]:
    def check() -> bool:
        state = _study_state(server, study)
        return bool(state and state["state"] == "complete" and state["instances"] == instances)

    return check


def test_orthanc_auto_routes_a_stable_study_to_our_scp(
    imaging: ImagingServer, orthanc_factory: Callable[..., OrthancServer], tmp_path: Path
) -> None:
    orthanc = orthanc_factory(
        modalities={"spineimg": [imaging.ae_title, "127.0.0.1", imaging.dicom_port]},
        autoroute=True,
        stable_age=1,
    )
    spec = SeriesSpec(slices=15, description="LUMBAR SPINE POST-OP")
    files = write_series(make_series(spec), tmp_path / "postop")
    other = SeriesSpec(slices=5, description="LUMBAR SPINE")  # not post-operative
    write_series(make_series(other), tmp_path / "preop")
    sent = storescu(orthanc.dicom_port, orthanc.aet, sorted((tmp_path / "preop").glob("*")))
    assert sent.returncode == 0, sent.stderr
    sent = storescu(orthanc.dicom_port, orthanc.aet, files)
    assert sent.returncode == 0, sent.stderr
    assert wait_until(_complete(imaging, spec.study_uid, 15), timeout=60, interval=0.5)
    with imaging.client() as client:
        events = client.get("/api/events").json()
    assert [(e["study_instance_uid"], e["study_version"]) for e in events] == [(spec.study_uid, 1)]
    assert _study_state(imaging, other.study_uid) is None  # the site rule routes post-op only
    # The routed series is marked, so the study becoming stable again does not resend it.
    series = orthanc.get(f"/studies/{orthanc.study_id(spec.study_uid)}/series")
    assert all("SpineRouted" in orthanc.get(f"/series/{s['ID']}/metadata") for s in series)


def test_orthanc_pushes_a_study_to_our_stow_rs_and_reports_success(
    imaging: ImagingServer, orthanc_factory: Callable[..., OrthancServer]
) -> None:
    token = imaging.token("imaging.write")
    orthanc = orthanc_factory(
        dicomweb_servers={
            "spine": {
                "Url": f"{imaging.url}/dicomweb/",
                "HttpHeaders": {"Authorization": f"Bearer {token}"},
            }
        }
    )
    spec = SeriesSpec(slices=6, modality="MR")
    study_id = None
    for ds in make_series(spec):
        study_id = orthanc.upload(to_bytes(ds))["ParentStudy"]
    job = orthanc.post("/dicom-web/servers/spine/stow", {"Resources": [study_id]})
    assert job == {} or "ID" in job or job.get("Description") is not None or isinstance(job, dict)
    assert wait_until(_complete(imaging, spec.study_uid, 6), timeout=30, interval=0.3)
    # A second push of the same study is idempotent.
    orthanc.post("/dicom-web/servers/spine/stow", {"Resources": [study_id]})
    state = _study_state(imaging, spec.study_uid)
    assert state is not None and state["instances"] == 6 and state["conflicts"] == 0


def test_orthanc_stow_fails_loudly_without_credentials(
    imaging: ImagingServer, orthanc_factory: Callable[..., OrthancServer]
) -> None:
    orthanc = orthanc_factory(dicomweb_servers={"spine": [f"{imaging.url}/dicomweb/"]})
    ds = make_series(SeriesSpec(slices=1))[0]
    study_id = orthanc.upload(to_bytes(ds))["ParentStudy"]
    with pytest.raises(Exception):  # noqa: B017 - Orthanc answers its own HTTP error
        orthanc.post("/dicom-web/servers/spine/stow", {"Resources": [study_id]})
    assert _study_state(imaging, ds.StudyInstanceUID) is None


def test_pull_a_study_from_orthanc_by_api_call(
    imaging_factory: Callable[..., ImagingServer], orthanc_factory: Callable[..., OrthancServer]
) -> None:
    orthanc = orthanc_factory()
    spec = SeriesSpec(slices=5, patient_id="MRN-PULL")
    for ds in make_series(spec):
        orthanc.upload(to_bytes(ds))
    imaging = imaging_factory(pacs_dicomweb_url=orthanc.dicomweb_url)
    with imaging.client() as client:
        found = client.post("/api/pacs/query", json={"PatientID": "MRN-PULL"}).json()
        assert [s["0020000D"]["Value"][0] for s in found] == [spec.study_uid]
        report = client.post("/api/pacs/retrieve", json={"study_instance_uid": spec.study_uid})
        assert report.status_code == 200, report.text
        assert report.json()["stored"] == 5
        again = client.post("/api/pacs/retrieve", json={"study_instance_uid": spec.study_uid})
        assert again.json()["duplicates"] == 5 and again.json()["conflicts"] == 0
        missing = client.post("/api/pacs/retrieve", json={"study_instance_uid": "1.2.3.4"})
        assert missing.status_code == 404  # the PACS answered: it does not hold the study
    assert wait_until(_complete(imaging, spec.study_uid, 5), timeout=20)


def test_post_operative_arrival_fetches_the_prior_study(
    imaging_factory: Callable[..., ImagingServer],
    orthanc_factory: Callable[..., OrthancServer],
    tmp_path: Path,
) -> None:
    orthanc = orthanc_factory()
    pre = SeriesSpec(slices=8, patient_id="MRN-7", study_date="20250301")
    too_old = SeriesSpec(slices=2, patient_id="MRN-7", study_date="20150301")
    other_patient = SeriesSpec(slices=2, patient_id="MRN-8", study_date="20250301")
    other_issuer = SeriesSpec(
        slices=2, patient_id="MRN-7", issuer="HOSPITAL-B", study_date="20250302"
    )
    for spec in (pre, too_old, other_patient, other_issuer):
        for ds in make_series(spec):
            orthanc.upload(to_bytes(ds))
    imaging = imaging_factory(
        pacs_dicomweb_url=orthanc.dicomweb_url,
        prior_fetch_enabled=True,
        prior_lookback_days=365,
    )
    post = SeriesSpec(slices=10, patient_id="MRN-7", study_date="20250901")
    files = write_series(make_series(post), tmp_path / "post")
    assert storescu(imaging.dicom_port, imaging.ae_title, files).returncode == 0
    assert wait_until(_complete(imaging, pre.study_uid, 8), timeout=30, interval=0.3)
    with imaging.client() as client:
        held = {s["study_instance_uid"] for s in client.get("/api/studies").json()}
    assert held == {post.study_uid, pre.study_uid}
    prior = _study_state(imaging, pre.study_uid)
    assert prior is not None and prior["source"] == "pull"
