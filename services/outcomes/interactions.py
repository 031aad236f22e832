"""The one door for every write: the REST interactions, transaction and batch entries all
come through here, so each write gets the same checks — a stored type, a valid id, the
body's type matching the target, FHIR validation and the study's rules — before the
repository persists it, and the same follow-up after (the derived Observations).

Reads and searches go to the repository directly; they change nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.engine import Connection

from services.outcomes import repository as repo
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


def version_from_etag(etag: str) -> int:
    """The version of a weak ETag ``W/"3"`` (as sent in If-Match)."""
    text = etag.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise InvalidRequest(f"If-Match '{etag}' is not a version ETag (W/\"n\")")
    return int(text)


def check_id(logical_id: str) -> None:
    if not ID_PATTERN.match(logical_id):
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
    if existing is None:
        create(conn, observation)
    else:
        observation["id"] = existing.logical_id
        if existing.content.get("status") == "final" and observation["status"] == "final":
            observation["status"] = "amended"
        update(conn, "Observation", existing.logical_id, observation)


def create(
    conn: Connection,
    resource: dict[str, Any],
    *,
    if_none_exist: str | None = None,
    logical_id: str | None = None,
) -> repo.WriteResult:
    """Create (with ``If-None-Exist``: 200 with the single match, 412 when several)."""
    prepare(resource, str(resource.get("resourceType")))
    result = repo.create(conn, resource, if_none_exist=if_none_exist, logical_id=logical_id)
    if result.created:
        after_write(conn, result.stored)
    return result


def create_many(conn: Connection, items: Sequence[tuple[dict[str, Any], str]]) -> list[repo.Stored]:
    """Plain creates with their new ids, inserted in bulk (a transaction Bundle's fast
    path): the same checks and follow-up as :func:`create`, a few statements in all."""
    for position, (resource, logical_id) in enumerate(items):
        try:
            prepare(resource, str(resource.get("resourceType")))
            check_id(logical_id)
        except FhirError as exc:
            exc.position = position
            raise
    stored = repo.insert_many(conn, items)
    for item in stored:
        after_write(conn, item)
    return stored


def update(
    conn: Connection,
    resource_type: str,
    logical_id: str,
    resource: dict[str, Any],
    *,
    if_match: int | None = None,
) -> repo.WriteResult:
    """Update, or create with the client's id; a stale ``if_match`` gets 412."""
    check_id(logical_id)
    prepare(resource, resource_type)
    if resource.get("id") not in (None, logical_id):
        raise InvalidRequest(f"resource id '{resource.get('id')}' differs from the URL's")
    result = repo.update(conn, resource_type, logical_id, resource, if_match=if_match)
    after_write(conn, result.stored)
    return result


def conditional_update(
    conn: Connection, resource_type: str, query: str, resource: dict[str, Any]
) -> repo.WriteResult:
    """PUT Type?criteria: update the single match, or create when there is none."""
    prepare(resource, resource_type)
    match = repo.find_one(conn, resource_type, query)
    if match is None:
        return create(conn, resource)
    return update(conn, resource_type, match.logical_id, resource)


def delete(conn: Connection, resource_type: str, logical_id: str) -> int | None:
    """Delete, keeping the history; None when there was nothing to delete."""
    stored_type(resource_type)
    check_id(logical_id)
    return repo.delete_resource(conn, resource_type, logical_id)


def conditional_delete(conn: Connection, resource_type: str, query: str) -> int | None:
    """DELETE Type?criteria: delete the single match (412 when several)."""
    stored_type(resource_type)
    match = repo.find_one(conn, resource_type, query)
    return None if match is None else delete(conn, resource_type, match.logical_id)
