"""The one place where errors become OperationOutcomes."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from services.outcomes.api.fhir import fhir_response
from services.outcomes.errors import FhirError, from_repository, operation_outcome
from services.outcomes.repository import RepositoryError

log = logging.getLogger(__name__)
_HTTP_CODES = {401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported"}


def _outcome(status: int, code: str, diagnostics: str) -> dict[str, object]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FhirError)
    async def fhir_error(_request: Request, exc: FhirError) -> Response:
        return fhir_response(operation_outcome(exc), exc.status)

    @app.exception_handler(RepositoryError)
    async def repository_error(_request: Request, exc: RepositoryError) -> Response:
        error = from_repository(exc)
        return fhir_response(operation_outcome(error), error.status)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> Response:
        body = _outcome(
            exc.status_code, _HTTP_CODES.get(exc.status_code, "processing"), str(exc.detail)
        )
        return fhir_response(body, exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        return fhir_response(_outcome(400, "invalid", str(exc.errors())[:500]), 400)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> Response:
        log.error("unhandled error", extra={"error": type(exc).__name__})
        return fhir_response(_outcome(500, "exception", "the request could not be completed"), 500)
