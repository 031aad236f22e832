"""Celery analysis workers as real processes (``python -m services.imaging worker``),
configured by environment exactly as a deployment would configure them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from services.imaging.settings import ImagingSettings
from tests.harness.imaging import TEST_KEY
from tests.harness.net import wait_until


class CeleryWorker:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = {**os.environ, **env}
        self.log = log_dir / f"worker-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> CeleryWorker:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.imaging", "worker", "--concurrency", "1"],
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() takes its children too
        )
        if not wait_until(lambda: b"ready." in self.log.read_bytes() or not self.alive(), 60, 0.2):
            raise RuntimeError(f"worker {self.name} did not start; see {self.log}")
        if not self.alive():
            raise RuntimeError(f"worker {self.name} exited; see {self.log}")
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes: a machine that dies mid-job."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM: Celery's warm shutdown (the running task finishes)."""
        if self.alive():
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def worker_env(s: ImagingSettings, broker_url: str, visibility: int) -> dict[str, str]:
    """The environment a deployment gives a worker of this imaging service."""
    return {
        "IMAGING_QUEUE": "celery",
        "IMAGING_BROKER_URL": broker_url,
        "IMAGING_BROKER_VISIBILITY_TIMEOUT_SECONDS": str(visibility),
        "IMAGING_RETRY_BACKOFF_SECONDS": "1",
        "IMAGING_DATABASE_URL": s.resolved_database_url,
        "IMAGING_DATA_DIR": str(s.data_dir),
        "IMAGING_RESULTS_DESTINATION": s.results_destination,
        "IMAGING_RESULTS_DICOM_HOST": s.results_dicom_host or "",
        "IMAGING_RESULTS_DICOM_PORT": str(s.results_dicom_port),
        "IMAGING_RESULTS_CALLED_AET": s.results_called_aet,
        "IMAGING_RESULTS_STOW_URL": s.results_stow_url or "",
        "IMAGING_RESULTS_KEY_IMAGES": str(s.results_key_images).lower(),
        "IMAGING_PACS_DICOMWEB_URL": s.pacs_dicomweb_url or "",
        "IMAGING_FHIR_URL": s.fhir_url or "",
        "AUTH_SECRET_KEY": TEST_KEY,
        "IMAGING_LOG_LEVEL": "INFO",
    }
