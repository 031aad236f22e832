"""The one place where gateway errors become HTTP responses: a JSON reason for the API, an
HTML page (same status, same reason) for the dashboard's browser."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from services.common.errors import install_json_error_handlers
from services.gateway.errors import GatewayError, UpstreamError


def _dashboard(request: Request) -> bool:
    """Pages answer errors as pages; the APIs (and the viewer's DICOMweb) in JSON."""
    path = request.url.path
    return path.startswith(("/dashboard", "/viewer/")) and not path.startswith("/viewer/dicomweb")


def _page(status: int, reason: str) -> HTMLResponse:
    from services.gateway.api.dashboard import error_page

    return error_page(status, reason)


def install_error_handlers(app: FastAPI) -> None:
    install_json_error_handlers(app)
    json_http = app.exception_handlers[HTTPException]
    json_validation = app.exception_handlers[RequestValidationError]

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        if _dashboard(request):
            return _page(exc.status_code, exc.reason)
        body = {"error": type(exc).__name__, "reason": exc.reason}
        if isinstance(exc, UpstreamError):
            body["service"] = exc.service
        headers = {"Retry-After": "30"} if exc.status_code == 503 else None
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if _dashboard(request) and exc.status_code != 401:
            return _page(exc.status_code, str(exc.detail))
        response: Response = await json_http(request, exc)  # type: ignore[misc]
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        if _dashboard(request):
            fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) for e in exc.errors())
            return _page(422, f"a filter or parameter was not understood ({fields})")
        response: Response = await json_validation(request, exc)  # type: ignore[misc]
        return response
