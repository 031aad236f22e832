"""The registry of scored questionnaires: the server publishes each at
``/fhir/Questionnaire/{id}`` and scores every QuestionnaireResponse to one of them into
an Observation of its PROM. A new questionnaire is one module here and one line below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.outcomes.fhir.questionnaires import eq5d5l, odi
from services.outcomes.fhir.questionnaires.base import Questionnaire, Score, ScoringError

REGISTRY: dict[str, Questionnaire] = {
    q.url: q
    for q in (
        odi.QUESTIONNAIRE,
        eq5d5l.QUESTIONNAIRE,
    )
}


def by_id(questionnaire_id: str) -> Questionnaire | None:
    return next((q for q in REGISTRY.values() if q.id == questionnaire_id), None)


def for_response(response: Mapping[str, Any]) -> Questionnaire | None:
    """The questionnaire a QuestionnaireResponse answers (its canonical, any version)."""
    canonical = str(response.get("questionnaire", "")).split("|", 1)[0]
    return REGISTRY.get(canonical)


__all__ = ["REGISTRY", "Questionnaire", "Score", "ScoringError", "by_id", "for_response"]
