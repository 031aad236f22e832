"""The FHIR interactions as the API and Bundles use them: repository writes plus the
server's own follow-up (derived Observations). One function per interaction.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from sqlalchemy.engine import Connection

from services.outcomes import repository as repo
from services.outcomes.errors import Unprocessable
from services.outcomes.fhir.derived import derive
from services.outcomes.fhir.odi import OdiError
from services.outcomes.fhir.validation import Issue


def after_write(conn: Connection, stored: repo.Stored) -> None:
    """The server's follow-up to a write: create or amend the derived Observation."""
    reference = f"{stored.resource_type}/{stored.logical_id}"
    try:
        derived = derive(stored.content, reference)
    except OdiError as exc:
        raise Unprocessable(str(exc), [Issue("value", str(exc), exc.expression)]) from None
    if derived is None:
        return
    code, observation = derived
    query = urlencode({"derived-from": reference, "code": code})
    existing = repo.find_one(conn, "Observation", query)
    if existing is None:
        repo.create(conn, observation)
    else:
        observation["id"] = existing.logical_id
        if existing.content.get("status") == "final" and observation["status"] == "final":
            observation["status"] = "amended"
        repo.update(conn, "Observation", existing.logical_id, observation)


def create(
    conn: Connection,
    resource: dict[str, Any],
    *,
    if_none_exist: str | None = None,
    logical_id: str | None = None,
) -> repo.WriteResult:
    result = repo.create(conn, resource, if_none_exist=if_none_exist, logical_id=logical_id)
    if result.created:
        after_write(conn, result.stored)
    return result


def update(
    conn: Connection,
    resource_type: str,
    logical_id: str,
    resource: dict[str, Any],
    *,
    if_match: int | None = None,
) -> repo.WriteResult:
    result = repo.update(conn, resource_type, logical_id, resource, if_match=if_match)
    after_write(conn, result.stored)
    return result


def conditional_update(
    conn: Connection, resource_type: str, query: str, resource: dict[str, Any]
) -> repo.WriteResult:
    """PUT Type?criteria: update the single match, or create when there is none."""
    match = repo.find_one(conn, resource_type, query)
    if match is None:
        return create(conn, resource)
    return update(conn, resource_type, match.logical_id, resource)


def delete(conn: Connection, resource_type: str, logical_id: str) -> int | None:
    return repo.delete_resource(conn, resource_type, logical_id)
