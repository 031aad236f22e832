"""The one place where imaging errors become HTTP responses (a JSON reason)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from services.imaging.errors import ImagingError


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ImagingError)
    async def imaging_error(_request: Request, exc: ImagingError) -> JSONResponse:
        return JSONResponse(
            {"error": type(exc).__name__, "reason": exc.reason},
            status_code=exc.http_status,
        )

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
