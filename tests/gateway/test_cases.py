"""Case assembly and the cohort summary on hand-made inputs (pure, no servers)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from services.common.contracts import StudyResult
from services.common.fhir import builders, codes
from services.gateway.cases import ClinicalRecord, View, build_case, interval_label
from services.gateway.cohort import summarize
from services.gateway.privacy import Pseudonymizer

VIEW = View(True, None, codes.MRN_SYSTEM_DEFAULT, lambda c, s, n: f"/{c}/{s}/{n}")
RESEARCH = View(False, Pseudonymizer(b"k" * 32), codes.MRN_SYSTEM_DEFAULT, VIEW.key_image_url)


def record(
    case: str,
    mrn: str,
    *,
    group: str = "foraminal-stenosis",
    levels: tuple[str, ...] = ("L4-L5",),
    performed: str = "2024-03-10T09:00:00Z",
    observations: list[dict[str, Any]] | None = None,
) -> ClinicalRecord:
    patient = builders.patient(mrn) | {"id": f"pat-{mrn}"}
    procedure = builders.procedure(
        f"Patient/pat-{mrn}",
        "Practitioner/s1",
        group=group,
        levels=list(levels),
        performed=performed,
    ) | {"id": case}
    surgeon = builders.practitioner("S1", "House", "Greg") | {"id": "s1"}
    return ClinicalRecord(procedure, patient, surgeon, observations or [])


def study(
    uid: str,
    day: str,
    values: dict[tuple[str, str, str | None], float | None],
    *,
    modality: str = "CT",
    time: str | None = None,
    manual: list[dict[str, Any]] | None = None,
    state: str = "done",
) -> StudyResult:
    units = {"foraminal_height": "mm", "disc_height": "mm", "dural_sac_area": "mm2"}
    measurements = [
        {
            "quantity": q,
            "level": level,
            "level_index": 0,
            "side": side,
            "value": v,
            "unit": units.get(q, "mm3"),
            "series_instance_uid": "1.2.3",
            "status": "ok" if v is not None else "needs_review",
            "reason": None if v is not None else "edge not found",
        }
        for (q, level, side), v in values.items()
    ]
    manual = [
        {
            "id": n,
            "study_instance_uid": uid,
            "unit": "mm",
            "note": None,
            "created_at": "2024-03-01T00:00:00Z",
            **m,
        }
        for n, m in enumerate(manual or [], start=1)
    ]
    return StudyResult.model_validate(
        {
            "study_instance_uid": uid,
            "patient_id": "x",
            "study_date": day,
            "study_time": time,
            "modalities": [modality],
            "issuer_of_patient_id": None,
            "state": "complete",
            "version": 1,
            "analysis_state": state,
            "analysis_error": None,
            "result": None
            if state != "done"
            else {
                "study_instance_uid": uid,
                "modality": modality,
                "status": "ok",
                "warnings": [],
                "algorithm": {"name": "spine-decompression", "version": "1.0.0"},
                "measurements": measurements,
                "study_version": 1,
                "computed_at": "2024-03-01T00:00:00Z",
                "measurement_set_id": 1,
                "key_images": [{"name": "fh-l4-l5-left", "url": "/fh-l4-l5-left.png"}],
                "sr": {"sop_instance_uid": "9.9", "wado": "/dicomweb"},
            },
            "manual_measurements": manual,
        }
    )


def fh(left: float | None, right: float | None, level: str = "L4-L5") -> dict[Any, float | None]:
    return {("foraminal_height", level, "left"): left, ("foraminal_height", level, "right"): right}


def test_pairing_takes_the_latest_pre_and_labels_every_post() -> None:
    studies = [
        study("old", "20230101", fh(10, 10)),
        study("pre", "20240301", fh(12, 13)),
        study("mr", "20240302", {}, modality="MR"),
        study("post1", "20240312", fh(16, 17)),
        study("post2", "20240615", fh(15, 16.5)),
    ]
    case = build_case(record("c1", "M1"), studies, VIEW)
    assert case.imaging.pre is not None and case.imaging.pre.study == "pre"
    assert [(p.study, p.label, p.interval_days) for p in case.imaging.post] == [
        ("post1", "day-2", 2),
        ("post2", "month-3", 97),
    ]
    assert {o.study for o in case.imaging.other} == {"old", "mr"}
    left = next(r for r in case.imaging.metrics if r.side == "left" and r.operated)
    assert left.pre.value == 12 and [p.change for p in left.post] == [4, 3]
    assert left.post[0].change_percent == pytest.approx(33.33, abs=0.01)
    assert case.imaging.post[0].key_images[0].url == "/c1/post-1/fh-l4-l5-left"


def test_same_day_study_is_placed_by_time_or_left_out() -> None:
    timed = build_case(
        record("c1", "M1"),
        [
            study("a", "20240310", fh(12, 12), time="071500"),
            study("b", "20240310", fh(15, 15), time="150000"),
        ],
        VIEW,
    )
    assert timed.imaging.pre and timed.imaging.pre.study == "a"
    assert [p.study for p in timed.imaging.post] == ["b"]
    untimed = build_case(
        record("c1", "M1", performed="2024-03-10"), [study("a", "20240310", fh(12, 12))], VIEW
    )
    assert untimed.imaging.pre is None and not untimed.imaging.post
    assert any("day of surgery" in w for w in untimed.warnings)


def test_manual_value_takes_precedence_and_review_has_no_number() -> None:
    manual = [
        {
            "quantity": "foraminal_height",
            "level": "L4-L5",
            "side": "right",
            "value": 14.2,
            "reader_id": "rad1",
        }
    ]
    case = build_case(
        record("c1", "M1"),
        [
            study("pre", "20240301", fh(12, None), manual=manual),
            study("post", "20240312", fh(16, 17)),
        ],
        VIEW,
    )
    rows = {r.side: r for r in case.imaging.metrics if r.operated}
    assert rows["right"].pre.status == "manual" and rows["right"].pre.value == 14.2
    assert rows["right"].pre.automatic is None
    assert rows["right"].post[0].change == pytest.approx(2.8)
    assert "rad1" not in case.model_dump_json()  # the reader's identity stays in imaging
    pending = build_case(
        record("c1", "M1"),
        [study("pre", "20240301", fh(None, 12)), study("post", "20240312", {}, state="queued")],
        VIEW,
    )
    rows = {r.side: r for r in pending.imaging.metrics if r.operated}
    assert rows["left"].pre.status == "needs_review" and rows["left"].pre.value is None
    assert rows["left"].post[0].value.status == "missing"
    quantity, reason = pending.primary_pair()
    assert quantity == "foraminal_height" and reason and "queued" in reason


def test_the_primary_review_decides_which_value_counts() -> None:
    """Accepted keeps the automatic value, corrected replaces it, rejected excludes it; the
    latest primary read wins; blinded second reads never count; the summary counts the
    review states and can compare the reviewed values only."""

    def read(n: int, side: str, action: str, value: float | None, **extra: Any) -> Any:
        return {
            "quantity": "foraminal_height",
            "level": "L4-L5",
            "side": side,
            "value": value,
            "reader_id": "rad1",
            "action": action,
            "created_at": f"2024-03-0{n}T00:00:00Z",
            **extra,
        }

    pre_reads = [
        read(1, "left", "corrected", 9.0),
        read(2, "left", "accepted", 12.0),  # the latest primary read
        read(3, "left", "measured", 5.0, purpose="second", reader_id="rad2"),
        read(4, "left", "corrected", 30.0, measurement_set_id=0),  # of an earlier result
        read(1, "right", "rejected", None, reason="wrong-level"),
    ]
    post_reads = [read(4, "left", "corrected", 15.5)]
    case = build_case(
        record("c1", "M1"),
        [
            study("pre", "20240301", fh(12, 11), manual=pre_reads),
            study("post", "20240312", fh(16, 17), manual=post_reads),
        ],
        VIEW,
    )
    rows = {r.side: r for r in case.imaging.metrics if r.operated}
    left, right = rows["left"], rows["right"]
    assert (left.pre.status, left.pre.value) == ("accepted", 12.0)
    assert (left.post[0].value.status, left.post[0].value.value) == ("corrected", 15.5)
    assert left.post[0].value.automatic == 16
    assert (right.pre.status, right.pre.value) == ("rejected", None)
    assert "wrong level" in (right.pre.reason or "")
    assert right.post[0].change is None
    assert "rad1" not in case.model_dump_json() and "rad2" not in case.model_dump_json()
    summary = summarize([case])
    assert {k: v for k, v in summary.review.items() if v} == {
        "accepted": 1,
        "corrected": 1,
        "rejected": 1,
        "ok": 1,
        "missing": 2,  # the disc height, not measured here
    }
    patient = next(m for m in summary.metrics if m.unit_of_analysis == "patient")
    assert patient.pre.mean == pytest.approx(12.0) and patient.post.mean == pytest.approx(15.5)
    reviewed = summarize([case], reviewed_only=True)
    assert reviewed.reviewed_only
    site = next(m for m in reviewed.metrics if m.unit_of_analysis == "site")
    assert site.post.n == 1  # the unreviewed automatic right post value is left out
    # The case list marks a change that rests on one side only.
    from services.gateway.api.cases import list_item

    item = list_item(case)
    assert item.one_sided and item.primary_change == pytest.approx(3.5)


def test_proms_baseline_change_and_mcid() -> None:
    observations = [
        builders.measurement(
            "Patient/pat-M1", "odi", 50, effective="2024-03-01", time_point="baseline"
        ),
        builders.measurement(
            "Patient/pat-M1", "odi", 40, effective="2024-06-01", time_point="month-3"
        ),
        builders.measurement(
            "Patient/pat-M1", "odi", 36, effective="2025-03-01", time_point="month-12"
        ),
        builders.measurement("Patient/pat-M1", "eq5d-index", 0.4, effective="2024-03-01"),  # no tp
        builders.measurement("Patient/pat-M1", "eq5d-index", 0.5, effective="2025-03-12"),
        builders.complication(
            "Patient/pat-M1",
            "Procedure/c1",
            kind="dural-tear",
            grade="CD-I",
            onset="2024-03-10",
            timing="early",
        ),
        builders.complication(
            "Patient/pat-M1",
            "Procedure/other",
            kind="infection",
            grade="CD-II",
            onset="2024-04-10",
            timing="late",
        ),
    ]
    case = build_case(record("c1", "M1", observations=observations), [], VIEW)
    odi = next(s for s in case.proms if s.code == "odi")
    assert odi.baseline == 50
    assert [(p.time_point, p.change, p.mcid_reached) for p in odi.points] == [
        ("baseline", None, None),
        ("month-3", -10, False),
        ("month-12", -14, True),  # 14 >= 12.8
    ]
    eq5d = next(s for s in case.proms if s.code == "eq5d-index")
    assert [p.time_point for p in eq5d.points] == ["baseline", "month-12"]  # from the dates
    assert eq5d.points[1].mcid_reached is True  # +0.1 >= 0.08, higher is better
    # The other surgery's complication is not this case's.
    assert [(c.type, c.grade, c.timing, c.days_after_surgery) for c in case.complications] == [
        ("dural-tear", "I", "early", 0)
    ]


def test_researcher_view_shifts_every_date_by_the_same_offset() -> None:
    studies = [study("1.2.3.4", "20240301", fh(12, 13)), study("1.2.3.5", "20240312", fh(16, 17))]
    plain = build_case(record("c1", "M1"), studies, VIEW)
    masked = build_case(record("c1", "M1"), studies, RESEARCH)
    assert masked.patient.id.startswith("P-") and masked.patient.name is None
    assert masked.surgery.surgeon and masked.surgery.surgeon.id.startswith("S-")
    shift = masked.surgery.date - plain.surgery.date  # type: ignore[operator]
    assert shift.days != 0
    assert masked.imaging.pre.study_date - plain.imaging.pre.study_date == shift  # type: ignore[union-attr,operator]
    assert masked.imaging.pre.study.startswith("ST-")  # type: ignore[union-attr]
    assert "1.2.3.4" not in masked.model_dump_json() and "M1" not in masked.model_dump_json()
    assert masked.imaging.metrics == plain.imaging.metrics


def test_interval_labels() -> None:
    assert [interval_label(d) for d in (0, 1, 2, 3, 6, 30, 80, 150, 300, 500, 900)] == [
        "baseline",
        "day-1",
        "day-2",
        "day-3",
        "day-3",
        "week-6",
        "month-3",
        "month-6",
        "month-12",
        "month-12",
        "month-24",
    ]


def test_cohort_summary_matches_scipy_on_patient_means() -> None:
    rng = np.random.default_rng(3)
    cases = []
    pre_means, post_means = [], []
    for i in range(25):
        levels = ("L4-L5", "L5-S1") if i % 3 == 0 else ("L4-L5",)
        pre_values: dict[Any, float | None] = {}
        post_values: dict[Any, float | None] = {}
        pre_sites, post_sites = [], []
        for level in levels:
            a, b = rng.normal(12, 2, 2)
            c, d = a + rng.normal(3, 1), b + rng.normal(3, 1)
            pre_values |= fh(float(a), float(b), level)
            post_values |= fh(float(c), float(d), level)
            pre_sites += [a, b]
            post_sites += [c, d]
        pre_means.append(np.mean(pre_sites))
        post_means.append(np.mean(post_sites))
        observations = []
        if i % 5 == 0:
            observations.append(
                builders.complication(
                    f"Patient/pat-M{i}",
                    f"Procedure/c{i}",
                    kind="infection",
                    grade="CD-II",
                    onset="2024-03-20",
                    timing="early",
                )
            )
        studies = [
            study(f"pre{i}", "20240301", pre_values),
            study(f"post{i}", "20240312", post_values),
        ]
        cases.append(
            build_case(
                record(f"c{i}", f"M{i}", levels=levels, observations=observations), studies, VIEW
            )
        )
    # One case without any imaging: counted and listed, never dropped.
    cases.append(build_case(record("lost", "M99"), [], VIEW))
    summary = summarize(cases, "foraminal-stenosis")
    assert summary.counts.cases == 26 and summary.counts.with_pair == 25
    assert [(m.case_id, m.reason) for m in summary.missing] == [("lost", "no pre-operative CT")]
    patient = next(
        m
        for m in summary.metrics
        if m.quantity == "foraminal_height" and m.unit_of_analysis == "patient"
    )
    t = sps.ttest_rel(post_means, pre_means)
    w = sps.wilcoxon(post_means, pre_means)
    assert patient.change.n == 25
    assert patient.change.t_p_value == pytest.approx(t.pvalue)
    assert patient.change.wilcoxon_p_value == pytest.approx(w.pvalue)
    assert patient.pre.mean == pytest.approx(np.mean(pre_means))
    site = next(
        m
        for m in summary.metrics
        if m.quantity == "foraminal_height" and m.unit_of_analysis == "site"
    )
    assert site.change.n == 2 * 25 + 2 * 9  # 9 patients with two levels
    infection = summary.complications.by_type[0]
    ci = sps.binomtest(5, 26).proportion_ci(method="wilson")
    assert infection.code == "infection" and infection.proportion.count == 5
    assert (infection.proportion.ci95_low, infection.proportion.ci95_high) == pytest.approx(
        (ci.low, ci.high)
    )
