"""The gateway's own table: the audit trail (it stores no clinical data)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime
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
