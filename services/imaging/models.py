"""The imaging index: what we hold, down to each stored version of each instance.

Patient attributes are kept on the study row (one patient per study, as in DICOM);
the files on disk stay the source of truth for everything else.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import Column, Index, Text, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel, col, select

from services.common import contracts


def utcnow() -> datetime:
    """The time stamps of the index: aware UTC."""
    return datetime.now(UTC)


class ImagingModel(SQLModel, registry=registry()):
    """Base of the imaging index tables: their own metadata, their own migrations."""


class StudyState(StrEnum):
    """Where a study is in its life: receiving instances, complete, or held back."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"  # quiet, but the content check failed


class Study(ImagingModel, table=True):
    __tablename__ = "study"

    study_instance_uid: str = Field(primary_key=True, max_length=64)
    patient_id: str | None = Field(default=None, max_length=64, index=True)
    issuer_of_patient_id: str | None = Field(default=None, max_length=64)
    patient_name: str | None = Field(default=None, max_length=324)
    patient_birth_date: str | None = Field(default=None, max_length=8)
    patient_sex: str | None = Field(default=None, max_length=16)
    study_date: str | None = Field(default=None, max_length=8, index=True)
    study_time: str | None = Field(default=None, max_length=16)
    accession_number: str | None = Field(default=None, max_length=16)
    study_id: str | None = Field(default=None, max_length=16)
    study_description: str | None = Field(default=None, max_length=64)
    referring_physician_name: str | None = Field(default=None, max_length=324)
    state: StudyState = Field(default=StudyState.RECEIVING, max_length=16, index=True)
    version: int = 1
    state_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    source: str = Field(default="push", max_length=16)  # push (routed to us) or pull
    first_received_at: datetime
    last_received_at: datetime
    completed_at: datetime | None = None


class Series(ImagingModel, table=True):
    __tablename__ = "series"

    series_instance_uid: str = Field(primary_key=True, max_length=64)
    study_instance_uid: str = Field(foreign_key="study.study_instance_uid", max_length=64)
    modality: str | None = Field(default=None, max_length=16)
    series_number: int | None = None
    series_description: str | None = Field(default=None, max_length=64)
    body_part_examined: str | None = Field(default=None, max_length=16)
    protocol_name: str | None = Field(default=None, max_length=64)
    series_date: str | None = Field(default=None, max_length=8)

    __table_args__ = (Index("ix_series_study", "study_instance_uid"),)


class Instance(ImagingModel, table=True):
    """The current version of one SOP instance, with the tags the analysis needs."""

    __tablename__ = "instance"

    sop_instance_uid: str = Field(primary_key=True, max_length=64)
    series_instance_uid: str = Field(foreign_key="series.series_instance_uid", max_length=64)
    study_instance_uid: str = Field(max_length=64)
    sop_class_uid: str = Field(max_length=64)
    transfer_syntax_uid: str = Field(max_length=64)
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    image_position_patient: str | None = Field(default=None, max_length=128)
    image_orientation_patient: str | None = Field(default=None, max_length=256)
    pixel_spacing: str | None = Field(default=None, max_length=64)
    slice_thickness: float | None = None
    path: str = Field(max_length=512)
    sha256: str = Field(max_length=64)
    size: int
    received_at: datetime
    study_version: int
    conflict: bool = False

    __table_args__ = (
        Index("ix_instance_series", "series_instance_uid"),
        Index("ix_instance_study", "study_instance_uid"),
    )


class InstanceVersion(ImagingModel, table=True):
    """Audit trail: every distinct content received for a SOP Instance UID."""

    __tablename__ = "instance_version"

    id: int | None = Field(default=None, primary_key=True)
    sop_instance_uid: str = Field(max_length=64, index=True)
    version: int
    sha256: str = Field(max_length=64)
    path: str = Field(max_length=512)
    size: int
    source: str = Field(max_length=64)  # "dimse:CALLINGAET", "stow", "pull"
    received_at: datetime
    is_current: bool
    note: str | None = Field(default=None, max_length=256)

    __table_args__ = (UniqueConstraint("sop_instance_uid", "sha256", name="uq_version_content"),)


class StudyEvent(ImagingModel, table=True):
    """Outbox of study events (``study.complete``); delivered at least once to subscribers."""

    __tablename__ = "study_event"

    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(max_length=64, index=True)
    study_version: int
    kind: str = Field(max_length=32)
    created_at: datetime
    delivered_at: datetime | None = Field(default=None, index=True)
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=512)

    __table_args__ = (
        UniqueConstraint("study_instance_uid", "study_version", "kind", name="uq_event"),
    )


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # attempts exhausted; the study itself is untouched


class AnalysisJob(ImagingModel, table=True):
    """One analysis of one study version: the persistent queue's row."""

    __tablename__ = "analysis_job"

    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(max_length=64, index=True)
    study_version: int
    algorithm_version: str = Field(max_length=32)
    state: JobState = Field(default=JobState.QUEUED, max_length=16, index=True)
    attempts: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    last_error: str | None = Field(default=None, max_length=512)
    published_at: datetime | None = None  # handed to the broker (Celery engine only)

    __table_args__ = (
        UniqueConstraint(
            "study_instance_uid", "study_version", "algorithm_version", name="uq_analysis_job"
        ),
    )


class MeasurementSet(ImagingModel, table=True):
    """The stored result of one analysis (the CLI's JSON), tied to the study version."""

    __tablename__ = "measurement_set"

    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(max_length=64, index=True)
    study_version: int
    algorithm_name: str = Field(max_length=64)
    algorithm_version: str = Field(max_length=32)
    status: str = Field(max_length=16)
    result: str = Field(sa_column=Column(Text, nullable=False))  # JSON
    sr_sop_instance_uid: str | None = Field(default=None, max_length=64)
    key_images_dir: str | None = Field(default=None, max_length=512)
    created_at: datetime
    is_current: bool = True


def current_measurement_set(session: Session, study_instance_uid: str) -> MeasurementSet | None:
    """The study's current result (the newest analysis), if any."""
    return session.exec(
        select(MeasurementSet).where(
            MeasurementSet.study_instance_uid == study_instance_uid,
            col(MeasurementSet.is_current).is_(True),
        )
    ).first()


class DeliveryState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"  # attempts exhausted; an operator may retry it


class ResultDelivery(ImagingModel, table=True):
    """The outbox of one measurement set to one destination (the PACS, the FHIR store)."""

    __tablename__ = "result_delivery"

    id: int | None = Field(default=None, primary_key=True)
    measurement_set_id: int = Field(foreign_key="measurement_set.id", index=True)
    study_instance_uid: str = Field(max_length=64, index=True)
    target: str = Field(max_length=16)  # "pacs" | "fhir"
    state: DeliveryState = Field(default=DeliveryState.PENDING, max_length=16, index=True)
    attempts: int = 0
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None = None
    last_error: str | None = Field(default=None, max_length=512)
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # JSON


class ManualMeasurement(ImagingModel, table=True):
    """A reader's own measurement, kept next to the automatic one (neither overwrites)."""

    __tablename__ = "manual_measurement"

    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(max_length=64, index=True)
    reader_id: str = Field(max_length=64)
    level: str = Field(max_length=8)
    side: str | None = Field(default=None, max_length=8)
    quantity: str = Field(max_length=32)
    value: float | None = None  # None only for a rejected automatic value
    unit: str = Field(max_length=8)
    note: str | None = Field(default=None, max_length=256)
    created_at: datetime
    # The review (vocabulary.ReadAction, ReadPurpose, RejectReason); append-only: a reader's
    # later read supersedes the earlier one, which stays as the audit of the change.
    action: str = Field(default="measured", max_length=16)
    purpose: str = Field(default="review", max_length=16)
    reason: str | None = Field(default=None, max_length=32)
    automatic_value: float | None = None
    key_image: str | None = Field(default=None, max_length=120)
    geometry: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # JSON
    measurement_set_id: int | None = None  # the result the read reviewed


def read_contract(row: ManualMeasurement) -> contracts.ManualMeasurement:
    """A stored read as the result contract has it."""
    fields = row.model_dump()
    fields["geometry"] = json.loads(row.geometry) if row.geometry else None
    return contracts.ManualMeasurement.model_validate(fields)


def reads_of(session: Session, study: str) -> list[contracts.ManualMeasurement]:
    """Every reader's reads of a study, oldest first."""
    rows = session.exec(
        select(ManualMeasurement)
        .where(ManualMeasurement.study_instance_uid == study)
        .order_by(col(ManualMeasurement.id))
    ).all()
    return [read_contract(r) for r in rows]


class CohortPatient(ImagingModel, table=True):
    """One operated patient of the retrospective cohort: which studies the PACS holds
    around the surgery, which were chosen, and where their retrieval stands."""

    __tablename__ = "cohort_patient"
    __table_args__ = (UniqueConstraint("patient_id", "surgery_date", name="uq_cohort_patient"),)

    id: int | None = Field(default=None, primary_key=True)
    patient_id: str = Field(max_length=64, index=True)
    surgery_date: str = Field(max_length=8)  # YYYYMMDD
    modality: str = Field(max_length=16)
    group: str | None = Field(default=None, max_length=32)
    pre_state: str = Field(default="pending", max_length=16)  # see services.imaging.intake.cohort
    post_state: str = Field(default="pending", max_length=16)
    pre_study_uid: str | None = Field(default=None, max_length=64)
    post_study_uid: str | None = Field(default=None, max_length=64)
    candidates: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # JSON
    reason: str | None = Field(default=None, max_length=512)
    updated_at: datetime


class CohortStudy(ImagingModel, table=True):
    """A study the cohort retrieval asked the PACS for (C-MOVE arrivals are recognised by
    it: they are pulls, not routed studies)."""

    __tablename__ = "cohort_study"

    study_instance_uid: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(max_length=64, index=True)
    state: str = Field(default="queued", max_length=16)  # queued | retrieving | retrieved | failed
    expected: int | None = None  # instances the PACS says it holds
    received: int = 0
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=512)
    updated_at: datetime
