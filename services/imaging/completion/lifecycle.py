"""Study life cycle: receiving → (quiet period + content check) → complete, and the
outbox that delivers ``study.complete`` events to subscribers.

Everything is in the database, so a restart between arrival and completion loses
nothing: the next sweep finds the quiet studies, and undelivered events are
delivered (at least once; subscribers must be idempotent on (study, version)).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from services.common.db import session_scope
from services.imaging.completion.completeness import SliceGeometry, check_study
from services.imaging.metrics import STUDIES_COMPLETED
from services.imaging.models import Instance, Study, StudyEvent, StudyState, utcnow

log = logging.getLogger(__name__)

STUDY_COMPLETE = "study.complete"
MAX_DELIVERY_ATTEMPTS = 20


@dataclass(frozen=True)
class StudyCompleted:
    """The event analysis subscribes to: a study version is whole and quiet."""

    event_id: int
    study_instance_uid: str
    study_version: int
    source: str


Subscriber = Callable[[StudyCompleted], None]


class StudyLifecycle:
    """Declares quiet, whole studies complete and delivers the events."""

    def __init__(self, engine: Engine, *, quiet_seconds: float, gap_tolerance: float) -> None:
        self.engine = engine
        self.quiet = timedelta(seconds=quiet_seconds)
        self.gap_tolerance = gap_tolerance
        self._subscribers: dict[str, list[Subscriber]] = defaultdict(list)

    def subscribe(self, handler: Subscriber, kind: str = STUDY_COMPLETE) -> None:
        self._subscribers[kind].append(handler)

    # -- completion --------------------------------------------------------------------
    def sweep(self) -> list[str]:
        """Examine every quiet study still receiving; return those declared complete."""
        cutoff = utcnow() - self.quiet
        with Session(self.engine) as session:
            quiet = session.exec(
                select(Study.study_instance_uid, Study.last_received_at).where(
                    Study.state == StudyState.RECEIVING, Study.last_received_at <= cutoff
                )
            ).all()
        completed = []
        for uid, last_received in quiet:
            if self._settle(uid, last_received, force=False):
                completed.append(uid)
        return completed

    def force_complete(self, study_instance_uid: str) -> bool:
        """Operator override: complete a study now, whatever the content check says."""
        with Session(self.engine) as session:
            study = session.get(Study, study_instance_uid)
            if study is None:
                return False
            last_received = study.last_received_at
        return self._settle(study_instance_uid, last_received, force=True)

    def _settle(self, uid: str, last_received: object, *, force: bool) -> bool:
        with Session(self.engine) as session:
            rows = session.exec(select(Instance).where(Instance.study_instance_uid == uid)).all()
        by_series: dict[str, list[SliceGeometry]] = defaultdict(list)
        for row in rows:
            by_series[row.series_instance_uid].append(
                SliceGeometry(
                    row.sop_instance_uid,
                    row.image_position_patient,
                    row.image_orientation_patient,
                    row.rows,
                    row.columns,
                    row.pixel_spacing,
                    row.number_of_frames,
                )
            )
        checks = check_study(by_series, gap_tolerance=self.gap_tolerance)
        problems = [f"series {c.series_instance_uid}: {p}" for c in checks for p in c.problems]
        whole = force or not problems
        now = utcnow()
        with session_scope(self.engine) as session:
            allowed_states = (
                [StudyState.RECEIVING, StudyState.INCOMPLETE] if force else [StudyState.RECEIVING]
            )
            result = session.execute(
                update(Study)
                .where(
                    col(Study.study_instance_uid) == uid,
                    col(Study.last_received_at) == last_received,
                    col(Study.state).in_(allowed_states),
                )
                .values(
                    state=StudyState.COMPLETE if whole else StudyState.INCOMPLETE,
                    completed_at=now if whole else None,
                    state_reason="; ".join(problems)[:4000] or None,
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False  # an instance arrived meanwhile: the study is not quiet
            if not whole:
                log.warning(
                    "quiet study failed the content check",
                    extra={"study_instance_uid": uid, "problems": len(problems)},
                )
                return False
            study = session.get(Study, uid)
            assert study is not None
            session.add(
                StudyEvent(
                    study_instance_uid=uid,
                    study_version=study.version,
                    kind=STUDY_COMPLETE,
                    created_at=now,
                )
            )
        STUDIES_COMPLETED.inc()
        log.info(
            "study complete",
            extra={"study_instance_uid": uid, "series": len(by_series), "forced": force},
        )
        return True

    # -- delivery ------------------------------------------------------------------------
    def deliver(self) -> int:
        """Deliver pending events to the subscribers; return how many were delivered."""
        with Session(self.engine) as session:
            pending = session.exec(
                select(StudyEvent, Study.source)
                .join(Study, col(Study.study_instance_uid) == StudyEvent.study_instance_uid)
                .where(
                    col(StudyEvent.delivered_at).is_(None),
                    StudyEvent.attempts < MAX_DELIVERY_ATTEMPTS,
                )
                .order_by(col(StudyEvent.id))
            ).all()
        delivered = 0
        for event, source in pending:
            assert event.id is not None
            message = StudyCompleted(
                event.id, event.study_instance_uid, event.study_version, source
            )
            error: str | None = None
            for handler in self._subscribers.get(event.kind, []):
                try:
                    handler(message)
                except Exception as exc:  # a subscriber's failure must not lose the event
                    error = f"{getattr(handler, '__qualname__', handler)}: {type(exc).__name__}"
                    log.exception("event subscriber failed", extra={"event_id": event.id})
            with session_scope(self.engine) as session:
                row = session.get(StudyEvent, event.id)
                assert row is not None
                row.attempts += 1
                if error is None:
                    row.delivered_at = utcnow()
                    delivered += 1
                else:
                    row.last_error = error[:512]
                session.add(row)
        return delivered

    def run(self, stop: threading.Event, poll_seconds: float) -> None:
        """The background loop: sweep, deliver, sleep; until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.sweep()
                self.deliver()
            except Exception:
                log.exception("study life-cycle sweep failed; retrying")
            stop.wait(poll_seconds)
