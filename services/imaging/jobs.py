"""The analysis queue: complete study versions → measurements, key images, an SR, and the
deliveries of those results.

Jobs are rows of ``analysis_job``, one per study version and algorithm version, so a
repeated completion event never analyses twice. The row is the truth whichever engine
runs it:

* **embedded** (default): worker threads in the service claim queued rows with a
  conditional UPDATE; a job a crash left ``running`` is queued again at start-up.
* **celery**: the row's id is published to a broker and Celery workers (other processes
  or machines) run it (:mod:`services.imaging.worker`). A message redelivered after a
  worker died takes the row over even though it says ``running``.

Every claim increments ``attempts``, and the attempt number is a fencing token: the
result, its deliveries and ``done`` are committed in one transaction only if the row is
still ``running`` under that attempt. A worker that lost its job (killed, timed out,
taken over) can finish computing but cannot commit, so a result appears exactly once.
Failures are retried up to ``max_attempts`` times, then the job is ``failed`` with its
reason; a failing analysis never touches the study or its files.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from pydicom import Dataset, dcmread
from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from services.imaging.analysis.pipeline import Analysis, analyze_paths
from services.imaging.analysis.report import ALGORITHM_NAME, ALGORITHM_VERSION
from services.imaging.analysis.sr import build_sr, to_bytes
from services.imaging.delivery import SR_FILE, Dispatcher
from services.imaging.lifecycle import StudyCompleted
from services.imaging.metrics import ANALYSES, ANALYSIS_SECONDS
from services.imaging.models import (
    AnalysisJob,
    Instance,
    JobState,
    MeasurementSet,
    current_measurement_set,
)
from services.imaging.store import DERIVED_SOURCE, InstanceStore, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """A job taken by one worker for one attempt (the fencing token)."""

    job_id: int
    study_instance_uid: str
    study_version: int
    attempt: int


class JobTable:
    """The queue's rows: create, claim, release, count."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, study_instance_uid: str, study_version: int) -> tuple[int, bool]:
        """The job of this version (and algorithm); True when it was created now."""
        with Session(self.engine) as session:
            existing = session.exec(
                select(AnalysisJob.id).where(
                    AnalysisJob.study_instance_uid == study_instance_uid,
                    AnalysisJob.study_version == study_version,
                    AnalysisJob.algorithm_version == ALGORITHM_VERSION,
                )
            ).first()
            if existing is not None:
                return existing, False
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
                return self.create(study_instance_uid, study_version)
            assert job.id is not None
            return job.id, True

    def requeue(self, job_id: int) -> bool:
        """A finished job goes back to the queue (an operator's or a back-fill's request)."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(AnalysisJob)
                .where(
                    col(AnalysisJob.id) == job_id,
                    col(AnalysisJob.state).in_([JobState.DONE, JobState.FAILED]),
                )
                .values(state=JobState.QUEUED, attempts=0, last_error=None, published_at=None)
            )
        return done.rowcount == 1

    def _take(self, job_id: int, states: list[JobState]) -> Claim | None:
        with self.engine.begin() as conn:
            taken = conn.execute(
                update(AnalysisJob)
                .where(col(AnalysisJob.id) == job_id, col(AnalysisJob.state).in_(states))
                .values(
                    state=JobState.RUNNING,
                    started_at=utcnow(),
                    attempts=AnalysisJob.attempts + 1,
                )
            )
            if taken.rowcount != 1:
                return None
            row = conn.execute(
                select(
                    AnalysisJob.study_instance_uid,
                    AnalysisJob.study_version,
                    AnalysisJob.attempts,
                ).where(col(AnalysisJob.id) == job_id)
            ).one()
        return Claim(job_id, row[0], row[1], row[2])

    def claim_next(self) -> Claim | None:
        """The oldest queued job (embedded workers)."""
        with Session(self.engine) as session:
            candidates = session.exec(
                select(AnalysisJob.id)
                .where(AnalysisJob.state == JobState.QUEUED)
                .order_by(col(AnalysisJob.id))
                .limit(5)
            ).all()
        for job_id in candidates:
            if job_id is not None and (claim := self._take(job_id, [JobState.QUEUED])):
                return claim
        return None

    def claim(self, job_id: int) -> Claim | None:
        """A job named by a broker message: queued, or running under a worker that lost it
        (the broker only redelivers an unacknowledged message)."""
        return self._take(job_id, [JobState.QUEUED, JobState.RUNNING])

    def release(self, claim: Claim, error: str | None, *, final: bool) -> JobState | None:
        """Give the job back after a failure (queued, or failed when ``final``); None when
        the attempt no longer owns it."""
        state = JobState.FAILED if final else JobState.QUEUED
        with self.engine.begin() as conn:
            released = conn.execute(
                update(AnalysisJob)
                .where(
                    col(AnalysisJob.id) == claim.job_id,
                    col(AnalysisJob.attempts) == claim.attempt,
                    col(AnalysisJob.state) == JobState.RUNNING,
                )
                .values(state=state, finished_at=utcnow(), last_error=error)
            )
        return state if released.rowcount == 1 else None

    def fail(self, claim: Claim, exc: Exception, max_attempts: int) -> JobState | None:
        """After an analysis raised: back to the queue, or ``failed`` on the last attempt
        (both engines). Called from the ``except`` block, so the traceback is logged."""
        reason = f"{type(exc).__name__}: {str(exc)[:300]}"
        state = self.release(claim, reason, final=claim.attempt >= max_attempts)
        ANALYSES.labels(outcome="error").inc()
        log.exception(
            "analysis failed",
            extra={"job": claim.job_id, "attempt": claim.attempt, "state": str(state)},
        )
        return state

    def recover(self) -> int:
        """Jobs a previous process left running go back to the queue (embedded only)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(AnalysisJob)
                .where(col(AnalysisJob.state) == JobState.RUNNING)
                .values(state=JobState.QUEUED)
            )
        return int(result.rowcount or 0)

    def mark_published(self, job_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(AnalysisJob)
                .where(col(AnalysisJob.id) == job_id)
                .values(published_at=utcnow())
            )

    def unpublished(self, limit: int = 100, grace_seconds: float = 10.0) -> list[int]:
        """Queued jobs never handed to the broker (it was down), older than ``grace_seconds``
        so that a publication in progress is not doubled."""
        cutoff = utcnow() - timedelta(seconds=grace_seconds)
        with Session(self.engine) as session:
            rows = session.exec(
                select(AnalysisJob.id)
                .where(
                    AnalysisJob.state == JobState.QUEUED,
                    col(AnalysisJob.published_at).is_(None),
                    col(AnalysisJob.created_at) <= cutoff,
                )
                .order_by(col(AnalysisJob.id))
                .limit(limit)
            ).all()
        return [r for r in rows if r is not None]

    def counts(self) -> dict[str, int]:
        with Session(self.engine) as session:
            rows = session.exec(
                select(AnalysisJob.state, func.count()).group_by(AnalysisJob.state)
            ).all()
        return {str(state): int(n) for state, n in rows}


class AnalysisRunner:
    """One claimed job → a committed result and its deliveries (every engine uses this)."""

    def __init__(
        self, engine: Engine, store: InstanceStore, results_root: Path, dispatcher: Dispatcher
    ) -> None:
        self.engine = engine
        self.store = store
        self.results_root = results_root
        self.dispatcher = dispatcher

    def analyse(self, claim: Claim) -> Analysis:
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
        previous = self._current(claim.study_instance_uid)
        sr = self._sr(analysis, previous)
        folder = (
            self.results_root
            / claim.study_instance_uid
            / f"v{claim.study_version}"
            / f"job{claim.job_id}-a{claim.attempt}"
        )
        folder.mkdir(parents=True, exist_ok=True)
        for image in analysis.key_images:
            (folder / f"{image.name}.png").write_bytes(image.png)
        if sr is not None:
            (folder / SR_FILE).write_bytes(to_bytes(sr))
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
                status=analysis.result.status,
                result=json.dumps(analysis.result.as_json()),
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
            self.store.put(to_bytes(sr), source=DERIVED_SOURCE)
        ANALYSIS_SECONDS.observe(time.perf_counter() - started)
        ANALYSES.labels(outcome=analysis.result.status).inc()
        log.info(
            "analysis stored",
            extra={
                "job": claim.job_id,
                "status": analysis.result.status,
                "measurements": len(analysis.result.measurements),
            },
        )
        for delivery_id in delivery_ids:
            self.dispatcher.deliver(delivery_id)
        return True

    def _current(self, study_instance_uid: str) -> MeasurementSet | None:
        with Session(self.engine) as session:
            return current_measurement_set(session, study_instance_uid)

    def _sr(self, analysis: Analysis, previous: MeasurementSet | None) -> Dataset | None:
        if not any(m.value is not None for m in analysis.result.measurements):
            return None
        predecessors = []
        if previous is not None and previous.key_images_dir:
            old = Path(previous.key_images_dir) / SR_FILE
            if old.exists():
                predecessors.append(dcmread(old))
        return build_sr(analysis.result, analysis.evidence, previous_versions=predecessors)


class AnalysisQueue:
    """Producer of jobs for both engines, and the embedded engine's worker threads.

    ``publish`` (Celery engine) hands a job id to the broker; without it, the threads
    of this process run the jobs.
    """

    def __init__(
        self,
        jobs: JobTable,
        runner: AnalysisRunner | None,
        *,
        workers: int,
        max_attempts: int,
        poll_seconds: float,
        publish: Callable[[int], None] | None = None,
    ) -> None:
        self.jobs = jobs
        self.runner = runner
        self.workers = workers if publish is None else 0
        self.max_attempts = max_attempts
        self.poll_seconds = poll_seconds
        self.publish = publish
        self._threads: list[threading.Thread] = []
        self._wake = threading.Event()
        self._inflight: dict[int, Claim] = {}
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        return self.jobs.engine

    # -- producing -----------------------------------------------------------------------
    def enqueue(self, study_instance_uid: str, study_version: int) -> int:
        """Queue the analysis of a study version; returns the job id (existing or new)."""
        job_id, created = self.jobs.create(study_instance_uid, study_version)
        if created:
            log.info(
                "analysis queued",
                extra={"study_instance_uid": study_instance_uid, "study_version": study_version},
            )
            self._hand_over(job_id)
        return job_id

    def __call__(self, event: StudyCompleted) -> None:
        """Lifecycle subscriber: every completed study version is analysed."""
        self.enqueue(event.study_instance_uid, event.study_version)

    def rerun(self, study_instance_uid: str, study_version: int) -> int:
        """Queue the version again even if it was analysed."""
        job_id, created = self.jobs.create(study_instance_uid, study_version)
        if created or self.jobs.requeue(job_id):
            self._hand_over(job_id)
        return job_id

    def _hand_over(self, job_id: int) -> None:
        if self.publish is None:
            self._wake.set()
            return
        try:
            self.publish(job_id)
        except Exception as exc:  # the broker is down: the publisher sweep retries
            log.warning("broker unavailable", extra={"job": job_id, "error": type(exc).__name__})
            return
        self.jobs.mark_published(job_id)

    def publish_pending(self) -> int:
        """Hand jobs whose publication failed to the broker again (Celery engine)."""
        count = 0
        for job_id in self.jobs.unpublished():
            self._hand_over(job_id)
            count += 1
        return count

    # -- consuming (embedded) -------------------------------------------------------------
    def claim(self) -> Claim | None:
        return self.jobs.claim_next()

    def run_one(self) -> bool:
        """Claim and run one job; False when the queue is empty."""
        assert self.runner is not None
        claim = self.claim()
        if claim is None:
            return False
        key = threading.get_ident()
        with self._lock:
            self._inflight[key] = claim
        try:
            self.runner.run(claim)
        except Exception as exc:
            self.jobs.fail(claim, exc, self.max_attempts)
        finally:
            with self._lock:
                self._inflight.pop(key, None)
        return True

    def start(self, stop: threading.Event) -> None:
        if self.publish is not None:
            thread = threading.Thread(
                target=self._publisher, args=(stop,), daemon=True, name="analysis-publisher"
            )
            thread.start()
            self._threads.append(thread)
            return
        recovered = self.jobs.recover()
        if recovered:
            log.warning("analysis jobs requeued after restart", extra={"count": recovered})
        for n in range(self.workers):
            thread = threading.Thread(
                target=self._loop, args=(stop,), daemon=True, name=f"analysis-{n}"
            )
            thread.start()
            self._threads.append(thread)

    def _publisher(self, stop: threading.Event) -> None:
        while not stop.wait(max(self.poll_seconds, 1.0) * 5):
            try:
                self.publish_pending()
            except Exception:
                log.exception("analysis publisher error")

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

    def join(self, timeout: float) -> int:
        """Wait for the running jobs; those still running after ``timeout`` go back to the
        queue (their late results are fenced out). Returns how many were given back."""
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            unfinished = list(self._inflight.values())
        returned = 0
        for claim in unfinished:
            if self.jobs.release(claim, "interrupted by shutdown", final=False) is not None:
                returned += 1
        if returned:
            log.warning("analysis jobs returned to the queue at shutdown", extra={"n": returned})
        return returned
