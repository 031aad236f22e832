"""Oswestry Disability Index (ODI v2.1a) scoring from a QuestionnaireResponse.

Ten sections, each answered 0-5. The score is the sum of the answered sections
divided by the maximum possible for those sections (5 x answered), times 100:
skipped sections are left out of both (Fairbank & Pynsent 2000).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SECTIONS: tuple[tuple[str, str], ...] = (
    ("odi-1", "Pain intensity"),
    ("odi-2", "Personal care"),
    ("odi-3", "Lifting"),
    ("odi-4", "Walking"),
    ("odi-5", "Sitting"),
    ("odi-6", "Standing"),
    ("odi-7", "Sleeping"),
    ("odi-8", "Sex life"),
    ("odi-9", "Social life"),
    ("odi-10", "Travelling"),
)
LINK_IDS = {link for link, _ in SECTIONS}


class OdiError(ValueError):
    """The response cannot be scored; ``expression`` points at the offending item."""

    def __init__(self, message: str, expression: str) -> None:
        super().__init__(message)
        self.expression = expression


@dataclass(frozen=True)
class OdiScore:
    score: float  # 0-100
    answered: int
    skipped: tuple[str, ...]


def _answer_value(answer: dict[str, Any]) -> int | None:
    if "valueInteger" in answer:
        return int(answer["valueInteger"])
    coding = answer.get("valueCoding")
    if isinstance(coding, dict) and str(coding.get("code", "")).isdigit():
        return int(coding["code"])
    return None


def score_odi(response: dict[str, Any]) -> OdiScore:
    """Score an ODI QuestionnaireResponse (FHIR JSON).

    Parameters
    ----------
    response
        The QuestionnaireResponse, items ``odi-1`` .. ``odi-10`` answered with
        ``valueInteger`` 0-5 (or ``valueCoding`` with code "0".."5").

    Returns
    -------
    OdiScore

    Raises
    ------
    OdiError
        An answer outside 0-5, an unknown item, a repeated item, or nothing answered.
    """
    values: dict[str, int] = {}
    for index, item in enumerate(response.get("item", [])):
        link = item.get("linkId")
        where = f"QuestionnaireResponse.item[{index}]"
        if link not in LINK_IDS:
            raise OdiError(f"unknown ODI item '{link}'", where)
        if link in values:
            raise OdiError(f"ODI item '{link}' answered twice", where)
        answers = item.get("answer", [])
        if not answers:
            continue
        value = _answer_value(answers[0])
        if value is None or not 0 <= value <= 5:
            raise OdiError(f"ODI item '{link}' needs an answer 0-5", f"{where}.answer[0]")
        values[link] = value
    if not values:
        raise OdiError("no ODI section is answered", "QuestionnaireResponse.item")
    score = 100.0 * sum(values.values()) / (5 * len(values))
    skipped = tuple(link for link, _ in SECTIONS if link not in values)
    return OdiScore(round(score, 1), len(values), skipped)
