"""Observations the server derives from what the EHR posts: the ODI score of an ODI
QuestionnaireResponse, and the length of stay of a finished Encounter. Each derived
Observation points back with ``derivedFrom`` and is updated, never duplicated, when
its source changes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.common.fhir import codes
from services.outcomes.fhir.odi import score_odi


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
    services.outcomes.fhir.odi.OdiError
        An ODI response that cannot be scored.
    """
    rtype = resource.get("resourceType")
    if rtype == "QuestionnaireResponse" and str(resource.get("questionnaire", "")).startswith(
        codes.ODI_QUESTIONNAIRE
    ):
        result = score_odi(resource)
        observation: dict[str, Any] = {
            "resourceType": "Observation",
            "status": "final" if resource.get("status") == "completed" else "preliminary",
            "category": _category("prom"),
            "code": {
                "coding": [_coding(codes.PROJECT, "odi")],
                "text": "Oswestry Disability Index",
            },
            "subject": resource["subject"],
            "effectiveDateTime": resource.get("authored"),
            "valueQuantity": {
                "value": result.score,
                "unit": "%",
                "system": codes.UCUM,
                "code": "%",
            },
            "derivedFrom": [{"reference": reference}],
        }
        if result.skipped:
            observation["note"] = [
                {"text": "Scored on the answered sections; skipped: " + ", ".join(result.skipped)}
            ]
        for extension in resource.get("extension", []):
            if extension.get("url") == codes.TIME_POINT_EXTENSION:
                observation["extension"] = [extension]
        if observation["effectiveDateTime"] is None:
            del observation["effectiveDateTime"]
        return "odi", observation
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
