"""End to end: a phantom study sent by C-STORE ends with measurements, an SR and key images."""

from __future__ import annotations

import json
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from tests.harness.dcmtk import storescu
from tests.harness.imaging import ImagingServer
from tests.harness.net import wait_until
from tests.harness.series import sr_items
from tools.phantom import PhantomSpec, write_phantom

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("dcmtk")]


def _measurements(server: ImagingServer, study: str) -> tuple[int, Any]:
    with server.client() as client:
        response = client.get(f"/api/studies/{study}/measurements")
        return response.status_code, response.json()


def test_c_store_to_measurements_sr_and_key_images(
    imaging_factory: Callable[..., ImagingServer], tmp_path: Path
) -> None:
    spec = PhantomSpec(
        modality="CT", pixel_spacing=1.2, slice_spacing=1.5, stenosis="foraminal", seed=11
    )
    folder = tmp_path / "phantom"
    truth = write_phantom(spec, folder)
    study = truth["study_instance_uid"]
    server = imaging_factory()
    sent = storescu(server.dicom_port, server.ae_title, sorted(folder.glob("*.dcm")))
    assert sent.returncode == 0, sent.stderr
    assert wait_until(lambda: _measurements(server, study)[0] == 200, timeout=120, interval=0.5)
    _, body = _measurements(server, study)
    assert body["study_instance_uid"] == study and body["study_version"] == 1
    assert body["algorithm"]["version"] and body["status"] in ("ok", "needs_review")
    expected = {(g["quantity"], g["level"], g["side"]): g["value"] for g in truth["measurements"]}
    measured = [m for m in body["measurements"] if m["value"] is not None]
    assert len(measured) >= 12
    for m in measured:
        assert abs(m["value"] - expected[(m["quantity"], m["level"], m["side"])]) < 1.5, m
    # Key images are served as PNG.
    assert body["key_images"]
    with server.client() as client:
        png = client.get(body["key_images"][0]["url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert client.get(f"/api/studies/{study}/key-images/..%2Fsecret.png").status_code == 404
        # The SR is in the study, retrievable by WADO-RS, a TID 1500 report of our values.
        sr_uid = body["sr"]["sop_instance_uid"]

        def sr_instances() -> list[Any]:
            found: list[Any] = client.get(
                f"/dicomweb/studies/{study}/instances", params={"SOPInstanceUID": sr_uid}
            ).json()
            return found

        assert wait_until(lambda: len(sr_instances()) == 1, timeout=30, interval=0.2)
        series = sr_instances()
        series_uid = series[0]["0020000E"]["Value"][0]
        part = client.get(
            f"/dicomweb/studies/{study}/series/{series_uid}/instances/{sr_uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
        assert part.status_code == 200
        start = part.content.index(b"DICM") - 128
        sr = dcmread(BytesIO(part.content[start:]))
        assert sr.Modality == "SR" and sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
        groups = [item for item in sr.ContentSequence if item.ValueType == "CONTAINER"]
        assert groups
        # Each height line lies across the axial slices, in a para-sagittal plane: the SR
        # draws it on the key image of that plane (a SCOORD on a Secondary Capture).
        lines = [i for i in sr_items(sr) if i.ValueType == "SCOORD"]
        assert len(lines) == len(measured)
        assert all(i.GraphicType == "POLYLINE" and len(i.GraphicData) == 4 for i in lines)
        referenced = [i.ContentSequence[0].ReferencedSOPSequence[0] for i in lines]
        assert {r.ReferencedSOPClassUID for r in referenced} == {"1.2.840.10008.5.1.4.1.1.7"}

        # The key images join the study as Secondary Capture (stored just after the result
        # is committed, like the SR), listed by QIDO like the SR.
        def captures_now() -> list[Any]:
            found: list[Any] = client.get(
                f"/dicomweb/studies/{study}/instances", params={"Modality": "OT"}
            ).json()
            return found

        assert wait_until(
            lambda: len(captures_now()) == len(body["key_images"]), timeout=30, interval=0.2
        )
        captures = captures_now()
        sc_uids = {c["00080016"]["Value"][0] for c in captures}
        assert sc_uids == {"1.2.840.10008.5.1.4.1.1.7"}
        assert len(captures) == len(body["key_images"])
        stored = {c["00080018"]["Value"][0] for c in captures}
        assert {r.ReferencedSOPInstanceUID for r in referenced} <= stored
        # The SR joined the study without reopening it (no version 2, no second analysis).
        status = client.get(f"/api/studies/{study}").json()
        assert status["version"] == 1
        jobs = client.get(f"/api/studies/{study}/analysis-jobs").json()
        assert [j["state"] for j in jobs] == ["done"]
        # A reader's measurement is kept next to the automatic one.
        posted = client.post(
            f"/api/studies/{study}/manual-measurements",
            json={"level": "L4-L5", "side": "left", "quantity": "foraminal_height", "value": 14.2},
        )
        assert posted.status_code == 201, posted.text
        bad = client.post(
            f"/api/studies/{study}/manual-measurements",
            json={"level": "L4-L5", "quantity": "foraminal_height", "value": 14.2, "unit": "mm2"},
        )
        assert bad.status_code in (400, 422)
        _review_on_the_section(client, study, measured)
    _, after = _measurements(server, study)
    assert after["manual_measurements"][0]["value"] == 14.2
    assert [m["action"] for m in after["manual_measurements"]] == [
        "measured",
        "corrected",
        "accepted",
        "rejected",
    ]
    assert after["measurements"] == body["measurements"]  # the automatic values are untouched
    assert json.dumps(after)  # serialisable


def test_jobs_survive_a_restart_and_failures_are_bounded(
    imaging_factory: Callable[..., ImagingServer], tmp_path: Path
) -> None:
    from services.imaging.analysis.pipeline import Analysis
    from services.imaging.jobs.table import Claim
    from services.imaging.models import AnalysisJob
    from services.imaging.runtime import ImagingRuntime

    spec = PhantomSpec(modality="CT", pixel_spacing=1.5, slice_spacing=2.0, seed=12)
    folder = tmp_path / "phantom"
    truth = write_phantom(spec, folder)
    study = truth["study_instance_uid"]
    # First run: no workers, the job is queued and left 'running' as if the process died.
    first = imaging_factory("svc", analysis_workers=0)
    assert storescu(first.dicom_port, first.ae_title, sorted(folder.glob("*.dcm"))).returncode == 0
    assert wait_until(lambda: _measurements(first, study)[0] == 202, timeout=60, interval=0.3)
    runtime: ImagingRuntime = first.app.state.runtime
    claim = runtime.jobs.claim_next()
    assert claim is not None and claim.attempt == 1
    first.stop()
    # Restart on the same data: the job is recovered and completes.
    second = imaging_factory("svc", analysis_workers=1)
    assert wait_until(lambda: _measurements(second, study)[0] == 200, timeout=120, interval=0.5)
    with second.client() as client:
        jobs = client.get(f"/api/studies/{study}/analysis-jobs").json()
    assert jobs[0]["state"] == "done" and jobs[0]["attempts"] == 2
    # A failing analysis is retried a bounded number of times, then marked failed; the
    # study stays as it was.
    runtime = second.app.state.runtime
    from sqlmodel import Session

    with Session(runtime.engine) as session:
        row = session.get(AnalysisJob, jobs[0]["id"])
        assert row is not None
    original = runtime.runner.analyse

    def broken(claim: Claim) -> Analysis:
        raise RuntimeError("simulated crash")

    runtime.runner.analyse = broken  # type: ignore[method-assign]
    try:
        with second.client() as client:
            assert client.post(f"/api/studies/{study}/analyze").status_code == 202
        assert wait_until(lambda: _job_state(second, study) == "failed", timeout=30)
    finally:
        runtime.runner.analyse = original  # type: ignore[method-assign]
    with second.client() as client:
        jobs = client.get(f"/api/studies/{study}/analysis-jobs").json()
        assert jobs[0]["attempts"] == second.settings.analysis_max_attempts
        assert "simulated crash" in jobs[0]["last_error"]
        assert client.get(f"/api/studies/{study}").json()["state"] == "complete"


def _job_state(server: ImagingServer, study: str) -> str:
    with server.client() as client:
        return str(client.get(f"/api/studies/{study}/analysis-jobs").json()[0]["state"])


def _review_on_the_section(client: Any, study: str, measured: list[Any]) -> None:
    """A reader corrects a height by moving one end point on the review image, accepts
    another, rejects a third: the value of a moved construction is computed by the service
    from the image's pixel size."""
    heights = [m for m in measured if m["quantity"] == "foraminal_height"]
    first, second, third = heights[:3]
    name = f"foraminal_height_{first['level']}_{first['side']}"
    plain = client.get(f"/api/studies/{study}/review-images/{name}.png")
    assert plain.status_code == 200 and plain.content[:4] == b"\x89PNG"
    geometry = client.get(f"/api/studies/{study}/review-images/{name}.json").json()
    assert geometry["kind"] == "line" and geometry["mm_per_pixel"] == 0.125
    (x0, y0), (x1, y1) = geometry["points"]
    # The construction drawn on the section is the automatic value (in-plane, within 0.3
    # mm); its scale carries the rest (the line's component across the section).
    drawn = ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 * 0.125
    assert abs(drawn - first["value"]) < 0.3, (drawn, first["value"])
    assert abs(drawn * geometry["scale"] - first["value"]) < 0.01
    moved = [[x0, y0], [x1, y1 + 16]]  # 16 px = 2 mm further along the rows
    expected = ((x1 - x0) ** 2 + (y1 + 16 - y0) ** 2) ** 0.5 * 0.125 * geometry["scale"]
    where = {"quantity": "foraminal_height", "level": first["level"], "side": first["side"]}
    corrected = client.post(
        f"/api/studies/{study}/manual-measurements",
        json={**where, "action": "corrected", "geometry": moved},
    )
    assert corrected.status_code == 201, corrected.text
    read = corrected.json()
    assert abs(read["value"] - expected) < 0.01 and read["automatic_value"] == first["value"]
    assert read["key_image"] == name and read["geometry"] == moved
    accepted = client.post(
        f"/api/studies/{study}/manual-measurements",
        json={
            "quantity": "foraminal_height",
            "level": second["level"],
            "side": second["side"],
            "action": "accepted",
        },
    )
    assert accepted.status_code == 201 and accepted.json()["value"] == second["value"]
    rejected = client.post(
        f"/api/studies/{study}/manual-measurements",
        json={
            "quantity": "foraminal_height",
            "level": third["level"],
            "side": third["side"],
            "action": "rejected",
            "reason": "wrong-level",
        },
    )
    assert rejected.status_code == 201 and rejected.json()["value"] is None
    for body in (
        {**where, "action": "rejected"},  # no reason
        {**where, "action": "accepted", "value": 12.0},  # accepting is not typing
        {**where, "action": "corrected", "value": 12.0, "geometry": moved},  # both
        {**where, "action": "corrected", "geometry": [[0, 0], [1, 1], [2, 2]]},  # not a line
        {**where, "action": "corrected", "geometry": [[0, 0], [0, 8000]]},  # 1 m: out of range
        {**where, "action": "corrected", "geometry": [[0, 0], ["x", 1]]},
        {**where, "action": "corrected", "geometry": [[0, 0], [float("1e300"), 1]]},
        {"quantity": "disc_height", "level": "L1-L2", "action": "accepted", "extra": 1},
        {"quantity": "dural_sac_area", "level": "L4-L5", "action": "accepted"},  # not on CT
    ):
        refused = client.post(f"/api/studies/{study}/manual-measurements", json=body)
        assert refused.status_code == 422, (body, refused.text)
        assert refused.json()["reason"]
    assert client.get(f"/api/studies/{study}/review-images/nope.json").status_code == 404
    # The neighbouring sections, on the same pixel grid, windowed for soft tissue.
    from io import BytesIO

    from PIL import Image

    size = Image.open(BytesIO(plain.content)).size
    here = client.get(f"/api/studies/{study}/review-images/{name}/section.png")
    beside = client.get(
        f"/api/studies/{study}/review-images/{name}/section.png",
        params={"offset": 3, "window": "soft"},
    )
    assert here.status_code == 200 and beside.status_code == 200, beside.text
    assert Image.open(BytesIO(beside.content)).size == size
    assert here.content != beside.content
    for params in ({"offset": 25}, {"window": "lung"}, {"offset": "nan"}):
        refused = client.get(
            f"/api/studies/{study}/review-images/{name}/section.png", params=params
        )
        assert refused.status_code in (400, 422), (params, refused.status_code)
