"""The FHIR resource repository: versioned writes with their search index, reads,
history and search, on one SQLAlchemy connection (so a transaction Bundle is one
database transaction). It persists what the write door
(:mod:`services.outcomes.interactions`) has validated, and raises persistence errors,
which the API maps to OperationOutcomes in one place (:mod:`services.outcomes.errors`)::

    RepositoryError
    ├── NotFound          no such resource (or version)
    ├── Deleted           the resource (or version) is a deletion
    ├── VersionConflict   a stale If-Match, or the resource changed meanwhile
    ├── MultipleMatches   conditional criteria match several resources
    └── InvalidQuery      an unknown parameter, modifier, sort or include; a bad value

Conditional create is race-safe by construction: the normalised ``If-None-Exist``
criteria are inserted into ``fhir_conditional_key`` (unique per type) in the same
transaction as the resource, so of two identical concurrent creates one fails on the
constraint; :func:`run_in_transaction` then retries it, and the retry finds the winner.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from sqlalchemy import (
    Select,
    Table,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy import update as sql_update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from services.outcomes.fhir import search_params as sp
from services.outcomes.fhir.resource_types import search_params
from services.outcomes.models import (
    ConditionalKey,
    OutcomesModel,
    ResourceRow,
    ResourceVersion,
    SearchDate,
    SearchReference,
    SearchString,
    SearchToken,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_R: Table = OutcomesModel.metadata.tables[ResourceRow.__tablename__]
_V: Table = OutcomesModel.metadata.tables[ResourceVersion.__tablename__]
_TOKEN: Table = OutcomesModel.metadata.tables[SearchToken.__tablename__]
_REF: Table = OutcomesModel.metadata.tables[SearchReference.__tablename__]
_DATE: Table = OutcomesModel.metadata.tables[SearchDate.__tablename__]
_STRING: Table = OutcomesModel.metadata.tables[SearchString.__tablename__]
_KEY: Table = OutcomesModel.metadata.tables[ConditionalKey.__tablename__]
_INDEX_TABLES = (_TOKEN, _REF, _DATE, _STRING)

MAX_COUNT = 1000
DEFAULT_COUNT = 20


class RepositoryError(Exception):
    """A persistence error (see the module docstring for the tree)."""


class NotFound(RepositoryError):
    pass


class Deleted(RepositoryError):
    pass


class VersionConflict(RepositoryError):
    pass


class MultipleMatches(RepositoryError):
    pass


class InvalidQuery(RepositoryError):
    pass


def now_utc() -> datetime:
    return datetime.now(UTC)


def naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None)


def instant(value: datetime) -> str:
    """FHIR instant text of a naive-UTC or aware datetime."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Stored:
    """A resource as stored: its JSON, version and time."""

    resource_type: str
    logical_id: str
    version_id: int
    last_updated: datetime
    content: dict[str, Any]
    pk: int | None = None

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'


@dataclass(frozen=True)
class WriteResult:
    stored: Stored
    created: bool  # 201 Created vs 200 OK


@dataclass(frozen=True)
class SearchResult:
    matches: list[Stored]
    included: list[Stored]
    total: int | None
    offset: int
    count: int


def run_in_transaction(engine: Engine, work: Callable[[Connection], T], *, attempts: int = 8) -> T:
    """Run ``work`` in one transaction; retry when a concurrent writer won a race."""
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                return work(conn)
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


def _row_to_stored(row: Any) -> Stored:
    return Stored(
        row.resource_type,
        row.logical_id,
        row.version_id,
        row.last_updated,
        json.loads(row.content),
        row.pk,
    )


# -- writes --------------------------------------------------------------------------------
def _stamp(resource: dict[str, Any], logical_id: str, version: int, when: datetime) -> str:
    resource["id"] = logical_id
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant(when)
    resource["meta"] = meta
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False)


def _write_index(conn: Connection, items: Sequence[tuple[int, dict[str, Any]]]) -> None:
    rows: dict[str, list[dict[str, Any]]] = {"token": [], "reference": [], "date": [], "string": []}
    for pk, resource in items:
        rtype = resource["resourceType"]
        for entry in sp.extract(resource, search_params(rtype).values()):
            base = {"resource_pk": pk, "resource_type": rtype, "param": entry.param}
            if entry.type == "token":
                rows["token"].append({**base, "system": entry.system, "code": entry.value})
            elif entry.type == "reference":
                rows["reference"].append({**base, "target": entry.value})
            elif entry.type == "date":
                assert entry.low is not None and entry.high is not None
                rows["date"].append(
                    {**base, "low": naive_utc(entry.low), "high": naive_utc(entry.high)}
                )
            else:
                rows["string"].append({**base, "value": (entry.value or "")[:255]})
    for table, key in (
        (_TOKEN, "token"),
        (_REF, "reference"),
        (_DATE, "date"),
        (_STRING, "string"),
    ):
        if rows[key]:
            conn.execute(insert(table), rows[key])


def _clear_index(conn: Connection, pk: int) -> None:
    for table in _INDEX_TABLES:
        conn.execute(delete(table).where(table.c.resource_pk == pk))


def _insert_new(conn: Connection, resource: dict[str, Any], logical_id: str) -> Stored:
    return insert_many(conn, [(resource, logical_id)])[0]


def insert_many(conn: Connection, items: Sequence[tuple[dict[str, Any], str]]) -> list[Stored]:
    """Insert validated new resources with their first version and index rows, in bulk.

    One multi-row statement per table: a transaction Bundle of 100 Observations costs a
    handful of round trips, not hundreds.
    """
    if not items:
        return []
    when = now_utc()
    stamp = naive_utc(when)
    rows = []
    for resource, logical_id in items:
        content = _stamp(resource, logical_id, 1, when)
        rows.append(
            {
                "resource_type": resource["resourceType"],
                "logical_id": logical_id,
                "version_id": 1,
                "last_updated": stamp,
                "deleted": False,
                "content": content,
            }
        )
    inserted = conn.execute(
        insert(_R).returning(_R.c.pk, _R.c.logical_id, sort_by_parameter_order=True), rows
    )
    pks: dict[tuple[str, str], int] = {
        (row["resource_type"], logical_id): pk
        for row, (pk, logical_id) in zip(rows, inserted, strict=True)
    }
    conn.execute(
        insert(_V),
        [
            {
                "resource_type": r["resource_type"],
                "logical_id": r["logical_id"],
                "version_id": 1,
                "last_updated": stamp,
                "method": "POST",
                "content": r["content"],
            }
            for r in rows
        ],
    )
    _write_index(conn, [(pks[(res["resourceType"], lid)], res) for res, lid in items])
    return [
        Stored(res["resourceType"], lid, 1, stamp, res, pks[(res["resourceType"], lid)])
        for res, lid in items
    ]


def create(
    conn: Connection,
    resource: dict[str, Any],
    *,
    if_none_exist: str | None = None,
    logical_id: str | None = None,
) -> WriteResult:
    """Store a validated resource (server-assigned id unless given), optionally
    conditionally.

    Raises
    ------
    MultipleMatches
        ``If-None-Exist`` matches more than one resource.
    InvalidQuery
        ``If-None-Exist`` is not a search this server understands.
    """
    rtype = str(resource.get("resourceType"))
    criteria: str | None = None
    if if_none_exist:
        criteria = normalize_criteria(if_none_exist)
        found = search(conn, rtype, parse_qsl(criteria, keep_blank_values=True), limit=2)
        if len(found.matches) > 1:
            raise MultipleMatches(
                f"If-None-Exist '{if_none_exist}' matches {len(found.matches)} resources"
            )
        if found.matches:
            return WriteResult(found.matches[0], created=False)
    stored = _insert_new(conn, resource, logical_id or str(uuid.uuid4()))
    if criteria is not None:
        conn.execute(
            insert(_KEY).values(resource_type=rtype, criteria=criteria[:512], resource_pk=stored.pk)
        )
    return WriteResult(stored, created=True)


def update(
    conn: Connection,
    resource_type: str,
    logical_id: str,
    resource: dict[str, Any],
    *,
    if_match: int | None = None,
) -> WriteResult:
    """Store a validated resource as the next version (or create it with the client's
    id); ``if_match`` guards against lost updates (:class:`VersionConflict`)."""
    row = conn.execute(
        select(_R).where(_R.c.resource_type == resource_type, _R.c.logical_id == logical_id)
    ).first()
    if row is None:
        if if_match is not None:
            raise VersionConflict("If-Match given for a resource that does not exist")
        return WriteResult(_insert_new(conn, resource, logical_id), created=True)
    if if_match is not None and if_match != row.version_id:
        raise VersionConflict(
            f"version {if_match} is stale; the current version is {row.version_id}"
        )
    version = row.version_id + 1
    when = now_utc()
    content = _stamp(resource, logical_id, version, when)
    result = conn.execute(
        sql_update(_R)
        .where(_R.c.pk == row.pk, _R.c.version_id == row.version_id)
        .values(version_id=version, last_updated=naive_utc(when), deleted=False, content=content)
    )
    if result.rowcount != 1:
        raise VersionConflict("the resource changed meanwhile; retry with its new version")
    conn.execute(
        insert(_V).values(
            resource_type=resource_type,
            logical_id=logical_id,
            version_id=version,
            last_updated=naive_utc(when),
            method="PUT",
            content=content,
        )
    )
    _clear_index(conn, row.pk)
    _write_index(conn, [(row.pk, resource)])
    return WriteResult(
        Stored(resource_type, logical_id, version, naive_utc(when), resource, row.pk),
        created=row.deleted,
    )


def delete_resource(conn: Connection, resource_type: str, logical_id: str) -> int | None:
    """Delete (keeping history); returns the deletion's version, None if nothing to delete."""
    row = conn.execute(
        select(_R.c.pk, _R.c.version_id, _R.c.deleted).where(
            _R.c.resource_type == resource_type, _R.c.logical_id == logical_id
        )
    ).first()
    if row is None or row.deleted:
        return None
    version = row.version_id + 1
    when = naive_utc(now_utc())
    conn.execute(
        sql_update(_R)
        .where(_R.c.pk == row.pk)
        .values(version_id=version, deleted=True, last_updated=when)
    )
    conn.execute(
        insert(_V).values(
            resource_type=resource_type,
            logical_id=logical_id,
            version_id=version,
            last_updated=when,
            method="DELETE",
            content=None,
        )
    )
    _clear_index(conn, row.pk)
    conn.execute(delete(_KEY).where(_KEY.c.resource_pk == row.pk))
    return int(version)


# -- reads ---------------------------------------------------------------------------------
def read(conn: Connection, resource_type: str, logical_id: str) -> Stored:
    row = conn.execute(
        select(_R).where(_R.c.resource_type == resource_type, _R.c.logical_id == logical_id)
    ).first()
    if row is None:
        raise NotFound(f"{resource_type}/{logical_id} is not known")
    if row.deleted:
        raise Deleted(f"{resource_type}/{logical_id} was deleted")
    return _row_to_stored(row)


def vread(conn: Connection, resource_type: str, logical_id: str, version_id: int) -> Stored:
    row = conn.execute(
        select(_V).where(
            _V.c.resource_type == resource_type,
            _V.c.logical_id == logical_id,
            _V.c.version_id == version_id,
        )
    ).first()
    if row is None:
        raise NotFound(f"{resource_type}/{logical_id}/_history/{version_id} is not known")
    if row.content is None:
        raise Deleted(f"version {version_id} of {resource_type}/{logical_id} is a deletion")
    return Stored(resource_type, logical_id, version_id, row.last_updated, json.loads(row.content))


@dataclass(frozen=True)
class HistoryEntry:
    resource_type: str
    logical_id: str
    version_id: int
    last_updated: datetime
    method: str
    content: dict[str, Any] | None


def history(
    conn: Connection,
    resource_type: str,
    logical_id: str | None,
    *,
    count: int = DEFAULT_COUNT,
    offset: int = 0,
) -> tuple[list[HistoryEntry], int]:
    """Versions newest first, at instance level (with an id) or type level."""
    where = [_V.c.resource_type == resource_type]
    if logical_id is not None:
        where.append(_V.c.logical_id == logical_id)
    total = conn.execute(select(func.count()).select_from(_V).where(*where)).scalar_one()
    if logical_id is not None and total == 0:
        raise NotFound(f"{resource_type}/{logical_id} is not known")
    rows = conn.execute(
        select(_V)
        .where(*where)
        .order_by(_V.c.last_updated.desc(), _V.c.version_id.desc())
        .offset(offset)
        .limit(count)
    ).all()
    return [
        HistoryEntry(
            r.resource_type,
            r.logical_id,
            r.version_id,
            r.last_updated,
            r.method,
            json.loads(r.content) if r.content else None,
        )
        for r in rows
    ], total


# -- search --------------------------------------------------------------------------------
def normalize_criteria(query: str) -> str:
    """Canonical form of a search query string (sorted parameters), for the key table."""
    query = query.split("?", 1)[-1]
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    if not pairs:
        raise InvalidQuery("If-None-Exist needs search parameters")
    return urlencode(pairs)


def _token_condition(table: Table, value: str) -> Any:
    system, code, system_given = sp.parse_token_value(value)
    conds = []
    if code is not None:
        conds.append(table.c.code == code)
    if system_given:
        conds.append(table.c.system == system if system else table.c.system.is_(None))
    if not conds:
        raise InvalidQuery(f"empty token '{value}'")
    return and_(*conds)


def _date_condition(low_col: Any, high_col: Any, value: str) -> Any:
    try:
        prefix, low, high = sp.parse_date_value(value)
    except ValueError as exc:
        raise InvalidQuery(str(exc)) from None
    low, high = naive_utc(low), naive_utc(high)
    if prefix == "eq":
        return and_(low_col >= low, high_col <= high)
    if prefix == "ne":
        return or_(low_col < low, high_col > high)
    if prefix == "lt":
        return low_col < low
    if prefix == "le":
        return low_col <= high
    if prefix == "gt":
        return high_col > high
    return high_col >= low  # ge


def _reference_targets(param: sp.SearchParam, value: str) -> list[str]:
    targets = []
    for item in value.split(","):
        ref = sp.normalize_reference(item.strip())
        if "/" not in ref:
            if param.target is None:
                raise InvalidQuery(
                    f"'{param.name}={item}' needs a typed reference (e.g. Patient/{item})"
                )
            ref = f"{param.target}/{ref}"
        targets.append(ref)
    return targets


# Parameters whose matches are few (a patient's resources, an identifier): they drive
# the query as an IN list; the others are checked per candidate row with EXISTS.
SELECTIVE_TYPES = ("reference",)
SELECTIVE_NAMES = ("identifier",)


def _is_selective(resource_type: str, name: str) -> bool:
    param = search_params(resource_type).get(name.partition(":")[0])
    return param is not None and (param.type in SELECTIVE_TYPES or param.name in SELECTIVE_NAMES)


def _param_filter(
    resource_type: str, name: str, modifier: str | None, value: str, *, driving: bool
) -> Any:
    """The SQL condition of one parameter: ``pk IN (...)`` when it drives the query,
    otherwise a correlated ``EXISTS`` probed through the index rows' ``resource_pk``."""
    if name == "_id":
        return _R.c.logical_id.in_(value.split(","))
    if name == "_lastUpdated":
        return _date_condition(_R.c.last_updated, _R.c.last_updated, value)
    param = search_params(resource_type).get(name)
    if param is None:
        raise InvalidQuery(f"unknown search parameter '{name}' for {resource_type}")
    if modifier not in (None, "exact") or (modifier == "exact" and param.type != "string"):
        raise InvalidQuery(f"modifier ':{modifier}' is not supported")
    if param.type == "token":
        table: Table = _TOKEN
        condition: Any = or_(*[_token_condition(_TOKEN, v) for v in value.split(",")])
    elif param.type == "reference":
        table, condition = _REF, _REF.c.target.in_(_reference_targets(param, value))
    elif param.type == "date":
        table, condition = _DATE, _date_condition(_DATE.c.low, _DATE.c.high, value)
    else:
        folded = [v.casefold() for v in value.split(",")]
        match = (
            _STRING.c.value.in_(folded)
            if modifier == "exact"
            else or_(
                *[
                    _STRING.c.value.like(
                        v.replace("%", r"\%").replace("_", r"\_") + "%", escape="\\"
                    )
                    for v in folded
                ]
            )
        )
        table, condition = _STRING, match
    if driving:
        return _R.c.pk.in_(
            select(table.c.resource_pk).where(
                table.c.resource_type == resource_type, table.c.param == name, condition
            )
        )
    return (
        select(table.c.pk)
        .where(table.c.resource_pk == _R.c.pk, table.c.param == name, condition)
        .exists()
    )


def _sorted(query: Select[Any], resource_type: str, sort: str | None) -> Select[Any]:
    if not sort:
        return query.order_by(_R.c.pk)
    descending = sort.startswith("-")
    name = sort.lstrip("-")
    if name == "_lastUpdated":
        column: Any = _R.c.last_updated
    elif (param := search_params(resource_type).get(name)) is not None and param.type == "date":
        column = (
            select(func.min(_DATE.c.low))
            .where(_DATE.c.resource_pk == _R.c.pk, _DATE.c.param == name)
            .scalar_subquery()
        )
    else:
        raise InvalidQuery(f"cannot sort by '{sort}'")
    return query.order_by(column.desc() if descending else column.asc(), _R.c.pk)


def search(
    conn: Connection,
    resource_type: str,
    params: Sequence[tuple[str, str]],
    *,
    limit: int | None = None,
    offset: int = 0,
    sort: str | None = None,
    include: Sequence[str] = (),
    want_total: bool = False,
) -> SearchResult:
    """Resources of ``resource_type`` matching every parameter (values: comma = OR)."""
    # One selective parameter drives (an IN list looked up by primary key; index rows
    # exist only for current, undeleted resources of the type). Without one, the type's
    # rows are walked in primary-key order and the scan stops when the page is full.
    driver = next((n for n, _ in params if _is_selective(resource_type, n)), None)
    conditions: list[Any] = []
    if driver is None:
        conditions = [_R.c.resource_type == resource_type, _R.c.deleted.is_(False)]
    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        driving = raw_name == driver
        if driving:
            driver = None  # only its first occurrence drives
        conditions.append(
            _param_filter(resource_type, name, modifier or None, value, driving=driving)
        )
    query = _sorted(select(_R).where(*conditions), resource_type, sort)
    count = DEFAULT_COUNT if limit is None else limit
    rows = conn.execute(query.offset(offset).limit(count)).all() if count > 0 else []
    total: int | None = None
    if want_total or (offset == 0 and len(rows) < count):
        total = (
            len(rows)
            if offset == 0 and len(rows) < count
            else conn.execute(
                select(func.count()).select_from(select(_R.c.pk).where(*conditions).subquery())
            ).scalar_one()
        )
    matches = [_row_to_stored(r) for r in rows]
    return SearchResult(matches, _includes(conn, matches, include), total, offset, count)


def _includes(conn: Connection, matches: list[Stored], include: Sequence[str]) -> list[Stored]:
    targets: set[str] = set()
    for spec in include:
        source, _, name = spec.partition(":")
        name, _, target_type = name.partition(":")
        param = search_params(source).get(name)
        if param is None or param.type != "reference":
            raise InvalidQuery(f"_include '{spec}' is not supported")
        for stored in matches:
            if stored.resource_type != source:
                continue
            for entry in sp.extract(stored.content, [param]):
                if (
                    entry.param == name
                    and entry.value
                    and (not target_type or entry.value.startswith(target_type + "/"))
                ):
                    targets.add(entry.value)
    by_type: dict[str, list[str]] = {}
    for target in sorted(targets):
        rtype, _, rid = target.partition("/")
        by_type.setdefault(rtype, []).append(rid)
    included: list[Stored] = []
    for rtype, ids in by_type.items():  # one query per included type, not per resource
        rows = conn.execute(
            select(_R)
            .where(_R.c.resource_type == rtype, _R.c.logical_id.in_(ids), _R.c.deleted.is_(False))
            .order_by(_R.c.logical_id)
        ).all()
        included.extend(_row_to_stored(row) for row in rows)
    return included


def find_one(conn: Connection, resource_type: str, query: str) -> Stored | None:
    """The single match of a search query string, None if none (412 if several)."""
    found = search(conn, resource_type, parse_qsl(query, keep_blank_values=True), limit=2)
    if len(found.matches) > 1:
        raise MultipleMatches(f"'{resource_type}?{query}' matches several resources")
    return found.matches[0] if found.matches else None
