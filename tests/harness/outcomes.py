"""The real outcomes FHIR server on a loopback port (uvicorn in a thread)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.common.auth import Authenticator, AuthSettings
from services.outcomes.app import create_app
from services.outcomes.settings import OutcomesSettings
from tests.harness.imaging import TEST_KEY
from tests.harness.net import free_port
from tests.harness.server import ServiceHarness

ALL_SCOPES = "system/*.cruds"


class OutcomesServer(ServiceHarness):
    """Start the outcomes FHIR server and stop it; clients talk to ``/fhir``."""

    default_scope = ALL_SCOPES
    default_subject = "ehr-integration"
    api_path = "/fhir"
    extra_headers = {"Content-Type": "application/fhir+json"}

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
        self._serve()

    @property
    def fhir_url(self) -> str:
        return f"{self.url}/fhir"
