"""The attempt number fences a job's commit: a worker that lost its job cannot store a
result, so a result appears exactly once whatever the broker redelivers."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session, select

from services.common.db import make_engine, sqlite_url_for, upgrade_schema
from services.common.vocabulary import QuantityName
from services.imaging.analysis.pipeline import Analysis
from services.imaging.analysis.report import AnalysisResult, Measurement
from services.imaging.intake.store import InstanceStore
from services.imaging.jobs.runner import AnalysisRunner
from services.imaging.jobs.table import Claim, JobTable
from services.imaging.models import AnalysisJob, JobState, MeasurementSet
from services.imaging.results.folder import ResultsFolder
from services.imaging.results.outbox import Dispatcher
from services.imaging.runtime import MIGRATIONS


def _runner(tmp_path: Path) -> tuple[JobTable, AnalysisRunner]:
    engine = make_engine(sqlite_url_for(tmp_path / "imaging.db"))
    upgrade_schema(engine, MIGRATIONS)
    store = InstanceStore(engine, tmp_path / "storage", max_instance_bytes=1 << 20)
    dispatcher = Dispatcher(engine, [], max_attempts=3, backoff_seconds=1)
    runner = AnalysisRunner(engine, store, ResultsFolder(tmp_path / "results"), dispatcher)

    def analyse(claim: Claim) -> Analysis:  # the fence is under test, not the analysis
        result = AnalysisResult(claim.study_instance_uid, "CT", status="failed")
        result.measurements.append(
            Measurement(
                QuantityName.DISC_HEIGHT, "L4-L5", 3, None, None, "1.2.3.4", status="needs_review"
            )
        )
        return Analysis(result=result)

    runner.analyse = analyse  # type: ignore[method-assign]
    return JobTable(engine), runner


def test_a_taken_over_attempt_cannot_commit(tmp_path: Path) -> None:
    jobs, runner = _runner(tmp_path)
    job_id, created = jobs.create("1.2.3", 1)
    assert created and jobs.create("1.2.3", 1) == (job_id, False)
    first = jobs.claim(job_id)
    assert first is not None and first.attempt == 1
    # The broker redelivers (the first worker looked dead): a second worker takes over.
    second = jobs.claim(job_id)
    assert second is not None and second.attempt == 2
    assert runner.run(second) is True
    assert runner.run(first) is False  # the late finisher is fenced out
    assert jobs.release(first, "late", final=False) is None
    assert jobs.claim(job_id) is None  # done: a duplicate message does nothing
    with Session(runner.engine) as session:
        sets = session.exec(select(MeasurementSet)).all()
        job = session.get(AnalysisJob, job_id)
    assert len(sets) == 1 and job is not None
    assert job.state == JobState.DONE and job.attempts == 2
    # Re-running (an operator, a back-fill) makes a new current set and keeps the old one.
    assert jobs.requeue(job_id)
    third = jobs.claim_next()
    assert third is not None and runner.run(third)
    with Session(runner.engine) as session:
        current = session.exec(select(MeasurementSet.is_current)).all()
    assert sorted(current) == [False, True]


def test_a_job_that_kills_its_worker_fails_once_its_attempts_are_spent(tmp_path: Path) -> None:
    """F9: the attempt a dead worker was on counts; a study that kills every worker is
    failed after max_attempts, not retried on every restart."""
    jobs, _ = _runner(tmp_path)
    jobs.max_attempts = 2
    job_id, _ = jobs.create("1.2.9", 1)
    claim = jobs.claim_next()
    assert claim is not None and claim.attempt == 1
    assert jobs.recover() == 1  # the process died: back to the queue, the attempt counted
    claim = jobs.claim_next()
    assert claim is not None and claim.attempt == 2
    assert jobs.recover() == 0  # died again on its last attempt: failed, not requeued
    assert jobs.claim_next() is None
    with Session(jobs.engine) as session:
        job = session.get(AnalysisJob, job_id)
    assert job is not None and job.state == JobState.FAILED and job.attempts == 2
    assert job.last_error is not None and "died" in job.last_error
    # A broker redelivering the message finds nothing to run either.
    second, _ = jobs.create("1.2.10", 1)
    assert jobs.claim(second) is not None and jobs.claim(second) is not None
    assert jobs.claim(second) is None
