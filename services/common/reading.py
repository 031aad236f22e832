"""Which value of a measurement counts, once readers have reviewed it: the one rule, used
by the gateway's cohort and by the imaging service's FHIR and SR outputs.

The primary reading's latest read decides (any reader; blinded ``second`` reads and
``reread``s serve the agreement statistics only): ``accepted`` keeps the automatic value,
``corrected`` replaces it, ``rejected`` excludes it, ``measured`` is a reader's own value
(``manual``). Without a read, the automatic value counts when its status is ``ok``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from services.common.contracts import ManualMeasurement, Measurement

Key = tuple[str, str, str | None]  # quantity, level, side
State = Literal[
    "ok", "needs_review", "not_measurable", "accepted", "corrected", "rejected", "manual"
]
REVIEWED: tuple[State, ...] = ("accepted", "corrected", "manual")  # a reader stands behind it


@dataclass(frozen=True)
class Decided:
    value: float | None
    state: State
    automatic: Measurement | None
    read: ManualMeasurement | None  # the read that decided, if any

    @property
    def automatic_value(self) -> float | None:
        return self.automatic.value if self.automatic is not None else None


def current(
    reads: Iterable[ManualMeasurement], measurement_set_id: int | None
) -> list[ManualMeasurement]:
    """The reads of the result ``measurement_set_id``: a read of an earlier result (before a
    re-analysis) reviewed other values and constructions, so it no longer counts."""
    return [
        r
        for r in reads
        if measurement_set_id is None
        or r.measurement_set_id is None
        or r.measurement_set_id == measurement_set_id
    ]


def decide(
    measurements: Iterable[Measurement],
    reads: Iterable[ManualMeasurement],
    measurement_set_id: int | None = None,
) -> dict[Key, Decided]:
    """The value that counts for each measurement at a named level (reads of another result
    than ``measurement_set_id``, when given, do not count)."""
    out: dict[Key, Decided] = {}
    for m in measurements:
        if m.level is None:
            continue
        ok = m.status == "ok" and m.value is not None
        state: State = "ok" if ok else "needs_review" if m.status == "ok" else m.status
        out[(m.quantity.value, m.level, m.side)] = Decided(m.value if ok else None, state, m, None)
    kept = current(reads, measurement_set_id)
    for read in sorted(kept, key=lambda r: (r.created_at, r.id)):  # the latest wins
        if read.purpose != "review":
            continue
        key = (read.quantity.value, read.level, read.side)
        automatic = out[key].automatic if key in out else None
        decided: State = "manual" if read.action == "measured" else read.action
        out[key] = Decided(None if decided == "rejected" else read.value, decided, automatic, read)
    return out
