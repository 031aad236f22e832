"""Prometheus metrics: each service defines its own in its ``metrics`` module (names
prefixed by the service), this mounts them at ``/metrics`` in the text format.

The endpoint is unauthenticated like ``/healthz`` (scrapers on the cluster network); it
carries counts and durations only, never an identifier.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


def install_metrics(app: FastAPI, before_scrape: Callable[[], None] | None = None) -> None:
    """Add ``GET /metrics``; ``before_scrape`` refreshes gauges read from a database."""

    @app.get("/metrics", tags=["Operations"], include_in_schema=False)
    def metrics() -> Response:
        if before_scrape is not None:
            before_scrape()
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
