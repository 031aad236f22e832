"""Every spelling of the study's vocabulary comes from services.common.vocabulary: the
imaging JSON, the DICOM SR, the FHIR codes and ranges, the gateway's CSV columns and
the APIs' enumerations."""

from __future__ import annotations

from typing import Any

from pydicom import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from services.common import contracts, vocabulary
from services.common.fhir import builders, codes
from services.gateway.analysis.dataset import NAME, variable_name
from services.gateway.export import HEADER
from services.imaging.analysis.report import AnalysisResult, Measurement
from services.imaging.analysis.sr import build_sr


def _evidence() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.PatientID = "MRN1"
    ds.PatientName = "Test^Vocabulary"
    ds.Modality = "CT"
    return ds


def _concepts(node: Any) -> list[tuple[str, str, str]]:
    found = []
    for item in getattr(node, "ContentSequence", []):
        for name in getattr(item, "ConceptNameCodeSequence", []):
            found.append((name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning))
        for value in getattr(item, "MeasuredValueSequence", []):
            for unit in value.MeasurementUnitsCodeSequence:
                found.append((unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning))
        found += _concepts(item)
    return found


def test_the_sr_names_each_quantity_and_unit_as_the_vocabulary_does() -> None:
    evidence = _evidence()
    result = AnalysisResult(str(evidence.StudyInstanceUID), "CT")
    for n, quantity in enumerate(vocabulary.QUANTITIES.values()):
        side = "left" if quantity.per_side else None
        m = Measurement(quantity.name, "L4-L5", 3, side, 10.0 + n, str(evidence.SeriesInstanceUID))
        m.sop_instance_uid = str(evidence.SOPInstanceUID)
        result.measurements.append(m)
    concepts = _concepts(build_sr(result, [evidence]))
    for quantity in vocabulary.QUANTITIES.values():
        assert quantity.sr_concept in concepts
        assert (quantity.unit, "UCUM", quantity.unit_display) in concepts


def test_the_result_contract_spells_quantities_and_levels_from_the_vocabulary() -> None:
    schema = contracts.Measurement.model_json_schema()
    quantities = schema["$defs"]["QuantityName"]["enum"]
    assert quantities == [q.value for q in vocabulary.QUANTITIES]
    level = schema["properties"]["level"]["anyOf"][0]
    assert tuple(level["enum"]) == vocabulary.LEVELS


def test_fhir_codes_and_ranges_come_from_the_vocabulary() -> None:
    system = {c.code for c in codes.PROJECT_CONCEPTS}
    for quantity in vocabulary.QUANTITIES.values():
        assert quantity.code in system
        measure = codes.MEASURE_BY_CODE[(codes.PROJECT, quantity.code)]
        assert (measure.low, measure.high) == quantity.accepted
        low, high = quantity.plausible
        assert quantity.accepted[0] <= low < high <= quantity.accepted[1]
        observation = builders.imaging_metric(
            "Patient/1",
            quantity.code,
            5.0,
            level="L4-L5",
            side=None,
            imaging_study_ref="ImagingStudy/1",
            effective="2025",
        )
        assert observation["valueQuantity"]["code"] == quantity.unit
    for prom in vocabulary.PROMS.values():
        assert prom.code in system
        measure = codes.MEASURE_BY_CODE[(codes.PROJECT, prom.code)]
        assert (measure.low, measure.high) == (prom.low, prom.high)
    for time_point in vocabulary.TIME_POINTS:
        assert time_point.code in system
    for group in vocabulary.GROUPS.values():
        assert group.code in system and group.primary in group.quantities


def test_csv_columns_are_spelled_from_the_vocabulary() -> None:
    for quantity in vocabulary.QUANTITIES:
        for suffix in ("pre", "pre_status", "post", "post_status", "change", "change_percent"):
            assert f"{quantity.value}_{suffix}" in HEADER
    for prom in vocabulary.PROMS:
        for time_point in vocabulary.TIME_POINT_CODES:
            assert variable_name(f"{prom.value}_{time_point}") in HEADER
    assert all(NAME.match(c) for c in HEADER)  # names that SPSS, Stata and R accept
    measured = {c.rsplit("_", 1)[0] for c in HEADER if c.endswith("_pre")}
    assert measured == {q.value for q in vocabulary.QUANTITIES}


def test_enumerations_declared_as_types_match_their_tables() -> None:
    from typing import get_args

    from services.imaging.models import JobState

    assert set(vocabulary.GROUP_CODES) == set(vocabulary.GROUPS)
    assert {g.code for g in vocabulary.GROUPS.values()} == set(vocabulary.GROUPS)
    assert set(get_args(contracts.AnalysisState)) == {"none"} | {s.value for s in JobState}
    assert set(vocabulary.PAIN_SCORES) <= {p.value for p in vocabulary.PROMS}


def test_the_follow_up_schedule_is_spelled_from_the_vocabulary() -> None:
    time_points = {tp.code: tp for tp in vocabulary.TIME_POINTS}
    for tp in vocabulary.TIME_POINTS:
        opens, closes = tp.window
        assert opens <= (tp.day if tp.day is not None else 0) <= closes, tp.code
    for expected in vocabulary.FOLLOW_UP:
        assert set(expected.codes) <= set(vocabulary.PROMS), expected.item
        assert set(expected.time_points) <= set(time_points), expected.item
        if not expected.codes:  # imaging: its own window and due day
            assert expected.window is not None and expected.due is not None
            assert expected.window[0] <= expected.due <= expected.window[1]
