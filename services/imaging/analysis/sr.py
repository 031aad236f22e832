"""The analysis result as a DICOM Comprehensive 3D SR: a TID 1500 measurement report.

One measurement group (TID 1501) per measured value, tracked by level, side and quantity,
each measurement referencing the source image it was taken on, with the algorithm's name
and version (TID 4019). Values that need review are left out of the report: the SR only
carries what the service stands behind.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset, dcmwrite
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from services.common.vocabulary import QUANTITIES, SR_SCHEME
from services.imaging.analysis.report import ALGORITHM_NAME, ALGORITHM_VERSION, AnalysisResult

PROCEDURE = Code("SPINE-DECOMP", SR_SCHEME, "Lumbar decompression measurement")
SR_SERIES_NUMBER = 9001


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


def build_sr(
    result: AnalysisResult,
    evidence: Sequence[Dataset],
    *,
    previous_versions: Sequence[Dataset] = (),
) -> Dataset:
    """The SR of ``result``; ``evidence`` are the measured series' data sets. An SR that
    replaces earlier ones (a re-analysis) names them in its Predecessor Documents
    Sequence, the DICOM way of superseding a report."""
    evidence = [_header(ds) for ds in evidence]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in evidence}
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=ALGORITHM_VERSION)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[ALGORITHM_NAME, ALGORITHM_VERSION]),
            name=ALGORITHM_NAME,
        ),
    )
    groups = []
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
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(), identifier=f"{where} {m.quantity}"[:64]
                ),
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
        manufacturer="spine-outcomes",
        series_description=f"{ALGORITHM_NAME} {ALGORITHM_VERSION} measurements",
        is_complete=True,
        previous_versions=list(previous_versions) or None,
    )


def to_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()
