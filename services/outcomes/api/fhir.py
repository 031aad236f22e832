"""The FHIR R4 REST API at ``/fhir``: one route per interaction, SMART scopes on each."""

from __future__ import annotations

import json
from datetime import UTC
from email.utils import format_datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy.engine import Engine

from services.common.auth import Principal, current_principal
from services.common.params import bounded_int
from services.outcomes import audit, bundles, interactions
from services.outcomes import repository as repo
from services.outcomes.access import Access
from services.outcomes.errors import (
    InvalidRequest,
    MethodNotAllowed,
    ResourceNotFound,
    UnsupportedMedia,
)
from services.outcomes.fhir import conformance, questionnaires
from services.outcomes.fhir.search_params import RESULT_PARAMS

router = APIRouter(prefix="/fhir", tags=["FHIR"])
FHIR_JSON = "application/fhir+json"
JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
MAX_DEPTH = 64  # FHIR resources nest a dozen levels; deeper is an attack on the parsers
FORM_LIMIT = 1 << 20
Caller = Annotated[Principal, Depends(current_principal)]


def fhir_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps(content, separators=(",", ":"), ensure_ascii=False)
    return Response(body, status_code=status, media_type=FHIR_JSON, headers=headers)


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def base_url(request: Request) -> str:
    configured = request.app.state.settings.public_base_url
    base = configured.rstrip("/") if configured else str(request.base_url).rstrip("/")
    return f"{base}/fhir"


def access_of(principal: Principal) -> Access:
    """The caller's authorization (its SMART scopes and patient launch context)."""
    return Access(principal.scopes, principal.patient)


async def _read_limited(request: Request) -> bytes:
    limit: int = request.app.state.settings.max_body_bytes
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InvalidRequest(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _form(request: Request) -> str:
    """A search form body: UTF-8 ``application/x-www-form-urlencoded``, at most 1 MiB."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ("application/x-www-form-urlencoded", ""):
        raise UnsupportedMedia(f"search by POST takes a form, not '{media}'")
    body = await _read_limited(request)
    if len(body) > FORM_LIMIT:
        raise InvalidRequest(f"a search form is limited to {FORM_LIMIT} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the search form is not UTF-8") from None


def _depth_within(value: Any, limit: int) -> bool:
    """Whether JSON nesting stays within ``limit`` levels (iteratively: no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return True


async def _body(request: Request) -> Any:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in JSON_TYPES:
        raise UnsupportedMedia(f"unsupported content type '{media}'; send {FHIR_JSON}")
    body = await _read_limited(request)
    try:
        parsed = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest(f"the body nests deeper than {MAX_DEPTH} levels") from None
    if not _depth_within(parsed, MAX_DEPTH):
        raise InvalidRequest(f"the body nests deeper than {MAX_DEPTH} levels")
    return parsed


def _write_headers(request: Request, stored: repo.Stored) -> dict[str, str]:
    url = f"{base_url(request)}/{stored.resource_type}/{stored.logical_id}"
    return {
        "Location": f"{url}/_history/{stored.version_id}",
        "ETag": stored.etag,
        "Last-Modified": _http_date(stored),
    }


def _http_date(stored: repo.Stored) -> str:
    return format_datetime(stored.last_updated.replace(tzinfo=UTC), usegmt=True)


def _if_match(request: Request) -> int | None:
    value = request.headers.get("if-match")
    return interactions.version_from_etag(value) if value else None


def _prefer_minimal(request: Request) -> bool:
    return "return=minimal" in request.headers.get("prefer", "")


def _written(request: Request, result: repo.WriteResult) -> Response:
    headers = _write_headers(request, result.stored)
    status = 201 if result.created else 200
    if _prefer_minimal(request):
        return Response(status_code=status, headers=headers)
    return fhir_response(result.stored.content, status, headers)


# -- conformance -------------------------------------------------------------------------
@router.get("/metadata", summary="CapabilityStatement")
def metadata(request: Request) -> Response:
    """What this server supports (public, as FHIR clients expect)."""
    return fhir_response(conformance.capability_statement(base_url(request), request.app.version))


@router.get("/CodeSystem/{cs_id}", summary="Read a published CodeSystem")
def read_code_system(request: Request, cs_id: str, _caller: Caller) -> Response:
    """The project CodeSystem (spine-outcomes)."""
    system = conformance.project_code_system()
    if cs_id != system["id"]:
        raise ResourceNotFound(f"CodeSystem/{cs_id} is not known")
    return fhir_response(system)


@router.get("/Questionnaire/{q_id}", summary="Read a published Questionnaire")
def read_questionnaire(request: Request, q_id: str, _caller: Caller) -> Response:
    """A questionnaire whose responses the server scores (odi, eq-5d-5l)."""
    questionnaire = questionnaires.by_id(q_id)
    if questionnaire is None:
        raise ResourceNotFound(f"Questionnaire/{q_id} is not known")
    return fhir_response(questionnaire.resource())


@router.get("/CodeSystem", summary="Search published CodeSystems")
@router.get("/Questionnaire", summary="Search published Questionnaires")
def search_published(request: Request, _caller: Caller) -> Response:
    """The published CodeSystem or Questionnaires as a searchset."""
    published = (
        [conformance.project_code_system()]
        if request.url.path.endswith("CodeSystem")
        else conformance.published_questionnaires()
    )
    base = base_url(request)
    return fhir_response(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(published),
            "entry": [
                {
                    "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in published
            ],
        }
    )


# -- AuditEvent (read-only) ----------------------------------------------------------------
@router.get("/AuditEvent", summary="Search the audit trail")
def search_audit(request: Request, caller: Caller) -> Response:
    """AuditEvents newest first; `agent` filters by who acted."""
    access_of(caller).require_wide("AuditEvent", "s")
    count, offset = _paging(request)
    with _engine(request).connect() as conn:
        events, total = audit.search_events(
            conn, agent=request.query_params.get("agent"), count=count, offset=offset
        )
    base = base_url(request)
    return fhir_response(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": _links(request, offset, count, total),
            "entry": [
                {
                    "fullUrl": f"{base}/AuditEvent/{e['id']}",
                    "resource": e,
                    "search": {"mode": "match"},
                }
                for e in events
            ],
        }
    )


@router.get("/AuditEvent/{event_id}", summary="Read an AuditEvent")
def read_audit(request: Request, event_id: str, caller: Caller) -> Response:
    """One audit record."""
    access_of(caller).require_wide("AuditEvent", "r")
    with _engine(request).connect() as conn:
        event = audit.read_event(conn, event_id)
    if event is None:
        raise ResourceNotFound(f"AuditEvent/{event_id} is not known")
    return fhir_response(event)


# -- transaction / batch -------------------------------------------------------------------
@router.post("", summary="Transaction or batch Bundle")
@router.post("/", include_in_schema=False)
async def transaction(request: Request, caller: Caller) -> Response:
    """Process a transaction (atomic) or batch Bundle."""
    bundle = await _body(request)
    result = await run_in_threadpool(
        bundles.process, _engine(request), bundle, base_url(request), access_of(caller)
    )
    if _prefer_minimal(request):
        for entry in result["entry"]:
            if "location" in entry.get("response", {}):
                entry.pop("resource", None)  # written entries: status, location, etag only
    return fhir_response(result)


# -- type level ----------------------------------------------------------------------------
def _paging(request: Request) -> tuple[int, int]:
    try:
        count = bounded_int(request.query_params.get("_count", str(repo.DEFAULT_COUNT)), "_count")
        offset = bounded_int(request.query_params.get("_offset", "0"), "_offset")
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    return min(count, repo.MAX_COUNT), offset


def _links(
    request: Request, offset: int, count: int, total: int | None, page_size: int | None = None
) -> list[dict[str, str]]:
    base = f"{base_url(request)}{request.url.path.removeprefix('/fhir')}"
    params = [
        (k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True) if k != "_offset"
    ]

    def link(relation: str, at: int) -> dict[str, str]:
        return {"relation": relation, "url": f"{base}?{urlencode([*params, ('_offset', at)])}"}

    links = [link("self", offset)]
    has_more = (total is not None and offset + count < total) or (
        total is None and page_size is not None and page_size >= count
    )
    if has_more and count > 0:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(offset - count, 0)))
    return links


async def _search(
    request: Request, resource_type: str, params: list[tuple[str, str]], caller: Principal
) -> Response:
    interactions.stored_type(resource_type)
    access = access_of(caller)
    access.require(resource_type, "s")
    for name, value in params:
        if name == "_include" and value.split(":")[0] != resource_type:
            raise InvalidRequest(f"_include '{value}' does not start with {resource_type}")
    count, offset = _paging(request)
    controls = {k: v for k, v in params if k in RESULT_PARAMS}
    criteria = [(k, v) for k, v in params if k not in RESULT_PARAMS]
    criteria += access.narrowing(resource_type)
    summary = controls.get("_summary")
    if summary not in (None, "count", "false"):
        raise InvalidRequest("_summary supports 'count' only")
    if controls.get("_format") not in (None, "json", "application/fhir+json", "application/json"):
        raise UnsupportedMedia("only JSON is supported")
    includes = [v for k, v in params if k == "_include"]

    def run() -> repo.SearchResult:
        with _engine(request).connect() as conn:
            return repo.search(
                conn,
                resource_type,
                criteria,
                limit=0 if summary == "count" else count,
                offset=offset,
                sort=controls.get("_sort"),
                include=includes,
                want_total=summary == "count"
                or count == 0
                or controls.get("_total") == "accurate"
                or "_totalMethod" in controls,
            )

    found = await run_in_threadpool(run)
    for stored in found.matches:
        access.check(stored.content, "s")
    for stored in found.included:  # an _include reads resources of other types
        access.check(stored.content, "r")
    base = base_url(request)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if found.total is not None:
        bundle["total"] = found.total
    if summary == "count":
        return fhir_response(bundle)
    bundle["link"] = _links(request, offset, count, found.total, len(found.matches))
    bundle["entry"] = [
        {
            "fullUrl": f"{base}/{s.resource_type}/{s.logical_id}",
            "resource": s.content,
            "search": {"mode": mode},
        }
        for mode, group in (("match", found.matches), ("include", found.included))
        for s in group
    ]
    return fhir_response(bundle)


@router.get("/{resource_type}", summary="Search")
async def search_type(request: Request, resource_type: str, caller: Caller) -> Response:
    """Search by the parameters the CapabilityStatement lists; paged searchset Bundle."""
    params = parse_qsl(request.url.query, keep_blank_values=True)
    return await _search(request, resource_type, params, caller)


@router.post("/{resource_type}/_search", summary="Search (form post)")
async def search_post(request: Request, resource_type: str, caller: Caller) -> Response:
    """Search with parameters in an application/x-www-form-urlencoded body."""
    form = await _form(request)
    params = parse_qsl(request.url.query, keep_blank_values=True) + parse_qsl(
        form, keep_blank_values=True
    )
    return await _search(request, resource_type, params, caller)


@router.post("/{resource_type}", summary="Create (conditional with If-None-Exist)")
async def create(request: Request, resource_type: str, caller: Caller) -> Response:
    """Create; with If-None-Exist: 201 if new, 200 if one match, 412 if several."""
    interactions.stored_type(resource_type)
    access = access_of(caller)
    access.require(resource_type, "c")
    resource = await _body(request)
    if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
        raise InvalidRequest(f"the body must be a {resource_type} resource")
    # If-None-Exist, or (as fhirpy's get_or_create sends it) criteria in the query string.
    if_none_exist = request.headers.get("if-none-exist") or request.url.query or None
    if if_none_exist:
        access.require(resource_type, "s")
    resource.pop("id", None)
    result = await run_in_threadpool(
        repo.run_in_transaction,
        _engine(request),
        lambda conn: interactions.create(
            conn, resource, resource_type=resource_type, access=access, if_none_exist=if_none_exist
        ),
    )
    return _written(request, result)


@router.put("/{resource_type}", summary="Conditional update")
async def conditional_update(request: Request, resource_type: str, caller: Caller) -> Response:
    """PUT Type?criteria: update the single match, create if none, 412 if several."""
    interactions.stored_type(resource_type)
    access = access_of(caller)
    access.require(resource_type, "u")
    access.require(resource_type, "s")
    if not request.url.query:
        raise MethodNotAllowed("PUT on a type needs search criteria")
    resource = await _body(request)
    if not isinstance(resource, dict):
        raise InvalidRequest(f"the body must be a {resource_type} resource")
    result = await run_in_threadpool(
        repo.run_in_transaction,
        _engine(request),
        lambda conn: interactions.conditional_update(
            conn, resource_type, request.url.query, resource, access=access
        ),
    )
    return _written(request, result)


@router.delete("/{resource_type}", summary="Conditional delete")
async def conditional_delete(request: Request, resource_type: str, caller: Caller) -> Response:
    """DELETE Type?criteria: delete the single match (412 if several)."""
    interactions.stored_type(resource_type)
    access = access_of(caller)
    access.require(resource_type, "d")
    access.require(resource_type, "s")
    if not request.url.query:
        raise MethodNotAllowed("DELETE on a type needs search criteria")
    await run_in_threadpool(
        repo.run_in_transaction,
        _engine(request),
        lambda conn: interactions.conditional_delete(
            conn, resource_type, request.url.query, access=access
        ),
    )
    return Response(status_code=204)


@router.get("/{resource_type}/_history", summary="Type history")
async def type_history(request: Request, resource_type: str, caller: Caller) -> Response:
    """Every version of every resource of the type, newest first."""
    return await _history(request, resource_type, None, caller)


# -- instance level ------------------------------------------------------------------------
@router.get("/{resource_type}/{logical_id}", summary="Read")
async def read(request: Request, resource_type: str, logical_id: str, caller: Caller) -> Response:
    """The current version; 404 unknown, 410 deleted."""
    interactions.stored_type(resource_type)
    access = access_of(caller)
    access.require(resource_type, "r")
    interactions.check_id(logical_id)

    def run() -> repo.Stored:
        with _engine(request).connect() as conn:
            return repo.read(conn, resource_type, logical_id)

    stored = await run_in_threadpool(run)
    access.check(stored.content, "r")
    return fhir_response(
        stored.content, headers={"ETag": stored.etag, "Last-Modified": _http_date(stored)}
    )


@router.put("/{resource_type}/{logical_id}", summary="Update (If-Match versioning)")
async def update(request: Request, resource_type: str, logical_id: str, caller: Caller) -> Response:
    """Update, or create with this id; a stale If-Match gets 412."""
    interactions.stored_type(resource_type)
    access = access_of(caller)
    access.require(resource_type, "u")
    resource = await _body(request)
    if not isinstance(resource, dict):
        raise InvalidRequest(f"the body must be a {resource_type} resource")
    if_match = _if_match(request)
    result = await run_in_threadpool(
        repo.run_in_transaction,
        _engine(request),
        lambda conn: interactions.update(
            conn, resource_type, logical_id, resource, access=access, if_match=if_match
        ),
    )
    return _written(request, result)


@router.delete("/{resource_type}/{logical_id}", summary="Delete")
async def delete(request: Request, resource_type: str, logical_id: str, caller: Caller) -> Response:
    """Delete, keeping the history; deleting twice is fine (204)."""
    interactions.stored_type(resource_type)
    access = access_of(caller)
    await run_in_threadpool(
        repo.run_in_transaction,
        _engine(request),
        lambda conn: interactions.delete(conn, resource_type, logical_id, access=access),
    )
    return Response(status_code=204)


@router.patch("/{resource_type}/{logical_id}", include_in_schema=False)
async def patch(resource_type: str, logical_id: str) -> Response:
    """PATCH is not supported."""
    raise MethodNotAllowed("PATCH is not supported; use PUT")


@router.get("/{resource_type}/{logical_id}/_history", summary="Instance history")
async def instance_history(
    request: Request, resource_type: str, logical_id: str, caller: Caller
) -> Response:
    """Every version of one resource, newest first."""
    return await _history(request, resource_type, logical_id, caller)


@router.get("/{resource_type}/{logical_id}/_history/{version_id}", summary="Version read")
async def vread(
    request: Request, resource_type: str, logical_id: str, version_id: str, caller: Caller
) -> Response:
    """One version of a resource."""
    interactions.stored_type(resource_type)
    access = access_of(caller)
    access.require(resource_type, "r")
    version = interactions.version_number(version_id)
    interactions.check_id(logical_id)

    def run() -> repo.Stored:
        with _engine(request).connect() as conn:
            return repo.vread(conn, resource_type, logical_id, version)

    stored = await run_in_threadpool(run)
    access.check(stored.content, "r")
    return fhir_response(
        stored.content, headers={"ETag": stored.etag, "Last-Modified": _http_date(stored)}
    )


async def _history(
    request: Request, resource_type: str, logical_id: str | None, caller: Principal
) -> Response:
    interactions.stored_type(resource_type)
    access = access_of(caller)
    if logical_id is None:
        access.require_wide(resource_type, "r")  # every patient's versions
    else:
        access.require(resource_type, "r")
        interactions.check_id(logical_id)
    count, offset = _paging(request)

    def run() -> tuple[list[repo.HistoryEntry], int]:
        with _engine(request).connect() as conn:
            return repo.history(conn, resource_type, logical_id, count=count, offset=offset)

    entries, total = await run_in_threadpool(run)
    for e in entries:
        if e.content is not None:
            access.check(e.content, "r")
    base = base_url(request)
    bundle_entries = []
    for e in entries:
        url = f"{base}/{e.resource_type}/{e.logical_id}"
        item: dict[str, Any] = {
            "fullUrl": url,
            "request": {
                "method": e.method,
                "url": f"{e.resource_type}" + ("" if e.method == "POST" else f"/{e.logical_id}"),
            },
            "response": {
                "status": {"POST": "201", "PUT": "200", "DELETE": "204"}[e.method],
                "etag": f'W/"{e.version_id}"',
                "lastModified": repo.instant(e.last_updated),
            },
        }
        if e.content is not None:
            item["resource"] = e.content
        bundle_entries.append(item)
    return fhir_response(
        {
            "resourceType": "Bundle",
            "type": "history",
            "total": total,
            "link": _links(request, offset, count, total),
            "entry": bundle_entries,
        }
    )
