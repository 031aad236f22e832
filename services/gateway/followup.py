"""Follow-up tracking for the study coordinator (pure): for each case, what the study's
schedule (:data:`services.common.vocabulary.FOLLOW_UP`) expects — PROMs at their time
points, pre- and post-operative imaging — and where each stands on a given day.

For an expected item with a window of ``[open, close]`` days after surgery (a time
point's ``window``; imaging's own) and a nominal day ``due`` (the time point's day; 0 for
the baseline):

- ``present``: recorded (a PROM value at that time point, by any of its codes; imaging:
  a study of the group's modality inside the window);
- ``upcoming``: the window has not opened yet;
- ``due``: the window is open and the nominal day has not passed;
- ``overdue``: the nominal day has passed and the window is still open (chase it now);
- ``missing``: the window closed without it;
- ``unknown``: the surgery has no date (or, for imaging, no study group).

The status depends on the real surgery date and today, so it exists only in the
identified view: days since surgery would undo a researcher's date shift.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta
from typing import Literal

from pydantic import BaseModel

from services.common import vocabulary
from services.gateway.cases import Case

Status = Literal["present", "upcoming", "due", "overdue", "missing", "unknown"]
STATUSES: tuple[Status, ...] = ("present", "upcoming", "due", "overdue", "missing", "unknown")
TIME_POINTS = {tp.code: tp for tp in vocabulary.TIME_POINTS}


class FollowUpItem(BaseModel):
    item: str  # vocabulary.FOLLOW_UP item code
    display: str
    time_point: str | None  # None for imaging
    status: Status
    due_date: date | None
    window: tuple[date, date] | None


class FollowUp(BaseModel):
    case_id: str
    patient: str
    name: str | None
    group: str | None
    surgery_date: date | None
    days_since_surgery: int | None
    items: list[FollowUpItem]
    counts: dict[str, int]

    def column(self, item: str, time_point: str | None) -> Status | None:
        return next(
            (i.status for i in self.items if i.item == item and i.time_point == time_point),
            None,
        )


def columns() -> list[tuple[str, str | None]]:
    """(item, time point) of every expected thing, in schedule order (the CSV's columns)."""
    out: list[tuple[str, str | None]] = []
    for expected in vocabulary.FOLLOW_UP:
        if expected.codes:
            out += [(expected.item, tp) for tp in expected.time_points]
        else:
            out.append((expected.item, None))
    return out


def _status(present: bool, window: tuple[int, int], due: int, elapsed: int | None) -> Status:
    if present:
        return "present"
    if elapsed is None:
        return "unknown"
    if elapsed < window[0]:
        return "upcoming"
    if elapsed <= due:
        return "due"
    if elapsed <= window[1]:
        return "overdue"
    return "missing"


def follow_up(case: Case, today: date) -> FollowUp:
    """Where every expected item of ``case`` stands on ``today``.

    Raises
    ------
    ValueError
        For a pseudonymised case (its dates are shifted).
    """
    if not case.identified:
        raise ValueError("follow-up tracking needs the identified view")
    surgery = case.surgery.date
    elapsed = (today - surgery).days if surgery else None
    recorded = {(s.code, p.time_point) for s in case.proms for p in s.points}

    def on(days: int) -> date | None:
        return surgery + timedelta(days=days) if surgery else None

    items: list[FollowUpItem] = []
    for expected in vocabulary.FOLLOW_UP:
        if expected.codes:
            for code in expected.time_points:
                tp = TIME_POINTS[code]
                present = any((c, code) in recorded for c in expected.codes)
                due = tp.day if tp.day is not None else 0
                items.append(
                    FollowUpItem(
                        item=expected.item,
                        display=f"{expected.display} {tp.display}",
                        time_point=code,
                        status=_status(present, tp.window, due, elapsed),
                        due_date=on(due),
                        window=_dates(on(tp.window[0]), on(tp.window[1])),
                    )
                )
            continue
        assert expected.window is not None and expected.due is not None
        opens, closes = expected.window
        if expected.item == "imaging-pre":
            refs = [case.imaging.pre] if case.imaging.pre else []
        else:
            refs = list(case.imaging.post)
        present = any(
            r.interval_days is not None and opens <= r.interval_days <= closes for r in refs
        )
        status = _status(present, expected.window, expected.due, elapsed)
        if case.surgery.group is None and not present:
            status = "unknown"
        items.append(
            FollowUpItem(
                item=expected.item,
                display=expected.display,
                time_point=None,
                status=status,
                due_date=on(expected.due),
                window=_dates(on(opens), on(closes)),
            )
        )
    counts = Counter(i.status for i in items)
    return FollowUp(
        case_id=case.case_id,
        patient=case.patient.id,
        name=case.patient.name,
        group=case.surgery.group,
        surgery_date=surgery,
        days_since_surgery=elapsed,
        items=items,
        counts={s: counts.get(s, 0) for s in STATUSES},
    )


def _dates(opens: date | None, closes: date | None) -> tuple[date, date] | None:
    return (opens, closes) if opens and closes else None


HEADER = [
    "case_id",
    "patient",
    "group",
    "surgery_date",
    "days_since_surgery",
    *STATUSES,
    *(f"{item}_{tp}" if tp else item for item, tp in columns()),
]


def row(entry: FollowUp) -> list[str]:
    """One CSV row: the case, the counts, then each expected item's status."""
    return [
        entry.case_id,
        entry.patient,
        entry.group or "",
        entry.surgery_date.isoformat() if entry.surgery_date else "",
        "" if entry.days_since_surgery is None else str(entry.days_since_surgery),
        *(str(entry.counts[s]) for s in STATUSES),
        *(entry.column(item, tp) or "" for item, tp in columns()),
    ]
