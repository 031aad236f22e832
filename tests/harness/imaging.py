"""The real imaging service on loopback ports (uvicorn in a thread), for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from services.common.auth import Authenticator, AuthSettings
from services.imaging.app import create_app
from services.imaging.settings import ImagingSettings
from tests.harness.net import free_port
from tests.harness.server import UvicornThread

TEST_KEY = "test-signing-key-" + "0123456789abcdef" * 2


class ImagingServer:
    """Start the imaging service (HTTP + DICOM) and stop it."""

    def __init__(self, data_dir: Path, **overrides: Any) -> None:
        values: dict[str, Any] = {
            "data_dir": data_dir,
            "http_host": "127.0.0.1",
            "http_port": free_port(),
            "dicom_host": "127.0.0.1",
            "dicom_port": free_port(),
            "study_quiet_seconds": 1.0,
            "completion_poll_seconds": 0.2,
            "auth": AuthSettings(secret_key=TEST_KEY),
        }
        values.update(overrides)
        self.settings = ImagingSettings(**values)
        self.app = create_app(self.settings)
        self.authenticator = Authenticator(self.settings.auth)
        self._http = UvicornThread(self.app, self.settings.http_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    @property
    def dicom_port(self) -> int:
        return self.settings.dicom_port

    @property
    def ae_title(self) -> str:
        return self.settings.ae_title

    def token(self, scope: str = "imaging.read imaging.write imaging.admin") -> str:
        return self.authenticator.issue_token("test-operator", scope)

    def client(self, scope: str = "imaging.read imaging.write imaging.admin") -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token(scope)}"},
            timeout=60,
        )

    def start(self) -> ImagingServer:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    def __enter__(self) -> ImagingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
