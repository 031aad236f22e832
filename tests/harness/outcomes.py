"""The real outcomes FHIR server on a loopback port (uvicorn in a thread)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fhirpy import SyncFHIRClient

from services.common.auth import Authenticator, AuthSettings
from services.outcomes.app import create_app
from services.outcomes.settings import OutcomesSettings
from tests.harness.imaging import TEST_KEY
from tests.harness.net import free_port
from tests.harness.server import ServiceHarness
from tools.demo.cohort import PatientPlan, surgeon_resources, transaction

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


def post_cohort(outcomes: OutcomesServer, plans: list[PatientPlan]) -> dict[str, str]:
    """Post the surgeons, then each patient as one transaction, with fhirpy.

    Returns the case id (the Procedure's id) of each MRN.
    """
    client = SyncFHIRClient(outcomes.fhir_url, authorization=f"Bearer {outcomes.token()}")
    surgeons = []
    for resource in surgeon_resources():
        saved = client.resource("Practitioner", **resource)
        saved.save()
        surgeons.append(f"Practitioner/{saved.id}")
    cases = {}
    for plan in plans:
        response = client.execute("", method="post", data=transaction(plan, surgeons))
        locations = [e["response"]["location"] for e in response["entry"]]
        procedure = next(loc for loc in locations if "/Procedure/" in loc)
        cases[plan.mrn] = procedure.split("/Procedure/")[1].split("/")[0]
    return cases
