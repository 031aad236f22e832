"""Property-based fuzzing of the three services from their own OpenAPI documents
(schemathesis), with valid tokens, against the real services (the imaging service with a
real Orthanc as its PACS): no answer may be a server error. ``make test`` runs a bounded
pass; ``make fuzz`` (``FUZZ_EXAMPLES``, default 300 per operation) a longer one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.harness.gateway import GatewayServer
from tests.harness.imaging import ImagingServer
from tests.harness.orthanc import OrthancServer, orthanc_binary
from tests.harness.outcomes import OutcomesServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))


def _schemathesis(url: str, token: str, report: Path) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        "20261202",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)


@pytest.fixture(scope="module")
def services(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[str, str]]]:
    if orthanc_binary() is None:
        pytest.skip("Orthanc is not installed (run `make system-deps`)")
    root = tmp_path_factory.mktemp("fuzz")
    orthanc = OrthancServer(root / "orthanc").start()
    imaging = ImagingServer(root / "imaging", pacs_dicomweb_url=orthanc.dicomweb_url).start()
    outcomes = OutcomesServer(root / "outcomes").start()
    gateway = GatewayServer(
        root / "gateway", imaging_url=imaging.url, outcomes_url=outcomes.fhir_url
    ).start()
    try:
        yield {
            "imaging": (imaging.url, imaging.token("imaging.*")),
            "outcomes": (outcomes.url, outcomes.token("system/*.cruds")),
            "gateway": (
                gateway.url,
                gateway.token("gateway.read gateway.audit", role="clinician"),
            ),
        }
    finally:
        for server in (gateway, outcomes, imaging, orthanc):
            server.stop()


@pytest.mark.parametrize("service", ["imaging", "outcomes", "gateway"])
def test_no_input_makes_a_server_error(
    services: dict[str, tuple[str, str]], service: str, tmp_path: Path
) -> None:
    url, token = services[service]
    run = _schemathesis(url, token, tmp_path / "junit.xml")
    summary = [line for line in run.stdout.splitlines() if "generated" in line]
    print(service, summary)  # the figures the closing note quotes
    assert run.returncode == 0, run.stdout[-6000:]
    assert summary and "passed" in summary[-1]


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=25,
)
FHIR_KEYS = st.sampled_from(
    [
        "subject",
        "code",
        "status",
        "valueQuantity",
        "effectiveDateTime",
        "identifier",
        "item",
        "component",
        "extension",
        "partOf",
        "derivedFrom",
        "period",
        "name",
        "birthDate",
        "entry",
        "request",
        "resource",
        "questionnaire",
        "performer",
        "bodySite",
        "reasonCode",
    ]
)
RESOURCE = st.builds(
    lambda rtype, body: {"resourceType": rtype, **body},
    st.sampled_from(
        [
            "Patient",
            "Observation",
            "Procedure",
            "Encounter",
            "QuestionnaireResponse",
            "ImagingStudy",
            "Practitioner",
            "Bundle",
            "AuditEvent",
            "Nonsense",
        ]
    ),
    st.dictionaries(FHIR_KEYS, JSON, max_size=6),
)


def test_fhir_bodies_never_make_a_server_error(services: dict[str, tuple[str, str]]) -> None:
    """FHIR's OpenAPI says little about bodies: hypothesis writes hostile resources of
    every type and sends them as creates, updates, conditional updates and Bundle
    entries."""
    url, token = services["outcomes"]
    client = httpx.Client(
        base_url=f"{url}/fhir", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    seen: list[int] = []

    @settings(max_examples=EXAMPLES * 8, deadline=None, database=None)
    @given(resource=RESOURCE, how=st.sampled_from(["post", "put", "cput", "batch", "tx"]))
    def attempt(resource: dict[str, object], how: str) -> None:
        rtype = str(resource["resourceType"])
        if how == "post":
            response = client.post(f"/{rtype}", json=resource)
        elif how == "put":
            response = client.put(f"/{rtype}/fuzz-1", json=resource)
        elif how == "cput":
            response = client.put(f"/{rtype}", params={"identifier": "x|y"}, json=resource)
        else:
            kind = "batch" if how == "batch" else "transaction"
            entry = {"resource": resource, "request": {"method": "POST", "url": rtype}}
            response = client.post(
                "/", json={"resourceType": "Bundle", "type": kind, "entry": [entry]}
            )
        seen.append(response.status_code)
        assert response.status_code < 500, (how, resource, response.text[:300])

    attempt()
    client.close()
    print("fhir bodies", len(seen), "requests;", sum(s >= 500 for s in seen), "server errors")
