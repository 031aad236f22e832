"""One claimed job → measurements, key images, an SR, committed with the deliveries of
those results. Every engine runs jobs through :class:`AnalysisRunner`; the claim's
attempt number fences the commit (see :mod:`services.imaging.jobs.table`), and a
failing analysis never touches the study or its files.

The analysis libraries (SimpleITK, SciPy, highdicom, matplotlib, contourpy: about 200 MB)
are imported by the first analysis a process runs, not when it starts: a service process
that only receives (its analyses in worker processes) never loads them. (A worker command
loads them before its pool forks.)
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from services.imaging.analysis.report import ALGORITHM_NAME, ALGORITHM_VERSION
from services.imaging.intake.dicom_io import part10_bytes
from services.imaging.intake.store import DERIVED_SOURCE, InstanceStore
from services.imaging.jobs.table import Claim
from services.imaging.metrics import ANALYSES, ANALYSIS_SECONDS
from services.imaging.models import (
    AnalysisJob,
    Instance,
    JobState,
    MeasurementSet,
    current_measurement_set,
    utcnow,
)
from services.imaging.results.folder import ResultsFolder
from services.imaging.results.outbox import Dispatcher

if TYPE_CHECKING:
    from services.imaging.analysis.pipeline import Analysis

log = logging.getLogger(__name__)


class AnalysisRunner:
    """One claimed job → a committed result and its deliveries (every engine uses this)."""

    def __init__(
        self, engine: Engine, store: InstanceStore, results: ResultsFolder, dispatcher: Dispatcher
    ) -> None:
        self.engine = engine
        self.store = store
        self.results = results
        self.dispatcher = dispatcher

    def analyse(self, claim: Claim) -> Analysis:
        from services.imaging.analysis.pipeline import analyze_paths

        with Session(self.engine) as session:
            instances = session.exec(
                select(Instance).where(Instance.study_instance_uid == claim.study_instance_uid)
            ).all()
        return analyze_paths([self.store.path_of(i) for i in instances])

    def run(self, claim: Claim) -> bool:
        """Analyse and commit under the claim's fence; False when the attempt lost the job
        (nothing of it is kept)."""
        started = time.perf_counter()
        analysis = self.analyse(claim)
        result = analysis.result.to_contract()
        captures = self._captures(analysis)
        sr = self._sr(analysis, self._current(claim.study_instance_uid), captures)
        folder = self.results.write(
            claim.study_instance_uid,
            claim.study_version,
            claim.job_id,
            claim.attempt,
            analysis.key_images,
            sr,
            captures if sr is not None else [],
        )
        with Session(self.engine) as session:
            fenced = session.connection().execute(
                update(AnalysisJob)
                .where(
                    col(AnalysisJob.id) == claim.job_id,
                    col(AnalysisJob.attempts) == claim.attempt,
                    col(AnalysisJob.state) == JobState.RUNNING,
                )
                .values(state=JobState.DONE, finished_at=utcnow(), last_error=None)
            )
            if fenced.rowcount != 1:
                session.rollback()
                log.warning(
                    "analysis result discarded: the job was taken over",
                    extra={"job": claim.job_id, "attempt": claim.attempt},
                )
                ANALYSES.labels(outcome="superseded").inc()
                return False
            for old in session.exec(
                select(MeasurementSet).where(
                    MeasurementSet.study_instance_uid == claim.study_instance_uid,
                    col(MeasurementSet.is_current).is_(True),
                )
            ).all():
                old.is_current = False
                session.add(old)
            measurement_set = MeasurementSet(
                study_instance_uid=claim.study_instance_uid,
                study_version=claim.study_version,
                algorithm_name=ALGORITHM_NAME,
                algorithm_version=ALGORITHM_VERSION,
                status=result.status,
                result=result.to_json(),
                sr_sop_instance_uid=str(sr.SOPInstanceUID) if sr is not None else None,
                key_images_dir=str(folder),
                created_at=utcnow(),
            )
            session.add(measurement_set)
            session.flush()
            deliveries = self.dispatcher.plan(session, measurement_set)
            session.commit()
            delivery_ids = [d.id for d in deliveries if d.id is not None]
        if sr is not None:  # our copy, for WADO and the next version's predecessor
            self.store.put(part10_bytes(sr), source=DERIVED_SOURCE)
            # The key images join the study as Secondary Capture (the instances the SR
            # points at, the ones the PACS gets), so a viewer on our DICOMweb lists them.
            for capture in captures:
                self.store.put(part10_bytes(capture), source=DERIVED_SOURCE)
        ANALYSIS_SECONDS.observe(time.perf_counter() - started)
        ANALYSES.labels(outcome=result.status).inc()
        log.info(
            "analysis stored",
            extra={
                "job": claim.job_id,
                "status": result.status,
                "measurements": len(result.measurements),
            },
        )
        for delivery_id in delivery_ids:
            self.dispatcher.deliver(delivery_id)
        return True

    def _current(self, study_instance_uid: str) -> MeasurementSet | None:
        with Session(self.engine) as session:
            return current_measurement_set(session, study_instance_uid)

    @staticmethod
    def _captures(analysis: Analysis) -> list[Dataset]:
        """The key images as Secondary Capture, in a new series of the measured study."""
        if not analysis.key_images or not analysis.evidence:
            return []
        from services.imaging.analysis.sr import MANUFACTURER, secondary_captures

        return secondary_captures(
            [image.png for image in analysis.key_images],
            analysis.evidence[0],
            manufacturer=MANUFACTURER,
            series_instance_uid=generate_uid(),
            orientations=[image.orientation for image in analysis.key_images],
            names=[image.name for image in analysis.key_images],
        )

    def _sr(
        self, analysis: Analysis, previous: MeasurementSet | None, captures: list[Dataset]
    ) -> Dataset | None:
        if not any(m.value is not None for m in analysis.result.measurements):
            return None
        predecessor = self.results.sr(previous) if previous is not None else None
        from services.imaging.analysis.sr import build_sr

        return build_sr(
            analysis.result,
            analysis.evidence,
            previous_versions=[predecessor] if predecessor is not None else [],
            key_images=list(zip(analysis.key_images, captures, strict=True)),
        )
