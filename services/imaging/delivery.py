"""The results outbox: each committed measurement set is delivered to every configured
destination (the PACS gets the SR and key images, the FHIR store gets the metrics).

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
from pathlib import Path
from typing import Any

import httpx
from pydicom import Dataset, dcmread
from sqlalchemy import Engine, update
from sqlmodel import Session, col, func, select

from services.common.auth import Authenticator, ServiceBearer
from services.imaging import pacs
from services.imaging.errors import DeliveryError
from services.imaging.fhir_out import FhirPublisher, StudyFacts
from services.imaging.metrics import DELIVERIES
from services.imaging.models import (
    DeliveryState,
    Instance,
    MeasurementSet,
    ResultDelivery,
    Series,
    Study,
)
from services.imaging.outbound import CStoreSender, PacsSender, StowSender, secondary_captures
from services.imaging.settings import ImagingSettings
from services.imaging.store import utcnow

log = logging.getLogger(__name__)

SR_FILE = "sr.dcm"
LEASE = timedelta(minutes=5)
MAX_BACKOFF = timedelta(hours=1)
OPEN = (DeliveryState.PENDING, DeliveryState.SENDING)  # SENDING: open again once the lease ends
FHIR_SCOPE = "system/Patient.crs system/ImagingStudy.crs system/Observation.crus"


class Dispatcher:
    def __init__(
        self,
        engine: Engine,
        *,
        pacs_sender: PacsSender | None,
        fhir: FhirPublisher | None,
        key_images: bool,
        max_attempts: int,
        backoff_seconds: float,
        manufacturer: str = "spine-outcomes",
    ) -> None:
        self.engine = engine
        self.pacs_sender = pacs_sender
        self.fhir = fhir
        self.key_images = key_images
        self.max_attempts = max_attempts
        self.backoff = timedelta(seconds=backoff_seconds)
        self.manufacturer = manufacturer

    @property
    def targets(self) -> list[str]:
        return [name for name, on in (("pacs", self.pacs_sender), ("fhir", self.fhir)) if on]

    def plan(self, session: Session, measurement_set: MeasurementSet) -> list[ResultDelivery]:
        """Add the set's deliveries to the caller's transaction."""
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
                detail: dict[str, Any] = {"skipped": "superseded by a newer analysis"}
            elif target == "pacs":
                detail = self._to_pacs(measurement_set)
            else:
                detail = self._to_fhir(measurement_set)
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
        detail: dict[str, Any] | None = None,
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

    def _to_pacs(self, measurement_set: MeasurementSet) -> dict[str, Any]:
        assert self.pacs_sender is not None
        folder = Path(measurement_set.key_images_dir or "/nonexistent")
        if not (folder / SR_FILE).exists():
            return {"skipped": "no measured value, so no SR"}
        sr = dcmread(folder / SR_FILE)
        datasets: list[Dataset] = [sr]
        if self.key_images:
            pngs = [p.read_bytes() for p in sorted(folder.glob("*.png"))]
            datasets += secondary_captures(pngs, sr, manufacturer=self.manufacturer)
        how = self.pacs_sender.send(datasets)
        return {"sent": how, "sr": str(sr.SOPInstanceUID), "instances": len(datasets)}

    def _to_fhir(self, measurement_set: MeasurementSet) -> dict[str, Any]:
        assert self.fhir is not None
        uid = measurement_set.study_instance_uid
        with Session(self.engine) as session:
            study = session.get(Study, uid)
            if study is None or not study.patient_id:
                return {"skipped": "the study has no PatientID"}
            counts = session.exec(
                select(func.count(func.distinct(Instance.series_instance_uid)), func.count())
                .select_from(Instance)
                .join(Series, col(Series.series_instance_uid) == col(Instance.series_instance_uid))
                .where(Instance.study_instance_uid == uid, col(Series.modality).in_(["CT", "MR"]))
            ).one()
        result = json.loads(measurement_set.result)
        facts = StudyFacts(
            study_instance_uid=uid,
            patient_id=study.patient_id,
            study_date=study.study_date,
            study_time=study.study_time,
            modality=result.get("modality") or "OT",
            description=study.study_description,
            series=int(counts[0]),
            instances=int(counts[1]),
        )
        return self.fhir.publish(facts, result).as_json()


def build_dispatcher(settings: ImagingSettings, engine: Engine) -> Dispatcher:
    """The destinations the settings name (none by default)."""
    sender: PacsSender | None = None
    if settings.results_destination == "stow":
        if not settings.stow_url:
            raise ValueError("IMAGING_RESULTS_DESTINATION=stow needs IMAGING_RESULTS_STOW_URL")
        sender = StowSender(settings.stow_url, pacs.make_session(settings))
    elif settings.results_destination == "cstore":
        if not settings.results_dicom_host:
            raise ValueError("IMAGING_RESULTS_DESTINATION=cstore needs IMAGING_RESULTS_DICOM_HOST")
        sender = CStoreSender(
            settings.results_dicom_host,
            settings.results_dicom_port,
            settings.results_called_aet,
            settings.ae_title,
            settings.pacs_timeout_seconds,
        )
    fhir: FhirPublisher | None = None
    if settings.fhir_url:
        client = httpx.Client(
            base_url=settings.fhir_url.rstrip("/") + "/",
            auth=ServiceBearer(
                Authenticator(settings.auth), "imaging", FHIR_SCOPE, settings.fhir_token
            ),
            timeout=settings.fhir_timeout_seconds,
            headers={"Accept": "application/fhir+json"},
        )
        fhir = FhirPublisher(client, mrn_system=settings.mrn_system)
    return Dispatcher(
        engine,
        pacs_sender=sender,
        fhir=fhir,
        key_images=settings.results_key_images,
        max_attempts=settings.delivery_max_attempts,
        backoff_seconds=settings.delivery_backoff_seconds,
    )
