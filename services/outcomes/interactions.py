"""The one door for every write: the REST interactions, transaction and batch entries all
come through here, so each write gets the same checks — a stored type, a valid id, the
body's type matching the target, the caller's authorization on the resource actually
written (and on the one it replaces), FHIR validation and the study's rules — before the
repository persists it, and the same follow-up after (the derived Observations, written
by the server on its own behalf).

Reads and searches go to the repository directly; the API checks what they return.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.engine import Connection

from services.outcomes import repository as repo
from services.outcomes.access import Access
from services.outcomes.errors import FhirError, InvalidRequest, Unprocessable, UnsupportedType
from services.outcomes.fhir.derived import derive
from services.outcomes.fhir.questionnaires import ScoringError
from services.outcomes.fhir.resource_types import RESOURCE_TYPES, ResourceType
from services.outcomes.fhir.validation import Issue, validate

ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def stored_type(resource_type: str) -> ResourceType:
    """The registry entry of a type this server stores (404 not-supported otherwise)."""
    kind = RESOURCE_TYPES.get(resource_type)
    if kind is None:
        raise UnsupportedType(f"resource type '{resource_type}' is not supported here")
    return kind


VERSION_PATTERN = re.compile(r"^[0-9]{1,9}$")


def version_number(text: str) -> int:
    """A version id (ASCII digits, at most 9 of them), else 400."""
    if not VERSION_PATTERN.fullmatch(text):
        raise InvalidRequest(f"'{text[:40]}' is not a version id")
    return int(text)


def version_from_etag(etag: str) -> int:
    """The version of a weak ETag ``W/"3"`` (as sent in If-Match)."""
    text = etag.strip().removeprefix("W/").strip('"')
    if not VERSION_PATTERN.fullmatch(text):
        raise InvalidRequest(f"If-Match '{etag[:40]}' is not a version ETag (W/\"n\")")
    return int(text)


def check_id(logical_id: str) -> None:
    if not ID_PATTERN.fullmatch(logical_id):
        raise InvalidRequest(f"'{logical_id}' is not a valid resource id")


def prepare(resource: Any, resource_type: str) -> None:
    """Check the body is a valid resource of the type; raise 400/404/422 otherwise."""
    kind = stored_type(resource_type)
    if not isinstance(resource, dict):
        raise InvalidRequest("the body is not a JSON object")
    if resource.get("resourceType") != resource_type:
        raise InvalidRequest(
            f"resourceType '{resource.get('resourceType')}' does not match '{resource_type}'"
        )
    issues = validate(resource, kind)
    if issues:
        raise Unprocessable(f"{resource_type} failed validation", issues)


def after_write(conn: Connection, stored: repo.Stored) -> None:
    """The server's follow-up to a write: create or amend the derived Observation."""
    reference = f"{stored.resource_type}/{stored.logical_id}"
    try:
        derived = derive(stored.content, reference)
    except ScoringError as exc:
        raise Unprocessable(str(exc), [Issue("value", str(exc), exc.expression)]) from None
    if derived is None:
        return
    code, observation = derived
    query = urlencode({"derived-from": reference, "code": code})
    existing = repo.find_one(conn, "Observation", query)
    server = Access.internal()
    if existing is None:
        create(conn, observation, resource_type="Observation", access=server)
    else:
        observation["id"] = existing.logical_id
        if existing.content.get("status") == "final" and observation["status"] == "final":
            observation["status"] = "amended"
        update(conn, "Observation", existing.logical_id, observation, access=server)


def _narrowed(access: Access, resource_type: str, query: str) -> str:
    """Search criteria kept inside the caller's patient compartment."""
    extra = access.narrowing(resource_type)
    return query if not extra else "&".join(filter(None, [query, urlencode(extra)]))


def create(
    conn: Connection,
    resource: dict[str, Any],
    *,
    resource_type: str,
    access: Access,
    if_none_exist: str | None = None,
    logical_id: str | None = None,
) -> repo.WriteResult:
    """Create a ``resource_type`` (the body must be one); with ``If-None-Exist``: 200 with
    the single match the caller may see, 412 when several."""
    prepare(resource, resource_type)
    access.check(resource, "c")
    if if_none_exist:
        if_none_exist = _narrowed(access, resource_type, if_none_exist)
    result = repo.create(conn, resource, if_none_exist=if_none_exist, logical_id=logical_id)
    if result.created:
        after_write(conn, result.stored)
    else:
        access.check(result.stored.content, "s")
    return result


def create_many(
    conn: Connection, items: Sequence[tuple[str, dict[str, Any], str]], *, access: Access
) -> list[repo.Stored]:
    """Plain creates ``(resource_type, resource, new id)``, inserted in bulk (a transaction
    Bundle's fast path): the same checks and follow-up as :func:`create`, a few
    statements in all."""
    for position, (resource_type, resource, logical_id) in enumerate(items):
        try:
            prepare(resource, resource_type)
            check_id(logical_id)
            access.check(resource, "c")
        except FhirError as exc:
            exc.position = position
            raise
    stored = repo.insert_many(conn, [(resource, logical_id) for _, resource, logical_id in items])
    for position, item in enumerate(stored):
        try:
            after_write(conn, item)
        except FhirError as exc:
            exc.position = position
            raise
    return stored


def update(
    conn: Connection,
    resource_type: str,
    logical_id: str,
    resource: dict[str, Any],
    *,
    access: Access,
    if_match: int | None = None,
) -> repo.WriteResult:
    """Update, or create with the client's id; a stale ``if_match`` gets 412. The caller
    needs ``u`` on both the current version and the new one (``c`` when it creates)."""
    check_id(logical_id)
    prepare(resource, resource_type)
    if resource.get("id") not in (None, logical_id):
        raise InvalidRequest(f"resource id '{resource.get('id')}' differs from the URL's")
    current = _current(conn, resource_type, logical_id)
    if current is None:
        access.check({**resource, "id": logical_id}, "c")
    else:
        access.check(current.content, "u")
        access.check({**resource, "id": logical_id}, "u")
    result = repo.update(conn, resource_type, logical_id, resource, if_match=if_match)
    after_write(conn, result.stored)
    return result


def _current(conn: Connection, resource_type: str, logical_id: str) -> repo.Stored | None:
    try:
        return repo.read(conn, resource_type, logical_id)
    except (repo.NotFound, repo.Deleted):
        return None


def find_existing(
    conn: Connection,
    resource_type: str,
    resource: Any,
    if_none_exist: str,
    *,
    access: Access,
) -> repo.Stored | None:
    """The single resource a conditional create (``ifNoneExist``) would return instead of
    creating, checked as the create itself would be; None when it will create."""
    prepare(resource, resource_type)
    access.check(resource, "c")
    match = repo.find_one(conn, resource_type, _narrowed(access, resource_type, if_none_exist))
    if match is not None:
        access.check(match.content, "s")
    return match


def conditional_update(
    conn: Connection, resource_type: str, query: str, resource: dict[str, Any], *, access: Access
) -> repo.WriteResult:
    """PUT Type?criteria: update the single match, or create when there is none."""
    prepare(resource, resource_type)
    match = repo.find_one(conn, resource_type, _narrowed(access, resource_type, query))
    if match is None:
        return create(conn, resource, resource_type=resource_type, access=access)
    return update(conn, resource_type, match.logical_id, resource, access=access)


def delete(conn: Connection, resource_type: str, logical_id: str, *, access: Access) -> int | None:
    """Delete, keeping the history; None when there was nothing to delete."""
    stored_type(resource_type)
    check_id(logical_id)
    access.require(resource_type, "d")
    current = _current(conn, resource_type, logical_id)
    if current is None:
        return None
    access.check(current.content, "d")
    return repo.delete_resource(conn, resource_type, logical_id)


def conditional_delete(
    conn: Connection, resource_type: str, query: str, *, access: Access
) -> int | None:
    """DELETE Type?criteria: delete the single match (412 when several)."""
    stored_type(resource_type)
    match = repo.find_one(conn, resource_type, _narrowed(access, resource_type, query))
    return None if match is None else delete(conn, resource_type, match.logical_id, access=access)
