"""Search parameters: what a parameter is, which values of a resource it indexes, and how
a search value is read. Pure functions over FHIR JSON; each resource type's parameters
are declared with the type (:mod:`services.outcomes.fhir.resource_types`), and the
repository stores and queries the index rows they produce.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from services.common.fhir import codes

ParamType = Literal["token", "reference", "date", "string"]


@dataclass(frozen=True)
class SearchParam:
    name: str
    type: ParamType
    paths: tuple[str, ...]
    description: str
    target: str | None = None  # reference parameters limited to one resource type


def param(
    name: str, kind: ParamType, *paths: str, target: str | None = None, doc: str = ""
) -> SearchParam:
    return SearchParam(name, kind, paths, doc or f"{name} ({kind})", target)


SUBJECT = param("subject", "reference", "subject", doc="Who the resource is about")
PATIENT = param("patient", "reference", "subject", target="Patient", doc="The patient (subject)")
IDENTIFIER = param("identifier", "token", "identifier", doc="A business identifier (system|value)")

COMMON_PARAMS = ("_id", "_lastUpdated")
RESULT_PARAMS = (
    "_count",
    "_offset",
    "_sort",
    "_include",
    "_summary",
    "_format",
    "_total",
    "_totalMethod",
)

TIME_POINT_URL = codes.TIME_POINT_EXTENSION


# -- extraction ---------------------------------------------------------------------------
def _walk(node: Any, parts: list[str]) -> Iterator[Any]:
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, parts)
        return
    if not parts:
        yield node
        return
    if not isinstance(node, dict):
        return
    head, rest = parts[0], parts[1:]
    if head == "extension:time-point":
        for ext in node.get("extension", []):
            if isinstance(ext, dict) and ext.get("url") == TIME_POINT_URL:
                yield from _walk(ext.get("valueCoding"), rest)
        return
    if head in node:
        yield from _walk(node[head], rest)


def tokens_of(value: Any) -> Iterator[tuple[str | None, str]]:
    if isinstance(value, str):
        yield None, value
    elif isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, dict):
        if "coding" in value:
            for coding in value.get("coding", []):
                yield from tokens_of(coding)
        elif "code" in value:
            yield value.get("system"), str(value["code"])
        elif "value" in value:  # Identifier
            yield value.get("system"), str(value["value"])


def normalize_reference(reference: str) -> str:
    """``Patient/123`` from a relative, absolute or versioned reference."""
    reference = reference.split("/_history/")[0]
    parts = reference.rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else reference


OPEN_LOW = datetime(1, 1, 2, tzinfo=UTC)  # an open Period start
OPEN_HIGH = datetime(9999, 12, 30, tzinfo=UTC)  # an open (ongoing) Period end

_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})(T(?P<time>[0-9:.]+)(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def date_range(text: str) -> tuple[datetime, datetime]:
    """The instant range a FHIR date/dateTime/instant covers, in UTC.

    Raises
    ------
    ValueError
        Not a FHIR date.
    """
    match = _DATE_RE.match(text)
    if not match:
        raise ValueError(f"'{text}' is not a FHIR date or dateTime")
    year = int(match["y"])
    if match["m"] is None:
        return datetime(year, 1, 1, tzinfo=UTC), datetime(year, 12, 31, 23, 59, 59, 999999, UTC)
    month = int(match["m"])
    if match["d"] is None:
        last = calendar.monthrange(year, month)[1]
        return (
            datetime(year, month, 1, tzinfo=UTC),
            datetime(year, month, last, 23, 59, 59, 999999, UTC),
        )
    day = int(match["d"])
    if match["time"] is None:
        start = datetime(year, month, day, tzinfo=UTC)
        return start, start.replace(hour=23, minute=59, second=59, microsecond=999999)
    tz = match["tz"] or "Z"
    parsed = datetime.fromisoformat(
        f"{match['y']}-{match['m']}-{match['d']}T{match['time']}" + ("+00:00" if tz == "Z" else tz)
    )
    try:
        instant = parsed.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-14:00: past the calendar's end in UTC
        return (OPEN_HIGH, OPEN_HIGH) if parsed.year > 1 else (OPEN_LOW, OPEN_LOW)
    seconds_precision = len(match["time"]) <= 8
    high = instant + (
        timedelta(seconds=1) - timedelta(microseconds=1) if seconds_precision else timedelta(0)
    )
    return instant, high


def dates_of(value: Any) -> Iterator[tuple[datetime, datetime]]:
    if isinstance(value, str):
        yield date_range(value)
    elif isinstance(value, dict) and ("start" in value or "end" in value):
        low = date_range(value["start"])[0] if value.get("start") else OPEN_LOW
        high = date_range(value["end"])[1] if value.get("end") else OPEN_HIGH
        yield low, high


def strings_of(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value.casefold()


@dataclass(frozen=True)
class IndexEntry:
    param: str
    type: ParamType
    system: str | None = None
    value: str | None = None
    low: datetime | None = None
    high: datetime | None = None


def extract(resource: dict[str, Any], params: Iterable[SearchParam]) -> list[IndexEntry]:
    """The index entries of a resource, for each of its type's search ``params``."""
    entries: list[IndexEntry] = []
    for param in params:
        for path in param.paths:
            for value in _walk(resource, path.split(".")):
                if param.type == "token":
                    entries.extend(
                        IndexEntry(param.name, "token", s, c) for s, c in tokens_of(value)
                    )
                elif param.type == "reference":
                    ref = value.get("reference") if isinstance(value, dict) else None
                    if isinstance(ref, str):
                        target = normalize_reference(ref)
                        if param.target is None or target.startswith(param.target + "/"):
                            entries.append(IndexEntry(param.name, "reference", value=target))
                elif param.type == "date":
                    entries.extend(
                        IndexEntry(param.name, "date", low=lo, high=hi)
                        for lo, hi in dates_of(value)
                    )
                else:
                    entries.extend(
                        IndexEntry(param.name, "string", value=v) for v in strings_of(value)
                    )
    return entries


# -- search values ------------------------------------------------------------------------
DATE_PREFIXES = ("eq", "ne", "lt", "le", "gt", "ge")


def parse_date_value(text: str) -> tuple[str, datetime, datetime]:
    prefix = "eq"
    if text[:2] in DATE_PREFIXES and not text[:2].isdigit():
        prefix, text = text[:2], text[2:]
    low, high = date_range(text)
    return prefix, low, high


def parse_token_value(text: str) -> tuple[str | None, str | None, bool]:
    """(system, code, system_given): ``s|c``, ``|c`` (no system), ``c``, ``s|``."""
    if "|" not in text:
        return None, text, False
    system, _, code = text.partition("|")
    return (system or None), (code or None), True
