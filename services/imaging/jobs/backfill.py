"""Back-fill: analyse a cohort's studies again (a new algorithm version, a retrospective
series) and report what changed.

Each selected study's current version is queued again; the running service's workers
(embedded threads or Celery workers) do the work, so this command only needs the
database (and the broker in the Celery engine). When ``wait`` is set it waits for the
jobs and compares every value with the one it supersedes. The deliveries of the new
results (SR to the PACS, Observations ``amended`` in the FHIR store) follow by
themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from services.common.contracts import AnalysisResult
from services.imaging.jobs.queue import AnalysisQueue
from services.imaging.models import (
    AnalysisJob,
    JobState,
    Study,
    StudyState,
    current_measurement_set,
)

TOLERANCE = 0.005


@dataclass
class StudyChange:
    study_instance_uid: str
    job_state: str
    changed: list[str] = field(default_factory=list)  # "L4-L5 left foraminal_height 9.1→9.4"

    def as_json(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "job_state": self.job_state,
            "changed": self.changed,
        }


@dataclass
class BackfillReport:
    studies: list[StudyChange]
    seconds: float

    @property
    def summary(self) -> dict[str, int]:
        return {
            "studies": len(self.studies),
            "done": sum(s.job_state == "done" for s in self.studies),
            "failed": sum(s.job_state == "failed" for s in self.studies),
            "pending": sum(s.job_state not in ("done", "failed") for s in self.studies),
            "changed": sum(bool(s.changed) for s in self.studies),
            "values_changed": sum(len(s.changed) for s in self.studies),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "seconds": round(self.seconds, 1),
            "studies": [s.as_json() for s in self.studies],
        }

    def text(self) -> str:
        s = self.summary
        lines = [
            f"back-fill: {s['studies']} studies in {self.seconds:.0f} s — {s['done']} done, "
            f"{s['failed']} failed, {s['pending']} still pending; {s['changed']} studies "
            f"changed ({s['values_changed']} values)"
        ]
        for study in self.studies:
            for change in study.changed:
                lines.append(f"  {study.study_instance_uid}  {change}")
            if study.job_state == "failed":
                lines.append(f"  {study.study_instance_uid}  analysis failed")
        return "\n".join(lines)


def _values(result_json: str | None) -> dict[tuple[str, str, str], float | None]:
    if result_json is None:
        return {}
    out: dict[tuple[str, str, str], float | None] = {}
    for m in AnalysisResult.from_json(result_json).measurements:
        where = m.level or f"#{m.level_index}"
        out[(where, m.side or "", m.quantity.value)] = m.value
    return out


def _differences(before: str | None, after: str | None) -> list[str]:
    old, new = _values(before), _values(after)
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if (a is None) != (b is None) or (
            a is not None and b is not None and abs(a - b) >= TOLERANCE
        ):
            where = " ".join(k for k in key if k)
            changes.append(f"{where} {'—' if a is None else a}→{'—' if b is None else b}")
    return changes


def _result(session: Session, study_instance_uid: str) -> str | None:
    current = current_measurement_set(session, study_instance_uid)
    return current.result if current is not None else None


def select_studies(
    engine: Engine, *, patient_id: str | None = None, since: str | None = None
) -> list[tuple[str, int]]:
    """Complete studies with at least one CT/MR analysis, oldest first."""
    with Session(engine) as session:
        query = select(Study.study_instance_uid, Study.version).where(
            Study.state == StudyState.COMPLETE
        )
        if patient_id:
            query = query.where(Study.patient_id == patient_id)
        if since:
            query = query.where(col(Study.study_date) >= since.replace("-", ""))
        return [(uid, version) for uid, version in session.exec(query.order_by(Study.study_date))]


def run_backfill(
    engine: Engine,
    queue: AnalysisQueue,
    studies: list[tuple[str, int]],
    *,
    wait: bool = True,
    timeout: float = 24 * 3600,
    poll: float = 2.0,
) -> BackfillReport:
    started = time.monotonic()
    before: dict[str, str | None] = {}
    jobs: dict[str, int] = {}
    with Session(engine) as session:
        for uid, _ in studies:
            before[uid] = _result(session, uid)
    for uid, version in studies:
        jobs[uid] = queue.rerun(uid, version)
    states: dict[str, str] = {}
    while True:
        with Session(engine) as session:
            rows = session.exec(
                select(AnalysisJob.id, AnalysisJob.state).where(
                    col(AnalysisJob.id).in_(list(jobs.values()))
                )
            ).all()
        by_id = {job_id: str(state) for job_id, state in rows}
        states = {uid: by_id.get(job_id, "unknown") for uid, job_id in jobs.items()}
        finished = all(s in (JobState.DONE, JobState.FAILED) for s in states.values())
        if finished or not wait or time.monotonic() - started > timeout:
            break
        time.sleep(poll)
    changes = []
    with Session(engine) as session:
        for uid, _ in studies:
            state = states.get(uid, "unknown")
            after = _result(session, uid)
            diff = _differences(before[uid], after) if state == JobState.DONE else []
            changes.append(StudyChange(uid, state, diff))
    return BackfillReport(changes, time.monotonic() - started)
