"""The one place where imaging errors become HTTP responses (a JSON reason)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.common.errors import install_json_error_handlers
from services.imaging.errors import ImagingError


def install_error_handlers(app: FastAPI) -> None:
    install_json_error_handlers(app)

    @app.exception_handler(ImagingError)
    async def imaging_error(_request: Request, exc: ImagingError) -> JSONResponse:
        return JSONResponse(
            {"error": type(exc).__name__, "reason": exc.reason},
            status_code=exc.http_status,
        )
