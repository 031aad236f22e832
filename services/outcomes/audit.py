"""The audit trail: one append-only row per FHIR request (who, what, when, outcome),
exposed read-only as AuditEvent resources."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, func, insert, select
from sqlalchemy.engine import Connection, Engine

from services.outcomes.models import AuditRecord, OutcomesModel
from services.outcomes.repository import instant, naive_utc, now_utc

_AUDIT: Table = OutcomesModel.metadata.tables[AuditRecord.__tablename__]
_PATH = re.compile(
    r"^/fhir/?(?P<type>[A-Z][A-Za-z]+)?(?:/(?P<id>[A-Za-z0-9\-.]{1,64}))?"
    r"(?:/_history(?:/(?P<vid>\d+))?)?/?$"
)
ACTIONS = {"POST": "C", "PUT": "U", "DELETE": "D", "GET": "R", "PATCH": "U", "HEAD": "R"}


@dataclass(frozen=True)
class Interaction:
    name: str
    action: str
    resource_type: str | None
    resource_id: str | None


def classify(method: str, path: str) -> Interaction | None:
    """The FHIR interaction a request performs, None for non-FHIR paths."""
    match = _PATH.match(path)
    if match is None:
        return None
    rtype, rid, vid = match["type"], match["id"], match["vid"]
    if rtype == "metadata" or rid == "_search":
        rid = None
    action = ACTIONS.get(method, "E")
    if rtype is None:
        name = "transaction" if method == "POST" else "history-system"
        action = "E" if method == "POST" else "R"
    elif "_history" in path:
        name = "vread" if vid else ("history-instance" if rid else "history-type")
    elif rid is None:
        name = "create" if method == "POST" and not path.endswith("_search") else "search-type"
        action = "C" if name == "create" else "E"
    else:
        name = {"GET": "read", "PUT": "update", "DELETE": "delete"}.get(method, method.lower())
    return Interaction(name, action, rtype, rid)


def record(
    engine: Engine,
    *,
    agent: str,
    method: str,
    path: str,
    status: int,
    patient: str | None = None,
) -> None:
    interaction = classify(method, path)
    if interaction is None:
        return
    outcome = 0 if status < 400 else (4 if status < 500 else 8)
    with engine.begin() as conn:
        conn.execute(
            insert(_AUDIT).values(
                recorded=naive_utc(now_utc()),
                agent=agent[:120],
                action=interaction.action,
                interaction=interaction.name,
                resource_type=interaction.resource_type,
                resource_id=interaction.resource_id,
                patient=patient,
                outcome=outcome,
                status_code=status,
                method=method,
                path=path[:255],
            )
        )


def as_audit_event(row: Any) -> dict[str, Any]:
    entity: dict[str, Any] = {}
    if row.resource_type:
        what = row.resource_type + (f"/{row.resource_id}" if row.resource_id else "")
        entity = {"what": {"reference": what} if row.resource_id else {"display": what}}
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(row.pk),
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        },
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": row.interaction}],
        "action": row.action,
        "recorded": instant(row.recorded),
        "outcome": str(row.outcome),
        "outcomeDesc": f"HTTP {row.status_code}",
        "agent": [{"who": {"display": row.agent}, "requestor": True}],
        "source": {"observer": {"display": "spine-outcomes FHIR server"}},
    }
    if entity:
        event["entity"] = [entity]
    return event


def search_events(
    conn: Connection, *, agent: str | None, count: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    where = [_AUDIT.c.agent == agent] if agent else []
    total = conn.execute(select(func.count()).select_from(_AUDIT).where(*where)).scalar_one()
    rows = conn.execute(
        select(_AUDIT).where(*where).order_by(_AUDIT.c.pk.desc()).offset(offset).limit(count)
    ).all()
    return [as_audit_event(r) for r in rows], total


def read_event(conn: Connection, event_id: str) -> dict[str, Any] | None:
    if not (event_id.isascii() and event_id.isdigit() and len(event_id) <= 9):
        return None
    row = conn.execute(select(_AUDIT).where(_AUDIT.c.pk == int(event_id))).first()
    return as_audit_event(row) if row is not None else None
