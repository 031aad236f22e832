"""The operations endpoints every service has, one way:

* ``GET /healthz`` — liveness: the process answers;
* ``GET /readyz`` — readiness: each named check ('ok' or why not), 503 when one fails;
* ``GET /metrics`` — Prometheus text format: the service's own metrics (module-level in its
  ``metrics`` module) and ``http_requests_total`` / ``http_request_duration_seconds`` by
  service, method, route template and status (templates, never paths: no identifiers).

The three are unauthenticated, for probes and scrapers on the cluster network, and carry
no patient data.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from sqlalchemy import Engine

from services.common.logging import recording_status

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by service, method, route template and status",
    ["service", "method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "http_request_duration_seconds",
    "HTTP request duration by service and route template",
    ["service", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
Readiness = Callable[[], Awaitable[dict[str, str]]]
UNPROBED = ("/healthz", "/readyz", "/metrics")


class RequestMetricsMiddleware:
    def __init__(self, app: Any, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in UNPROBED:
            await self.app(scope, receive, send)
            return
        send_wrapper, status = recording_status(send)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(
                self.service, scope["method"], route, str(status.get("code", 500))
            ).inc()
            HTTP_SECONDS.labels(self.service, route).observe(time.perf_counter() - started)


def database_status(engine: Engine) -> str:
    """'ok', or why the database does not answer (call it in a thread)."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok"


def install_operations(
    app: FastAPI,
    service: str,
    readiness: Readiness,
    before_scrape: Callable[[], None] | None = None,
) -> None:
    """Add the three endpoints and the request metrics to ``app``."""
    app.add_middleware(RequestMetricsMiddleware, service=service)

    @app.get("/healthz", tags=["Operations"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["Operations"])
    async def readyz() -> JSONResponse:
        """Readiness: what the service needs to work answers (503 otherwise)."""
        results = await readiness()
        ready = all(v == "ok" for v in results.values())
        return JSONResponse({"ready": ready, "checks": results}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["Operations"], include_in_schema=False)
    async def metrics() -> Response:
        if before_scrape is not None:
            await run_in_threadpool(before_scrape)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
