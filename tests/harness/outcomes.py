"""The real outcomes FHIR server on a loopback port (uvicorn in a thread)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from services.common.auth import Authenticator, AuthSettings
from services.outcomes.app import create_app
from services.outcomes.settings import OutcomesSettings
from tests.harness.imaging import TEST_KEY
from tests.harness.net import free_port
from tests.harness.server import UvicornThread

ALL_SCOPES = "system/*.cruds"


class OutcomesServer:
    def __init__(self, data_dir: Path, **overrides: Any) -> None:
        values: dict[str, Any] = {
            "data_dir": data_dir,
            "http_port": free_port(),
            "auth": AuthSettings(secret_key=TEST_KEY),
        }
        values.update(overrides)
        self.settings = OutcomesSettings(**values)
        self.app = create_app(self.settings)
        self.authenticator = Authenticator(self.settings.auth)
        self._http = UvicornThread(self.app, self.settings.http_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    @property
    def fhir_url(self) -> str:
        return f"{self.url}/fhir"

    def token(self, scope: str = ALL_SCOPES, subject: str = "ehr-integration") -> str:
        return self.authenticator.issue_token(subject, scope)

    def client(self, scope: str = ALL_SCOPES, subject: str = "ehr-integration") -> httpx.Client:
        return httpx.Client(
            base_url=self.fhir_url,
            headers={
                "Authorization": f"Bearer {self.token(scope, subject)}",
                "Content-Type": "application/fhir+json",
            },
            timeout=60,
        )

    def start(self) -> OutcomesServer:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    def __enter__(self) -> OutcomesServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
