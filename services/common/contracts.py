"""The result contract: what the imaging service's analysis produces and every consumer
reads — the job runner that stores it, the outbox that sends it to the PACS and the FHIR
store, the API that serves it, the back-fill that compares it, the gateway that pairs
it. Typed, versioned pydantic models; parse on entry with ``from_json`` (or
``model_validate``), write with ``to_json``.

Versions: ``schema_version`` is 1. A stored result written before the field existed
parses as version 1. A consumer refuses a version it does not know
(:class:`ContractError`), so an old gateway never misreads a newer imaging service.
Unknown fields are ignored on read, and so are measurements of a quantity the reader's
vocabulary does not know: adding an optional field or a quantity is not a new version;
renaming, removing or changing the meaning of either is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.common.vocabulary import (
    QUANTITIES,
    Level,
    Modality,
    QuantityName,
    ReadAction,
    ReadPurpose,
    RejectReason,
    Side,
)

SCHEMA_VERSION = 1
ResultStatus = Literal["ok", "needs_review", "failed"]
# not_measurable: the structure is outside the images (not a doubt about a value, so not a
# review item: a reader has nothing to check).
MeasurementStatus = Literal["ok", "needs_review", "not_measurable"]
AnalysisState = Literal["none", "queued", "running", "done", "failed"]


class ContractError(ValueError):
    """A document does not follow the result contract (or is of an unknown version)."""


class _Contract(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        """Parse a JSON document; :class:`ContractError` when it does not fit."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ContractError(
                f"not a {cls.__name__}: {exc.error_count()} error(s), first at {where}: "
                f"{first['msg']}"
            ) from exc

    def to_json(self) -> str:
        return self.model_dump_json()


class Algorithm(_Contract):
    name: str
    version: str


class Measurement(_Contract):
    """One automatic value: a quantity at a level (and side), or why there is none."""

    quantity: QuantityName
    level: Level | None  # None: the level could not be named (no sacrum in view)
    level_index: int  # 0 = most cranial disc measured
    side: Side | None
    value: float | None  # None unless ``status`` is ``ok``
    unit: str
    series_instance_uid: str
    status: MeasurementStatus
    reason: str | None = None
    sop_instance_uid: str | None = None  # the source image nearest the measurement

    @model_validator(mode="after")
    def _unit_of_quantity(self) -> Self:
        unit = QUANTITIES[self.quantity].unit
        if self.unit != unit:
            raise ValueError(f"{self.quantity} is measured in {unit}, not {self.unit}")
        return self


class AnalysisResult(_Contract):
    """The analysis of one study: the CLI's JSON and the stored result."""

    schema_version: int = SCHEMA_VERSION
    study_instance_uid: str
    modality: Modality
    status: ResultStatus
    warnings: list[str] = Field(default_factory=list)
    algorithm: Algorithm
    measurements: list[Measurement] = Field(default_factory=list)
    selection: list[str] = Field(default_factory=list)
    timings_s: dict[str, float] = Field(default_factory=dict)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {version} is not known (this reads {SCHEMA_VERSION})")
        return version

    @field_validator("measurements", mode="before")
    @classmethod
    def _known_quantities(cls, measurements: Any) -> Any:
        if not isinstance(measurements, list):
            return measurements
        known = {q.value for q in QUANTITIES}
        return [
            m
            for m in measurements
            if not isinstance(m, dict) or m.get("quantity") in known or "quantity" not in m
        ]

    def measured(self) -> list[Measurement]:
        """The values the analysis stands behind (a number at a named level)."""
        return [m for m in self.measurements if m.value is not None and m.level is not None]


# A point of a reader's construction on a review image (column, row): finite, bounded.
Coordinate = Annotated[float, Field(ge=-10_000, le=10_000, allow_inf_nan=False)]
GeometryPoint = tuple[Coordinate, Coordinate]


def key_image_name(quantity: str, where: str, side: str | None) -> str:
    """The file-safe name of a measurement's key image (and its review image): quantity,
    level (or ``index<n>`` when unnamed) and side — how the imaging service stores them and
    every consumer asks for them."""
    return "_".join(x for x in (quantity, where, side or "") if x)


class ManualMeasurement(_Contract):
    """A reader's read of one measurement, kept next to the automatic value (neither
    overwrites the other; a later read of the same reader supersedes an earlier one).

    ``action``: what the reader did (:data:`vocabulary.ReadAction`); ``value`` is None only
    for ``rejected``. ``geometry``: the construction the reader left, as (column, row) points
    on the review image ``key_image`` (two end points of a height, or a closed contour);
    the value was computed from it by the imaging service. ``purpose``: the primary review,
    or a blinded ``second`` read or ``reread`` (agreement only)."""

    id: int
    study_instance_uid: str
    reader_id: str
    level: Level
    side: Side | None
    quantity: QuantityName
    value: float | None
    unit: str
    note: str | None
    created_at: datetime
    action: ReadAction = "measured"
    purpose: ReadPurpose = "review"
    reason: RejectReason | None = None
    automatic_value: float | None = None  # the automatic value the reader saw or reviewed
    key_image: str | None = None
    geometry: list[tuple[float, float]] | None = None
    # The result the read reviewed: a re-analysis makes earlier reads stale (not counted).
    measurement_set_id: int | None = None


class SrLink(_Contract):
    sop_instance_uid: str
    wado: str


class KeyImageLink(_Contract):
    name: str
    url: str


class StudyMeasurements(AnalysisResult):
    """``GET /api/studies/{study}/measurements``: the current result with its context."""

    study_version: int
    computed_at: datetime
    measurement_set_id: int | None = None  # which result this is (readers' reads name it)
    sr: SrLink | None
    key_images: list[KeyImageLink] = Field(default_factory=list)
    # The key images a reader can measure on (their sections without construction are kept;
    # results analysed before review images existed have none).
    review_images: list[str] = Field(default_factory=list)
    manual_measurements: list[ManualMeasurement] = Field(default_factory=list)


class StudyResult(_Contract):
    """One study of ``GET /api/results`` (the gateway's bulk read)."""

    study_instance_uid: str
    patient_id: str | None
    issuer_of_patient_id: str | None
    study_date: str | None
    study_time: str | None
    modalities: list[str]
    state: str
    version: int
    analysis_state: AnalysisState
    analysis_error: str | None
    result: StudyMeasurements | None
    manual_measurements: list[ManualMeasurement]


class ResultsPage(_Contract):
    items: list[StudyResult]
    next_after: str | None  # pass as ``after`` for the next page; null on the last
