"""The access audit trail: one append-only row per API or dashboard request."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, insert

from services.gateway.models import AccessRecord, GatewayModel

_TABLE = GatewayModel.metadata.tables[AccessRecord.__tablename__]


def record(
    engine: Engine,
    *,
    subject: str,
    role: str | None,
    method: str,
    path: str,
    query: str | None,
    status_code: int,
    case_id: str | None,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(_TABLE).values(
                recorded=datetime.now(UTC).replace(tzinfo=None),
                subject=subject[:120],
                role=role,
                method=method[:8],
                path=path[:255],
                query=(query or None) and query[:512],
                status_code=status_code,
                case_id=case_id,
            )
        )
