"""The imaging service: ``create_app(settings)`` wires the data flow

    C-STORE / STOW-RS → InstanceStore (fsync + index) → StudyLifecycle (quiet + whole)
    → study.complete event → PriorFetcher (the PACS's earlier studies of the patient)
                           → AnalysisQueue (in-process threads, or Celery workers)
    → AnalysisRunner: measurements + SR + key images, committed with their deliveries
    → Dispatcher: SR (and key images) to the PACS, metrics as FHIR Observations

Nothing is created at import time; the lifespan starts the DICOM SCP and the
life-cycle thread and stops them in reverse order.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.engine import Engine

from services.common.auth import Authenticator
from services.common.db import make_engine, upgrade_schema
from services.common.logging import AccessLogMiddleware
from services.common.operations import database_status, install_operations
from services.imaging import pacs
from services.imaging.api import dicomweb, measurements, studies
from services.imaging.api.errors import install_error_handlers
from services.imaging.delivery import Dispatcher, build_dispatcher
from services.imaging.dimse import start_scp
from services.imaging.jobs import AnalysisQueue, AnalysisRunner, JobTable
from services.imaging.lifecycle import StudyLifecycle
from services.imaging.metrics import QUEUE_DEPTH
from services.imaging.models import JobState
from services.imaging.settings import ImagingSettings
from services.imaging.store import InstanceStore

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class ImagingRuntime:
    """The running parts of one imaging service instance."""

    settings: ImagingSettings
    engine: Engine
    store: InstanceStore
    lifecycle: StudyLifecycle
    pacs: pacs.Pacs | None
    analysis: AnalysisQueue
    dispatcher: Dispatcher
    broker: Any = None  # the Celery app, in the Celery engine
    scp: ThreadedAssociationServer | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def build(cls, settings: ImagingSettings) -> ImagingRuntime:
        engine = make_engine(settings.resolved_database_url)
        upgrade_schema(engine, MIGRATIONS)
        store = InstanceStore(
            engine, settings.storage_dir, max_instance_bytes=settings.max_instance_bytes
        )
        lifecycle = StudyLifecycle(
            engine,
            quiet_seconds=settings.study_quiet_seconds,
            gap_tolerance=settings.slice_gap_tolerance,
        )
        client: pacs.Pacs | None = None
        if settings.pacs_dicomweb_url:
            client = pacs.DicomwebPacs(settings.pacs_dicomweb_url, pacs.make_session(settings))
            if settings.prior_fetch_enabled:
                lifecycle.subscribe(
                    pacs.PriorFetcher(
                        engine,
                        store,
                        client,
                        lookback_days=settings.prior_lookback_days,
                        modalities=settings.prior_modalities,
                    )
                )
        dispatcher = build_dispatcher(settings, engine)
        broker = None
        publish = None
        if settings.queue == "celery":
            from services.imaging.worker import make_celery, publisher

            broker = make_celery(settings)
            publish = publisher(broker)
        analysis = AnalysisQueue(
            JobTable(engine),
            AnalysisRunner(engine, store, settings.key_images_dir, dispatcher),
            workers=settings.analysis_workers if settings.analysis_enabled else 0,
            max_attempts=settings.analysis_max_attempts,
            poll_seconds=settings.analysis_poll_seconds,
            publish=publish,
        )
        if settings.analysis_enabled:
            lifecycle.subscribe(analysis)
        return cls(settings, engine, store, lifecycle, client, analysis, dispatcher, broker)

    def start(self) -> None:
        removed = self.store.remove_orphan_temporaries()
        if removed:
            log.warning("removed unacknowledged partial writes", extra={"count": removed})
        self.scp = start_scp(self.settings, self.store)
        for name, target in (("study-lifecycle", self._lifecycle), ("delivery", self._deliver)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)
        self.analysis.start(self.stop)

    def _lifecycle(self) -> None:
        self.lifecycle.run(self.stop, self.settings.completion_poll_seconds)

    def _deliver(self) -> None:
        """Retries of deliveries (first attempts are made by the worker that analysed)."""
        while not self.stop.wait(max(1.0, self.settings.completion_poll_seconds * 5)):
            try:
                self.dispatcher.deliver_due()
            except Exception:
                log.exception("delivery sweep error")

    def shutdown(self) -> None:
        """Graceful: the SCP stops accepting associations and lets the open ones finish,
        the completion and delivery loops stop, running analyses get 30 s to finish and
        are otherwise returned to the queue."""
        if self.scp is not None:
            self.scp.shutdown()
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)
        self.analysis.join(timeout=30)
        self.engine.dispose()

    def readiness(self) -> dict[str, str]:
        """What the service needs to do its work, each 'ok' or why not."""
        checks = {"database": database_status(self.engine)}
        checks["storage"] = "ok" if os.access(self.store.root, os.W_OK) else "not writable"
        checks["dicom"] = "ok" if self.scp is not None else "not listening"
        if self.broker is not None:
            try:
                with self.broker.connection_for_write() as conn:
                    conn.ensure_connection(max_retries=1, timeout=2)
                checks["queue"] = "ok"
            except Exception as exc:
                checks["queue"] = f"broker unreachable ({type(exc).__name__})"
        return checks

    def refresh_gauges(self) -> None:
        counts = self.analysis.jobs.counts()
        for state in JobState:
            QUEUE_DEPTH.labels(state=state.value).set(counts.get(str(state), 0))

    @property
    def dicom_port(self) -> int:
        assert self.scp is not None
        port: int = self.scp.server_address[1]
        return port


def create_app(settings: ImagingSettings | None = None) -> FastAPI:
    """The imaging service's ASGI application."""
    settings = settings or ImagingSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = ImagingRuntime.build(settings)
        app.state.runtime = runtime
        app.state.engine = runtime.engine
        app.state.store = runtime.store
        app.state.lifecycle = runtime.lifecycle
        app.state.pacs = runtime.pacs
        app.state.analysis = runtime.analysis
        runtime.start()
        try:
            yield
        finally:
            runtime.shutdown()

    app = FastAPI(
        title="Spine imaging service",
        version="0.1.0",
        description="DICOM intake (C-STORE, STOW-RS), QIDO-RS/WADO-RS, study completion.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.authenticator = Authenticator(settings.auth)
    install_error_handlers(app)
    app.add_middleware(AccessLogMiddleware, logger_name="services.imaging.access")
    app.include_router(dicomweb.router)
    app.include_router(studies.router)
    app.include_router(measurements.router)
    app.include_router(measurements.results_router)

    async def readiness() -> dict[str, str]:
        """Database, storage, the DICOM listener and (Celery engine) the broker."""
        checks: dict[str, str] = await run_in_threadpool(app.state.runtime.readiness)
        return checks

    install_operations(
        app, "imaging", readiness, before_scrape=lambda: app.state.runtime.refresh_gauges()
    )

    return app
