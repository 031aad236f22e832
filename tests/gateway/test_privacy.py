"""Pseudonyms, date shifts and FHIR de-identification."""

from __future__ import annotations

from datetime import date

import pytest

from services.gateway.privacy import Pseudonymizer, age_at, deidentify_resource, shift_fhir_date

KEY = b"k" * 32


def test_pseudonyms_are_stable_keyed_and_distinct() -> None:
    a, b = Pseudonymizer(KEY), Pseudonymizer(b"z" * 32)
    assert a.patient("MRN1") == a.patient("MRN1") != a.patient("MRN2")
    assert a.patient("MRN1") != b.patient("MRN1")  # another key, another data set
    assert a.patient("MRN1", "sys-a") != a.patient("MRN1", "sys-b")
    assert a.patient("MRN1").startswith("P-") and len(a.patient("MRN1")) == 14
    with pytest.raises(ValueError, match="32 bytes"):
        Pseudonymizer(b"short")


def test_shifts_are_bounded_non_zero_and_spread() -> None:
    p = Pseudonymizer(KEY, max_shift_days=30)
    shifts = [p.shift_days(f"MRN{i}") for i in range(500)]
    assert all(1 <= abs(s) <= 30 for s in shifts)
    assert min(shifts) < -20 and max(shifts) > 20  # both directions, most of the range
    assert p.shift_days("MRN1") == p.shift_days("MRN1")


def test_shift_keeps_precision_and_intervals() -> None:
    assert shift_fhir_date("2024-03-01", -1) == "2024-02-29"
    assert shift_fhir_date("2024-03-01T09:00:00Z", 10) == "2024-03-11T09:00:00Z"
    assert shift_fhir_date("2024-03", 40) == "2024-04"
    assert shift_fhir_date("2024", 40) == "2024"
    assert age_at(date(1930, 6, 1), date(2024, 1, 1)) == 90  # capped
    assert age_at(date(1960, 6, 1), date(2024, 5, 31)) == 63


def test_deidentify_drops_identity_and_maps_references() -> None:
    resource = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/abc", "display": "Jane Doe"},
        "performer": [{"reference": "Practitioner/x"}],
        "effectiveDateTime": "2024-01-10",
        "note": [{"text": "called Mrs Doe at home"}],
        "identifier": [{"value": "LAB-1"}],
        "valueQuantity": {"value": 3},
    }
    clean = deidentify_resource(resource, shift=5, references={"Patient/abc": "Patient/P-1"})
    assert clean["subject"] == {"reference": "Patient/P-1"}  # no display name
    assert clean["effectiveDateTime"] == "2024-01-15"
    assert "note" not in clean and "identifier" not in clean
    assert clean["performer"] == [{}]  # an unmapped person reference is dropped
    assert resource["effectiveDateTime"] == "2024-01-10"  # the input is untouched
