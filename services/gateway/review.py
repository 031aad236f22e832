"""The readers' review: what a reader is shown of a study, and the worklist (pure).

Blinding is the rule, not an option: a reader sees **only their own reads**, never another
reader's (so a first reader and a blinded second reader are both blind to each other). A
study the reader is *assigned* (a blinded second read, or a re-read weeks later) is read
for that purpose: their earlier reads of other purposes are not shown either, and when the
assignment says so, neither are the automatic value, its status, its reason nor its
construction. Otherwise the read is the primary ``review``, the one the cohort uses.

Review items are the automatic measurements at a named level that the analysis measured or
flagged (``ok`` or ``needs_review``); a value outside the images (``not_measurable``) has
nothing to check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from pydantic import BaseModel

from services.common import reading as common_reading
from services.common import vocabulary
from services.common.contracts import (
    ManualMeasurement,
    Measurement,
    StudyMeasurements,
    StudyResult,
    key_image_name,
)

Key = tuple[str, str, str | None]  # quantity, level, side


@dataclass(frozen=True)
class Assignment:
    """A study given to a reader for a blinded read (``second`` or ``reread``)."""

    study_instance_uid: str
    reader: str
    purpose: vocabulary.ReadPurpose
    blind_automatic: bool


@dataclass(frozen=True)
class Reading:
    """How one reader reads one study."""

    reader: str
    purpose: vocabulary.ReadPurpose = "review"
    blind_automatic: bool = False

    @classmethod
    def of(cls, reader: str, assignment: Assignment | None) -> Reading:
        if assignment is None:
            return cls(reader)
        return cls(reader, assignment.purpose, assignment.blind_automatic)


class OwnRead(BaseModel):
    action: vocabulary.ReadAction
    value: float | None
    reason: str | None
    geometry: list[tuple[float, float]] | None
    note: str | None
    created_at: str

    @classmethod
    def of(cls, read: ManualMeasurement) -> OwnRead:
        return cls(
            action=read.action,
            value=read.value,
            reason=read.reason,
            geometry=read.geometry,
            note=read.note,
            created_at=read.created_at.isoformat(),
        )


class ReviewItem(BaseModel):
    quantity: str
    display: str
    unit: str
    level: str
    side: str | None
    # The automatic result; None throughout when the reading is blinded to it.
    status: str | None
    value: float | None
    reason: str | None
    key_image: str | None  # the review image's name (None: nothing to draw on)
    read: OwnRead | None  # the reader's latest read of it (for this purpose)


def own_reads(
    manual: Iterable[ManualMeasurement], reading: Reading, measurement_set_id: int | None = None
) -> dict[Key, ManualMeasurement]:
    """The reader's latest read of each measurement of the result, for the reading's purpose
    (a read of an earlier result, before a re-analysis, is not shown: it must be read again)."""
    latest: dict[Key, ManualMeasurement] = {}
    kept = common_reading.current(manual, measurement_set_id)
    for read in sorted(kept, key=lambda r: (r.created_at, r.id)):
        if read.reader_id == reading.reader and read.purpose == reading.purpose:
            latest[(read.quantity.value, read.level, read.side)] = read
    return latest


def reviewable(measurements: Iterable[Measurement]) -> list[Measurement]:
    """The automatic values a reader checks, in vocabulary order (quantity, level, side)."""
    quantities = list(vocabulary.QUANTITIES)
    items = [m for m in measurements if m.level is not None and m.status in ("ok", "needs_review")]
    return sorted(
        items,
        key=lambda m: (
            quantities.index(m.quantity),
            vocabulary.LEVELS.index(m.level or ""),
            vocabulary.SIDES.index(m.side) if m.side else -1,
        ),
    )


def items(result: StudyMeasurements, reading: Reading) -> list[ReviewItem]:
    """What the reader is shown of one study's current result: the review items with the
    reader's own reads."""
    mine = own_reads(result.manual_measurements, reading, result.measurement_set_id)
    names = set(result.review_images)
    out = []
    for m in reviewable(result.measurements):
        assert m.level is not None  # reviewable()
        key = (m.quantity.value, m.level, m.side)
        quantity = vocabulary.QUANTITIES[m.quantity]
        name = key_image_name(m.quantity.value, m.level, m.side)
        read = mine.get(key)
        blind = reading.blind_automatic
        out.append(
            ReviewItem(
                quantity=m.quantity.value,
                display=quantity.display,
                unit=quantity.unit,
                level=m.level,
                side=m.side,
                status=None if blind else m.status,
                value=None if blind else m.value,
                reason=None if blind else m.reason,
                key_image=name if name in names else None,
                read=None if read is None else OwnRead.of(read),
            )
        )
    return out


class WorklistItem(BaseModel):
    study_instance_uid: str
    case_id: str
    patient: str  # MRN
    patient_name: str | None
    group: str | None
    levels: list[str]  # operated
    slot: str  # pre, post-1, ...
    label: str
    study_date: date | None
    modality: str | None
    purpose: vocabulary.ReadPurpose
    blind_automatic: bool
    items: int
    needs_review: int  # 0 when blinded to the automatic status
    reviewed: int  # items the reader has read (for the purpose)


class Worklist(BaseModel):
    items: list[WorklistItem]
    reviewed: int
    total: int


def worklist_item(
    study: StudyResult, reading: Reading, *, context: dict[str, object]
) -> WorklistItem | None:
    """One study of the worklist (None when it has nothing to review)."""
    if study.result is None:
        return None
    review = reviewable(study.result.measurements)
    if not review:
        return None
    mine = own_reads(study.manual_measurements, reading, study.result.measurement_set_id)
    done = sum((m.quantity.value, m.level, m.side) in mine for m in review)
    flagged = 0 if reading.blind_automatic else sum(m.status == "needs_review" for m in review)
    return WorklistItem.model_validate(
        {
            **context,
            "study_instance_uid": study.study_instance_uid,
            "purpose": reading.purpose,
            "blind_automatic": reading.blind_automatic,
            "items": len(review),
            "needs_review": flagged,
            "reviewed": done,
        }
    )


def order(worklist: list[WorklistItem]) -> list[WorklistItem]:
    """Unfinished before finished; among them, assigned reads and ``needs_review`` first,
    then the oldest surgery's studies."""
    return sorted(
        worklist,
        key=lambda w: (
            w.reviewed >= w.items,
            w.purpose == "review",
            w.needs_review == 0,
            w.study_date or date.max,
            w.study_instance_uid,
        ),
    )
