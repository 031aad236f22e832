"""Outcomes service configuration (environment prefix ``OUTCOMES_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.auth import AuthSettings
from services.common.db import sqlite_url_for
from services.common.fhir import codes


class OutcomesSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTCOMES_", extra="ignore")

    http_host: str = "127.0.0.1"
    http_port: int = 8002
    data_dir: Path = Path("var/outcomes")
    database_url: str | None = None  # default: SQLite in data_dir
    public_base_url: str | None = None  # base of fullUrl/Location; derived if unset
    max_body_bytes: int = 50 * 1024**2
    workers: int = 1  # HTTP worker processes (uvicorn); each has its own connection pool
    log_level: str = "INFO"
    mrn_system: str = codes.MRN_SYSTEM_DEFAULT  # identifier system of the registry's MRNs
    registry_mapping: Path | None = None  # TOML mapping of the registry export; None: KEOPS
    auth: AuthSettings = Field(default_factory=AuthSettings)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or sqlite_url_for(self.data_dir / "outcomes.db")
