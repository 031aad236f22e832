"""The results outbox: each committed measurement set is delivered to every configured
target (:mod:`~services.imaging.results.to_pacs`: the SR and key images to the PACS;
:mod:`~services.imaging.results.to_fhir`: the metrics to the FHIR store). A target is a
class with a ``name`` and a ``deliver(measurement_set)``; the composition root
(:mod:`services.imaging.runtime`) builds the ones the settings ask for.

A ``result_delivery`` row is written in the same transaction as the measurement set, so a
crash never loses a delivery. Whoever has time delivers it (the worker that produced the
set, right away; the API process's sweep, for retries): a row is claimed with a
conditional UPDATE and a lease, so two processes never send it at once, and a sender that
died leaves a lease that expires. Failures are retried with exponential backoff, then
the row is ``failed`` with its reason. A set that was superseded before its delivery ran
is not sent: the newer one is, so a late retry never puts old values back.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from services.imaging.errors import DeliveryError
from services.imaging.metrics import DELIVERIES
from services.imaging.models import DeliveryState, MeasurementSet, ResultDelivery, utcnow

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=5)
MAX_BACKOFF = timedelta(hours=1)
OPEN = (DeliveryState.PENDING, DeliveryState.SENDING)  # SENDING: open again once the lease ends


class DeliveryTarget(Protocol):
    """Where committed results go; ``deliver`` raises :class:`DeliveryError` to retry."""

    name: str

    def deliver(self, measurement_set: MeasurementSet) -> dict[str, str | int]: ...


class Dispatcher:
    def __init__(
        self,
        engine: Engine,
        targets: list[DeliveryTarget],
        *,
        max_attempts: int,
        backoff_seconds: float,
    ) -> None:
        self.engine = engine
        self.targets = {target.name: target for target in targets}
        self.max_attempts = max_attempts
        self.backoff = timedelta(seconds=backoff_seconds)

    def plan(
        self,
        session: Session,
        measurement_set: MeasurementSet,
        only: tuple[str, ...] | None = None,
    ) -> list[ResultDelivery]:
        """Add the set's deliveries (to every target, or ``only`` those configured of the
        ones named: a reader's review sends the values again) to the caller's transaction."""
        assert measurement_set.id is not None
        now = utcnow()
        rows = [
            ResultDelivery(
                measurement_set_id=measurement_set.id,
                study_instance_uid=measurement_set.study_instance_uid,
                target=target,
                next_attempt_at=now,
                created_at=now,
            )
            for target in self.targets
            if only is None or target in only
        ]
        for row in rows:
            session.add(row)
        return rows

    # -- running ------------------------------------------------------------------------
    def deliver_due(self, limit: int = 20) -> int:
        """Deliver what is due (new, retry time reached, or lease expired); returns the
        number attempted."""
        with Session(self.engine) as session:
            due = session.exec(
                select(ResultDelivery.id)
                .where(
                    col(ResultDelivery.state).in_(OPEN),
                    col(ResultDelivery.next_attempt_at) <= utcnow(),
                )
                .order_by(col(ResultDelivery.id))
                .limit(limit)
            ).all()
        return sum(
            1 for delivery_id in due if delivery_id is not None and self.deliver(delivery_id)
        )

    def deliver(self, delivery_id: int) -> bool:
        """Claim and run one delivery; False when someone else holds it or it is not due."""
        now = utcnow()
        with self.engine.begin() as conn:
            claimed = conn.execute(
                update(ResultDelivery)
                .where(
                    col(ResultDelivery.id) == delivery_id,
                    col(ResultDelivery.state).in_(OPEN),
                    col(ResultDelivery.next_attempt_at) <= now,
                )
                .values(
                    state=DeliveryState.SENDING,
                    attempts=ResultDelivery.attempts + 1,
                    next_attempt_at=now + LEASE,
                )
            )
        if claimed.rowcount != 1:
            return False
        with Session(self.engine) as session:
            row = session.get(ResultDelivery, delivery_id)
            assert row is not None
            target, attempts = row.target, row.attempts
            measurement_set = session.get(MeasurementSet, row.measurement_set_id)
        try:
            if measurement_set is None or not measurement_set.is_current:
                detail: dict[str, str | int] = {"skipped": "superseded by a newer analysis"}
            elif target not in self.targets:
                raise DeliveryError(f"target '{target}' is not configured here")
            else:
                detail = self.targets[target].deliver(measurement_set)
        except Exception as exc:
            reason = exc.reason if isinstance(exc, DeliveryError) else type(exc).__name__
            if not isinstance(exc, DeliveryError):
                log.exception("delivery error", extra={"delivery": delivery_id, "target": target})
            final = attempts >= self.max_attempts
            wait = min(self.backoff * 2 ** (attempts - 1), MAX_BACKOFF)
            self._finish(
                delivery_id,
                DeliveryState.FAILED if final else DeliveryState.PENDING,
                error=reason[:500],
                next_attempt=utcnow() + wait,
            )
            DELIVERIES.labels(target=target, outcome="failed" if final else "retry").inc()
            log.warning(
                "delivery failed",
                extra={
                    "delivery": delivery_id,
                    "target": target,
                    "attempt": attempts,
                    "reason": reason,
                },
            )
            return True
        self._finish(delivery_id, DeliveryState.DONE, detail=detail)
        DELIVERIES.labels(target=target, outcome="done").inc()
        log.info("delivered", extra={"delivery": delivery_id, "target": target, **detail})
        return True

    def _finish(
        self,
        delivery_id: int,
        state: DeliveryState,
        *,
        error: str | None = None,
        detail: dict[str, str | int] | None = None,
        next_attempt: Any = None,
    ) -> None:
        values: dict[str, Any] = {"state": state, "last_error": error}
        if state == DeliveryState.DONE:
            values["delivered_at"] = utcnow()
            values["detail"] = json.dumps(detail or {})
        if next_attempt is not None:
            values["next_attempt_at"] = next_attempt
        with self.engine.begin() as conn:
            conn.execute(
                update(ResultDelivery).where(col(ResultDelivery.id) == delivery_id).values(**values)
            )
