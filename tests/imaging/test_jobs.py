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
