"""Scored questionnaires: the registry, EQ-5D-5L's index against the published value sets'
anchor values, and its responses scored into Observations by the real server."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.fhir import builders as b
from services.common.vocabulary import PROMS, PromCode
from services.outcomes.fhir import questionnaires
from services.outcomes.fhir.questionnaires import eq5d5l
from services.outcomes.fhir.questionnaires.base import ScoringError
from tests.harness.outcomes import OutcomesServer

EQ5D_URL = str(PROMS[PromCode.EQ5D_INDEX].questionnaire)


def _eq5d(patient: str, profile: str, vas: int | None = None) -> dict[str, object]:
    answers: list[tuple[str, int | None]] = [
        (dimension, int(level) or None)
        for (dimension, _), level in zip(eq5d5l.DIMENSIONS, profile, strict=True)
    ]
    if vas is not None:
        answers.append(("vas", vas))
    return b.questionnaire_response(
        EQ5D_URL, patient, answers, authored="2025-05-01", time_point="month-6"
    )


def test_the_registry_knows_each_questionnaire_by_url_and_id() -> None:
    assert set(questionnaires.REGISTRY) == {
        PROMS[PromCode.ODI].questionnaire,
        PROMS[PromCode.EQ5D_INDEX].questionnaire,
    }
    assert questionnaires.by_id("eq-5d-5l") is eq5d5l.QUESTIONNAIRE
    response = {"questionnaire": f"{EQ5D_URL}|2.1"}  # a versioned canonical
    assert questionnaires.for_response(response) is eq5d5l.QUESTIONNAIRE


@pytest.mark.parametrize(
    ("value_set", "profile", "published"),
    [
        # Devlin et al. 2018: values range from -0.285 (55555) to 0.950 (11211, 12111).
        ("EN", "55555", -0.285),
        ("EN", "11211", 0.950),
        ("EN", "11111", 1.0),
        # Andrade et al. 2020: the French value set ranges from -0.525 to 1.
        ("FR", "55555", -0.525),
        ("FR", "11111", 1.0),
    ],
)
def test_index_matches_the_published_anchors(
    value_set: str, profile: str, published: float
) -> None:
    assert eq5d5l.index_value(profile, value_set) == pytest.approx(published, abs=0.0005)


def test_the_index_falls_with_every_worse_level() -> None:
    for value_set in eq5d5l.VALUE_SETS:
        for position in range(5):
            values = []
            for level in "12345":
                profile = "1" * position + level + "1" * (4 - position)
                values.append(eq5d5l.index_value(profile, value_set))
            assert values == sorted(values, reverse=True), (value_set, position)


def test_incomplete_or_out_of_range_responses_are_refused() -> None:
    with pytest.raises(ScoringError, match="anxiety-depression"):
        eq5d5l.QUESTIONNAIRE.score(_eq5d("Patient/1", "21320"))
    bad = _eq5d("Patient/1", "21321")
    bad["item"][0]["answer"] = [{"valueInteger": 6}]  # type: ignore[index]
    with pytest.raises(ScoringError) as excinfo:
        eq5d5l.QUESTIONNAIRE.score(bad)
    assert excinfo.value.expression == "QuestionnaireResponse.item[0].answer[0]"


def test_eq5d5l_response_is_scored_into_an_index_observation(outcomes: OutcomesServer) -> None:
    with outcomes.client() as client:
        published = client.get("/Questionnaire").json()
        assert {e["resource"]["id"] for e in published["entry"]} == {"odi", "eq-5d-5l"}
        assert client.get("/Questionnaire/eq-5d-5l").json()["url"] == EQ5D_URL
        pid = client.post("/Patient", json=b.patient("MRN-EQ")).json()["id"]
        created = client.post("/QuestionnaireResponse", json=_eq5d(f"Patient/{pid}", "21321", 70))
        assert created.status_code == 201, created.text
        qr = created.json()
        derived = client.get(
            "/Observation", params={"derived-from": f"QuestionnaireResponse/{qr['id']}"}
        ).json()
        assert derived["total"] == 1
        observation = derived["entry"][0]["resource"]
        assert observation["code"]["coding"][0]["code"] == "eq5d-index"
        assert observation["valueQuantity"]["value"] == eq5d5l.index_value("21321", "FR")
        components = {
            c["code"]["coding"][0]["code"]: c.get("valueString", c.get("valueInteger"))
            for c in observation["component"]
        }
        assert components["profile"] == "21321" and components["vas"] == 70
        assert components["mobility"] == 2 and components["pain-discomfort"] == 2
        assert "France" in observation["method"]["text"]
        assert observation["extension"][0]["valueCoding"]["code"] == "month-6"
        refused = client.post("/QuestionnaireResponse", json=_eq5d(f"Patient/{pid}", "21301"))
        assert refused.status_code == 422
        assert "pain-discomfort" in refused.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["item"].insert(1, {"linkId": "mobility"}), "appears twice"),
        (lambda r: r["item"][0]["answer"].append({"valueInteger": 2}), "one answer"),
        (
            lambda r: r["item"].__setitem__(
                5, {"linkId": "vas", "answer": [{"valueDecimal": 70.5}]}
            ),
            "0-100",
        ),
        (
            lambda r: r["item"].__setitem__(
                5, {"linkId": "vas", "answer": [{"valueInteger": 101}]}
            ),
            "0-100",
        ),
        (
            lambda r: r["item"].__setitem__(
                5, {"linkId": "vas", "answer": [{"valueCoding": {"code": "70"}}]}
            ),
            "0-100",
        ),
        (
            lambda r: r["item"].append({"linkId": "odi-1", "answer": [{"valueInteger": 1}]}),
            "unknown",
        ),
    ],
)
def test_malformed_answers_are_named(mutate: Any, message: str) -> None:
    response = _eq5d("Patient/1", "21321", 70)
    mutate(response)
    with pytest.raises(ScoringError, match=message):
        eq5d5l.QUESTIONNAIRE.score(response)


def test_a_choice_may_be_answered_by_its_coding() -> None:
    response = _eq5d("Patient/1", "21321")
    response["item"][0]["answer"] = [{"valueCoding": {"code": "3"}}]  # type: ignore[index]
    score = eq5d5l.QUESTIONNAIRE.score(response)
    assert score.components[0]["valueString"] == "31321"
