"""The outcomes service: a FHIR R4 server. ``create_app(settings)`` builds it; nothing
is created at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from services.common.auth import Authenticator
from services.common.db import make_engine, upgrade_schema
from services.common.logging import AccessLogMiddleware, recording_status
from services.common.operations import database_status, install_operations
from services.outcomes import audit
from services.outcomes.api import fhir, registry
from services.outcomes.api.errors import install_error_handlers
from services.outcomes.settings import OutcomesSettings

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION = "0.1.0"


class AuditMiddleware:
    """Records every FHIR request (who, what, when, outcome) after it is answered."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith(("/fhir", "/registry"))
            or scope["path"] == "/fhir/metadata"
        ):
            await self.app(scope, receive, send)
            return
        send_wrapper, status = recording_status(send)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            principal = scope.get("state", {}).get("principal")
            engine = scope["app"].state.engine
            await run_in_threadpool(
                audit.record,
                engine,
                agent=principal.subject if principal is not None else "anonymous",
                method=scope["method"],
                path=scope["path"],
                status=status["code"],
            )


def create_app(settings: OutcomesSettings | None = None) -> FastAPI:
    """The outcomes service's ASGI application."""
    settings = settings or OutcomesSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.resolved_database_url)
        upgrade_schema(engine, MIGRATIONS)
        app.state.engine = engine
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(
        title="Spine outcomes FHIR server",
        version=VERSION,
        description="FHIR R4 (4.0.1) server for complications, PROMs and early results.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.authenticator = Authenticator(settings.auth)
    install_error_handlers(app)
    app.add_middleware(AuditMiddleware)
    app.add_middleware(AccessLogMiddleware, logger_name="services.outcomes.access")
    app.include_router(fhir.router)
    app.include_router(registry.router)

    async def readiness() -> dict[str, str]:
        return {"database": await run_in_threadpool(database_status, app.state.engine)}

    install_operations(app, "outcomes", readiness)

    return app
