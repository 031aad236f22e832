"""The C-STORE/C-ECHO SCP with dcmtk's echoscu and storescu as real peers."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tests.harness.dcmtk import echoscu, storescu
from tests.harness.imaging import ImagingServer
from tests.harness.net import wait_until
from tests.harness.series import SeriesSpec, make_series, to_bytes, write_series

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("dcmtk")]


def _instances(imaging: ImagingServer, study: str) -> list[dict[str, object]]:
    with imaging.client() as client:
        response = client.get(f"/dicomweb/studies/{study}/instances")
        response.raise_for_status()
        result: list[dict[str, object]] = response.json()
        return result


def test_echoscu_verifies_the_scp(imaging: ImagingServer) -> None:
    result = echoscu(imaging.dicom_port, imaging.ae_title)
    assert result.returncode == 0, result.stderr


def test_wrong_called_ae_title_is_rejected_at_association(imaging: ImagingServer) -> None:
    result = echoscu(imaging.dicom_port, "NOTUS")
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr or "rejected" in result.stderr.lower()


def test_calling_ae_allow_list(imaging_factory: Callable[..., ImagingServer]) -> None:
    server = imaging_factory(allowed_calling_aets=["PACS"])
    assert echoscu(server.dicom_port, server.ae_title, calling="PACS").returncode == 0
    refused = echoscu(server.dicom_port, server.ae_title, calling="INTRUDER")
    assert refused.returncode != 0


def test_storescu_series_is_stored_and_a_resend_does_not_duplicate(
    imaging: ImagingServer, tmp_path: Path
) -> None:
    spec = SeriesSpec(slices=20)
    files = write_series(make_series(spec), tmp_path / "series")
    first = storescu(imaging.dicom_port, imaging.ae_title, files)
    assert first.returncode == 0, first.stderr
    assert len(_instances(imaging, spec.study_uid)) == 20
    again = storescu(imaging.dicom_port, imaging.ae_title, files)
    assert again.returncode == 0, again.stderr
    assert len(_instances(imaging, spec.study_uid)) == 20
    stored = list((imaging.settings.storage_dir / spec.study_uid).rglob("*.dcm"))
    assert len(stored) == 20


def test_aborted_association_keeps_what_was_acknowledged(
    imaging: ImagingServer, tmp_path: Path
) -> None:
    spec = SeriesSpec(slices=6)
    files = write_series(make_series(spec), tmp_path / "series")
    result = storescu(imaging.dicom_port, imaging.ae_title, files, extra=["--abort"])
    assert result.returncode == 0, result.stderr
    assert len(_instances(imaging, spec.study_uid)) == 6
    # The service still answers after the abort.
    assert echoscu(imaging.dicom_port, imaging.ae_title).returncode == 0


# pydicom corpus file → the storescu option that proposes its transfer syntax.
CORPUS = {
    "CT_small.dcm": "-xe",  # explicit VR little endian
    "MR_small_implicit.dcm": "-xi",  # implicit VR little endian
    "MR_small_bigendian.dcm": "-xb",  # explicit VR big endian (retired, still met)
    "image_dfl.dcm": "-xd",  # deflated explicit VR little endian
    "SC_rgb_jpeg_dcmtk.dcm": "-xy",  # JPEG baseline
    "JPGExtended.dcm": "-xx",  # JPEG extended
    "SC_rgb_jpeg_gdcm.dcm": "-xs",  # JPEG lossless SV1
    "MR_small_jpeg_ls_lossless.dcm": "-xt",  # JPEG-LS lossless
    "MR_small_jp2klossless.dcm": "-xv",  # JPEG 2000 lossless
    "JPEG2000.dcm": "-xw",  # JPEG 2000
    "MR_small_RLE.dcm": "-xr",  # RLE lossless
}


def test_pydicom_corpus_in_every_common_transfer_syntax(
    imaging: ImagingServer, tmp_path: Path
) -> None:
    sent = {}
    for name, option in CORPUS.items():
        source = Path(get_testdata_file(name, download=False))  # type: ignore[arg-type]
        ds = dcmread(source)
        # Several corpus files are one instance in other encodings: give each its own UID.
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        target = tmp_path / name
        ds.save_as(target, enforce_file_format=True)
        sent[str(ds.SOPInstanceUID)] = target.read_bytes()
        # One association per file, as a modality sends: each proposes its own syntax.
        result = storescu(imaging.dicom_port, imaging.ae_title, [target], extra=[option])
        assert result.returncode == 0, (name, result.stderr)
    with imaging.client() as client:
        found = client.get("/dicomweb/instances").json()
    syntaxes = {item["00083002"]["Value"][0] for item in found}
    assert {
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.5",
    } <= syntaxes
    # Stored as received: the data set bytes are the sender's, not transcoded.
    for path in imaging.settings.storage_dir.rglob("*.dcm"):
        ds = dcmread(path)
        original = dcmread(BytesIO(sent[str(ds.SOPInstanceUID)]))
        assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert ds.PixelData == original.PixelData


def test_bad_dataset_gets_a_precise_status_and_the_scp_survives(
    imaging: ImagingServer,
) -> None:
    """A data set without its UIDs gets 0xC000 (cannot understand), not a crash."""
    ds = make_series(SeriesSpec(slices=1))[0]
    del ds.StudyInstanceUID
    ae = AE(ae_title="BADSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", imaging.dicom_port, ae_title=imaging.ae_title)
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xC000
    good = make_series(SeriesSpec(slices=1))[0]
    assoc = ae.associate("127.0.0.1", imaging.dicom_port, ae_title=imaging.ae_title)
    assert assoc.send_c_store(good).Status == 0x0000
    assoc.release()
    assert len(to_bytes(good)) > 0


def test_combined_proposal_keeps_the_senders_encoding(
    imaging: ImagingServer, tmp_path: Path
) -> None:
    """[JPEG Baseline, uncompressed...] in one context: we accept JPEG, so nothing is converted."""
    source = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm", download=False))  # type: ignore[arg-type]
    ds = dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    target = tmp_path / "jpeg.dcm"
    ds.save_as(target, enforce_file_format=True)
    result = storescu(imaging.dicom_port, imaging.ae_title, [target], extra=["-xy", "+C"])
    assert result.returncode == 0, result.stderr
    with imaging.client() as client:
        found = client.get("/dicomweb/instances", params={"SOPInstanceUID": ds.SOPInstanceUID})
    assert found.json()[0]["00083002"]["Value"] == ["1.2.840.10008.1.2.4.50"]


def test_association_limit_rejects_the_extra_association(
    imaging_factory: Callable[..., ImagingServer],
) -> None:
    server = imaging_factory(max_associations=1)
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(CTImageStorage)
    held = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
    assert held.is_established
    try:
        refused = echoscu(server.dicom_port, server.ae_title)
        assert refused.returncode != 0
    finally:
        held.release()
    assert wait_until(lambda: echoscu(server.dicom_port, server.ae_title).returncode == 0, 10)
