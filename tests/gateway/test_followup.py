"""Follow-up tracking on hand-made cases (pure): what the study's schedule expects, and
where each item stands on a given day."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

from services.common import vocabulary
from services.common.contracts import StudyResult
from services.common.fhir import builders
from services.gateway.cases import Case, build_case, interval_label
from services.gateway.followup import HEADER, FollowUp, columns, follow_up, row
from tests.gateway.test_cases import RESEARCH, VIEW, fh, record, study

SURGERY = date(2024, 3, 10)


def _case(
    observations: list[dict[str, Any]] | None = None,
    studies: list[StudyResult] | None = None,
    **kwargs: Any,
) -> Case:
    clinical = record("c1", "M1", observations=observations or [], **kwargs)
    return build_case(clinical, studies or [], VIEW)


def _odi(day: date, time_point: str | None) -> dict[str, Any]:
    return builders.measurement(
        "Patient/pat-M1", "odi", 40, effective=day.isoformat(), time_point=time_point
    )


def _status(entry: FollowUp, item: str, time_point: str | None) -> str | None:
    return entry.column(item, time_point)


def test_each_status_follows_the_window_of_its_time_point() -> None:
    case = _case([_odi(SURGERY - timedelta(days=5), "baseline")])
    # Day 60: week-6 (28-70, nominal 42) is overdue, month-3 (70-135) upcoming.
    on_60 = follow_up(case, SURGERY + timedelta(days=60))
    assert on_60.days_since_surgery == 60
    assert _status(on_60, "odi", "baseline") == "present"
    assert _status(on_60, "eq5d", "baseline") == "missing"  # the surgery closed its window
    assert _status(on_60, "odi", "week-6") == "overdue"
    assert _status(on_60, "odi", "month-3") == "upcoming"
    # Day 80: month-3 opened and is due (nominal 91); week-6 closed, missing.
    on_80 = follow_up(case, SURGERY + timedelta(days=80))
    assert _status(on_80, "odi", "month-3") == "due"
    assert _status(on_80, "odi", "week-6") == "missing"
    item = next(i for i in on_80.items if (i.item, i.time_point) == ("odi", "month-3"))
    assert item.due_date == SURGERY + timedelta(days=91)
    assert item.window == (SURGERY + timedelta(days=70), SURGERY + timedelta(days=135))
    assert on_80.counts["present"] == 1 and sum(on_80.counts.values()) == len(on_80.items)
    # Before surgery, the baseline is due and everything after it upcoming.
    before = follow_up(case, SURGERY - timedelta(days=10))
    assert _status(before, "eq5d", "baseline") == "due"
    assert _status(before, "odi", "month-24") == "upcoming"


def test_a_time_point_is_taken_from_the_date_when_not_coded_and_any_pain_scale_counts() -> None:
    observations = [
        _odi(SURGERY + timedelta(days=95), None),  # nearest time point: month-3
        builders.measurement(
            "Patient/pat-M1", "leg-pain-vas", 3, effective="2024-04-21", time_point="week-6"
        ),
        builders.measurement(
            "Patient/pat-M1", "back-pain-nrs", 3, effective="2024-04-21", time_point="week-6"
        ),
    ]
    entry = follow_up(_case(observations), SURGERY + timedelta(days=100))
    assert _status(entry, "odi", "month-3") == "present"
    assert _status(entry, "leg-pain", "week-6") == "present"  # VAS satisfies leg pain
    assert _status(entry, "back-pain", "week-6") == "present"  # so does NRS for back pain
    assert _status(entry, "eq5d", "week-6") == "missing"


def test_imaging_counts_only_the_groups_modality_inside_its_window() -> None:
    pre = study("1.1", "20240301", fh(10, 10))
    old_post = study("1.2", "20250601", fh(12, 12))  # 448 days after: beyond 12 months
    entry = follow_up(_case(studies=[pre, old_post]), SURGERY + timedelta(days=500))
    assert _status(entry, "imaging-pre", None) == "present"
    assert _status(entry, "imaging-post", None) == "missing"
    early = follow_up(_case(studies=[pre]), SURGERY + timedelta(days=30))
    assert _status(early, "imaging-post", None) == "due"  # due by 3 months
    late = follow_up(_case(studies=[pre]), SURGERY + timedelta(days=120))
    assert _status(late, "imaging-post", None) == "overdue"
    mr_only = study("1.3", "20240301", {}, modality="MR")
    foraminal = follow_up(_case(studies=[mr_only]), SURGERY + timedelta(days=30))
    assert _status(foraminal, "imaging-pre", None) == "missing"  # an MR is not the CT asked


def test_without_a_surgery_date_every_open_item_is_unknown() -> None:
    procedure_less = _case(performed="")
    entry = follow_up(procedure_less, SURGERY)
    assert entry.days_since_surgery is None and entry.surgery_date is None
    assert {i.status for i in entry.items} == {"unknown"}


def test_the_researcher_view_has_no_follow_up() -> None:
    case = build_case(record("c1", "M1"), [], RESEARCH)
    with pytest.raises(ValueError, match="identified"):
        follow_up(case, SURGERY)


def test_the_csv_has_a_column_per_expected_item() -> None:
    entry = follow_up(_case([_odi(SURGERY, "baseline")]), SURGERY + timedelta(days=1000))
    cells = dict(zip(HEADER, row(entry), strict=True))
    assert cells["odi_baseline"] == "present" and cells["odi_month-24"] == "missing"
    assert cells["imaging-post"] == "missing" and cells["days_since_surgery"] == "1000"
    assert cells["present"] == "1"
    expected_columns = sum(len(e.time_points) if e.codes else 1 for e in vocabulary.FOLLOW_UP)
    assert len(columns()) == expected_columns


def test_an_uncoded_answer_counts_for_the_window_that_holds_its_day() -> None:
    """Day 65 is inside week-6's window (28-70), not month-3's (70-135), although it is
    nearer month-3's nominal day on a log scale: the coordinator must not chase it."""
    entry = follow_up(_case([_odi(SURGERY + timedelta(days=65), None)]), SURGERY + timedelta(66))
    assert _status(entry, "odi", "week-6") == "present"
    assert _status(entry, "odi", "month-3") == "upcoming"
    for day, expected in ((130, "month-3"), (260, "month-6"), (530, "month-12"), (70, "month-3")):
        assert interval_label(day) == expected, day
