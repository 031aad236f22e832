"""Query parameters every service bounds the same way: database keys, offsets and page
sizes fit a 32-bit signed integer, so a hostile ``offset=9223372036854775808`` is a 400
(or 422) with a reason, never a database overflow."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

MAX_INT = 2**31 - 1

Offset = Annotated[int, Query(ge=0, le=MAX_INT, description="rows to skip")]
After = Annotated[int, Query(ge=0, le=MAX_INT, description="the last id already seen")]


def bounded_int(text: str, name: str, *, low: int = 0, high: int = MAX_INT) -> int:
    """``text`` as an integer within [low, high]; ValueError naming ``name`` otherwise."""
    stripped = text.strip()
    if (
        not stripped.lstrip("-").isascii()
        or not stripped.lstrip("-").isdigit()
        or len(stripped) > 12
    ):
        raise ValueError(f"{name} must be an integer")
    value = int(stripped)
    if not low <= value <= high:
        raise ValueError(f"{name} must be within {low}-{high}")
    return value
