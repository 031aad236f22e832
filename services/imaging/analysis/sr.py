"""The analysis result as a DICOM Comprehensive 3D SR: a TID 1500 measurement report.

One measurement group per measured value, tracked by level, side and quantity, with the
algorithm's name and version (TID 4019). Where the measurement's construction is known
(the height line's two end points, the sac's contour), the group is a planar ROI (TID
1410) whose region a viewer draws over the images: a SCOORD on the acquired image when
the construction lies in that image's plane (the sac contour on an axial slice), else a
SCOORD on the key image that shows its reformatted plane (a height line across axial
slices), else a SCOORD3D in the series' frame of reference. The key images are Secondary
Capture instances of the same study, part of the SR's evidence. Values that need review are left
out: the SR only carries what the service stands behind.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from services.common import contracts, reading
from services.common.vocabulary import QUANTITIES, SR_SCHEME, QuantityName
from services.imaging.analysis.overlays import KeyImage, key_image_name
from services.imaging.analysis.report import (
    ALGORITHM_NAME,
    ALGORITHM_VERSION,
    AnalysisResult,
    Measurement,
)

PROCEDURE = Code("SPINE-DECOMP", SR_SCHEME, "Lumbar decompression measurement")
SR_SERIES_NUMBER = 9001
KEY_IMAGE_SERIES_NUMBER = 9002
MANUFACTURER = "spine-outcomes"  # of the SR and the key images we write


# What the SR copies from its evidence; Type 2 attributes absent there are sent empty.
_HEADER = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "Modality",
)
_TYPE2 = (
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyID",
)


def _header(ds: Dataset) -> Dataset:
    out = Dataset()
    for keyword in _HEADER + _TYPE2:
        value = ds.get(keyword)
        if value is not None:
            setattr(out, keyword, value)
        elif keyword in _TYPE2:
            setattr(out, keyword, "")
    return out


def _in_plane_tolerance(ds: Dataset) -> float:
    thickness = ds.get("SliceThickness")
    try:
        return max(0.5 * float(thickness), 0.5) if thickness not in (None, "") else 1.0
    except (TypeError, ValueError):
        return 1.0


def region(
    m: Measurement, source: Dataset | None
) -> hd.sr.ImageRegion | hd.sr.ImageRegion3D | None:
    """Where the measurement was constructed, as a viewer draws it over the images."""
    if not m.points or source is None:
        return None
    points = np.asarray(m.points, dtype=np.float64)
    geometry = QUANTITIES[m.quantity].geometry
    if geometry == "contour":
        if len(points) < 3:
            return None
        if not np.allclose(points[0], points[-1]):
            points = np.vstack([points, points[:1]])  # a POLYGON closes on its first point
        # A closed POLYLINE is the 2D polygon (SCOORD has no POLYGON, SCOORD3D has).
        graphic_2d = hd.sr.GraphicTypeValues.POLYLINE
        graphic_3d = hd.sr.GraphicTypeValues3D.POLYGON
    elif geometry == "line" and len(points) == 2:
        graphic_2d = hd.sr.GraphicTypeValues.POLYLINE
        graphic_3d = hd.sr.GraphicTypeValues3D.POLYLINE
    else:
        return None
    try:
        origin = np.array([float(v) for v in source.ImagePositionPatient])
        orientation = np.array([float(v) for v in source.ImageOrientationPatient])
        row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        return None
    along_row, along_column = orientation[:3], orientation[3:]
    normal = np.cross(along_row, along_column)
    relative = points - origin
    if np.max(np.abs(relative @ normal)) <= _in_plane_tolerance(source):
        # Image coordinates: (column, row), (0, 0) the top left corner of the first pixel,
        # whose centre is Image Position (Patient).
        columns = relative @ along_row / column_spacing + 0.5
        rows = relative @ along_column / row_spacing + 0.5
        return hd.sr.ImageRegion(
            graphic_type=graphic_2d,
            graphic_data=np.stack([columns, rows], axis=1),
            source_image=hd.sr.SourceImageForRegion(
                str(source.SOPClassUID), str(source.SOPInstanceUID)
            ),
        )
    frame_of_reference = source.get("FrameOfReferenceUID")
    if not frame_of_reference:
        return None
    return hd.sr.ImageRegion3D(
        graphic_type=graphic_3d,
        graphic_data=points,
        frame_of_reference_uid=str(frame_of_reference),
    )


def _on_key_image(m: Measurement, image: KeyImage, capture: Dataset) -> hd.sr.ImageRegion | None:
    points = list(image.graphic)
    if len(points) < 2:
        return None
    if QUANTITIES[m.quantity].geometry == "contour" and points[0] != points[-1]:
        points.append(points[0])
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array(points, dtype=np.float64),
        source_image=hd.sr.SourceImageForRegion(
            str(capture.SOPClassUID), str(capture.SOPInstanceUID)
        ),
    )


def _algorithm_observer() -> hd.sr.ObserverContext:
    """The algorithm as the report's device observer (a stable UID per name and version)."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[ALGORITHM_NAME, ALGORITHM_VERSION]),
            name=ALGORITHM_NAME,
        ),
    )


def build_sr(
    result: AnalysisResult,
    evidence: Sequence[Dataset],
    *,
    previous_versions: Sequence[Dataset] = (),
    key_images: Sequence[tuple[KeyImage, Dataset]] = (),
) -> Dataset:
    """The SR of ``result``; ``evidence`` are the measured series' data sets. An SR that
    replaces earlier ones (a re-analysis) names them in its Predecessor Documents
    Sequence, the DICOM way of superseding a report."""
    geometry_of = {str(ds.SOPInstanceUID): ds for ds in evidence}
    captured = {image.name: (image, capture) for image, capture in key_images}
    evidence = [_header(ds) for ds in (*evidence, *(capture for _, capture in key_images))]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in evidence}
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=ALGORITHM_VERSION)
    device = _algorithm_observer()
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = []
    for m in result.measurements:
        if m.value is None:
            continue
        where = " ".join(x for x in (m.level or f"level#{m.level_index}", m.side) if x)
        refs = []
        if m.sop_instance_uid in by_uid:
            source = by_uid[m.sop_instance_uid]
            refs.append(
                hd.sr.SourceImageForMeasurement(str(source.SOPClassUID), str(source.SOPInstanceUID))
            )
        quantity = QUANTITIES[m.quantity]
        measurement = hd.sr.Measurement(
            name=Code(*quantity.sr_concept),
            value=round(m.value, 2),
            unit=Code(quantity.unit, "UCUM", quantity.unit_display),
            algorithm_id=algorithm,
            referenced_images=refs or None,
        )
        tracking = hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=f"{where} {m.quantity}"[:64]
        )
        drawn: hd.sr.ImageRegion | hd.sr.ImageRegion3D | None = region(
            m, geometry_of.get(m.sop_instance_uid or "")
        )
        if not isinstance(drawn, hd.sr.ImageRegion) and key_image_name(m) in captured:
            # Out of the acquired plane: drawn on the key image that shows its plane.
            drawn = _on_key_image(m, *captured[key_image_name(m)]) or drawn
        if drawn is not None:
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking,
                    referenced_region=drawn,
                    measurements=[measurement],
                    algorithm_id=algorithm,
                )
            )
            continue
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                measurements=[measurement],
                algorithm_id=algorithm,
            )
        )
    if not groups:
        raise ValueError("no measured value to report")
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=PROCEDURE,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=report,
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=f"{ALGORITHM_NAME} {ALGORITHM_VERSION} measurements",
        is_complete=True,
        previous_versions=list(previous_versions) or None,
    )


def secondary_captures(
    pngs: Sequence[bytes],
    reference: Dataset,
    *,
    manufacturer: str,
    series_instance_uid: str,
    orientations: Sequence[tuple[str, str]],
    names: Sequence[str] = (),
) -> list[Dataset]:
    """The key images (RGB PNG overlays) as DICOM Secondary Capture instances in one new
    series of the study ``reference`` belongs to (its patient and study are copied), with
    each image's Patient Orientation (rows, columns)."""
    series_uid = series_instance_uid
    out: list[Dataset] = []
    for number, png in enumerate(pngs, start=1):
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=reference,
            pixel_array=pixels,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=KEY_IMAGE_SERIES_NUMBER,
            sop_instance_uid=generate_uid(entropy_srcs=[series_uid, str(number)]),
            instance_number=number,
            manufacturer=manufacturer,
            patient_orientation=orientations[number - 1],
            series_description="Key images of the decompression measurements",
            transfer_syntax_uid=ExplicitVRLittleEndian,
        )
        if len(names) >= number:  # which key image it is (a reviewed SR draws on it again)
            sc.ImageComments = names[number - 1]
        out.append(sc)
    return out


REVIEW_METHODS = {
    "ok": Code("AUTOMATIC", SR_SCHEME, "Automatic measurement, not reviewed"),
    "accepted": Code("READER-ACCEPTED", SR_SCHEME, "Automatic measurement accepted by a reader"),
    "corrected": Code("READER-CORRECTED", SR_SCHEME, "Automatic measurement corrected by a reader"),
    "manual": Code("READER-MEASURED", SR_SCHEME, "Measured by a reader"),
}


def build_reviewed_sr(
    result: contracts.AnalysisResult,
    decided: dict[reading.Key, reading.Decided],
    captures: Sequence[Dataset],
    automatic_points: dict[str, Sequence[Sequence[float]]],
    *,
    reader: str,
    predecessor: Dataset | None,
) -> Dataset:
    """The reviewed values as a verified TID 1500 report that supersedes the automatic
    one: the reader is the person observer (next to the algorithm, the device observer)
    and the verifying observer; each group's method says whether the value was accepted,
    corrected or measured by the reader; its region is the construction that gave it (the
    reader's, or the automatic one accepted) on the key image. Rejected and unreviewed
    flagged values are left out, as in the automatic report."""
    by_name = {str(c.get("ImageComments", "")): c for c in captures}
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=ALGORITHM_VERSION)
    groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations] = []
    plain: list[hd.sr.MeasurementsAndQualitativeEvaluations] = []
    for (quantity_name, level, side), value in sorted(
        decided.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")
    ):
        if value.value is None or value.state not in REVIEW_METHODS:
            continue
        quantity = QUANTITIES[QuantityName(quantity_name)]
        where = " ".join(x for x in (level, side) if x)
        measurement = hd.sr.Measurement(
            name=Code(*quantity.sr_concept),
            value=round(value.value, 2),
            unit=Code(quantity.unit, "UCUM", quantity.unit_display),
            algorithm_id=algorithm if value.state in ("ok", "accepted", "corrected") else None,
        )
        tracking = hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=f"{where} {quantity_name}"[:64]
        )
        name = contracts.key_image_name(quantity_name, level, side)
        read = value.read
        points = (
            read.geometry
            if read is not None and read.geometry
            else automatic_points.get(name)
            if value.state in ("ok", "accepted")
            else None
        )
        capture = by_name.get(name)
        method = REVIEW_METHODS[value.state]
        if points and capture is not None and len(points) >= 2:
            drawn = [tuple(p) for p in points]
            if quantity.geometry == "contour" and drawn[0] != drawn[-1]:
                drawn.append(drawn[0])
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=np.array(drawn, dtype=np.float64),
                source_image=hd.sr.SourceImageForRegion(
                    str(capture.SOPClassUID), str(capture.SOPInstanceUID)
                ),
            )
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking,
                    referenced_region=region,
                    measurements=[measurement],
                    method=method,
                )
            )
        else:
            plain.append(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking, measurements=[measurement], method=method
                )
            )
    if not groups and not plain:
        raise ValueError("no reviewed value to report")
    # A user name is one component of a Person Name: the trailing caret says so (PS3.5 6.2).
    reader = reader if "^" in reader else f"{reader}^"
    person = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=reader),
    )
    device = _algorithm_observer()
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_person_context=person, observer_device_context=device
        ),
        procedure_reported=PROCEDURE,
        imaging_measurements=[*groups, *plain],
    )
    evidence = [_header(ds) for ds in captures] or ([predecessor] if predecessor else [])
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=f"{ALGORITHM_NAME} {ALGORITHM_VERSION} measurements, reviewed",
        is_complete=True,
        is_verified=True,
        verifying_observer_name=reader,
        verifying_organization=MANUFACTURER,
        previous_versions=[predecessor] if predecessor is not None else None,
    )
