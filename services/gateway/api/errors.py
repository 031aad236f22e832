"""The one place where gateway errors become HTTP responses (a JSON reason)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.common.errors import install_json_error_handlers
from services.gateway.errors import GatewayError, UpstreamError


def install_error_handlers(app: FastAPI) -> None:
    install_json_error_handlers(app)

    @app.exception_handler(GatewayError)
    async def gateway_error(_request: Request, exc: GatewayError) -> JSONResponse:
        body = {"error": type(exc).__name__, "reason": exc.reason}
        if isinstance(exc, UpstreamError):
            body["service"] = exc.service
        headers = {"Retry-After": "30"} if exc.status_code == 503 else None
        return JSONResponse(body, status_code=exc.status_code, headers=headers)
