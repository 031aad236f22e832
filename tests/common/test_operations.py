"""Every service answers /healthz, /readyz and /metrics the same way, without a token,
and its metrics name route templates, never identifiers."""

from __future__ import annotations

import httpx
import pytest

from services.common.fhir import builders
from tests.harness.imaging import ImagingServer
from tests.harness.outcomes import OutcomesServer

pytestmark = pytest.mark.integration


def test_outcomes_operations(outcomes: OutcomesServer) -> None:
    with outcomes.client() as client:
        created = client.post("/Patient", json=builders.patient("MRN-OPS-1"))
        assert created.status_code == 201
        assert client.get(f"/Patient/{created.json()['id']}").status_code == 200
    assert httpx.get(f"{outcomes.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{outcomes.url}/readyz")
    assert ready.status_code == 200 and ready.json() == {
        "ready": True,
        "checks": {"database": "ok"},
    }
    metrics = httpx.get(f"{outcomes.url}/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'service="outcomes"' in metrics.text
    assert 'route="/fhir/{resource_type}/{logical_id}"' in metrics.text
    assert created.json()["id"] not in metrics.text and "MRN-OPS-1" not in metrics.text


def test_imaging_operations(imaging: ImagingServer) -> None:
    ready = httpx.get(f"{imaging.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "storage": "ok", "dicom": "ok"}
    with imaging.client() as client:
        assert client.get("/api/studies", params={"PatientID": "X"}).status_code == 200
    text = httpx.get(f"{imaging.url}/metrics").text
    for name in (
        "imaging_instances_received_total",
        "imaging_studies_completed_total",
        "imaging_analysis_duration_seconds",
        "imaging_queue_depth",
        "imaging_fhir_requests_total",
        "http_requests_total",
    ):
        assert name in text, name
    assert 'imaging_queue_depth{state="queued"} 0.0' in text
