"""A crafted-DICOM corpus through both doors (C-STORE and STOW-RS): each hostile instance
gets its precise refusal, the valid oddities are stored, and everything acknowledged is
read back whole (as stored, as native Explicit VR Little Endian, and as DICOM JSON)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, Verification

from tests.harness.imaging import ImagingServer
from tests.harness.series import multipart_body

pytestmark = pytest.mark.integration
STUDY = "1.2.826.0.1.3680043.8.498.7001"
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=test-boundary'


def _ct(study: str = STUDY, series: str | None = None) -> Dataset:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _bytes(ds: Dataset) -> bytes:
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _with_tail(extra: bytes) -> bytes:
    return _bytes(_ct()) + extra


def _set_raw(ds: Dataset, keyword: str, raw: str) -> bytes:
    """The file with ``keyword`` holding ``raw`` as written, whatever its VR allows: the
    element is written with a placeholder of the same shape, then its bytes replaced."""
    parts = raw.split("\\")
    placeholder = ["7" * len(p) for p in parts]
    setattr(ds, keyword, placeholder if len(parts) > 1 else placeholder[0])
    element = ds.data_element(keyword)
    assert element is not None
    data = _bytes(ds)
    header = struct.pack("<HH", element.tag.group, element.tag.element) + element.VR.encode()
    start = data.index(header)
    length = struct.unpack_from("<H", data, start + 6)[0]
    value = raw.encode().ljust(length, b" ")
    return data[: start + 8] + value + data[start + 8 + length :]


def _lying_meta_length() -> bytes:
    data = bytearray(_bytes(_ct()))
    struct.pack_into("<I", data, 140, 0xFFFFFF00)  # (0002,0000) value after preamble+DICM
    return bytes(data)


def _deflate_bomb(inflated: int) -> bytes:
    ds = _ct()
    meta = ds.file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    header = _bytes(ds)
    start = 144 + struct.unpack_from("<I", header, 140)[0]  # after the File Meta
    # A syntactically valid data set body: one long private element full of zeros.
    element = struct.pack("<HH", 0x0099, 0x1010) + b"OB\0\0" + struct.pack("<I", inflated)
    body = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = body.compress(element) + body.compress(bytes(inflated)) + body.flush()
    return header[:start] + deflated


def _nested(depth: int) -> bytes:
    ds = _ct()
    inner = Dataset()
    inner.add_new(0x00991012, "LO", "leaf")
    for _ in range(depth):
        outer = Dataset()
        outer.add_new(0x00991011, "SQ", Sequence([inner]))
        inner = outer
    ds.add_new(0x00990010, "LO", "ATTACK")
    ds.add_new(0x00991011, "SQ", Sequence([inner]))
    return _bytes(ds)


def _jpeg_garbage() -> bytes:
    ds = _ct()
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x13" * 4000 + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    return _bytes(ds)


def _big_endian() -> bytes:
    """A valid Explicit VR Big Endian MR image, moved into the test study."""
    ds = dcmread(get_testdata_file("MR_small_bigendian.dcm"))
    ds.StudyInstanceUID = STUDY
    return _bytes(ds)


@dataclass(frozen=True)
class Hostile:
    name: str
    data: Callable[[], bytes]
    dimse: int | None  # expected C-STORE status (None: not sendable over DIMSE as crafted)
    http: int  # expected STOW-RS failure status (in 00081197: the per-instance reason)


def _truncated() -> bytes:
    data = _bytes(_ct())
    return data[: len(data) // 2]


def _traversal_uid() -> bytes:
    return _set_raw(_ct(), "SeriesInstanceUID", "../../../etc/passwd")


def _not_a_transfer_syntax() -> bytes:
    ds = _ct()
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6"
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return out.getvalue()


CORPUS = [
    Hostile("truncated mid-element", _truncated, None, 0xC000),
    Hostile(
        "element length past the end",
        lambda: _with_tail(struct.pack("<HH", 0x0099, 0x1001) + b"LO" + struct.pack("<H", 900)),
        0xC000,
        0xC000,
    ),
    Hostile("File Meta group length lies", _lying_meta_length, None, 0xC000),
    Hostile(
        "IS that is not a number", lambda: _set_raw(_ct(), "InstanceNumber", "x1"), 0xC000, 0xC000
    ),
    Hostile(
        "DS position of letters",
        lambda: _set_raw(_ct(), "ImagePositionPatient", "a\\b\\c"),
        0xC000,
        0xC000,
    ),
    Hostile("sequences nested 40 deep", lambda: _nested(40), 0xC000, 0xC000),
    Hostile("traversal in a UID", _traversal_uid, 0xC000, 0xC000),
    Hostile("deflate bomb", lambda: _deflate_bomb(64 << 20), None, 0xC000),
    Hostile("JPEG of garbage", _jpeg_garbage, None, 0xC000),
    Hostile("TransferSyntaxUID not a transfer syntax", _not_a_transfer_syntax, None, 0xC000),
]


@pytest.fixture
def server(imaging_factory: Callable[..., ImagingServer]) -> ImagingServer:
    return imaging_factory(max_instance_bytes=16 << 20, study_quiet_seconds=60)


def _stow(server: ImagingServer, payloads: list[bytes]) -> tuple[int, dict[str, object]]:
    with server.client() as client:
        response = client.post(
            "/dicomweb/studies",
            content=multipart_body(payloads),
            headers={"Content-Type": STOW_TYPE},
        )
    return response.status_code, response.json() if response.content else {}


def _c_store(server: ImagingServer, data: bytes, path: Path, context: str | None = None) -> int:
    """Send the file's bytes as they are (pynetdicom's chunked send: no re-encoding)."""
    path.write_bytes(data)
    meta = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=[]).file_meta
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(
        context or str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)]
    )
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
    try:
        assert assoc.is_established
        status = assoc.send_c_store(path)
        return int(status.Status) if "Status" in status else -1
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.name)
def test_each_hostile_instance_is_refused_with_its_reason(
    server: ImagingServer, case: Hostile, tmp_path: Path
) -> None:
    data = case.data()
    status, body = _stow(server, [data])
    assert status == 409, (status, body)  # none stored
    failed = body["00081198"]["Value"]  # type: ignore[index]
    assert failed[0]["00081197"]["Value"] == [case.http]
    if case.dimse is not None:
        assert _c_store(server, data, tmp_path / "x.dcm") == case.dimse
    with server.client() as client:
        assert client.get("/dicomweb/instances").json() == []


def test_a_c_store_on_the_verification_context_is_refused(server: ImagingServer) -> None:
    """pynetdicom's own SCU will not do it, so the request is put on the wire by hand."""
    ds = _ct()
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
    assert assoc.is_established
    try:
        request = C_STORE()
        request.MessageID = 7
        request.AffectedSOPClassUID = CTImageStorage
        request.AffectedSOPInstanceUID = ds.SOPInstanceUID
        request.Priority = 2
        request.DataSet = BytesIO(encode(ds, False, True))
        context = assoc.accepted_contexts[0]
        # Hold the association's reactor as its own send_c_* do, or it may take the
        # response off the queue first ("unexpected C-STORE service message").
        assoc._reactor_checkpoint.clear()
        try:
            assoc.dimse.send_msg(request, context.context_id)
            _, response = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        assert response is not None and response.Status == 0x0122
    finally:
        assoc.release()
    with server.client() as client:
        assert client.get("/dicomweb/instances").json() == []


def test_a_new_study_cannot_borrow_another_studys_series(server: ImagingServer) -> None:
    series = generate_uid()
    assert _stow(server, [_bytes(_ct(STUDY, series))])[0] == 200
    status, _ = _stow(server, [_bytes(_ct("1.2.826.0.1.3680043.8.498.7002", series))])
    assert status == 409
    with server.client() as client:
        studies = client.get("/dicomweb/studies").json()
    assert [s["0020000D"]["Value"][0] for s in studies] == [STUDY]


def test_everything_acknowledged_is_read_back_whole(server: ImagingServer, tmp_path: Path) -> None:
    # Valid oddities next to plain instances: big endian, deflated, a private sequence.
    big = _big_endian()
    deflated = _ct()
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    private = dcmread(BytesIO(_nested(5)))
    payloads = [_bytes(_ct()), big, _bytes(deflated), _bytes(private)]
    status, body = _stow(server, payloads)
    assert status == 200, body
    assert _c_store(server, _bytes(_ct()), tmp_path / "ok.dcm") == 0x0000
    with server.client() as client:
        count = len(client.get(f"/dicomweb/studies/{STUDY}/instances").json())
        assert count == 5
        for accept in (
            'multipart/related; type="application/dicom"; transfer-syntax=*',
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1',
        ):
            response = client.get(f"/dicomweb/studies/{STUDY}", headers={"Accept": accept})
            assert response.status_code == 200
            parts = response.content.split(
                b"--" + response.headers["content-type"].split("boundary=")[1].strip('"').encode()
            )
            datasets = [
                dcmread(BytesIO(part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]))
                for part in parts
                if b"\r\n\r\n" in part
            ]
            assert len(datasets) == 5
            for ds in datasets:
                assert ds.pixel_array.size > 0
        metadata = client.get(f"/dicomweb/studies/{STUDY}/metadata")
        assert metadata.status_code == 200 and len(metadata.json()) == 5


def _meta_element(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", 0x0002, tag) + vr + struct.pack("<H", len(value)) + value


def _bomb_behind(meta: bytes) -> bytes:
    """A deflated data set inflating to 64 MiB behind ``meta`` (the File Meta's elements
    after its group length) — the crafts below make the File Meta's reader and pydicom's
    disagree on whether it is deflated."""
    data = _deflate_bomb(64 << 20)
    start = 144 + struct.unpack_from("<I", data, 140)[0]
    length = _meta_element(0x0000, b"UL", struct.pack("<I", len(meta)))
    return data[:132] + length + meta + data[start:]


def _meta_of(data: bytes) -> dict[int, bytes]:
    """The File Meta's elements (after the group length) by element number."""
    elements, offset = {}, 132
    while struct.unpack_from("<H", data, offset)[0] == 0x0002:
        long_vr = data[offset + 4 : offset + 6] in (b"OB", b"UN")
        size = struct.unpack_from("<I" if long_vr else "<H", data, offset + (8 if long_vr else 6))
        end = offset + (12 if long_vr else 8) + size[0]
        elements[struct.unpack_from("<H", data, offset + 2)[0]] = data[offset:end]
        offset = end
    return elements


def _inflation_crafts() -> list[tuple[str, bytes]]:
    meta = _meta_of(_deflate_bomb(16))
    common = meta[0x0001] + meta[0x0002] + meta[0x0003]
    tail = b"".join(v for k, v in meta.items() if k > 0x0010)
    # A control character after the syntax: a UID parser that strips whitespace reads it as
    # deflated, a literal comparison does not.
    newline = _meta_element(0x0010, b"UI", DeflatedExplicitVRLittleEndian.encode() + b"\n")
    # An element whose VR is not a VR: pydicom reads it as implicit VR (a 4-byte length that
    # swallows the next element), a 2-byte-length reader sees a second (0002,0010) there.
    hidden = _meta_element(0x0010, b"UI", b"1.2.840.10008.1.2.1\0")
    hider = struct.pack("<HH", 0x0002, 0x0013) + struct.pack("<H", len(hidden)) + b"\0\0"
    return [
        ("plain", _deflate_bomb(64 << 20)),
        ("syntax with a newline", _bomb_behind(common + newline + tail)),
        ("element without a VR", _bomb_behind(common + meta[0x0010] + hider + hidden + tail)),
    ]


@pytest.mark.parametrize("name", ["plain", "syntax with a newline", "element without a VR"])
def test_a_deflate_bomb_is_refused_before_anything_inflates_it(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused, and neither the intake's reader nor the STOW failure item's UID lookup let
    pydicom inflate the body (64 MiB from 65 KB against a 1 MiB limit): a File Meta crafted
    so that pydicom and the walk of the File Meta disagree on the syntax is refused too."""
    import pydicom.filereader

    from services.imaging.api.dicomweb import _uids_of
    from services.imaging.errors import InvalidInstance
    from services.imaging.intake.dicom_io import read_part10

    data = dict(_inflation_crafts())[name]
    inflated: list[int] = []

    class Recording:
        def __getattr__(self, attribute: str) -> object:
            return getattr(zlib, attribute)

        def decompress(self, *args: object) -> bytes:
            out = zlib.decompress(*args)  # type: ignore[arg-type]
            inflated.append(len(out))
            return out

    monkeypatch.setattr(pydicom.filereader, "zlib", Recording())
    with pytest.raises(InvalidInstance):
        read_part10(data, max_bytes=1 << 20)
    _uids_of(data)
    assert inflated == [], inflated


def test_a_uid_with_a_trailing_newline_is_not_a_uid() -> None:
    from services.imaging.intake.dicom_io import is_valid_uid

    assert is_valid_uid("1.2.840.10008.1.2.1")
    assert not is_valid_uid("1.2.840.10008.1.2.1\n")
