"""The imaging service: ``create_app(settings)`` wires the data flow

    C-STORE / STOW-RS → InstanceStore (fsync + index) → StudyLifecycle (quiet + whole)
    → study.complete event → subscribers (prior fetch now; analysis next)

Nothing is created at import time; the lifespan starts the DICOM SCP and the
life-cycle thread and stops them in reverse order.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.engine import Engine

from services.common.auth import Authenticator
from services.common.db import make_engine, upgrade_schema
from services.common.logging import AccessLogMiddleware
from services.imaging import pacs
from services.imaging.api import dicomweb, measurements, studies
from services.imaging.api.errors import install_error_handlers
from services.imaging.dimse import start_scp
from services.imaging.jobs import AnalysisQueue
from services.imaging.lifecycle import StudyLifecycle
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
    scp: ThreadedAssociationServer | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

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
        analysis = AnalysisQueue(
            engine,
            store,
            settings.key_images_dir,
            workers=settings.analysis_workers if settings.analysis_enabled else 0,
            max_attempts=settings.analysis_max_attempts,
            poll_seconds=settings.analysis_poll_seconds,
        )
        if settings.analysis_enabled:
            lifecycle.subscribe(analysis)
        return cls(settings, engine, store, lifecycle, client, analysis)

    def start(self) -> None:
        removed = self.store.remove_orphan_temporaries()
        if removed:
            log.warning("removed unacknowledged partial writes", extra={"count": removed})
        self.scp = start_scp(self.settings, self.store)
        self.thread = threading.Thread(
            target=self.lifecycle.run,
            args=(self.stop, self.settings.completion_poll_seconds),
            name="study-lifecycle",
            daemon=True,
        )
        self.thread.start()
        self.analysis.start(self.stop)

    def shutdown(self) -> None:
        if self.scp is not None:
            self.scp.shutdown()  # stop accepting; in-flight associations finish their PDU
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        self.analysis.join(timeout=30)  # a running job finishes or is requeued at start-up
        self.engine.dispose()

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

    @app.get("/healthz", tags=["Operations"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    return app
