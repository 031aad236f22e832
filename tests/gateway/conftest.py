"""A real stack for the gateway's tests: the imaging service analysing phantom studies sent
by C-STORE (dcmtk), the outcomes FHIR server fed by fhirpy, and the gateway reading both.

Built once for the package (rendering and analysing four phantoms takes about half a minute).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.common.auth import AuthSettings, BasicUser, hash_password
from services.gateway.privacy import Pseudonymizer
from tests.conftest import _require
from tests.harness.dcmtk import have_dcmtk, storescu
from tests.harness.gateway import PSEUDONYM_KEY, GatewayServer
from tests.harness.imaging import TEST_KEY, ImagingServer
from tests.harness.net import wait_until
from tests.harness.outcomes import OutcomesServer, post_cohort
from tools.demo.cohort import PatientPlan, phantom_specs, plan_patient
from tools.phantom import write_phantom

RESEARCHER_PASSWORD = "correct horse battery staple"


@dataclass
class Stack:
    imaging: ImagingServer
    outcomes: OutcomesServer
    gateway: GatewayServer
    plans: list[PatientPlan]
    truth: dict[str, dict[str, Any]]  # MRN -> {"pre": truth, "post": truth}
    cases: dict[str, str]  # MRN -> case id (Procedure id)

    def case_id(self, mrn: str, role: str) -> str:
        """How the role names the patient's case: researchers by its pseudonym."""
        procedure = self.cases[mrn]
        if role != "researcher":
            return procedure
        return Pseudonymizer(PSEUDONYM_KEY.encode()).case(procedure)


def _analysed(imaging: ImagingServer, count: int) -> bool:
    with imaging.client() as client:
        items = client.get("/api/results").json()["items"]
    return len(items) >= count and all(i["analysis_state"] in ("done", "failed") for i in items)


@contextmanager
def running_stack(
    root: Path, patients: int, users: dict[str, BasicUser], **gateway: Any
) -> Iterator[Stack]:
    """The three services with the first ``patients`` demo patients (CT and MR phantoms
    sent by C-STORE, their surgeries in FHIR), the gateway started once all are analysed."""
    _require(have_dcmtk(), "dcmtk (storescu, echoscu)")
    plans = [plan_patient(i) for i in range(patients)]
    imaging = ImagingServer(root / "imaging").start()
    outcomes = OutcomesServer(root / "outcomes").start()
    server: GatewayServer | None = None
    try:
        truth: dict[str, dict[str, Any]] = {}
        imaged = plans[:2]  # the third patient (if any) has no imaging
        for plan in imaged:
            pre, post = phantom_specs(
                plan,
                pixel_spacing=1.2 if plan.modality == "CT" else None,
                slice_spacing=1.5 if plan.modality == "CT" else None,
            )
            truth[plan.mrn] = {}
            for name, spec in (("pre", pre), ("post", post)):
                folder = root / f"{plan.mrn}-{name}"
                truth[plan.mrn][name] = write_phantom(spec, folder)
                sent = storescu(imaging.dicom_port, imaging.ae_title, sorted(folder.glob("*.dcm")))
                assert sent.returncode == 0, sent.stderr
        cases = post_cohort(outcomes, plans)
        count = 2 * len(imaged)
        assert wait_until(lambda: _analysed(imaging, count), timeout=240, interval=1.0)
        # Started once the data is in: its first cohort snapshot is loaded at start-up.
        server = GatewayServer(
            root / "gateway",
            imaging_url=imaging.url,
            outcomes_url=outcomes.fhir_url,
            auth=AuthSettings(secret_key=TEST_KEY, basic_users=users),
            **gateway,
        ).start()
        yield Stack(imaging, outcomes, server, plans, truth, cases)
    finally:
        if server is not None:
            server.stop()
        outcomes.stop()
        imaging.stop()


def basic_user(password: str, role: str, scope: str = "gateway.read") -> BasicUser:
    return BasicUser(password_hash=hash_password(password, rounds=1000), scope=scope, role=role)


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Patient 0: foraminal (CT), patient 1: central (MR), patient 2: foraminal, no imaging.
    users = {"ada": basic_user(RESEARCHER_PASSWORD, "researcher")}
    with running_stack(tmp_path_factory.mktemp("stack"), 3, users) as built:
        yield built
