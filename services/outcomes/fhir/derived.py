"""Observations the server derives from what the EHR posts: the score of a
QuestionnaireResponse to a registered questionnaire (ODI, EQ-5D-5L, ... see
:mod:`services.outcomes.fhir.questionnaires`), and the length of stay of a finished
Encounter. Each derived
Observation points back with ``derivedFrom`` and is updated, never duplicated, when
its source changes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.common.fhir import codes
from services.outcomes.fhir import questionnaires


def _coding(system: str, code: str) -> dict[str, Any]:
    concept = codes.PROJECT_CODES.get(code)
    out = {"system": system, "code": code}
    if concept is not None:
        out["display"] = concept.display
    return out


def _category(code: str) -> list[dict[str, Any]]:
    survey = {"system": codes.OBSERVATION_CATEGORY, "code": "survey"}
    return [{"coding": [survey, _coding(codes.PROJECT, code)]}]


def derive(resource: dict[str, Any], reference: str) -> tuple[str, dict[str, Any]] | None:
    """The (code, Observation) derived from ``resource``, or None.

    Parameters
    ----------
    resource
        A stored QuestionnaireResponse or Encounter (FHIR JSON).
    reference
        Its reference, e.g. ``QuestionnaireResponse/abc``.

    Raises
    ------
    services.outcomes.fhir.questionnaires.ScoringError
        A response to a registered questionnaire that cannot be scored.
    """
    rtype = resource.get("resourceType")
    if rtype == "QuestionnaireResponse":
        questionnaire = questionnaires.for_response(resource)
        if questionnaire is None:
            return None  # a questionnaire we do not score
        score = questionnaire.score(resource)
        prom = questionnaire.outcome
        observation: dict[str, Any] = {
            "resourceType": "Observation",
            "status": "final" if resource.get("status") == "completed" else "preliminary",
            "category": _category("prom"),
            "code": {"coding": [_coding(codes.PROJECT, prom.code)], "text": prom.display},
            "subject": resource["subject"],
            "effectiveDateTime": resource.get("authored"),
            "valueQuantity": {
                "value": score.value,
                "unit": prom.unit,
                "system": codes.UCUM,
                "code": prom.ucum,
            },
            "derivedFrom": [{"reference": reference}],
        }
        if score.components:
            observation["component"] = list(score.components)
        if score.method:
            observation["method"] = {"text": score.method}
        if score.notes:
            observation["note"] = [{"text": note} for note in score.notes]
        for extension in resource.get("extension", []):
            if extension.get("url") == codes.TIME_POINT_EXTENSION:
                observation["extension"] = [extension]
        if observation["effectiveDateTime"] is None:
            del observation["effectiveDateTime"]
        return prom.code.value, observation
    if rtype == "Encounter":
        period = resource.get("period") or {}
        if not period.get("start") or not period.get("end"):
            return None
        start = datetime.fromisoformat(period["start"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(period["end"].replace("Z", "+00:00"))
        days = (end.date() - start.date()).days
        return "length-of-stay", {
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [_coding(codes.PROJECT, "early-postop")]}],
            "code": {"coding": [_coding(codes.PROJECT, "length-of-stay")]},
            "subject": resource["subject"],
            "encounter": {"reference": reference},
            "effectiveDateTime": period["end"],
            "valueQuantity": {"value": days, "unit": "d", "system": codes.UCUM, "code": "d"},
            "derivedFrom": [{"reference": reference}],
        }
    return None
