"""Oswestry Disability Index (ODI v2.1a).

Ten sections, each answered 0-5. The score is the sum of the answered sections divided
by the maximum possible for those sections (5 x answered), times 100: skipped sections
are left out of both (Fairbank & Pynsent 2000).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.common.vocabulary import PromCode
from services.outcomes.fhir.questionnaires.base import Item, Questionnaire, Score, ScoringError

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
_OPTIONS = tuple((str(i), str(i)) for i in range(6))


@dataclass(frozen=True)
class OdiScore:
    score: float  # 0-100
    answered: int
    skipped: tuple[str, ...]


def _score(questionnaire: Questionnaire, values: Mapping[str, int]) -> Score:
    if not values:
        raise ScoringError("no ODI section is answered", "QuestionnaireResponse.item")
    score = round(100.0 * sum(values.values()) / (5 * len(values)), 1)
    skipped = tuple(link for link, _ in SECTIONS if link not in values)
    notes = ("Scored on the answered sections; skipped: " + ", ".join(skipped),) if skipped else ()
    return Score(score, notes=notes)


QUESTIONNAIRE = Questionnaire(
    id="odi",
    prom=PromCode.ODI,
    name="OswestryDisabilityIndex",
    title="Oswestry Disability Index v2.1a",
    items=tuple(Item(link, text, "choice", _OPTIONS) for link, text in SECTIONS),
    scorer=_score,
)


def score_odi(response: Mapping[str, Any]) -> OdiScore:
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
    ScoringError
        An answer outside 0-5, an unknown item, a repeated item, or nothing answered.
    """
    values = QUESTIONNAIRE.answers(response)
    score = QUESTIONNAIRE.scorer(QUESTIONNAIRE, values)
    skipped = tuple(link for link, _ in SECTIONS if link not in values)
    return OdiScore(score.value, len(values), skipped)
