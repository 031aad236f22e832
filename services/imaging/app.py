"""The imaging service's ASGI application. ``create_app(settings)`` builds the web layer;
the lifespan asks the composition root (:mod:`services.imaging.runtime`) for the running
parts, starts them (DICOM SCP, life cycle, deliveries, the queue engine) and stops them
in reverse order. Nothing is created at import time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware

from services.common.auth import Authenticator
from services.common.logging import AccessLogMiddleware
from services.common.operations import install_operations
from services.imaging.api import cohort, dicomweb, measurements, studies
from services.imaging.api.errors import install_error_handlers
from services.imaging.runtime import build_service
from services.imaging.settings import ImagingSettings


def create_app(settings: ImagingSettings | None = None) -> FastAPI:
    """The imaging service's ASGI application."""
    settings = settings or ImagingSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = build_service(settings)
        app.state.runtime = runtime
        app.state.engine = runtime.engine
        app.state.store = runtime.store
        runtime.start()
        try:
            yield
        finally:
            runtime.shutdown()

    app = FastAPI(
        title="Spine imaging service",
        version="0.1.0",
        description="DICOM intake (C-STORE, STOW-RS), QIDO-RS/WADO-RS, study completion, "
        "decompression measurements.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.authenticator = Authenticator(settings.auth)
    install_error_handlers(app)
    app.add_middleware(AccessLogMiddleware, logger_name="services.imaging.access")
    if settings.cors_origins:
        # A web viewer served from another origin (a hospital's OHIF) reads DICOMweb with
        # a bearer token; no cookies are involved, so credentials stay off.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type"],
            expose_headers=["Content-Location", "Content-Type", "Warning"],
            max_age=600,
        )
    app.include_router(dicomweb.router)
    app.include_router(studies.router)
    app.include_router(measurements.router)
    app.include_router(measurements.results_router)
    app.include_router(cohort.router)

    async def readiness() -> dict[str, str]:
        """Database, storage, the DICOM listener and the queue engine's needs."""
        checks: dict[str, str] = await run_in_threadpool(app.state.runtime.readiness)
        return checks

    install_operations(
        app, "imaging", readiness, before_scrape=lambda: app.state.runtime.refresh_gauges()
    )
    return app
