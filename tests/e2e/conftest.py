"""The whole hospital picture on loopback, with real servers only:

    storescu → Orthanc (the PACS, deploy/orthanc config + Lua auto-routing)
      → C-STORE of the post-op study → imaging (SCP) → prior fetch over DICOMweb from Orthanc
      → analysis (embedded threads, or Celery workers on Redis with PostgreSQL)
      → SR back to Orthanc (STOW-RS or C-STORE) and Observations to the outcomes FHIR server
      → the gateway's case.

The EHR's part (surgery, outcomes) is posted first with fhirpy, as in the hospital.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _require
from tests.harness.dcmtk import have_dcmtk
from tests.harness.gateway import GatewayServer
from tests.harness.imaging import ImagingServer
from tests.harness.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary
from tests.harness.outcomes import OutcomesServer
from tests.harness.postgres import PostgresServer
from tests.harness.redis import RedisServer, redis_binary
from tests.harness.workers import CeleryWorker, worker_env
from tools.demo.cohort import PatientPlan


@dataclass
class Hospital:
    orthanc: OrthancServer
    imaging: ImagingServer
    outcomes: OutcomesServer
    gateway: GatewayServer
    root: Path
    workers: list[CeleryWorker] = field(default_factory=list)
    worker_env: dict[str, str] = field(default_factory=dict)
    plans: list[PatientPlan] = field(default_factory=list)

    def add_worker(self, name: str) -> CeleryWorker:
        worker = CeleryWorker(name, self.worker_env, self.root / "logs").start()
        self.workers.append(worker)
        return worker


@pytest.fixture
def hospital_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Hospital]]:
    """Build the stack in ``embedded`` (SQLite, threads, STOW-RS back) or ``celery``
    (PostgreSQL, Redis, Celery worker processes, C-STORE back) mode."""
    _require(have_dcmtk(), "dcmtk (storescu, echoscu)")
    _require(orthanc_binary() is not None, "Orthanc")
    _require(dicomweb_plugin() is not None, "the Orthanc DICOMweb plugin")
    stops: list[Callable[[], None]] = []

    def build(mode: str, *, workers: int = 2, visibility: int = 3600) -> Hospital:
        pg: PostgresServer | None = None
        redis: RedisServer | None = None
        if mode == "celery":
            _require(redis_binary() is not None, "redis-server")
            pg = request.getfixturevalue("postgres")
            redis = RedisServer().start()
            stops.append(redis.stop)
        outcomes = OutcomesServer(
            tmp_path / "outcomes",
            **({"database_url": pg.fresh_database("e2e_outcomes")} if pg else {}),
        ).start()
        stops.append(outcomes.stop)
        orthanc = OrthancServer(tmp_path / "orthanc", autoroute=True, stable_age=1)
        imaging_options: dict[str, Any] = {
            "pacs_dicomweb_url": orthanc.dicomweb_url,
            "prior_fetch_enabled": True,
            "fhir_url": outcomes.fhir_url,
            "delivery_backoff_seconds": 1.0,
        }
        if mode == "celery":
            assert pg is not None and redis is not None
            imaging_options |= {
                "queue": "celery",
                "broker_url": redis.url,
                "broker_visibility_timeout_seconds": visibility,
                "database_url": pg.fresh_database("e2e_imaging"),
                "results_destination": "cstore",
                "results_key_images": True,
                "results_dicom_host": "127.0.0.1",
                "results_dicom_port": orthanc.dicom_port,
                "results_called_aet": orthanc.aet,
            }
        else:
            imaging_options["results_destination"] = "stow"
        imaging = ImagingServer(tmp_path / "imaging", **imaging_options)
        orthanc.modalities = {"spineimg": [imaging.ae_title, "127.0.0.1", imaging.dicom_port]}
        orthanc.start()
        stops.append(orthanc.stop)
        imaging.start()
        stops.append(imaging.stop)
        gateway = GatewayServer(
            tmp_path / "gateway",
            imaging_url=imaging.url,
            outcomes_url=outcomes.fhir_url,
            cohort_warm_up=False,
            **({"database_url": pg.fresh_database("e2e_gateway")} if pg else {}),
        ).start()
        stops.append(gateway.stop)
        hospital = Hospital(orthanc, imaging, outcomes, gateway, tmp_path)
        if mode == "celery":
            assert redis is not None
            hospital.worker_env = worker_env(imaging.settings, redis.url, visibility)
            for n in range(workers):
                hospital.add_worker(f"w{n + 1}")
            stops.append(lambda: [w.stop() for w in hospital.workers])
        return hospital

    yield build
    for stop in reversed(stops):
        stop()
