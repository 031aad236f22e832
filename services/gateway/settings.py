"""Gateway configuration (environment prefix ``GATEWAY_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.auth import AuthSettings
from services.common.db import sqlite_url_for
from services.common.fhir import codes


class GatewaySettings(BaseSettings):
    """Every knob of the research gateway; embedded defaults need no server."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    public_base_url: str | None = None  # base of the links it returns; derived if unset
    data_dir: Path = Path("var/gateway")
    database_url: str | None = None  # the audit trail; default SQLite in data_dir

    # Upstreams (their public APIs only)
    imaging_url: str = "http://127.0.0.1:8001"
    # The imaging service's IMAGING_PUBLIC_BASE_URL when it has one: its links in DICOM JSON
    # start with it, and the viewer's relay points them at itself.
    imaging_public_url: str | None = None
    outcomes_url: str = "http://127.0.0.1:8002/fhir"
    # Credentials for the upstream calls. Unset: the gateway signs its own short-lived
    # integration token with the shared AUTH key (all services configured alike).
    imaging_token: SecretStr | None = None
    outcomes_token: SecretStr | None = None
    connect_timeout_seconds: float = 2.0
    read_timeout_seconds: float = 10.0
    max_connections: int = 20

    # The cohort view is a snapshot of both upstreams, refreshed in the background when
    # older than this; every cohort answer says how old it is.
    cohort_max_age_seconds: float = 60.0
    cohort_warm_up: bool = True  # load the first snapshot at start-up, in the background

    # Privacy
    pseudonym_key: SecretStr | None = None  # >= 32 bytes; default: the key file below
    pseudonym_key_file: Path = Path("var/secrets/pseudonym.key")
    max_date_shift_days: int = Field(default=180, ge=1, le=3650)
    mrn_system: str = codes.MRN_SYSTEM_DEFAULT  # the FHIR identifier system of the MRN

    # Browser sessions of the dashboard (the bearer token in an HttpOnly cookie)
    session_cookie: str = "gateway_session"
    session_ttl_seconds: int = 8 * 3600
    secure_cookies: bool = False  # set true behind HTTPS

    # The OHIF viewer (make viewer installs the pinned build here) and the link the case
    # page offers per study: the gateway's /viewer/, or the hospital's own PACS viewer.
    viewer_dir: Path = Path("var/ohif")
    viewer_url_template: str = "/viewer/viewer?StudyInstanceUIDs={study_instance_uid}"

    @field_validator("viewer_url_template")
    @classmethod
    def _one_placeholder(cls, value: str) -> str:
        try:
            value.format(study_instance_uid="1.2.3")
        except (KeyError, IndexError, ValueError):
            raise ValueError("viewer_url_template may only use {study_instance_uid}") from None
        return value

    log_level: str = "INFO"
    auth: AuthSettings = Field(default_factory=AuthSettings)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or sqlite_url_for(self.data_dir / "gateway.db")
