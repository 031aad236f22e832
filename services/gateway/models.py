"""The gateway's own tables: the audit trail and the readers' assignments (it stores no
clinical data: the reads themselves are kept by the imaging service, next to the values)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel


class GatewayModel(SQLModel, registry=registry()):
    """Base of the gateway's tables: their own metadata, their own migrations."""


class AccessRecord(GatewayModel, table=True):
    """Append-only: who accessed what, in which role, when, with which outcome."""

    __tablename__ = "gateway_audit"

    id: int | None = Field(default=None, primary_key=True)
    recorded: datetime = Field(sa_column=Column(DateTime, nullable=False, index=True))
    subject: str = Field(max_length=120, index=True)
    role: str | None = Field(default=None, max_length=32)
    method: str = Field(max_length=8)
    path: str = Field(max_length=255)
    query: str | None = Field(default=None, max_length=512)
    status_code: int
    case_id: str | None = Field(default=None, max_length=64, index=True)


class ReadingAssignment(GatewayModel, table=True):
    """A study given to a reader for a blinded read: ``second`` (another reader than the
    first) or ``reread`` (the same reader, weeks later). Drawn as a seeded random sample."""

    __tablename__ = "reading_assignment"
    __table_args__ = (
        UniqueConstraint("study_instance_uid", "reader", "purpose", name="uq_reading_assignment"),
    )

    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(max_length=64, index=True)
    reader: str = Field(max_length=120, index=True)
    purpose: str = Field(max_length=16)  # second | reread
    blind_automatic: bool
    sample: str = Field(max_length=120)  # how it was drawn: fraction, seed, by whom
    created: datetime = Field(sa_column=Column(DateTime, nullable=False))
