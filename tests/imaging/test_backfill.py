"""The back-fill command against a running imaging service: it queues the cohort again,
the service's workers re-analyse, and the report names what changed, old → new."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from services.imaging.models import MeasurementSet
from tests.harness.dcmtk import storescu
from tests.harness.imaging import ImagingServer
from tests.harness.net import wait_until
from tools.phantom import PhantomSpec, write_phantom

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("dcmtk")]
ROOT = Path(__file__).resolve().parents[2]


def _current(server: ImagingServer, study: str) -> MeasurementSet | None:
    with Session(server.app.state.engine) as session:
        return session.exec(
            select(MeasurementSet).where(
                MeasurementSet.study_instance_uid == study,
                col(MeasurementSet.is_current).is_(True),
            )
        ).first()


def test_backfill_reanalyses_and_reports_changes(imaging: ImagingServer, tmp_path: Path) -> None:
    spec = PhantomSpec(modality="CT", pixel_spacing=1.5, slice_spacing=2.0, seed=21)
    folder = tmp_path / "phantom"
    study = write_phantom(spec, folder)["study_instance_uid"]
    files = sorted(folder.glob("*.dcm"))
    assert storescu(imaging.dicom_port, imaging.ae_title, files).returncode == 0
    assert wait_until(lambda: _current(imaging, study) is not None, timeout=120, interval=0.5)
    # Pretend an older algorithm stored a different value for one measurement.
    with Session(imaging.app.state.engine) as session:
        current = _current(imaging, study)
        assert current is not None
        result = json.loads(current.result)
        measured = next(m for m in result["measurements"] if m["value"] is not None)
        true_value = measured["value"]
        measured["value"] = round(true_value + 1.0, 2)
        current.result = json.dumps(result)
        session.add(current)
        session.commit()
    env = {
        **os.environ,
        "IMAGING_DATA_DIR": str(imaging.settings.data_dir),
        "AUTH_SECRET_KEY": "x" * 40,
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.imaging", "backfill", "--json", "--timeout", "180"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["summary"] == {
        "studies": 1,
        "done": 1,
        "failed": 0,
        "pending": 0,
        "changed": 1,
        "values_changed": 1,
    }
    (change,) = report["studies"][0]["changed"]
    assert f"{measured['value']}→{true_value}" in change
    with Session(imaging.app.state.engine) as session:
        sets = session.exec(
            select(MeasurementSet).where(MeasurementSet.study_instance_uid == study)
        ).all()
    assert sorted(s.is_current for s in sets) == [False, True]
