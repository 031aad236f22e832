"""No patient identifiers in the logs, on success and on every refusal path."""

from __future__ import annotations

import logging
import sys

import pytest

from services.common.logging import JsonFormatter, PhiFilter
from tests.harness.imaging import ImagingServer
from tests.harness.series import SeriesSpec, make_series, multipart_body, to_bytes

STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=test-boundary'
PHI = {
    "patient_id": "MRN-SECRET-4242",
    "patient_name": "Nightingale^Florence",
    "issuer": "HOSPITAL-PRIVATE",
}


def test_intake_logs_carry_no_patient_identifiers(
    imaging: ImagingServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    datasets = make_series(SeriesSpec(slices=3, **PHI))
    conflicting = make_series(SeriesSpec(slices=1, **PHI))[0]
    with imaging.client() as client:
        body = multipart_body([to_bytes(d) for d in datasets])
        headers = {
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=test-boundary'
        }
        assert client.post("/dicomweb/studies", content=body, headers=headers).status_code == 200
        client.post("/dicomweb/studies", content=body, headers=headers)  # duplicates
        stored = to_bytes(conflicting)
        conflicting.SeriesDescription = "edited"
        client.post(
            "/dicomweb/studies",
            content=multipart_body([stored, to_bytes(conflicting)]),
            headers=headers,
        )  # a conflict
        wrong = "/dicomweb/studies/1.2.3"
        client.post(wrong, content=body, headers=headers)  # study mismatch refusals
        client.get("/dicomweb/studies", params={"PatientID": PHI["patient_id"]})
    formatter = JsonFormatter()
    # The service's records: everything but this test's own HTTP client.
    records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    text = "\n".join(formatter.format(r) for r in records)
    assert any(r.name == "services.imaging.access" for r in records)
    assert any("duplicate" in r.getMessage() for r in records)
    for value in PHI.values():
        for part in value.split("^"):
            assert part not in text


def test_phi_filter_redacts_dataset_dumps() -> None:
    record = logging.makeLogRecord(
        {"msg": "(0010,0010) Patient's Name PN: 'Doe^John'\nPatientID=12345, Modality=CT"}
    )
    PhiFilter().filter(record)
    assert "Doe" not in record.getMessage() and "12345" not in record.getMessage()
    assert "Modality=CT" in record.getMessage()


def test_exceptions_and_library_warnings_reach_the_log_without_their_values() -> None:
    """A 500's traceback and pydicom's warnings quote what a caller sent; the log keeps
    the exception's type and code locations, and the warning with its values masked."""
    formatter, phi = JsonFormatter(), PhiFilter()
    try:
        int("Nightingale^Florence MRN-SECRET-4242")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, sys.exc_info())
    line = formatter.format(record)
    assert "ValueError at" in line and "test_privacy.py" in line
    assert "Nightingale" not in line and "MRN-SECRET" not in line
    warning = logging.LogRecord(
        "py.warnings",
        logging.WARNING,
        __file__,
        1,
        "UserWarning: Invalid value for VR PN: 'Nightingale^Florence'",
        None,
        None,
    )
    assert phi.filter(warning)
    assert "Nightingale" not in formatter.format(warning)
