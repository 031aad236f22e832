"""Transaction and batch Bundles (``POST /fhir``).

A transaction is all or nothing: entries run in the order the specification gives
(DELETE, POST, PUT, GET) inside one database transaction; ``urn:uuid:`` full URLs of
created (or conditionally matched) entries are resolved in every reference first. A
batch runs each entry on its own and reports each outcome.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy.engine import Connection, Engine

from services.outcomes import interactions
from services.outcomes import repository as repo
from services.outcomes.access import Access
from services.outcomes.errors import FhirError, InvalidRequest, as_fhir_error, operation_outcome

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3, "HEAD": 3}
STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


@dataclass(frozen=True)
class EntryRequest:
    index: int
    method: str
    resource_type: str
    logical_id: str | None
    query: str | None
    resource: dict[str, Any] | None
    full_url: str | None
    if_none_exist: str | None
    if_match: int | None


def _parse_entry(index: int, entry: Any) -> EntryRequest:
    where = f"Bundle.entry[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise InvalidRequest(f"{where}.request is required")
    request = entry["request"]
    method = str(request.get("method", "")).upper()
    if method not in ORDER:
        raise InvalidRequest(f"{where}.request.method '{method}' is not supported")
    url = str(request.get("url", "")).lstrip("/")
    path, _, query = url.partition("?")
    parts = path.split("/")
    if not parts[0]:
        raise InvalidRequest(f"{where}.request.url is required")
    resource = entry.get("resource")
    if method in ("POST", "PUT") and not isinstance(resource, dict):
        raise InvalidRequest(f"{where}.resource is required for {method}")
    if_match = None
    if request.get("ifMatch"):
        if_match = interactions.version_from_etag(str(request["ifMatch"]))
    return EntryRequest(
        index,
        method,
        parts[0],
        parts[1] if len(parts) > 1 else None,
        query or None,
        resource,
        entry.get("fullUrl"),
        request.get("ifNoneExist"),
        if_match,
    )


def _rewrite(node: Any, mapping: dict[str, str]) -> Any:
    """A copy of ``node`` with its references resolved. Always a copy, even with nothing to
    resolve: the write stamps the resource it is given (id, meta), and a transaction that is
    retried must start again from the Bundle's own entries."""
    if isinstance(node, dict):
        return {
            k: (
                mapping.get(v, v)
                if k == "reference" and isinstance(v, str)
                else _rewrite(v, mapping)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(item, mapping) for item in node]
    return node


def _response(status: int, stored: repo.Stored | None, base: str) -> dict[str, Any]:
    response: dict[str, Any] = {"status": STATUS_TEXT.get(status, str(status))}
    entry: dict[str, Any] = {"response": response}
    if stored is not None:
        url = f"{stored.resource_type}/{stored.logical_id}"
        response["location"] = f"{base}/{url}/_history/{stored.version_id}"
        response["etag"] = stored.etag
        response["lastModified"] = repo.instant(stored.last_updated)
        entry["fullUrl"] = f"{base}/{url}"
        entry["resource"] = stored.content
    return entry


def _execute(
    conn: Connection,
    req: EntryRequest,
    base: str,
    preassigned: dict[int, str],
    access: Access,
) -> dict[str, Any]:
    if req.method == "POST":
        assert req.resource is not None
        result = interactions.create(
            conn,
            req.resource,
            resource_type=req.resource_type,
            access=access,
            if_none_exist=req.if_none_exist,
            logical_id=preassigned.get(req.index),
        )
        return _response(201 if result.created else 200, result.stored, base)
    if req.method == "PUT":
        assert req.resource is not None
        if req.logical_id is None:
            if not req.query:
                raise InvalidRequest(f"Bundle.entry[{req.index}]: PUT needs an id or criteria")
            result = interactions.conditional_update(
                conn, req.resource_type, req.query, req.resource, access=access
            )
        else:
            result = interactions.update(
                conn,
                req.resource_type,
                req.logical_id,
                req.resource,
                access=access,
                if_match=req.if_match,
            )
        return _response(201 if result.created else 200, result.stored, base)
    if req.method == "DELETE":
        if req.logical_id is not None:
            interactions.delete(conn, req.resource_type, req.logical_id, access=access)
        elif req.query:
            interactions.conditional_delete(conn, req.resource_type, req.query, access=access)
        else:
            raise InvalidRequest(f"Bundle.entry[{req.index}]: DELETE needs an id or criteria")
        return _response(204, None, base)
    # GET: read or search
    interactions.stored_type(req.resource_type)
    if req.logical_id is not None:
        access.require(req.resource_type, "r")
        interactions.check_id(req.logical_id)
        stored = repo.read(conn, req.resource_type, req.logical_id)
        access.check(stored.content, "r")
        return _response(200, stored, base)
    params = parse_qsl(req.query or "", keep_blank_values=True)
    found = repo.search(conn, req.resource_type, params + access.narrowing(req.resource_type))
    for match in found.matches:
        access.check(match.content, "s")
    return {
        "resource": {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": found.total,
            "entry": [
                {"fullUrl": f"{base}/{s.resource_type}/{s.logical_id}", "resource": s.content}
                for s in found.matches
            ],
        },
        "response": {"status": "200 OK"},
    }


def process(engine: Engine, bundle: Any, base: str, access: Access) -> dict[str, Any]:
    """Run a transaction or batch Bundle; return the response Bundle."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidRequest("POST to the base needs a Bundle")
    kind = bundle.get("type")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise InvalidRequest("Bundle.entry must be a list")
    if kind == "transaction":
        requests = [_parse_entry(i, e) for i, e in enumerate(entries)]

        def work(conn: Connection) -> list[dict[str, Any]]:
            return _transaction(conn, requests, base, access)

        responses = repo.run_in_transaction(engine, work)
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": responses}
    if kind == "batch":
        return {
            "resourceType": "Bundle",
            "type": "batch-response",
            "entry": [_batch_entry(engine, i, e, base, access) for i, e in enumerate(entries)],
        }
    raise InvalidRequest(f"Bundle.type must be transaction or batch, not '{kind}'")


def _transaction(
    conn: Connection, requests: list[EntryRequest], base: str, access: Access
) -> list[dict[str, Any]]:
    mapping: dict[str, str] = {}
    preassigned: dict[int, str] = {}
    matched: dict[int, repo.Stored] = {}
    for req in requests:
        if req.method != "POST":
            continue
        if req.if_none_exist:
            try:
                existing = interactions.find_existing(
                    conn, req.resource_type, req.resource, req.if_none_exist, access=access
                )
            except (FhirError, repo.RepositoryError) as exc:
                error = as_fhir_error(exc)
                error.diagnostics = f"Bundle.entry[{req.index}]: {error.diagnostics}"
                raise error from None
            if existing is not None:
                matched[req.index] = existing
                if req.full_url:
                    mapping[req.full_url] = f"{req.resource_type}/{existing.logical_id}"
                continue
        new_id = str(uuid.uuid4())
        preassigned[req.index] = new_id
        if req.full_url:
            mapping[req.full_url] = f"{req.resource_type}/{new_id}"
    responses: dict[int, dict[str, Any]] = {}
    plain_posts: list[tuple[EntryRequest, str]] = []
    for req in sorted(requests, key=lambda r: (ORDER[r.method], r.index)):
        if req.index in matched:
            responses[req.index] = _response(200, matched[req.index], base)
            continue
        resolved = (
            req
            if req.resource is None
            else EntryRequest(
                req.index,
                req.method,
                req.resource_type,
                req.logical_id,
                req.query,
                _rewrite(req.resource, mapping),
                req.full_url,
                req.if_none_exist,
                req.if_match,
            )
        )
        if req.method == "POST" and not req.if_none_exist:
            assert resolved.resource is not None
            if resolved.resource.get("resourceType") != req.resource_type:
                raise InvalidRequest(
                    f"Bundle.entry[{req.index}]: resourceType "
                    f"'{resolved.resource.get('resourceType')}' does not match the request's "
                    f"'{req.resource_type}'"
                )
            plain_posts.append((resolved, preassigned[req.index]))
            continue
        _flush(conn, plain_posts, responses, base, access)
        try:
            responses[req.index] = _execute(conn, resolved, base, preassigned, access)
        except (FhirError, repo.RepositoryError) as exc:
            error = as_fhir_error(exc)
            error.diagnostics = f"Bundle.entry[{req.index}]: {error.diagnostics}"
            raise error from None
    _flush(conn, plain_posts, responses, base, access)
    return [responses[i] for i in range(len(requests))]


def _flush(
    conn: Connection,
    posts: list[tuple[EntryRequest, str]],
    responses: dict[int, dict[str, Any]],
    base: str,
    access: Access,
) -> None:
    """Create the plain POSTs collected so far, in bulk, through the write door."""
    try:
        stored = interactions.create_many(
            conn,
            [(req.resource_type, req.resource or {}, new_id) for req, new_id in posts],
            access=access,
        )
    except (FhirError, repo.RepositoryError) as exc:
        error = as_fhir_error(exc)
        if error.position is not None:
            error.diagnostics = (
                f"Bundle.entry[{posts[error.position][0].index}]: {error.diagnostics}"
            )
        raise error from None
    for (req, _), item in zip(posts, stored, strict=True):
        responses[req.index] = _response(201, item, base)
    posts.clear()


def _batch_entry(
    engine: Engine, index: int, entry: Any, base: str, access: Access
) -> dict[str, Any]:
    try:
        req = _parse_entry(index, entry)

        def work(conn: Connection) -> dict[str, Any]:
            return _execute(conn, req, base, {}, access)

        return repo.run_in_transaction(engine, work)
    except (FhirError, repo.RepositoryError) as exc:
        error = as_fhir_error(exc)
        return {"response": {"status": f"{error.status}", "outcome": operation_outcome(error)}}
