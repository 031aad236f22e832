"""Upstreams down or hanging: the gateway answers with what it has, or a clear 503, fast."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.gateway import GatewayServer
from tests.harness.imaging import ImagingServer
from tests.harness.net import free_port
from tests.harness.outcomes import OutcomesServer, post_cohort
from tools.demo.cohort import plan_patient

pytestmark = pytest.mark.integration


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung upstream)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_imaging_stopped_case_still_answers_with_a_warning(tmp_path: Path) -> None:
    imaging = ImagingServer(tmp_path / "imaging").start()
    with OutcomesServer(tmp_path / "outcomes") as outcomes:
        case_id = post_cohort(outcomes, [plan_patient(4)])[plan_patient(4).mrn]
        gateway = GatewayServer(
            tmp_path / "gateway", imaging_url=imaging.url, outcomes_url=outcomes.fhir_url
        ).start()
        try:
            with gateway.client(role="clinician") as client:
                assert client.get(f"/api/cases/{case_id}").json()["warnings"] == []
                imaging.stop()  # the imaging service goes down
                started = time.monotonic()
                response = client.get(f"/api/cases/{case_id}")
                elapsed = time.monotonic() - started
                body = response.json()
                assert response.status_code == 200 and elapsed < 5
                assert any(w.startswith("imaging unavailable") for w in body["warnings"])
                assert body["proms"] and body["imaging"]["pre"] is None
                summary = client.get("/api/cohort/summary", params={"refresh": "true"})
                assert summary.status_code == 200
                assert any("imaging unavailable" in w for w in summary.json()["warnings"])
                ready = client.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["checks"]["imaging"] != "ok"
                assert ready.json()["checks"]["outcomes"] == "ok"
        finally:
            gateway.stop()


def test_hung_outcomes_times_out_into_a_503(tmp_path: Path, silent_port: int) -> None:
    closed = free_port()  # nothing listens here: the imaging service is down too
    gateway = GatewayServer(
        tmp_path / "gateway",
        imaging_url=f"http://127.0.0.1:{closed}",
        outcomes_url=f"http://127.0.0.1:{silent_port}/fhir",
        read_timeout_seconds=1.0,
        connect_timeout_seconds=1.0,
    ).start()
    try:
        with gateway.client(role="researcher") as client:
            for path in ("/api/cases/abc", "/api/cohort/summary", "/api/export/cases.csv"):
                started = time.monotonic()
                response = client.get(path)
                assert time.monotonic() - started < 5, path
                assert response.status_code == 503, (path, response.text)
                body = response.json()
                assert body["service"] == "outcomes" and "timed out" in body["reason"]
                assert response.headers["retry-after"] == "30"
    finally:
        gateway.stop()
