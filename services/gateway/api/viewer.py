"""``/viewer/``: the OHIF viewer, and the imaging service's DICOMweb behind the gateway.

The viewer's pages need a signed-in clinician (the dashboard's session cookie); its
static code is public. ``/viewer/dicomweb/...`` forwards read-only DICOMweb requests
(QIDO-RS, WADO-RS metadata, frames, bulk data, rendered, thumbnails) to the imaging
service with the gateway's own credentials, after checking the caller's identified role:
researchers never see identified images. Links that the imaging service writes into
DICOM JSON (RetrieveURL, BulkDataURI) are rewritten to this address, so the browser
talks to one origin only.
"""

from __future__ import annotations

import json
import mimetypes
import re
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from services.common.auth import current_principal
from services.gateway.access import (
    READ_SCOPE,
    VIEWER_ROLES,
    Viewer,
    public_base_url,
    viewer_for,
)
from services.gateway.api.dashboard import error_page
from services.gateway.errors import Forbidden, InvalidRequest, NotFound, UpstreamUnavailable
from services.gateway.viewer import DICOMWEB_PATH, MOUNT, ViewerBuild, app_config, installed

router = APIRouter(tags=["Viewer"])
# studies/{uid}/series/{uid}/instances/{uid}/frames/1,2 ...: letters, digits, dots, commas.
SEGMENT = r"[0-9A-Za-z][0-9A-Za-z.,_-]{0,127}"
DICOMWEB = re.compile(rf"(studies|series|instances)(/{SEGMENT}){{0,8}}")
FORWARDED_QUERY = re.compile(r"^[0-9A-Za-z_.,-]{1,64}$")
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


def _build(request: Request) -> ViewerBuild | None:
    return installed(request.app.state.settings.viewer_dir)


def _clinician(request: Request) -> Viewer:
    """The signed-in caller, who must see identified data; 401/403 otherwise."""
    principal = current_principal(request)  # raises 401
    if not principal.allows(READ_SCOPE):
        raise Forbidden(f"the token lacks the {READ_SCOPE} scope")
    viewer = viewer_for(principal, request)
    if viewer.role not in VIEWER_ROLES:
        raise Forbidden("the viewer shows identified images: clinicians only")
    return viewer


def _rewrite_links(request: Request, body: bytes) -> bytes:
    """The imaging service's own DICOMweb links (from its address as the gateway calls it,
    or its configured public address) pointed at this relay; nothing else is touched."""
    settings = request.app.state.settings
    ours = json.dumps(f"{public_base_url(request)}{DICOMWEB_PATH}/")[:-1].encode()
    for base in {settings.imaging_url, settings.imaging_public_url} - {None}:
        theirs = json.dumps(f"{base.rstrip('/')}/dicomweb/")[:-1].encode()  # '"http…/'
        body = body.replace(theirs, ours)
    return body


@router.get("/viewer", include_in_schema=False)
def viewer_root() -> RedirectResponse:
    return RedirectResponse(MOUNT, status_code=308)


@router.get("/viewer/app-config.js", include_in_schema=False)
def viewer_config() -> Response:
    """OHIF's configuration: the gateway's DICOMweb as its one data source."""
    return Response(app_config(), media_type="text/javascript")


@router.get(DICOMWEB_PATH + "/{path:path}", summary="DICOMweb for the viewer (read-only)")
async def dicomweb_proxy(request: Request, path: str) -> Response:
    """QIDO-RS and WADO-RS of the imaging service for signed-in clinicians."""
    _clinician(request)
    if not DICOMWEB.fullmatch(path):
        raise NotFound("not a DICOMweb resource of the viewer")
    params: list[tuple[str, str | int | float | bool | None]] = list(
        request.query_params.multi_items()
    )
    if len(params) > 32 or any(
        not FORWARDED_QUERY.fullmatch(k) or len(str(v)) > 256 for k, v in params
    ):
        raise InvalidRequest("a query parameter the viewer's DICOMweb does not forward")
    http: httpx.AsyncClient = request.app.state.source.imaging.http
    headers = {"Accept": request.headers.get("accept", "*/*")[:512]}
    upstream_request = http.build_request(
        "GET", f"/dicomweb/{path}", params=params, headers=headers
    )
    try:
        upstream = await http.send(upstream_request, stream=True)
    except httpx.TimeoutException:
        raise UpstreamUnavailable("imaging", "timed out") from None
    except httpx.TransportError as exc:
        raise UpstreamUnavailable("imaging", f"unreachable ({type(exc).__name__})") from None
    content_type = upstream.headers.get("content-type", "application/octet-stream")
    passed = {
        k: v
        for k, v in upstream.headers.items()
        if k.lower() in ("warning", "content-location", "cache-control")
    }
    if content_type.startswith(("application/dicom+json", "application/json")):
        body = await upstream.aread()
        await upstream.aclose()
        body = _rewrite_links(request, body)
        return Response(body, upstream.status_code, headers=passed, media_type=content_type)

    async def relay() -> AsyncIterator[bytes]:
        async for chunk in upstream.aiter_raw():
            yield chunk

    return StreamingResponse(
        relay(),
        status_code=upstream.status_code,
        headers=passed,
        media_type=content_type,
        background=BackgroundTask(upstream.aclose),
    )


@router.get("/viewer/{path:path}", include_in_schema=False)
async def viewer_files(request: Request, path: str) -> Response:
    """The viewer's code (public), or its page for a signed-in clinician."""
    build = _build(request)
    if build is None:
        return error_page(503, "The viewer is not installed on this server (make viewer).")
    asset = build.file(path)
    if asset is not None:
        media = mimetypes.guess_type(asset.name)[0] or "application/octet-stream"
        return FileResponse(
            asset, media_type=media, headers={"Cache-Control": "public, max-age=86400"}
        )
    if "." in path.rsplit("/", 1)[-1]:
        return error_page(404, "No such file in the viewer.")
    try:
        _clinician(request)
    except HTTPException as exc:
        if exc.status_code == 401:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(
                f"/dashboard/login?{urlencode({'next': target})}", status_code=303
            )
        return error_page(exc.status_code, str(exc.detail))
    except Forbidden as exc:
        return error_page(403, exc.reason)
    return FileResponse(build.index, media_type="text/html")
