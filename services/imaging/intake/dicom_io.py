"""The one path by which the imaging service reads a DICOM instance it receives.

``read_part10`` parses a DICOM Part 10 byte string, checks what intake needs (UIDs,
storage SOP class, complete pixel data) and returns the header fields the index keeps.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import UID
from pynetdicom.sop_class import _STORAGE_CLASSES

from services.imaging.errors import (
    InvalidInstance,
    MissingAttribute,
    SOPClassMismatch,
    UnsupportedSOPClass,
)

log = logging.getLogger(__name__)
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
STORAGE_SOP_CLASSES: frozenset[str] = frozenset(_STORAGE_CLASSES.values())
_PRIVATE_STORAGE_PREFIXES = ("1.2.840.113619.4.", "1.3.12.2.1107.5.9.", "1.2.392.200036.9116.7.")


def is_valid_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and bool(UID_PATTERN.match(value))


def is_storage_sop_class(uid: str) -> bool:
    """Standard storage SOP classes, plus vendors' private storage classes we know."""
    return uid in STORAGE_SOP_CLASSES or uid.startswith(_PRIVATE_STORAGE_PREFIXES)


@dataclass(frozen=True)
class InstanceHeader:
    """The attributes of one instance that the index and the analysis need."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    dataset_offset: int  # where the data set starts, after the File Meta
    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value)[:limit]


def _multi(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return "\\".join(f"{float(v):.6g}" for v in value)
    except (TypeError, ValueError):
        return None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _float(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _expected_native_length(ds: Dataset) -> int | None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        spp = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    total_bits = rows * cols * bits * spp * frames
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        total_bits = total_bits * 2 // 3  # chroma subsampled 2:1 horizontally
    return (total_bits + 7) // 8


_HEADER_KEYWORDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "PatientID",
    "PatientName",
    "StudyDate",
    "Modality",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "BitsAllocated",
)


def _dataset_offset(meta: Dataset) -> int:
    group_length = meta.get("FileMetaInformationGroupLength")
    # 128-byte preamble, 'DICM', the group length element (12 bytes), then the group.
    return 132 + 12 + int(group_length) if group_length is not None else 0


def read_part10(data: bytes) -> tuple[Dataset, InstanceHeader]:
    """Parse and check a DICOM Part 10 instance.

    Parameters
    ----------
    data
        The whole file: 128-byte preamble, ``DICM``, File Meta and the data set.

    Returns
    -------
    tuple of (Dataset, InstanceHeader)

    Raises
    ------
    InvalidInstance
        Not a Part 10 file, unparseable, or truncated pixel data.
    MissingAttribute
        A required UID is missing or not a valid UID.
    SOPClassMismatch
        The File Meta and the data set name different SOP classes or instances.
    UnsupportedSOPClass
        The SOP class is not a storage SOP class.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise InvalidInstance("not a DICOM Part 10 file (no 'DICM' prefix and File Meta)")
    try:
        # Parsing walks every element header, so a body cut inside an element fails
        # here; truncated pixel data is checked below.
        ds = dcmread(BytesIO(data))
        meta = ds.file_meta
        for keyword in _HEADER_KEYWORDS:  # decode the values we index, inside this guard
            ds.get(keyword)
    except Exception as exc:  # pydicom raises many exception types on corrupt input
        raise InvalidInstance(f"cannot parse DICOM data set ({type(exc).__name__})") from None

    ts = meta.get("TransferSyntaxUID")
    if not ts:
        raise MissingAttribute("File Meta has no TransferSyntaxUID (0002,0010)")
    if not ds.get("SOPClassUID") and is_valid_uid(str(meta.get("MediaStorageSOPClassUID", ""))):
        # Seen in real de-identified exports: an emptied SOPClassUID whose File Meta (or,
        # for C-STORE, the DIMSE AffectedSOPClassUID) still names the class.
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        log.warning("empty SOPClassUID taken from the File Meta")
    missing = [
        kw
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
        if not is_valid_uid(str(ds.get(kw, "")))
    ]
    if missing:
        raise MissingAttribute(f"missing or malformed {', '.join(missing)}")
    sop_class = str(ds.SOPClassUID)
    if meta.get("MediaStorageSOPClassUID") and str(meta.MediaStorageSOPClassUID) != sop_class:
        raise SOPClassMismatch("MediaStorageSOPClassUID differs from SOPClassUID")
    # A MediaStorageSOPInstanceUID that differs from the data set's is common in real
    # files (edited copies); the data set's SOPInstanceUID is authoritative, as in Orthanc.
    if not is_storage_sop_class(sop_class):
        raise UnsupportedSOPClass(f"SOP class {sop_class} is not a storage SOP class")
    if "PixelData" in ds and not UID(str(ts)).is_compressed:
        expected = _expected_native_length(ds)
        actual = len(ds.PixelData or b"")
        if expected is not None and actual < expected:
            raise InvalidInstance(f"truncated pixel data: {actual} bytes, {expected} expected")

    header = InstanceHeader(
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=sop_class,
        transfer_syntax_uid=str(ts),
        dataset_offset=_dataset_offset(meta),
        patient={
            "patient_id": _text(ds, "PatientID"),
            "issuer_of_patient_id": _text(ds, "IssuerOfPatientID"),
            "patient_name": _text(ds, "PatientName", 324),
            "patient_birth_date": _text(ds, "PatientBirthDate", 8),
            "patient_sex": _text(ds, "PatientSex", 16),
        },
        study={
            "study_date": _text(ds, "StudyDate", 8),
            "study_time": _text(ds, "StudyTime", 16),
            "accession_number": _text(ds, "AccessionNumber", 16),
            "study_id": _text(ds, "StudyID", 16),
            "study_description": _text(ds, "StudyDescription"),
            "referring_physician_name": _text(ds, "ReferringPhysicianName", 324),
        },
        series={
            "modality": _text(ds, "Modality", 16),
            "series_number": _int(ds, "SeriesNumber"),
            "series_description": _text(ds, "SeriesDescription"),
            "body_part_examined": _text(ds, "BodyPartExamined", 16),
            "protocol_name": _text(ds, "ProtocolName"),
            "series_date": _text(ds, "SeriesDate", 8),
        },
        instance={
            "instance_number": _int(ds, "InstanceNumber"),
            "rows": _int(ds, "Rows"),
            "columns": _int(ds, "Columns"),
            "number_of_frames": _int(ds, "NumberOfFrames"),
            "image_position_patient": _multi(ds, "ImagePositionPatient"),
            "image_orientation_patient": _multi(ds, "ImageOrientationPatient"),
            "pixel_spacing": _multi(ds, "PixelSpacing"),
            "slice_thickness": _float(ds, "SliceThickness"),
        },
    )
    return ds, header
