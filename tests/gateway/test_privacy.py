"""Pseudonyms, date shifts and FHIR de-identification."""

from __future__ import annotations

from datetime import date

import pytest

from services.gateway.privacy import Pseudonymizer, ResearchSerializer, age_at, shift_fhir_date

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


def test_the_research_serializer_keeps_only_the_allow_list() -> None:
    resource = {
        "resourceType": "Observation",
        "id": "obs-ehr-17",
        "status": "final",
        "subject": {"reference": "Patient/abc", "display": "Jane Doe"},
        "performer": [{"reference": "Practitioner/x"}],
        "effectiveDateTime": "2024-01-10",
        "valueDateTime": "1961-04-02",
        "note": [{"text": "called Mrs Doe at home"}],
        "identifier": [{"value": "LAB-1"}],
        "code": {"coding": [{"system": "s", "code": "c", "display": "d"}], "text": "Jane's ODI"},
        "valueQuantity": {"value": 3, "unit": "%", "id": "x"},
        "extension": [{"url": "http://x/free", "valueString": "MRN 12345, born 1961-04-02"}],
        "component": [{"code": {"text": "Jane"}, "valueString": "Doe"}],
        "partOf": [{"reference": "Procedure/proc-ehr-9"}],
    }
    serializer = ResearchSerializer(
        Pseudonymizer(KEY),
        shift=5,
        references={"Patient/abc": "Patient/P-1", "Procedure/proc-ehr-9": "Procedure/C-1"},
    )
    clean = serializer.serialize(resource)
    assert clean is not None
    assert clean["subject"] == {"reference": "Patient/P-1"}  # no display name
    assert clean["partOf"] == [{"reference": "Procedure/C-1"}]
    assert clean["effectiveDateTime"] == "2024-01-15"
    assert clean["id"].startswith("R-") and "obs-ehr-17" not in str(clean)
    assert clean["code"] == {"coding": [{"system": "s", "code": "c", "display": "d"}]}
    assert clean["valueQuantity"] == {"value": 3, "unit": "%"}
    for gone in ("note", "identifier", "performer", "valueDateTime", "extension", "component"):
        assert gone not in clean, gone
    assert "Jane" not in str(clean) and "1961" not in str(clean)
    assert resource["effectiveDateTime"] == "2024-01-10"  # the input is untouched
    old = {"resourceType": "Patient", "id": "p", "birthDate": "1929-02-03", "gender": "male"}
    capped = ResearchSerializer(
        Pseudonymizer(KEY), shift=5, references={}, birth_year_floor=1934
    ).serialize(old)
    assert capped == {
        "resourceType": "Patient",
        "id": capped["id"],
        "gender": "male",
        "birthDate": "1934",
    }  # type: ignore[index]
    assert serializer.serialize({"resourceType": "AuditEvent", "id": "1"}) is None
