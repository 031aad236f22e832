"""The one place where gateway errors become HTTP responses (a JSON reason)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from services.gateway.errors import GatewayError, UpstreamError


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(_request: Request, exc: GatewayError) -> JSONResponse:
        body = {"error": type(exc).__name__, "reason": exc.reason}
        if isinstance(exc, UpstreamError):
            body["service"] = exc.service
        headers = {"Retry-After": "30"} if exc.status_code == 503 else None
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": "HTTPException", "reason": exc.detail},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        ]
        return JSONResponse({"error": "ValidationError", "reason": "; ".join(reasons)}, 422)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback by the server; the caller gets no internals.
        return JSONResponse(
            {"error": "InternalError", "reason": "the request could not be completed"},
            status_code=500,
        )
