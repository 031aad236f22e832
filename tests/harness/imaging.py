"""The real imaging service on loopback ports (uvicorn in a thread), for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.common.auth import Authenticator, AuthSettings
from services.imaging.app import create_app
from services.imaging.settings import ImagingSettings
from tests.harness.net import free_port
from tests.harness.server import ServiceHarness

TEST_KEY = "test-signing-key-" + "0123456789abcdef" * 2


class ImagingServer(ServiceHarness):
    """Start the imaging service (HTTP + DICOM) and stop it."""

    default_scope = "imaging.read imaging.write imaging.review imaging.admin"

    def __init__(self, data_dir: Path, **overrides: Any) -> None:
        values: dict[str, Any] = {
            "data_dir": data_dir,
            "http_host": "127.0.0.1",
            "http_port": free_port(),
            "dicom_host": "127.0.0.1",
            "dicom_port": free_port(),
            # Two SCP processes wherever the tests run (the default is one per core).
            "dicom_processes": 2,
            "study_quiet_seconds": 1.0,
            "completion_poll_seconds": 0.2,
            "auth": AuthSettings(secret_key=TEST_KEY),
        }
        values.update(overrides)
        self.settings = ImagingSettings(**values)
        self.app = create_app(self.settings)
        self.authenticator = Authenticator(self.settings.auth)
        self._serve()

    @property
    def dicom_port(self) -> int:
        return self.settings.dicom_port

    @property
    def ae_title(self) -> str:
        return self.settings.ae_title
