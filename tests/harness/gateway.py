"""The real research gateway on a loopback port, reading real imaging and outcomes services."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.common.auth import Authenticator, AuthSettings
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.harness.imaging import TEST_KEY
from tests.harness.net import free_port
from tests.harness.server import ServiceHarness

VIEWER_DIR = Path(__file__).resolve().parents[2] / "var" / "ohif"  # make viewer puts it here
PSEUDONYM_KEY = "test-pseudonym-key-" + "fedcba9876543210" * 2


class GatewayServer(ServiceHarness):
    """Start the gateway and stop it; ``client(role=...)`` calls it as that role."""

    default_scope = "gateway.read"
    default_subject = "dr-researcher"

    def __init__(
        self, data_dir: Path, *, imaging_url: str, outcomes_url: str, **overrides: Any
    ) -> None:
        values: dict[str, Any] = {
            "data_dir": data_dir,
            "http_port": free_port(),
            "imaging_url": imaging_url,
            "outcomes_url": outcomes_url,
            "pseudonym_key": PSEUDONYM_KEY,
            "auth": AuthSettings(secret_key=TEST_KEY),
            "viewer_dir": VIEWER_DIR,
        }
        values.update(overrides)
        self.settings = GatewaySettings(**values)
        self.app = create_app(self.settings)
        self.authenticator = Authenticator(self.settings.auth)
        self._serve()
