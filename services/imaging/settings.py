"""Imaging service configuration (environment prefix ``IMAGING_``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.auth import AuthSettings
from services.common.db import sqlite_url_for
from services.common.fhir import codes


def default_dicom_processes() -> int:
    """One SCP process per core, at most four: a process receives what one core runs."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


class ImagingSettings(BaseSettings):
    """Every knob of the imaging service; embedded defaults need no server."""

    model_config = SettingsConfigDict(env_prefix="IMAGING_", extra="ignore")

    # Network endpoints
    http_host: str = "127.0.0.1"
    http_port: int = 8001
    dicom_host: str = "0.0.0.0"  # noqa: S104 - a DICOM SCP listens for the PACS
    dicom_port: int = 11112
    ae_title: str = "SPINEIMG"
    public_base_url: str | None = Field(
        default=None, description="Base URL used in RetrieveURL (00081190); derived if unset"
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Web origins (scheme://host:port) whose pages may call DICOMweb; "
        "empty = no cross-origin access",
    )

    # DICOM association policy
    allowed_calling_aets: list[str] = Field(
        default_factory=list, description="Calling AE titles allowed; empty = accept all"
    )
    max_associations: int = 16  # for the service, whatever process holds them
    dicom_processes: int = Field(
        default_factory=default_dicom_processes,
        ge=1,
        le=32,
        description="SCP processes serving the DICOM port (the listening one hands each "
        "association to the least busy); default: one per core, at most 4",
    )
    max_pdu_size: int = 0  # 0 = unlimited: fewer P-DATA round trips for large images
    dimse_timeout_seconds: float = 60.0
    network_timeout_seconds: float = 60.0

    # Storage
    data_dir: Path = Path("var/imaging")
    database_url: str | None = None  # default: SQLite in data_dir
    max_upload_bytes: int = 2 * 1024**3
    max_instance_bytes: int = 1024**3

    # Study completeness
    study_quiet_seconds: float = 30.0
    completion_poll_seconds: float = 1.0
    slice_gap_tolerance: float = 0.5  # a step > (1 + tolerance) x the median step is a gap

    # Pulling from the PACS: DICOMweb (QIDO/WADO) or DIMSE (C-FIND, then C-GET or C-MOVE)
    pacs_protocol: Literal["dicomweb", "dimse"] = "dicomweb"
    pacs_dicomweb_url: str | None = None
    pacs_dicom_host: str | None = None
    pacs_dicom_port: int = 104
    pacs_called_aet: str = "PACS"
    pacs_retrieve: Literal["get", "move"] = "get"  # C-MOVE: the PACS must know our AE
    pacs_username: str | None = None
    pacs_password: SecretStr | None = None
    pacs_bearer_token: SecretStr | None = None
    pacs_timeout_seconds: float = 30.0
    prior_fetch_enabled: bool = False
    # Analysis of complete studies: a persistent queue in the index, in-process workers.
    analysis_enabled: bool = True
    analysis_workers: int = Field(default=1, ge=0, le=16)
    analysis_max_attempts: int = Field(default=3, ge=1, le=10)
    analysis_poll_seconds: float = 0.5
    prior_lookback_days: int = 3 * 365
    # The retrospective cohort's retrieval (services.imaging.intake.cohort)
    cohort_pre_days: int = Field(default=180, ge=0, le=3650)
    cohort_post_days: int = Field(default=365, ge=0, le=3650)
    cohort_min_instances: int = Field(default=20, ge=1)
    cohort_concurrency: int = Field(default=1, ge=1, le=16)
    cohort_per_minute: float = Field(default=0.0, ge=0)  # studies per minute; 0: unpaced
    prior_modalities: list[str] = Field(default_factory=lambda: ["CT", "MR"])

    # Where analysis jobs run: a queue engine of services.imaging.jobs.queue.ENGINES,
    # in-process threads (embedded) or Celery workers (celery).
    queue: str = "embedded"
    broker_url: str = "redis://127.0.0.1:6379/0"
    # Longer than the slowest analysis, or Redis hands a running job to a second worker.
    broker_visibility_timeout_seconds: int = Field(default=3600, ge=10)
    retry_backoff_seconds: float = Field(default=5.0, ge=0)
    worker_concurrency: int = Field(default=1, ge=1, le=64)
    worker_metrics_port: int | None = None  # a worker's own Prometheus endpoint

    # Results going out: the SR (and key images) to the PACS, the metrics to the FHIR store.
    results_destination: Literal["none", "stow", "cstore"] = "none"
    results_stow_url: str | None = None  # default: pacs_dicomweb_url
    results_dicom_host: str | None = None
    results_dicom_port: int = 104
    results_called_aet: str = "PACS"
    results_key_images: bool = False  # key images as Secondary Capture too
    fhir_url: str | None = None  # the outcomes service's FHIR base; unset = not posted
    fhir_token: SecretStr | None = None  # else minted with the shared key
    fhir_timeout_seconds: float = 30.0
    mrn_system: str = codes.MRN_SYSTEM_DEFAULT  # FHIR identifier system of PatientID
    delivery_max_attempts: int = Field(default=8, ge=1, le=50)
    delivery_backoff_seconds: float = Field(default=10.0, ge=0)

    log_level: str = "INFO"

    auth: AuthSettings = Field(default_factory=AuthSettings)

    @field_validator("queue")
    @classmethod
    def _known_engine(cls, name: str) -> str:
        from services.imaging.jobs.queue import ENGINES

        if name not in ENGINES:
            raise ValueError(f"unknown queue engine '{name}' (known: {', '.join(ENGINES)})")
        return name

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def key_images_dir(self) -> Path:
        return self.data_dir / "key-images"

    @property
    def stow_url(self) -> str | None:
        return self.results_stow_url or self.pacs_dicomweb_url

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or sqlite_url_for(self.data_dir / "imaging.db")
