"""Small generated CT/MR series with consistent DICOM geometry (pydicom)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)


@dataclass
class SeriesSpec:
    modality: str = "CT"
    slices: int = 12
    rows: int = 64
    columns: int = 64
    spacing: float = 1.0
    slice_step: float = 2.0
    patient_id: str = "MRN0001"
    patient_name: str = "Doe^Jane"
    issuer: str = "HOSPITAL-A"
    study_date: str = "20260115"
    description: str = "LUMBAR SPINE"
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    skip: frozenset[int] = frozenset()  # slice indices left out (to make gaps)
    seed: int = 0


def make_series(spec: SeriesSpec) -> list[Dataset]:
    """The datasets of one series, slice by slice along the orientation's normal."""
    rng = np.random.default_rng(spec.seed)
    row_dir = np.array(spec.orientation[:3])
    col_dir = np.array(spec.orientation[3:])
    normal = np.cross(row_dir, col_dir)
    sop_class = CTImageStorage if spec.modality == "CT" else MRImageStorage
    out = []
    for index in range(spec.slices):
        if index in spec.skip:
            continue
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName = spec.patient_name
        ds.PatientID = spec.patient_id
        ds.IssuerOfPatientID = spec.issuer
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "F"
        ds.StudyInstanceUID = spec.study_uid
        ds.SeriesInstanceUID = spec.series_uid
        ds.StudyDate = spec.study_date
        ds.SeriesDate = spec.study_date
        ds.StudyTime = "101500"
        ds.AccessionNumber = "ACC" + spec.patient_id[-4:]
        ds.StudyID = "1"
        ds.StudyDescription = spec.description
        ds.SeriesDescription = f"{spec.modality} {spec.description}"
        ds.Modality = spec.modality
        ds.BodyPartExamined = "LSPINE"
        ds.ReferringPhysicianName = "Surgeon^Sam"
        ds.SeriesNumber = 2
        ds.InstanceNumber = index + 1
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[spec.series_uid])
        position = normal * spec.slice_step * index + np.array([-100.0, -100.0, 0.0])
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.ImageOrientationPatient = list(spec.orientation)
        ds.PixelSpacing = [spec.spacing, spec.spacing]
        ds.SliceThickness = spec.slice_step
        ds.Rows = spec.rows
        ds.Columns = spec.columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        if spec.modality == "CT":
            ds.RescaleIntercept = -1024
            ds.RescaleSlope = 1
        pixels = rng.integers(0, 2000, size=(spec.rows, spec.columns), dtype=np.int16)
        ds.PixelData = pixels.tobytes()
        out.append(ds)
    return out


def to_bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_series(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def multipart_body(parts: list[bytes], boundary: str = "test-boundary") -> bytes:
    chunks: list[bytes] = []
    for data in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


def iter_chunks(data: bytes, size: int = 8192) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def sr_items(node: Any) -> list[Any]:
    """Every content item of an SR tree, depth first."""
    found = []
    for item in getattr(node, "ContentSequence", []):
        found.append(item)
        found += sr_items(item)
    return found
