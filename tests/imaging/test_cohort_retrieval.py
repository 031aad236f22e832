"""The retrospective cohort's imaging from a real Orthanc holding historical studies, by
DICOMweb, by C-FIND + C-GET and by C-FIND + C-MOVE (to our own SCP): the right pre- and
post-operative studies are chosen, the missing and the ambiguous are reported, a second
run fetches nothing, and a retrieval interrupted by the PACS going down resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, func, select

from services.imaging.intake.cohort import CohortEntry, CohortRetrieval, statuses
from services.imaging.intake.pacs import DicomwebPacs, DimsePacs, Pacs
from services.imaging.models import Instance, Study
from tests.harness.imaging import ImagingServer
from tests.harness.net import wait_until
from tests.harness.orthanc import OrthancServer
from tests.harness.series import SeriesSpec, make_series, to_bytes

pytestmark = pytest.mark.integration
SURGERY = date(2024, 3, 10)
SLICES = 6


@dataclass
class History:
    """Studies already in the PACS before the study began."""

    studies: dict[str, str]  # name -> StudyInstanceUID
    entries: list[CohortEntry]


def _study(
    orthanc: OrthancServer, patient: str, when: date, modality: str, slices: int = SLICES
) -> str:
    spec = SeriesSpec(
        modality=modality, slices=slices, patient_id=patient, study_date=f"{when:%Y%m%d}"
    )
    for ds in make_series(spec):
        orthanc.upload(to_bytes(ds))
    return spec.study_uid


def _history(orthanc: OrthancServer) -> History:
    day = timedelta(days=1)
    studies = {
        # P1, foraminal (CT): an old pre-op study, the latest pre-op, the post-op study.
        "p1-old": _study(orthanc, "COH-P1", SURGERY - 150 * day, "CT"),
        "p1-pre": _study(orthanc, "COH-P1", SURGERY - 20 * day, "CT"),
        "p1-post": _study(orthanc, "COH-P1", SURGERY + 2 * day, "CT"),
        "p1-mr": _study(orthanc, "COH-P1", SURGERY - 10 * day, "MR"),  # not its modality
        # P2, foraminal: two post-op candidates, the earliest wins; a pre-op study too far back.
        "p2-pre": _study(orthanc, "COH-P2", SURGERY - 30 * day, "CT"),
        "p2-post": _study(orthanc, "COH-P2", SURGERY + 3 * day, "CT"),
        "p2-later": _study(orthanc, "COH-P2", SURGERY + 40 * day, "CT"),
        "p2-ancient": _study(orthanc, "COH-P2", SURGERY - 900 * day, "CT"),
        "p2-scout": _study(orthanc, "COH-P2", SURGERY - 5 * day, "CT", slices=2),  # too few
        # P3, central (MR): no pre-op study at all.
        "p3-post": _study(orthanc, "COH-P3", SURGERY + 1 * day, "MR"),
        # P4, foraminal: two pre-op studies on the same day: ambiguous.
        "p4-a": _study(orthanc, "COH-P4", SURGERY - 7 * day, "CT"),
        "p4-b": _study(orthanc, "COH-P4", SURGERY - 7 * day, "CT"),
        "p4-post": _study(orthanc, "COH-P4", SURGERY + 1 * day, "CT"),
    }
    entries = [
        CohortEntry("COH-P1", SURGERY, "foraminal-stenosis"),
        CohortEntry("COH-P2", SURGERY, "foraminal-stenosis"),
        CohortEntry("COH-P3", SURGERY, "central-stenosis"),
        CohortEntry("COH-P4", SURGERY, "foraminal-stenosis"),
    ]
    return History(studies, entries)


@pytest.fixture
def world(
    imaging_factory: Callable[..., ImagingServer], orthanc_factory: Callable[..., OrthancServer]
) -> Iterator[tuple[ImagingServer, OrthancServer, History]]:
    imaging = imaging_factory("imaging", study_quiet_seconds=1.0, cohort_min_instances=4)
    orthanc = orthanc_factory(
        modalities={"spineimg": [imaging.ae_title, "127.0.0.1", imaging.dicom_port]}
    )
    yield imaging, orthanc, _history(orthanc)


def _pacs(orthanc: OrthancServer, protocol: str, imaging: ImagingServer) -> Pacs:
    if protocol == "dicomweb":
        import requests

        return DicomwebPacs(orthanc.dicomweb_url, requests.Session())
    return DimsePacs(
        "127.0.0.1",
        orthanc.dicom_port,
        called_aet=orthanc.aet,
        calling_aet=imaging.ae_title,
        mode=protocol.split("-")[1],
        move_destination=imaging.ae_title,
        timeout=30,
    )


def _retrieval(imaging: ImagingServer, pacs: Pacs) -> CohortRetrieval:
    runtime = imaging.app.state.runtime
    return CohortRetrieval(runtime.engine, runtime.store, pacs, min_instances=4)


def _held(imaging: ImagingServer) -> dict[str, int]:
    with Session(imaging.app.state.engine) as session:
        rows = session.exec(
            select(Instance.study_instance_uid, func.count()).group_by(Instance.study_instance_uid)
        ).all()
    return {uid: int(n) for uid, n in rows}


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse-get", "dimse-move"])
def test_the_right_studies_come_in_and_a_second_run_fetches_nothing(
    world: tuple[ImagingServer, OrthancServer, History], protocol: str
) -> None:
    imaging, orthanc, history = world
    retrieval = _retrieval(imaging, _pacs(orthanc, protocol, imaging))
    first = retrieval.run(history.entries)
    s = history.studies
    wanted = {s["p1-pre"], s["p1-post"], s["p2-pre"], s["p2-post"], s["p3-post"], s["p4-post"]}
    assert first.retrieved == 6 and first.failed == 0, first.text()
    assert first.missing == 1 and first.ambiguous == 1
    assert set(_held(imaging)) == wanted
    assert all(n == SLICES for n in _held(imaging).values())
    by_patient = {p["patient_id"]: p for p in statuses(imaging.app.state.engine)}
    assert by_patient["COH-P3"]["status"] == "missing pre-op"
    assert by_patient["COH-P4"]["status"] == "ambiguous"
    assert {c["study_instance_uid"] for c in by_patient["COH-P4"]["candidates"]} >= {
        s["p4-a"],
        s["p4-b"],
    }
    assert by_patient["COH-P2"]["post"]["study_instance_uid"] == s["p2-post"]
    # Pulled studies are pulls, whatever the protocol: they never trigger a prior fetch.
    with Session(imaging.app.state.engine) as session:
        sources = {session.get(Study, uid).source for uid in wanted}  # type: ignore[union-attr]
    assert sources == {"pull"}
    again = retrieval.run(history.entries)
    assert again.retrieved == 0 and again.instances == 0 and again.already_held == 6

    # ...and they flow on: completion, analysis (the noise phantoms give no measurement,
    # but each retrieved study is completed and analysed).
    def analysed() -> bool:
        by_id = {p["patient_id"]: p["status"] for p in statuses(imaging.app.state.engine)}
        return by_id["COH-P1"] == "analysed" and by_id["COH-P2"] == "analysed"

    assert wait_until(analysed, timeout=90, interval=0.5)


class _PlugPuller:
    """The store, except that the PACS dies after the ``after``-th instance arrives."""

    def __init__(self, store: Any, after: int, orthanc: OrthancServer) -> None:
        self.store, self.after, self.orthanc, self.count = store, after, orthanc, 0

    def put(self, data: bytes, **kwargs: Any) -> Any:
        result = self.store.put(data, **kwargs)
        self.count += 1
        if self.count == self.after and self.orthanc.process is not None:
            self.orthanc.process.kill()  # the PACS goes down in the middle of the C-GET
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_an_interrupted_retrieval_resumes_where_it_stopped(
    world: tuple[ImagingServer, OrthancServer, History],
) -> None:
    imaging, orthanc, _ = world
    big = _study(orthanc, "COH-P5", SURGERY + 4 * timedelta(days=1), "CT", slices=60)
    entry = CohortEntry("COH-P5", SURGERY, "foraminal-stenosis")
    runtime = imaging.app.state.runtime
    pacs = _pacs(orthanc, "dimse-get", imaging)
    pacs.timeout = 5  # type: ignore[attr-defined]
    interrupted = CohortRetrieval(
        runtime.engine, _PlugPuller(runtime.store, 10, orthanc), pacs, min_instances=4
    )
    first = interrupted.run([entry])
    assert first.failed == 1 and 10 <= _held(imaging).get(big, 0) < 60, first.text()
    status = next(p for p in statuses(runtime.engine) if p["patient_id"] == "COH-P5")
    assert status["post"]["state"] == "failed"
    # The PACS is back (same archive, new ports): the next run completes the study.
    orthanc.process = None
    revived = OrthancServer(orthanc.workdir, modalities=orthanc.modalities).start()
    try:
        second = _retrieval(imaging, _pacs(revived, "dimse-get", imaging)).run([entry])
    finally:
        revived.stop()
    assert second.failed == 0 and second.retrieved == 1, second.text()
    assert _held(imaging)[big] == 60


def test_the_command_line_and_the_api_report_per_patient(
    world: tuple[ImagingServer, OrthancServer, History], tmp_path: Path
) -> None:
    imaging, orthanc, history = world
    listing = tmp_path / "cohort.csv"
    listing.write_text(
        "PatientID,SurgeryDate,Group\n"
        + "".join(f"{e.patient_id},{e.surgery_date},{e.group}\n" for e in history.entries)
    )
    env = {
        **os.environ,
        "IMAGING_DATA_DIR": str(imaging.settings.data_dir),
        "IMAGING_PACS_DICOMWEB_URL": orthanc.dicomweb_url,
        "IMAGING_COHORT_MIN_INSTANCES": "4",
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.imaging",
            "retrieve-cohort",
            "--list",
            str(listing),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)
    assert out["report"]["retrieved"] == 6
    assert {p["patient_id"]: p["status"] for p in out["patients"]}["COH-P3"] == "missing pre-op"
    with imaging.client() as client:
        listed = client.get("/api/cohort").json()
        assert {p["patient_id"] for p in listed} == {e.patient_id for e in history.entries}
        refused = client.post("/api/cohort/retrieve", json={})
    assert refused.status_code == 409  # no PACS configured for the service, and no FHIR store
