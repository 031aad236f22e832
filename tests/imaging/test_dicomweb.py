"""DICOMweb against the real service over HTTP: STOW-RS, QIDO-RS, WADO-RS, auth, bad input."""

from __future__ import annotations

import base64
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from services.common.auth import AuthSettings, BasicUser, hash_password
from tests.harness.imaging import TEST_KEY, ImagingServer
from tests.harness.net import wait_until
from tests.harness.series import SeriesSpec, iter_chunks, make_series, multipart_body, to_bytes

STOW_TYPE = 'multipart/related; type="application/dicom"; boundary={}'


def _stow(
    client: httpx.Client,
    body: bytes,
    *,
    boundary: str = "test-boundary",
    content_type: str | None = None,
    path: str = "/dicomweb/studies",
) -> httpx.Response:
    return client.post(
        path, content=body, headers={"Content-Type": content_type or STOW_TYPE.format(boundary)}
    )


def _dicomweb_client(server: ImagingServer) -> DICOMwebClient:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {server.token()}"
    return DICOMwebClient(url=f"{server.url}/dicomweb", session=session)


def test_stow_response_is_the_standard_dicom_json(imaging: ImagingServer) -> None:
    datasets = make_series(SeriesSpec(slices=3))
    with imaging.client() as client:
        response = _stow(client, multipart_body([to_bytes(d) for d in datasets]))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    payload = response.json()
    assert "00081198" not in payload
    items = payload["00081199"]["Value"]
    assert [i["00081155"]["Value"][0] for i in items] == [d.SOPInstanceUID for d in datasets]
    for item, ds in zip(items, datasets, strict=True):
        assert item["00081150"]["Value"] == [ds.SOPClassUID]
        assert item["00081190"]["Value"][0].endswith(
            f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )


def test_stow_accepts_unquoted_boundary_and_chunked_body(imaging: ImagingServer) -> None:
    datasets = make_series(SeriesSpec(slices=4))
    body = multipart_body([to_bytes(d) for d in datasets], boundary="b0undary")
    with imaging.client() as client:
        response = client.post(
            "/dicomweb/studies",
            content=iter_chunks(body, 1000),  # a generator: sent with chunked encoding
            headers={
                "Content-Type": "multipart/related; type=application/dicom; boundary=b0undary"
            },
        )
    assert response.status_code == 200, response.text
    assert len(response.json()["00081199"]["Value"]) == 4


def test_stow_to_a_study_url_fails_only_the_other_studys_instance(imaging: ImagingServer) -> None:
    ours = make_series(SeriesSpec(slices=2))
    other = make_series(SeriesSpec(slices=1))[0]
    study = ours[0].StudyInstanceUID
    body = multipart_body([to_bytes(ours[0]), to_bytes(other), to_bytes(ours[1])])
    with imaging.client() as client:
        response = _stow(client, body, path=f"/dicomweb/studies/{study}")
        assert response.status_code == 202
        payload = response.json()
        assert len(payload["00081199"]["Value"]) == 2
        failed = payload["00081198"]["Value"]
        assert len(failed) == 1
        assert failed[0]["00081155"]["Value"] == [other.SOPInstanceUID]
        assert failed[0]["00081197"]["Value"] == [0xA900]
        found = client.get("/dicomweb/instances").json()
    assert {f["00080018"]["Value"][0] for f in found} == {d.SOPInstanceUID for d in ours}


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"not multipart at all", "application/json", 415),
        (b"--x\r\n\r\n", 'multipart/related; type="application/dicom"', 400),  # no boundary
        (b"garbage without boundary", STOW_TYPE.format("x"), 400),
        (b"--x\r\nContent-Type: application/dicom\r\n\r\nDICM?", STOW_TYPE.format("x"), 400),
        (b"", STOW_TYPE.format("x"), 400),
        (b"--x--\r\n", STOW_TYPE.format("x"), 400),
        (b"--x\r\n\r\n\r\n--x--", 'multipart/related; type="image/jpeg"; boundary=x', 415),
    ],
)
def test_malformed_stow_bodies_get_a_clear_4xx(
    imaging: ImagingServer, body: bytes, content_type: str, status: int
) -> None:
    with imaging.client() as client:
        response = _stow(client, body, content_type=content_type)
    assert response.status_code == status
    assert response.json()["reason"]


def test_refused_parts_are_listed_with_their_reason(imaging: ImagingServer) -> None:
    good = to_bytes(make_series(SeriesSpec(slices=1))[0])
    truncated = Path(get_testdata_file("MR_truncated.dcm", download=False)).read_bytes()  # type: ignore[arg-type]
    no_meta = Path(get_testdata_file("no_meta.dcm", download=False)).read_bytes()  # type: ignore[arg-type]
    with imaging.client() as client:
        response = _stow(client, multipart_body([good, truncated, no_meta, b"hello"]))
        assert response.status_code == 202
        payload = response.json()
        assert len(payload["00081199"]["Value"]) == 1
        reasons = [f["00081197"]["Value"][0] for f in payload["00081198"]["Value"]]
        assert reasons == [0xC000, 0xC000, 0xC000]
        assert "Warning" in response.headers
        # Everything refused left nothing behind; the good instance is intact.
        assert len(client.get("/dicomweb/instances").json()) == 1


def test_oversized_upload_is_refused_with_413(
    imaging_factory: Callable[..., ImagingServer],
) -> None:
    server = imaging_factory(max_upload_bytes=50_000)
    body = multipart_body([to_bytes(d) for d in make_series(SeriesSpec(slices=8))])
    assert len(body) > 50_000
    with server.client() as client:
        declared = _stow(client, body)
        chunked = client.post(
            "/dicomweb/studies",
            content=iter_chunks(body, 4096),
            headers={"Content-Type": STOW_TYPE.format("test-boundary")},
        )
        assert client.get("/dicomweb/instances").json() == []
    assert declared.status_code == 413 and chunked.status_code == 413


def test_every_dicomweb_route_needs_authentication(imaging: ImagingServer) -> None:
    routes = [
        "/dicomweb/studies",
        "/dicomweb/series",
        "/dicomweb/instances",
        "/api/studies",
        "/dicomweb/studies/1.2.3",
        "/dicomweb/studies/1.2.3/metadata",
        "/api/events",
    ]
    with httpx.Client(base_url=imaging.url) as anonymous:
        for route in routes:
            assert anonymous.get(route).status_code == 401, route
        assert anonymous.post("/dicomweb/studies", content=b"").status_code == 401
        bad = anonymous.get("/dicomweb/studies", headers={"Authorization": "Bearer nonsense"})
        assert bad.status_code == 401
    with imaging.client(scope="imaging.read") as reader:
        assert reader.get("/dicomweb/studies").status_code == 200
        refused = _stow(reader, multipart_body([to_bytes(make_series(SeriesSpec(slices=1))[0])]))
        assert refused.status_code == 403


def test_http_basic_users_when_configured(imaging_factory: Callable[..., ImagingServer]) -> None:
    users = {"pacs": BasicUser(password_hash=hash_password("s3cret"), scope="imaging.write")}
    server = imaging_factory(auth=AuthSettings(secret_key=TEST_KEY, basic_users=users))
    body = multipart_body([to_bytes(make_series(SeriesSpec(slices=1))[0])])
    good = base64.b64encode(b"pacs:s3cret").decode()
    wrong = base64.b64encode(b"pacs:guess").decode()
    with httpx.Client(base_url=server.url) as client:
        ok = client.post(
            "/dicomweb/studies",
            content=body,
            headers={
                "Authorization": f"Basic {good}",
                "Content-Type": STOW_TYPE.format("test-boundary"),
            },
        )
        denied = client.post(
            "/dicomweb/studies",
            content=body,
            headers={
                "Authorization": f"Basic {wrong}",
                "Content-Type": STOW_TYPE.format("test-boundary"),
            },
        )
    assert ok.status_code == 200 and denied.status_code == 401


def test_qido_matching_and_paging(imaging: ImagingServer) -> None:
    a = make_series(SeriesSpec(slices=2, patient_id="MRN-A", study_date="20250110"))
    b = make_series(SeriesSpec(slices=3, patient_id="MRN-B", study_date="20260301", modality="MR"))
    with imaging.client() as client:
        assert _stow(client, multipart_body([to_bytes(d) for d in a + b])).status_code == 200
        by_patient = client.get("/dicomweb/studies", params={"PatientID": "MRN-B"}).json()
        assert [s["0020000D"]["Value"][0] for s in by_patient] == [b[0].StudyInstanceUID]
        assert by_patient[0]["00201208"]["Value"] == [3]
        assert by_patient[0]["00080061"]["Value"] == ["MR"]
        in_2025 = client.get("/dicomweb/studies", params={"StudyDate": "20250101-20251231"})
        assert [s["00100020"]["Value"][0] for s in in_2025.json()] == ["MRN-A"]
        by_tag = client.get("/dicomweb/studies", params={"00080061": "CT"}).json()
        assert [s["00100020"]["Value"][0] for s in by_tag] == ["MRN-A"]
        wildcard = client.get("/dicomweb/studies", params={"PatientName": "doe*"}).json()
        assert len(wildcard) == 2
        page = client.get("/dicomweb/studies", params={"limit": 1, "offset": 1}).json()
        assert len(page) == 1
        series = client.get(f"/dicomweb/studies/{a[0].StudyInstanceUID}/series").json()
        assert series[0]["0020000E"]["Value"] == [a[0].SeriesInstanceUID]
        ignored = client.get("/dicomweb/studies", params={"PatientWeight": "70"})
        assert ignored.status_code == 200 and "ignored" in ignored.headers["warning"]
        unknown = client.get("/dicomweb/studies", params={"NotAnAttribute": "1"})
        assert unknown.status_code == 400


def test_dicomweb_client_retrieves_what_was_stored(imaging: ImagingServer) -> None:
    datasets = make_series(SeriesSpec(slices=3))
    with imaging.client() as client:
        _stow(client, multipart_body([to_bytes(d) for d in datasets]))
    web = _dicomweb_client(imaging)
    study = datasets[0].StudyInstanceUID
    assert len(web.search_for_studies()) == 1
    retrieved = web.retrieve_study(study)
    assert sorted(d.SOPInstanceUID for d in retrieved) == sorted(d.SOPInstanceUID for d in datasets)
    assert retrieved[0].PixelData in {d.PixelData for d in datasets}
    instance = web.retrieve_instance(
        study, datasets[1].SeriesInstanceUID, datasets[1].SOPInstanceUID
    )
    assert instance.SOPInstanceUID == datasets[1].SOPInstanceUID
    metadata = web.retrieve_series_metadata(study, datasets[0].SeriesInstanceUID)
    assert len(metadata) == 3
    assert set(metadata[0]["7FE00010"]) == {"vr", "BulkDataURI"}  # pixels by reference
    assert metadata[0]["00100020"]["Value"] == ["MRN0001"]


def test_wado_transcodes_compressed_to_explicit_little_endian_on_request(
    imaging: ImagingServer,
) -> None:
    data = Path(get_testdata_file("MR_small_RLE.dcm", download=False)).read_bytes()  # type: ignore[arg-type]
    with imaging.client() as client:
        stow = _stow(client, multipart_body([data]))
        assert stow.status_code == 200
    web = _dicomweb_client(imaging)
    study = web.search_for_studies()[0]["0020000D"]["Value"][0]
    native = web.retrieve_study(study, media_types=(("application/dicom", "1.2.840.10008.1.2.1"),))
    as_stored = web.retrieve_study(study, media_types=(("application/dicom", "*"),))
    assert native[0].file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert as_stored[0].file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    assert (native[0].pixel_array == as_stored[0].pixel_array).all()
    with imaging.client() as client:
        refused = client.get(
            f"/dicomweb/studies/{study}",
            headers={
                "Accept": 'multipart/related; type="application/dicom"; '
                "transfer-syntax=1.2.840.10008.1.2.4.50"
            },
        )
    assert refused.status_code == 406


def test_unknown_resources_are_404(imaging: ImagingServer) -> None:
    with imaging.client() as client:
        assert client.get("/dicomweb/studies/1.2.3").status_code == 404
        assert client.get("/dicomweb/studies/1.2.3/metadata").status_code == 404
        assert client.get("/api/studies/1.2.3").status_code == 404


def test_real_vendor_jpeg2000_series_is_stored_as_sent_and_completes(
    imaging: ImagingServer,
) -> None:
    """A de-identified Siemens export: JPEG 2000 lossless, and emptied Study, Series,
    SOP Instance and SOP Class UIDs. As exported it is refused with the reason; with UIDs
    restored (as a re-identifying gateway would) it is stored byte for byte and completes."""
    folder = Path(__file__).resolve().parents[1] / "data" / "totalsegmentator-ct"
    files = sorted((folder / "example_ct_dicom").iterdir())
    with imaging.client() as client:
        refused = _stow(client, multipart_body([f.read_bytes() for f in files]))
        assert refused.status_code == 409
        assert "missing or malformed StudyInstanceUID" in refused.headers["warning"]

        study, series = generate_uid(), generate_uid()
        parts = []
        for path in files:
            ds = dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            parts.append(buffer.getvalue())
        response = _stow(client, multipart_body(parts))
        assert response.status_code == 200, response.text

        def complete() -> bool:
            state = client.get(f"/api/studies/{study}").json()
            return bool(state.get("state") == "complete" and state.get("instances") == 20)

        assert wait_until(complete, 20, 0.2)
        found = client.get(f"/dicomweb/studies/{study}/instances").json()
    assert {i["00083002"]["Value"][0] for i in found} == {"1.2.840.10008.1.2.4.90"}
    assert {i["00080016"]["Value"][0] for i in found} == {"1.2.840.10008.5.1.4.1.1.2"}
