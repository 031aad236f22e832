"""JSON error responses shared by the imaging service and the gateway: the framework's own
errors (HTTP, validation) and anything unexpected. Each service adds the handler of its own
exception tree next to these; the FHIR server answers with OperationOutcomes instead."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException


def install_json_error_handlers(app: FastAPI) -> None:
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
