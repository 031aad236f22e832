"""Storage of the FHIR server: current resources, every version, search index rows,
conditional-create keys and the append-only audit trail."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime, Index, Text, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel


class OutcomesModel(SQLModel, registry=registry()):
    """Base of the FHIR store's tables: their own metadata, their own migrations."""


class ResourceRow(OutcomesModel, table=True):
    """The current version of a resource (content is its FHIR JSON)."""

    __tablename__ = "fhir_resource"

    pk: int | None = Field(default=None, primary_key=True)
    resource_type: str = Field(max_length=40)
    logical_id: str = Field(max_length=64)
    version_id: int
    last_updated: datetime = Field(sa_column=Column(DateTime, nullable=False))
    deleted: bool = False
    content: str = Field(sa_column=Column(Text, nullable=False))

    __table_args__ = (
        UniqueConstraint("resource_type", "logical_id", name="uq_resource_id"),
        Index("ix_resource_type_updated", "resource_type", "last_updated"),
        Index("ix_resource_type_pk", "resource_type", "pk"),  # type scans in page order
    )


class ResourceVersion(OutcomesModel, table=True):
    """Every version ever written (history, vread); content is null for a delete."""

    __tablename__ = "fhir_resource_version"

    pk: int | None = Field(default=None, primary_key=True)
    resource_type: str = Field(max_length=40)
    logical_id: str = Field(max_length=64)
    version_id: int
    last_updated: datetime = Field(sa_column=Column(DateTime, nullable=False))
    method: str = Field(max_length=8)
    content: str | None = Field(default=None, sa_column=Column(Text, nullable=True))

    __table_args__ = (
        UniqueConstraint("resource_type", "logical_id", "version_id", name="uq_version"),
        Index("ix_version_type_updated", "resource_type", "last_updated"),
    )


class SearchToken(OutcomesModel, table=True):
    __tablename__ = "fhir_search_token"

    pk: int | None = Field(default=None, primary_key=True)
    resource_pk: int = Field(foreign_key="fhir_resource.pk", index=True)
    resource_type: str = Field(max_length=40)
    param: str = Field(max_length=40)
    system: str | None = Field(default=None, max_length=255)
    code: str = Field(max_length=255)

    __table_args__ = (Index("ix_token_lookup", "resource_type", "param", "code", "system"),)


class SearchReference(OutcomesModel, table=True):
    __tablename__ = "fhir_search_reference"

    pk: int | None = Field(default=None, primary_key=True)
    resource_pk: int = Field(foreign_key="fhir_resource.pk", index=True)
    resource_type: str = Field(max_length=40)
    param: str = Field(max_length=40)
    target: str = Field(max_length=120)

    __table_args__ = (Index("ix_reference_lookup", "resource_type", "param", "target"),)


class SearchDate(OutcomesModel, table=True):
    __tablename__ = "fhir_search_date"

    pk: int | None = Field(default=None, primary_key=True)
    resource_pk: int = Field(foreign_key="fhir_resource.pk", index=True)
    resource_type: str = Field(max_length=40)
    param: str = Field(max_length=40)
    low: datetime = Field(sa_column=Column(DateTime, nullable=False))
    high: datetime = Field(sa_column=Column(DateTime, nullable=False))

    __table_args__ = (Index("ix_date_lookup", "resource_type", "param", "low"),)


class SearchString(OutcomesModel, table=True):
    __tablename__ = "fhir_search_string"

    pk: int | None = Field(default=None, primary_key=True)
    resource_pk: int = Field(foreign_key="fhir_resource.pk", index=True)
    resource_type: str = Field(max_length=40)
    param: str = Field(max_length=40)
    value: str = Field(max_length=255)

    __table_args__ = (Index("ix_string_lookup", "resource_type", "param", "value"),)


class ConditionalKey(OutcomesModel, table=True):
    """One row per (type, normalised If-None-Exist criteria): the database makes parallel
    identical conditional creates collide instead of both inserting."""

    __tablename__ = "fhir_conditional_key"

    pk: int | None = Field(default=None, primary_key=True)
    resource_type: str = Field(max_length=40)
    criteria: str = Field(max_length=512)
    resource_pk: int = Field(foreign_key="fhir_resource.pk", index=True)

    __table_args__ = (UniqueConstraint("resource_type", "criteria", name="uq_conditional"),)


class AuditRecord(OutcomesModel, table=True):
    """Append-only: who did what to which resource, when, with which outcome."""

    __tablename__ = "fhir_audit"

    pk: int | None = Field(default=None, primary_key=True)
    recorded: datetime = Field(sa_column=Column(DateTime, nullable=False, index=True))
    agent: str = Field(max_length=120)
    action: str = Field(max_length=1)  # C R U D E
    interaction: str = Field(max_length=32)
    resource_type: str | None = Field(default=None, max_length=40)
    resource_id: str | None = Field(default=None, max_length=64)
    patient: str | None = Field(default=None, max_length=120)
    outcome: int = 0  # 0 success, 4 minor failure, 8 serious failure
    status_code: int = 200
    method: str = Field(max_length=8)
    path: str = Field(max_length=255)
