"""Bad input answered with a precise 4xx, never a 500, on the three real services: the
inputs that once caused server errors (integers past 2^63, dates at the calendar's edge,
superscript digits, JSON nested 100,000 deep, Bundles of the wrong shape, non-UTF-8 and
oversized forms, RFC 2231 parameters), each on every route it reaches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from services.common.fhir import builders as b
from tests.harness.gateway import GatewayServer
from tests.harness.imaging import ImagingServer
from tests.harness.outcomes import OutcomesServer
from tests.harness.series import SeriesSpec, make_series, multipart_body, to_bytes

pytestmark = pytest.mark.integration
BIG = str(2**63)
EDGE_DATES = ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "9999-12-31")


class Stack:
    def __init__(self, root: Path) -> None:
        self.imaging = ImagingServer(root / "imaging").start()
        self.outcomes = OutcomesServer(root / "outcomes").start()
        self.gateway = GatewayServer(
            root / "gateway",
            imaging_url=self.imaging.url,
            outcomes_url=self.outcomes.fhir_url,
            cohort_warm_up=False,
        ).start()

    def close(self) -> None:
        for server in (self.gateway, self.outcomes, self.imaging):
            server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("hostile"))
    yield s
    s.close()


def _fresh(client: httpx.Client) -> httpx.Client:
    """A new connection for each hostile request: one answer never depends on another."""
    return httpx.Client(base_url=client.base_url, headers=client.headers, timeout=60)


@pytest.mark.parametrize(
    "path",
    [
        "/dicomweb/series?SeriesNumber=abc",
        "/dicomweb/instances?InstanceNumber=x1",
        "/dicomweb/studies?StudyDate=2020-",
        "/dicomweb/studies?StudyDate=abcdefgh",
        f"/dicomweb/studies?limit={BIG}",
        f"/dicomweb/studies?offset={BIG}",
        "/dicomweb/studies?offset=-1",
        f"/api/events?after={BIG}",
        f"/api/studies?offset={BIG}",
        f"/api/studies?limit={BIG}",
    ],
)
def test_imaging_query_values_get_a_4xx(stack: Stack, path: str) -> None:
    with _fresh(stack.imaging.client()) as client:
        response = client.get(path)
    assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
    assert response.json()["reason"]


def test_an_open_date_range_matches_every_date(stack: Stack) -> None:
    with _fresh(stack.imaging.client()) as client:
        assert client.get("/dicomweb/studies?StudyDate=-").status_code == 200


def test_stow_with_rfc2231_parameters_is_understood(stack: Stack) -> None:
    body = multipart_body([to_bytes(make_series(SeriesSpec(slices=1))[0])], boundary="b2231")
    media = "multipart/related; type*=utf-8''application%2Fdicom; boundary*=''b2231"
    with _fresh(stack.imaging.client()) as client:
        response = client.post("/dicomweb/studies", content=body, headers={"Content-Type": media})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "path",
    [
        f"/Observation?_offset={BIG}",
        f"/Observation?_count={BIG}",
        f"/AuditEvent?_offset={BIG}",
        "/Observation/abc/_history/\u00b2",
        f"/Observation/abc/_history/{BIG}",
    ],
)
def test_fhir_paging_and_versions_get_a_400(stack: Stack, path: str) -> None:
    with _fresh(stack.outcomes.client("system/*.cruds")) as client:
        response = client.get(path)
    assert response.status_code in (400, 404), (path, response.status_code)
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("date", EDGE_DATES)
def test_dates_at_the_calendars_edge_are_stored_and_searched(stack: Stack, date: str) -> None:
    with _fresh(stack.outcomes.client("system/*.cruds")) as client:
        pid = client.post("/Patient", json=b.patient("EDGE")).json()["id"]
        observation = b.measurement(f"Patient/{pid}", "odi", 30, effective=date)
        assert client.post("/Observation", json=observation).status_code == 201
        again = client.post(
            "/Observation", json=observation, headers={"If-None-Exist": urlencode({"date": date})}
        )
        assert again.status_code in (200, 201, 412)
        for prefix in ("", "ge", "lt"):
            found = client.get("/Observation", params={"date": prefix + date})
            assert found.status_code == 200, found.text


def test_fhir_bodies_of_the_wrong_shape_get_a_400(stack: Stack) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    bundles = [
        {"resourceType": "Bundle", "type": "transaction", "entry": "abc"},
        {"resourceType": "Bundle", "type": "batch", "entry": 5},
        {"resourceType": "Bundle", "type": "transaction", "entry": [None]},
        {"resourceType": "Bundle", "type": "transaction", "entry": [1]},
        [1, 2, 3],
    ]
    fhir = {"Content-Type": "application/fhir+json"}
    with _fresh(stack.outcomes.client("system/*.cruds")) as client:
        assert client.post("/Patient", content=deep, headers=fhir).status_code == 400
        nested = '{"resourceType":"Patient","extension":' + "[" * 5000 + "]" * 5000 + "}"
        assert client.post("/Patient", content=nested, headers=fhir).status_code == 400
        for bundle in bundles:
            assert client.post("/", json=bundle).status_code == 400, bundle
        batch = client.post("/", json={"resourceType": "Bundle", "type": "batch", "entry": [1]})
        assert batch.status_code == 200
        assert batch.json()["entry"][0]["response"]["status"].startswith("400")
        pid = client.post("/Patient", json=b.patient("ETAG")).json()["id"]
        stale = client.put(
            f"/Patient/{pid}",
            json=b.patient("ETAG") | {"id": pid},
            headers={"If-Match": 'W/"\xb2"'.encode("latin-1")},  # type: ignore[dict-item]
        )
        assert stale.status_code == 400
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert (
            client.post("/Patient/_search", content=b"name=\xff\xfe", headers=form).status_code
            == 400
        )
        huge = b"name=" + b"a" * 20_000_000
        assert client.post("/Patient/_search", content=huge, headers=form).status_code == 400


@pytest.mark.parametrize("after", [BIG, f"-{BIG}", "abc"])
def test_gateway_audit_paging_gets_a_422(stack: Stack, after: str) -> None:
    client = stack.gateway.client("gateway.audit gateway.read", role="clinician")
    with _fresh(client) as fresh:
        assert fresh.get("/api/audit", params={"after": after}).status_code == 422
