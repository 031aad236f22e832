"""The analysis queue: complete study versions → measurements, key images and an SR.

Jobs are rows of ``analysis_job`` (one per study version and algorithm version, so a
repeated completion event never analyses twice). Workers are threads that claim a queued
row with a conditional UPDATE, so several workers (or processes) never take the same job.
A job left ``running`` by a crash is queued again at start-up; an exception is retried
up to ``max_attempts`` times and then the job is ``failed`` with its reason — the study and
its files are never touched by a failing analysis.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from services.common.db import session_scope
from services.imaging.analysis.pipeline import Analysis, analyze_paths
from services.imaging.analysis.report import ALGORITHM_NAME, ALGORITHM_VERSION
from services.imaging.analysis.sr import build_sr, to_bytes
from services.imaging.lifecycle import StudyCompleted
from services.imaging.models import AnalysisJob, Instance, JobState, MeasurementSet
from services.imaging.store import DERIVED_SOURCE, InstanceStore, utcnow

log = logging.getLogger(__name__)


class AnalysisQueue:
    def __init__(
        self,
        engine: Engine,
        store: InstanceStore,
        key_images_root: Path,
        *,
        workers: int,
        max_attempts: int,
        poll_seconds: float,
    ) -> None:
        self.engine = engine
        self.store = store
        self.key_images_root = key_images_root
        self.workers = workers
        self.max_attempts = max_attempts
        self.poll_seconds = poll_seconds
        self._threads: list[threading.Thread] = []
        self._wake = threading.Event()

    # -- producing ---------------------------------------------------------------------
    def enqueue(self, study_instance_uid: str, study_version: int) -> int:
        """Queue the analysis of a study version; returns the job id (existing or new)."""
        with Session(self.engine) as session:
            existing = session.exec(
                select(AnalysisJob).where(
                    AnalysisJob.study_instance_uid == study_instance_uid,
                    AnalysisJob.study_version == study_version,
                    AnalysisJob.algorithm_version == ALGORITHM_VERSION,
                )
            ).first()
            if existing is not None and existing.id is not None:
                return existing.id
            job = AnalysisJob(
                study_instance_uid=study_instance_uid,
                study_version=study_version,
                algorithm_version=ALGORITHM_VERSION,
                created_at=utcnow(),
            )
            session.add(job)
            try:
                session.commit()
            except IntegrityError:  # queued concurrently by another delivery
                session.rollback()
                return self.enqueue(study_instance_uid, study_version)
            assert job.id is not None
        self._wake.set()
        log.info(
            "analysis queued",
            extra={"study_instance_uid": study_instance_uid, "study_version": study_version},
        )
        return job.id

    def __call__(self, event: StudyCompleted) -> None:
        """Lifecycle subscriber: every completed study version is analysed."""
        self.enqueue(event.study_instance_uid, event.study_version)

    def rerun(self, study_instance_uid: str, study_version: int) -> int:
        """Queue the version again even if it was analysed (an operator's request)."""
        with session_scope(self.engine) as session:
            job = session.exec(
                select(AnalysisJob).where(
                    AnalysisJob.study_instance_uid == study_instance_uid,
                    AnalysisJob.study_version == study_version,
                    AnalysisJob.algorithm_version == ALGORITHM_VERSION,
                )
            ).first()
            if job is not None and job.state in (JobState.DONE, JobState.FAILED):
                job.state, job.attempts, job.last_error = JobState.QUEUED, 0, None
                session.add(job)
        return self.enqueue(study_instance_uid, study_version)

    # -- consuming ---------------------------------------------------------------------
    def recover(self) -> int:
        """Jobs a previous process left running go back to the queue."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(AnalysisJob)
                .where(col(AnalysisJob.state) == JobState.RUNNING)
                .values(state=JobState.QUEUED)
            )
        return int(result.rowcount or 0)

    def claim(self) -> AnalysisJob | None:
        with Session(self.engine) as session:
            candidates = session.exec(
                select(AnalysisJob)
                .where(AnalysisJob.state == JobState.QUEUED)
                .order_by(col(AnalysisJob.id))
                .limit(5)
            ).all()
        for job in candidates:
            with self.engine.begin() as conn:
                claimed = conn.execute(
                    update(AnalysisJob)
                    .where(col(AnalysisJob.id) == job.id, col(AnalysisJob.state) == JobState.QUEUED)
                    .values(
                        state=JobState.RUNNING,
                        started_at=utcnow(),
                        attempts=AnalysisJob.attempts + 1,
                    )
                )
            if claimed.rowcount == 1:
                job.attempts += 1
                return job
        return None

    def run_one(self) -> bool:
        """Claim and run one job; False when the queue is empty."""
        job = self.claim()
        if job is None:
            return False
        try:
            self._analyse(job)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc)[:300]}"
            state = JobState.FAILED if job.attempts >= self.max_attempts else JobState.QUEUED
            log.exception(
                "analysis failed",
                extra={"job": job.id, "attempt": job.attempts, "state": state.value},
            )
            self._finish(job, state, reason)
        else:
            self._finish(job, JobState.DONE, None)
        return True

    def _finish(self, job: AnalysisJob, state: JobState, error: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(AnalysisJob)
                .where(col(AnalysisJob.id) == job.id)
                .values(state=state, finished_at=utcnow(), last_error=error)
            )

    def _analyse(self, job: AnalysisJob) -> None:
        with Session(self.engine) as session:
            instances = session.exec(
                select(Instance).where(Instance.study_instance_uid == job.study_instance_uid)
            ).all()
        paths = [self.store.path_of(i) for i in instances]
        analysis = analyze_paths(paths)
        sr_uid = self._store_sr(analysis)
        folder = self.key_images_root / job.study_instance_uid / f"v{job.study_version}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for image in analysis.key_images:
            (folder / f"{image.name}.png").write_bytes(image.png)
        with session_scope(self.engine) as session:
            previous = session.exec(
                select(MeasurementSet).where(
                    MeasurementSet.study_instance_uid == job.study_instance_uid,
                    col(MeasurementSet.is_current).is_(True),
                )
            ).all()
            for old in previous:
                old.is_current = False
                session.add(old)
            session.add(
                MeasurementSet(
                    study_instance_uid=job.study_instance_uid,
                    study_version=job.study_version,
                    algorithm_name=ALGORITHM_NAME,
                    algorithm_version=ALGORITHM_VERSION,
                    status=analysis.result.status,
                    result=json.dumps(analysis.result.as_json()),
                    sr_sop_instance_uid=sr_uid,
                    key_images_dir=str(folder),
                    created_at=utcnow(),
                )
            )
        log.info(
            "analysis stored",
            extra={
                "job": job.id,
                "status": analysis.result.status,
                "measurements": len(analysis.result.measurements),
            },
        )

    def _store_sr(self, analysis: Analysis) -> str | None:
        if not any(m.value is not None for m in analysis.result.measurements):
            return None
        sr = build_sr(analysis.result, analysis.evidence)
        self.store.put(to_bytes(sr), source=DERIVED_SOURCE)
        return str(sr.SOPInstanceUID)

    # -- running -----------------------------------------------------------------------
    def start(self, stop: threading.Event) -> None:
        recovered = self.recover()
        if recovered:
            log.warning("analysis jobs requeued after restart", extra={"count": recovered})
        for n in range(self.workers):
            thread = threading.Thread(
                target=self._loop, args=(stop,), daemon=True, name=f"analysis-{n}"
            )
            thread.start()
            self._threads.append(thread)

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                busy = self.run_one()
            except Exception:  # the database went away: wait and try again
                log.exception("analysis worker error")
                busy = False
            if not busy:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

    def join(self, timeout: float) -> None:
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=timeout)
