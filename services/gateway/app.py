"""The research gateway. ``create_app(settings)`` builds it; nothing is created at import.

Data flow: the outcomes service (FHIR) and the imaging service (results API) are read
with httpx clients made in the lifespan; :mod:`sources` turns them into cases;
:mod:`cohort`, :mod:`export` and :mod:`plots` answer the protocol's questions; every
request is audited.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from pydantic import BaseModel
from sqlmodel import Session, col, select

from services.common.auth import Authenticator, ServiceBearer, secret_key
from services.common.db import make_engine, upgrade_schema
from services.common.logging import AccessLogMiddleware, recording_status
from services.common.operations import database_status, install_operations
from services.common.params import After
from services.gateway import audit
from services.gateway.access import Auditor
from services.gateway.api import (
    agreement,
    cases,
    cohort,
    dashboard,
    exports,
    followup,
    report,
    review,
    viewer,
)
from services.gateway.api.errors import install_error_handlers
from services.gateway.errors import UpstreamError
from services.gateway.models import AccessRecord
from services.gateway.privacy import Pseudonymizer
from services.gateway.settings import GatewaySettings
from services.gateway.sources import CaseSource
from services.gateway.upstream import ImagingClient, OutcomesClient

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION = "0.1.0"
AUDITED = ("/api", "/dashboard", "/viewer/dicomweb")
# The viewer's per-image pixel fetches (hundreds per study: an instance's frames or
# thumbnail) are not recorded one by one; searches, metadata, bulk data and whole-study or
# series renderings are.
NOT_AUDITED = re.compile(
    r"/viewer/dicomweb/studies/[^/]+/series/[^/]+/instances/[^/]+"
    r"/(frames/[0-9,]+(/rendered|/thumbnail)?|rendered|thumbnail)"
)
CASE_PATH = re.compile(r"^/(?:api|dashboard)/cases/([A-Za-z0-9\-.]{1,64})")


class AuditMiddleware:
    """Records every API and dashboard request (who, role, what, outcome) once answered."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith(AUDITED)
            or NOT_AUDITED.fullmatch(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        send_wrapper, status = recording_status(send)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            state = scope.get("state", {})
            principal = state.get("principal")
            await run_in_threadpool(
                audit.record,
                scope["app"].state.engine,
                subject=principal.subject if principal is not None else "anonymous",
                role=state.get("role") or (principal.role if principal is not None else None),
                method=scope["method"],
                path=scope["path"],
                query=scope.get("query_string", b"").decode(errors="replace"),
                status_code=status["code"],
                case_id=state.get("case_id")
                or (match[1] if (match := CASE_PATH.match(scope["path"])) else None),
            )


class AccessRecordPublic(BaseModel):
    id: int
    recorded: datetime
    subject: str
    role: str | None
    method: str
    path: str
    query: str | None
    status_code: int
    case_id: str | None


class NoStoreMiddleware:
    """Every answer carries patient data in someone's frame: no cache keeps it, unless the
    route chose otherwise (key images: private, short-lived)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_header(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                    headers.append((b"pragma", b"no-cache"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_header)


@asynccontextmanager
async def case_source(
    settings: GatewaySettings, authenticator: Authenticator
) -> AsyncIterator[CaseSource]:
    """The cases' source over the two upstream services (the app's and the CLI's)."""
    timeout = httpx.Timeout(settings.read_timeout_seconds, connect=settings.connect_timeout_seconds)
    limits = httpx.Limits(max_connections=settings.max_connections)
    imaging_http = httpx.AsyncClient(
        base_url=settings.imaging_url,
        timeout=timeout,
        limits=limits,
        auth=ServiceBearer(
            authenticator, "gateway", "imaging.read imaging.review", settings.imaging_token
        ),
    )
    outcomes_http = httpx.AsyncClient(
        base_url=settings.outcomes_url.rstrip("/") + "/",
        timeout=timeout,
        limits=limits,
        headers={"Accept": "application/fhir+json"},
        auth=ServiceBearer(authenticator, "gateway", "system/*.rs", settings.outcomes_token),
    )
    source = CaseSource(
        OutcomesClient(outcomes_http),
        ImagingClient(imaging_http),
        max_age_seconds=settings.cohort_max_age_seconds,
    )
    try:
        yield source
    finally:
        await source.close()
        await imaging_http.aclose()
        await outcomes_http.aclose()


def pseudonymizer(settings: GatewaySettings) -> Pseudonymizer:
    return Pseudonymizer(
        secret_key(
            settings.pseudonym_key, settings.pseudonym_key_file, name="GATEWAY_PSEUDONYM_KEY"
        ),
        max_shift_days=settings.max_date_shift_days,
    )


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """The gateway's ASGI application."""
    settings = settings or GatewaySettings()
    authenticator = Authenticator(settings.auth)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.resolved_database_url)
        upgrade_schema(engine, MIGRATIONS)
        async with case_source(settings, authenticator) as source:
            app.state.engine = engine
            app.state.source = source
            if settings.cohort_warm_up:
                source.warm_up()  # the first researcher should not wait for the bulk read
            try:
                yield
            finally:
                engine.dispose()

    app = FastAPI(
        title="Spine outcomes research gateway",
        version=VERSION,
        description=(
            "Cases (index surgeries) with paired pre/post imaging metrics, complications, "
            "early results and PROMs; cohort statistics; CSV and FHIR exports; plots; a "
            "dashboard; the readers' review workstation. Roles: researcher (pseudonymised), "
            "clinician, reader, integration."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.authenticator = authenticator
    app.state.session_cookie = settings.session_cookie
    app.state.pseudonymizer = pseudonymizer(settings)
    install_error_handlers(app)
    app.add_middleware(AuditMiddleware)
    app.add_middleware(NoStoreMiddleware)
    app.add_middleware(AccessLogMiddleware, logger_name="services.gateway.access")
    app.include_router(cases.router)
    app.include_router(cohort.router)
    app.include_router(exports.router)
    app.include_router(followup.router)
    app.include_router(report.router)
    app.include_router(agreement.router)
    app.include_router(review.router)
    app.include_router(dashboard.router)
    app.include_router(viewer.router)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/", status_code=303)

    async def readiness() -> dict[str, str]:
        """The audit database and both upstreams."""
        source: CaseSource = app.state.source
        checks: dict[str, str] = {}
        for name, ping in (("imaging", source.imaging.ping), ("outcomes", source.outcomes.ping)):
            try:
                await ping()
                checks[name] = "ok"
            except UpstreamError as exc:
                checks[name] = exc.reason
        checks["database"] = await run_in_threadpool(database_status, app.state.engine)
        return checks

    install_operations(app, "gateway", readiness)

    @app.get("/api/audit", tags=["Operations"], response_model=list[AccessRecordPublic])
    def audit_trail(
        request: Request,
        _: Auditor,
        after: After = 0,
        limit: int = Query(default=100, ge=1, le=1000),
        case_id: str | None = None,
    ) -> list[Any]:
        """The access audit trail, oldest first (scope ``gateway.audit``)."""
        with Session(request.app.state.engine) as session:
            query = select(AccessRecord).where(col(AccessRecord.id) > after)
            if case_id:
                query = query.where(AccessRecord.case_id == case_id)
            return list(session.exec(query.order_by(col(AccessRecord.id)).limit(limit)).all())

    return app
