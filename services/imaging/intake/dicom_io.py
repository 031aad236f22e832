"""The one path by which the imaging service reads a DICOM instance it receives, and the
one validation layer at intake.

``read_part10`` parses a DICOM Part 10 byte string and refuses what the service could
not serve back whole (so nothing acknowledged can break a retrieve later): a File Meta
that lies about its length, an element whose length runs past the end of the data, a
deflated data set that inflates beyond the instance limit, numbers (IS/DS) that are not
numbers, sequences nested deeper than :data:`MAX_DEPTH`, pixel data that cannot be
rendered as native Explicit VR Little Endian (the syntax WADO-RS converts to), missing
or malformed UIDs, non-storage SOP classes, truncated native pixel data. It returns the
header fields the index keeps; :func:`to_explicit_little_endian` is the conversion
WADO-RS serves.
"""

from __future__ import annotations

import logging
import math
import re
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32
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
MAX_DEPTH = 16  # sequences within sequences; real objects (SR, RT) stay well below
UNDEFINED = 0xFFFFFFFF
# Explicit VR lengths: 4 bytes after two reserved for these VRs, 2 bytes for the others.
_LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
_SHORT_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_16)
_WORD_SIZE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
NATIVE_LITTLE_ENDIAN = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def is_valid_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and bool(UID_PATTERN.fullmatch(value))  # "$" allows a "\n"


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


def native_frame_bits(ds: Dataset) -> int | None:
    """Bits of one native frame (None when the Image Pixel module is incomplete)."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        spp = int(ds.get("SamplesPerPixel", 1))
    except (AttributeError, TypeError, ValueError):
        return None
    if rows <= 0 or cols <= 0 or bits <= 0 or spp <= 0:
        return None
    total_bits = rows * cols * bits * spp
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        total_bits = total_bits * 2 // 3  # chroma subsampled 2:1 horizontally
    return total_bits


def _expected_native_length(ds: Dataset) -> int | None:
    frame_bits = native_frame_bits(ds)
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return None
    return None if frame_bits is None else (frame_bits * frames + 7) // 8


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


def meta_extent(data: bytes) -> tuple[int, str | None]:
    """Where the data set of a Part 10 file starts, and the Transfer Syntax UID its File
    Meta names (None when it names none): the File Meta (group 0002, always Explicit VR
    Little Endian) walked element by element, never trusted from its group length.

    Raises InvalidInstance where pydicom could read the File Meta otherwise than this walk
    (an unknown VR, which pydicom takes for implicit VR; a Transfer Syntax UID that is not
    a UID, which pydicom would clean up): the syntax found here decides whether a deflated
    data set is inflated, so both must see the same one.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise InvalidInstance("not a DICOM Part 10 file (no 'DICM' prefix and File Meta)")
    offset = 132
    declared: int | None = None
    syntax: str | None = None
    while offset + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_VRS:
            if offset + 12 > len(data):
                break
            length = struct.unpack_from("<I", data, offset + 8)[0]
            start = offset + 12
        elif vr in _SHORT_VRS:
            length = struct.unpack_from("<H", data, offset + 6)[0]
            start = offset + 8
        else:
            raise InvalidInstance("File Meta element without an explicit VR")
        if length == UNDEFINED or start + length > len(data):
            raise InvalidInstance("File Meta element runs past the end of the data")
        if element == 0x0000 and length == 4:
            declared = struct.unpack_from("<I", data, start)[0]
        elif element == 0x0010:
            syntax = data[start : start + length].decode("latin-1").strip("\x00 ")
            if not is_valid_uid(syntax):
                raise InvalidInstance("TransferSyntaxUID (0002,0010) is not a UID")
        offset = start + length
    if declared is not None and declared != offset - 144:
        raise InvalidInstance(
            f"FileMetaInformationGroupLength says {declared} bytes, the group has {offset - 144}"
        )
    return offset, syntax


def _check_inflated_size(data: bytes, start: int, limit: int) -> None:
    """A deflated data set must not inflate beyond ``limit`` (a decompression bomb)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size = 0
    view = memoryview(data)[start:]
    chunk = 1 << 20
    for offset in range(0, len(view), chunk):
        produced = inflater.decompress(view[offset : offset + chunk], limit + 1 - size)
        size += len(produced)
        while inflater.unconsumed_tail and size <= limit:
            produced = inflater.decompress(inflater.unconsumed_tail, limit + 1 - size)
            size += len(produced)
        if size > limit:
            raise InvalidInstance(f"the deflated data set inflates beyond {limit} bytes")


def _numbers(raw: bytes) -> bool:
    """Whether an IS/DS value holds finite numbers (empty values allowed)."""
    try:
        parts = raw.decode("ascii").split("\\")
        return all(math.isfinite(float(p)) for p in parts if p.strip(" \x00"))
    except (UnicodeDecodeError, ValueError):
        return False


def _decoded_numbers(value: Any) -> bool:
    values = (
        value
        if isinstance(value, list | tuple)
        or (hasattr(value, "__iter__") and not isinstance(value, str))
        else [value]
    )
    for item in values:
        if item is None or item == "":
            continue
        if isinstance(item, str) or not math.isfinite(float(item)):
            return False
    return True


def check_servable(ds: Dataset, depth: int = 0) -> None:
    """Every element of ``ds`` holds what its header says and can be written back as
    DICOM JSON: lengths within the data, IS/DS numbers, bounded sequence depth."""
    if depth > MAX_DEPTH:
        raise InvalidInstance(f"sequences nested deeper than {MAX_DEPTH} levels")
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if not isinstance(raw, RawDataElement):  # already decoded (a value we index)
            if raw.VR == "SQ":
                for item in raw.value:
                    check_servable(item, depth + 1)
            elif raw.VR in ("IS", "DS") and not _decoded_numbers(raw.value):
                raise InvalidInstance(f"element {tag} ({raw.VR}) does not hold a number")
            continue
        vr = raw.VR
        if vr is None:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "UN"
        if vr == "SQ":
            for item in ds[tag].value:
                check_servable(item, depth + 1)
            continue
        value = raw.value
        if raw.length != UNDEFINED and isinstance(value, bytes) and len(value) != raw.length:
            raise InvalidInstance(f"element {tag} claims {raw.length} bytes past the end of data")
        if vr in ("IS", "DS") and isinstance(value, bytes) and value and not _numbers(value):
            raise InvalidInstance(f"element {tag} ({vr}) does not hold a number")


def _swap_words(ds: Dataset) -> None:
    for element in ds.iterall():
        size = _WORD_SIZE.get(str(element.VR))
        if size and isinstance(element.value, bytes) and len(element.value) % size == 0:
            words = np.frombuffer(element.value, dtype=f">u{size}")
            element.value = words.astype(f"<u{size}").tobytes()


def to_explicit_little_endian(data: bytes, transfer_syntax: str) -> bytes:
    """The instance re-encoded as native Explicit VR Little Endian (decompressed, or byte
    swapped from big endian), as WADO-RS serves it when asked for that syntax."""
    ds = dcmread(BytesIO(data))
    syntax = UID(transfer_syntax)
    if syntax.is_compressed:
        ds.decompress()
    elif not syntax.is_little_endian:
        _swap_words(ds)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return part10_bytes(ds)


def part10_bytes(dataset: Dataset) -> bytes:
    """The data set as a DICOM Part 10 file (preamble, File Meta, data set)."""
    out = BytesIO()
    dcmwrite(out, dataset, enforce_file_format=True)
    return out.getvalue()


def read_part10(data: bytes, *, max_bytes: int = 1 << 30) -> tuple[Dataset, InstanceHeader]:
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
    try:
        dataset_offset, ts = meta_extent(data)
        if not ts:
            raise MissingAttribute("File Meta has no TransferSyntaxUID (0002,0010)")
        if not UID(ts).is_transfer_syntax:
            raise InvalidInstance(f"TransferSyntaxUID {ts[:64]} is not a transfer syntax")
        if ts == DeflatedExplicitVRLittleEndian:  # before pydicom inflates it
            _check_inflated_size(data, dataset_offset, max_bytes)
        # Parsing walks every element header, so a body cut inside an element fails
        # here; lying lengths and bad numbers are checked below, truncated pixel data too.
        ds = dcmread(BytesIO(data))
        meta = ds.file_meta
        if meta.get("TransferSyntaxUID") != ts:  # the walk above and pydicom disagree
            raise InvalidInstance("the File Meta cannot be read consistently")
        for keyword in _HEADER_KEYWORDS:  # decode the values we index, inside this guard
            ds.get(keyword)
        check_servable(ds)
    except (InvalidInstance, MissingAttribute):
        raise
    except RecursionError:
        raise InvalidInstance("the data set nests too deeply to be read") from None
    except Exception as exc:  # pydicom raises many exception types on corrupt input
        raise InvalidInstance(f"cannot parse DICOM data set ({type(exc).__name__})") from None
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
    if "PixelData" in ds and native_frame_bits(ds) is None:
        raise InvalidInstance(
            "pixel data without a complete Image Pixel module (Rows, Columns, BitsAllocated)"
        )
    if "PixelData" in ds and not UID(str(ts)).is_compressed:
        expected = _expected_native_length(ds)
        actual = len(ds.PixelData or b"")
        if expected is not None and actual < expected:
            raise InvalidInstance(f"truncated pixel data: {actual} bytes, {expected} expected")
    if "PixelData" in ds and UID(str(ts)) not in NATIVE_LITTLE_ENDIAN:
        try:  # what WADO-RS will do when a viewer asks for the native syntax
            to_explicit_little_endian(data, str(ts))
        except Exception as exc:
            raise InvalidInstance(
                f"pixel data cannot be decoded from {UID(str(ts)).name} ({type(exc).__name__})"
            ) from None

    header = InstanceHeader(
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=sop_class,
        transfer_syntax_uid=str(ts),
        dataset_offset=dataset_offset,
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
