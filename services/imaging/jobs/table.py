"""The analysis queue's rows: one ``analysis_job`` per study version and algorithm
version, so a repeated completion event never analyses twice. The row is the truth
whichever engine runs it.

Every claim increments ``attempts``, and the attempt number is a fencing token: the
result, its deliveries and ``done`` are committed in one transaction only if the row is
still ``running`` under that attempt (:class:`~services.imaging.jobs.runner.AnalysisRunner`).
A worker that lost its job (killed, timed out, taken over) can finish computing but
cannot commit, so a result appears exactly once. Failures are retried up to
``max_attempts`` times, then the job is ``failed`` with its reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from services.imaging.analysis.report import ALGORITHM_VERSION
from services.imaging.metrics import ANALYSES
from services.imaging.models import AnalysisJob, JobState, utcnow

log = logging.getLogger(__name__)
_DIED = "the analysis stopped (the process died) on every attempt"


@dataclass(frozen=True)
class Claim:
    """A job taken by one worker for one attempt (the fencing token)."""

    job_id: int
    study_instance_uid: str
    study_version: int
    attempt: int


class JobTable:
    """The queue's rows: create, claim, release, count."""

    def __init__(self, engine: Engine, *, max_attempts: int = 3) -> None:
        self.engine = engine
        self.max_attempts = max_attempts

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
            # A job whose attempts are spent is not taken again: a study that kills the
            # worker (out of memory, a crash in a library) must not be retried forever.
            spent = conn.execute(
                update(AnalysisJob)
                .where(
                    col(AnalysisJob.id) == job_id,
                    col(AnalysisJob.state).in_(states),
                    col(AnalysisJob.attempts) >= self.max_attempts,
                )
                .values(state=JobState.FAILED, finished_at=utcnow(), last_error=_DIED)
            )
            if spent.rowcount:
                log.warning("analysis job failed: attempts spent", extra={"job": job_id})
                return None
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
        """Jobs a previous process left running go back to the queue (embedded only); the
        attempt they were on counts, and those whose attempts are spent are ``failed``."""
        with self.engine.begin() as conn:
            conn.execute(
                update(AnalysisJob)
                .where(
                    col(AnalysisJob.state) == JobState.RUNNING,
                    col(AnalysisJob.attempts) >= self.max_attempts,
                )
                .values(state=JobState.FAILED, finished_at=utcnow(), last_error=_DIED)
            )
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
