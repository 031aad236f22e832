"""What a web viewer needs from DICOMweb (PS3.18): frames, bulk data, rendered and thumbnail
images, Content-Location, CORS — each checked with ``dicomweb-client`` as a real client and
beside what Orthanc's DICOMweb plugin returns for the same instances in the same test."""

from __future__ import annotations

import io
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import pixel_array

from services.imaging.intake.multipart import iter_parts, parse_content_type
from tests.harness.imaging import ImagingServer
from tests.harness.net import free_port
from tests.harness.orthanc import OrthancServer
from tests.harness.series import SeriesSpec, make_series, multipart_body, to_bytes

pytestmark = pytest.mark.integration

STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=test-boundary'
NATIVE_FRAMES = 'multipart/related; type="application/octet-stream"'
ANY_SYNTAX = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def _client(server: ImagingServer) -> DICOMwebClient:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {server.token()}"
    return DICOMwebClient(url=f"{server.url}/dicomweb", session=session)


def _orthanc_client(orthanc: OrthancServer) -> DICOMwebClient:
    return DICOMwebClient(url=orthanc.dicomweb_url, session=requests.Session())


def _testdata(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, name
    return dcmread(path)


def _stow(imaging: ImagingServer, datasets: list[Dataset]) -> None:
    with imaging.client() as client:
        response = client.post(
            "/dicomweb/studies",
            content=multipart_body([to_bytes(d) for d in datasets]),
            headers={"Content-Type": STOW_TYPE},
        )
    assert response.status_code == 200, response.text


def _store_both(imaging: ImagingServer, orthanc: OrthancServer, datasets: list[Dataset]) -> None:
    _stow(imaging, datasets)
    for ds in datasets:
        orthanc.upload(to_bytes(ds))


def _parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    boundary = parse_content_type(response.headers["content-type"]).params["boundary"]
    return [(p.headers, p.body) for p in iter_parts(response.content, boundary)]


def _orthanc_frames(orthanc: OrthancServer, ds: Dataset, frames: str, accept: str) -> list[bytes]:
    response = httpx.get(
        orthanc.dicomweb_url + _path(ds).removeprefix("/dicomweb") + f"/frames/{frames}",
        headers={"Accept": accept},
        timeout=30,
    )
    response.raise_for_status()
    return [body for _, body in _parts(response)]


def _path(ds: Dataset) -> str:
    return (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


@pytest.fixture
def pair(
    imaging: ImagingServer, orthanc_factory: Callable[..., OrthancServer]
) -> tuple[ImagingServer, OrthancServer]:
    return imaging, orthanc_factory()


def test_native_frames_equal_the_pixels_and_orthancs(
    pair: tuple[ImagingServer, OrthancServer],
) -> None:
    imaging, orthanc = pair
    ct = make_series(SeriesSpec(slices=3, rows=48, columns=40))
    _store_both(imaging, orthanc, ct)
    ds = ct[1]
    ours = _client(imaging).retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[1]
    )
    # Orthanc's plugin 1.7 answers dicomweb-client's Accept with 400 (it reads the
    # requests session's extra "*/*"), so its frames are asked for with the header alone.
    theirs = _orthanc_frames(orthanc, ds, "1", NATIVE_FRAMES)
    assert ours == theirs
    assert ours[0] == ds.PixelData
    assert len(ours[0]) == 48 * 40 * 2


def test_compressed_frames_as_stored_or_decoded(
    pair: tuple[ImagingServer, OrthancServer],
) -> None:
    imaging, orthanc = pair
    rle = _testdata("SC_rgb_rle_2frame.dcm")  # RLE Lossless, two RGB frames
    _store_both(imaging, orthanc, [rle])
    stored = list(generate_frames(rle.PixelData, number_of_frames=2))
    with imaging.client() as client:
        as_stored = client.get(_path(rle) + "/frames/2,1", headers={"Accept": ANY_SYNTAX})
        native = client.get(_path(rle) + "/frames/1,2", headers={"Accept": NATIVE_FRAMES})
        jpeg_only = client.get(
            _path(rle) + "/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'}
        )
    assert as_stored.status_code == 200
    parts = _parts(as_stored)
    assert [body for _, body in parts] == [stored[1], stored[0]]
    assert parse_content_type(parts[0][0]["content-type"]).media_type == "image/dicom-rle"
    assert parts[0][0]["content-type"].endswith("transfer-syntax=1.2.840.10008.1.2.5")
    assert parts[0][0]["content-location"].endswith("/frames/2")
    assert native.status_code == 200
    decoded = [body for _, body in _parts(native)]
    expected = [pixel_array(rle, index=i, raw=True).tobytes() for i in range(2)]
    assert decoded == expected
    assert _orthanc_frames(orthanc, rle, "1,2", NATIVE_FRAMES) == decoded  # same decoding
    assert _orthanc_frames(orthanc, rle, "1", ANY_SYNTAX) == [stored[0]]
    assert jpeg_only.status_code == 406
    assert "reason" in jpeg_only.json() or "detail" in jpeg_only.json()


def test_frame_list_errors_follow_the_standard(imaging: ImagingServer) -> None:
    ds = make_series(SeriesSpec(slices=1))[0]
    _stow(imaging, [ds])
    with imaging.client() as client:
        for bad in ("0", "a", "1,,2", "-1", "1.5", "9" * 12, "1,1", "\u00b2", "1,\u0661"):
            assert client.get(_path(ds) + f"/frames/{bad}").status_code == 400, bad
        assert client.get(_path(ds) + "/frames/2").status_code == 404
        assert (
            client.get(_path(ds) + "/frames/1", headers={"Accept": "image/png"}).status_code == 406
        )
        missing = _path(ds).replace(ds.SOPInstanceUID, "1.2.3.4")
        assert client.get(missing + "/frames/1").status_code == 404
        assert client.get(_path(ds) + "/frames/1", headers={"Authorization": ""}).status_code == 401


def test_metadata_names_pixel_data_by_bulk_data_uri(
    imaging_factory: Callable[..., ImagingServer],
) -> None:
    # dicomweb-client sends "Host" without the port, so the URIs come from the configured
    # public address, as behind any proxy.
    port = free_port()
    imaging = imaging_factory(http_port=port, public_base_url=f"http://127.0.0.1:{port}")
    mr = _testdata("MR_small_jp2klossless.dcm")
    client = _client(imaging)
    client.store_instances([mr])
    metadata = client.retrieve_instance_metadata(
        mr.StudyInstanceUID, mr.SeriesInstanceUID, mr.SOPInstanceUID
    )
    pixel = metadata["7FE00010"]
    assert "InlineBinary" not in pixel and pixel["vr"] == "OB"
    uri = pixel["BulkDataURI"]
    assert uri.startswith(imaging.url) and uri.endswith("/bulk/7FE00010")
    bulk = client.retrieve_bulkdata(uri, media_types=(("application/octet-stream", "*"),))
    assert bulk == list(generate_frames(mr.PixelData, number_of_frames=1))
    native = client.retrieve_bulkdata(uri)
    assert native == [pixel_array(mr, raw=True).astype("<u2").tobytes()]
    with imaging.client() as http:
        assert http.get(uri.replace("7FE00010", "7FE0001X")).status_code == 400
        assert http.get(uri.replace("7FE00010", "00100010")).status_code == 404


def test_retrieved_instances_carry_content_location(imaging: ImagingServer) -> None:
    datasets = make_series(SeriesSpec(slices=2))
    _stow(imaging, datasets)
    ds = datasets[0]
    with imaging.client() as client:
        response = client.get(
            f"/dicomweb/studies/{ds.StudyInstanceUID}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
    locations = sorted(headers["content-location"] for headers, _ in _parts(response))
    assert locations == sorted(imaging.url + _path(d) for d in datasets)


def _image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)


def test_rendered_and_thumbnails_beside_orthancs(
    pair: tuple[ImagingServer, OrthancServer],
) -> None:
    imaging, orthanc = pair
    ct = _testdata("CT_small.dcm")  # windowed by its own Window Center/Width
    _store_both(imaging, orthanc, [ct])
    client = _client(imaging)
    png = client.retrieve_instance_rendered(
        ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID, media_types=("image/png",)
    )
    ours = _image(png)
    assert ours.shape == (128, 128)
    theirs = _image(
        _orthanc_client(orthanc).retrieve_instance_rendered(
            ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID, media_types=("image/png",)
        )
    )
    # Same window, same pixels: a grey level or two of rounding apart at most.
    assert np.mean(np.abs(ours - theirs)) < 2.0
    with imaging.client() as http:
        jpeg = http.get(_path(ct) + "/rendered", params={"window": "40,400", "viewport": "64,64"})
        assert jpeg.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(jpeg.content)).size == (64, 64)
        frame = http.get(_path(ct) + "/frames/1/rendered", headers={"Accept": "image/png"})
        assert _image(frame.content).shape == (128, 128)
        for params in ({"window": "40"}, {"window": "a,b"}, {"viewport": "0,10"}, {"quality": "0"}):
            assert http.get(_path(ct) + "/rendered", params=params).status_code == 400, params
        assert http.get(_path(ct) + "/rendered", headers={"Accept": "image/gif"}).status_code == 406
        study = f"/dicomweb/studies/{ct.StudyInstanceUID}"
        for url in (
            study + "/thumbnail",
            study + f"/series/{ct.SeriesInstanceUID}/thumbnail",
            _path(ct) + "/thumbnail",
        ):
            thumb = http.get(url)
            assert thumb.status_code == 200, url
            assert max(Image.open(io.BytesIO(thumb.content)).size) == 128
        series = http.get(study + f"/series/{ct.SeriesInstanceUID}/rendered")
        assert [h["content-type"] for h, _ in _parts(series)] == ["image/jpeg"]


def test_an_sr_has_no_rendition(imaging: ImagingServer) -> None:
    sr = _testdata("test-SR.dcm")
    sr.PatientID = "MRN0002"  # the sample has none; the store refuses an instance without one
    _stow(imaging, [sr])
    with imaging.client() as http:
        assert http.get(_path(sr) + "/rendered").status_code == 406
        assert http.get(_path(sr) + "/frames/1").status_code == 404


def test_cors_is_off_by_default_and_per_origin_when_configured(
    imaging: ImagingServer, imaging_factory: Callable[..., ImagingServer]
) -> None:
    preflight = {
        "Origin": "https://viewer.hospital.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization,accept",
    }
    off = httpx.options(imaging.url + "/dicomweb/studies", headers=preflight)
    assert "access-control-allow-origin" not in off.headers
    server = imaging_factory("cors", cors_origins=["https://viewer.hospital.example"])
    allowed = httpx.options(server.url + "/dicomweb/studies", headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://viewer.hospital.example"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    other = httpx.options(
        server.url + "/dicomweb/studies", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in other.headers
    get = httpx.get(
        server.url + "/dicomweb/studies",
        headers={
            "Origin": "https://viewer.hospital.example",
            "Authorization": f"Bearer {server.token()}",
        },
    )
    assert get.status_code == 200
    assert get.headers["access-control-allow-origin"] == "https://viewer.hospital.example"
    assert "content-location" in get.headers["access-control-expose-headers"].lower()


def test_accept_q_values_and_odd_parameters(imaging: ImagingServer) -> None:
    rle = _testdata("SC_rgb_rle_2frame.dcm")
    ct = make_series(SeriesSpec(slices=1))[0]
    _stow(imaging, [rle, ct])
    with imaging.client() as client:
        # q=0 means "not this": the RLE frame comes as stored, not native.
        stored = client.get(
            _path(rle) + "/frames/1",
            headers={
                "Accept": 'multipart/related; type="application/octet-stream"; q=0, '
                'multipart/related; type="image/dicom-rle"'
            },
        )
        assert stored.status_code == 200
        assert _parts(stored)[0][0]["content-type"].startswith("image/dicom-rle")
        preferred = client.get(
            _path(ct) + "/rendered", headers={"Accept": "image/jpeg;q=0.5, image/png"}
        )
        assert preferred.headers["content-type"] == "image/png"
        refused = client.get(_path(ct) + "/rendered", headers={"Accept": "image/jpeg;q=0"})
        assert refused.status_code == 406
        for params in ({"viewport": "\u00b2,1"}, {"quality": "\u00b2"}, {"viewport": "10,\u0661"}):
            assert client.get(_path(ct) + "/thumbnail", params=params).status_code == 400


def test_native_ybr_422_frames_are_cut_at_their_subsampled_length(imaging: ImagingServer) -> None:
    ds = make_series(SeriesSpec(slices=1, rows=10, columns=10))[0]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.NumberOfFrames = 2
    frame = bytes(range(200))  # 10 x 10 x 3 samples x 8 bits x 2/3 = 200 bytes
    ds.PixelData = frame + frame[::-1]
    for keyword in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    _stow(imaging, [ds])
    with imaging.client() as client:
        response = client.get(_path(ds) + "/frames/1,2", headers={"Accept": NATIVE_FRAMES})
    assert [body for _, body in _parts(response)] == [frame, frame[::-1]]


def test_pixel_data_without_its_image_pixel_module_is_refused_at_intake(
    imaging: ImagingServer,
) -> None:
    ds = make_series(SeriesSpec(slices=1))[0]
    ds.Rows = 0  # the frame size cannot be known
    with imaging.client() as client:
        response = client.post(
            "/dicomweb/studies",
            content=multipart_body([to_bytes(ds)]),
            headers={"Content-Type": STOW_TYPE},
        )
    assert response.status_code == 409
    assert "Image Pixel module" in response.headers["warning"]
