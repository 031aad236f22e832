"""EQ-5D-5L: the descriptive system (five dimensions, five levels each), the EQ VAS, and
the index value from a national value set.

The index of a health state ``MO SC UA PD AD`` (each 1-5) is one minus the decrement of
each dimension's level; both value sets below are additive with no constant:

* **France** (default; the study's population): Andrade LF, Ludwig K, Ramos-Goñi JM,
  Oppe M, de Pouvourville G. *A French value set for the EQ-5D-5L.*
  PharmacoEconomics 2020;38(4):413-425. Range -0.525 (55555) to 1 (11111).
* **England**: Devlin NJ, Shah KK, Feng Y, Mulhern B, van Hout B. *Valuing health-related
  quality of life: an EQ-5D-5L value set for England.* Health Economics 2018;27(1):7-22.
  Range -0.285 (55555) to 1.

The five dimensions must all be answered (an index needs a whole health state); the EQ
VAS (0-100) is optional. The derived Observation carries the index as its value, and the
profile (e.g. ``21321``), each dimension's level and the VAS as components.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.common.vocabulary import PromCode
from services.outcomes.fhir.questionnaires.base import Item, Questionnaire, Score, ScoringError

DIMENSIONS: tuple[tuple[str, str], ...] = (
    ("mobility", "Mobility"),
    ("self-care", "Self-care"),
    ("usual-activities", "Usual activities"),
    ("pain-discomfort", "Pain / discomfort"),
    ("anxiety-depression", "Anxiety / depression"),
)
LEVELS = (
    ("1", "No problems"),
    ("2", "Slight problems"),
    ("3", "Moderate problems"),
    ("4", "Severe problems"),
    ("5", "Extreme problems / unable"),
)
VAS = "vas"

# Decrements of levels 2, 3, 4, 5 per dimension (level 1 decrements nothing).
VALUE_SETS: dict[str, tuple[str, dict[str, tuple[float, float, float, float]]]] = {
    "FR": (
        "France (Andrade et al. 2020)",
        {
            "mobility": (0.03759, 0.04774, 0.17949, 0.32509),
            "self-care": (0.03656, 0.050781, 0.172251, 0.258331),
            "usual-activities": (0.03313, 0.03979, 0.15689, 0.24005),
            "pain-discomfort": (0.02198, 0.04704, 0.26374, 0.44399),
            "anxiety-depression": (0.02046, 0.04683, 0.20005, 0.25803),
        },
    ),
    "EN": (
        "England (Devlin et al. 2018)",
        {
            "mobility": (0.058, 0.076, 0.207, 0.274),
            "self-care": (0.050, 0.080, 0.164, 0.203),
            "usual-activities": (0.050, 0.063, 0.162, 0.184),
            "pain-discomfort": (0.063, 0.084, 0.276, 0.335),
            "anxiety-depression": (0.078, 0.104, 0.285, 0.289),
        },
    ),
}
VALUE_SET = "FR"


def index_value(profile: str, value_set: str = VALUE_SET) -> float:
    """The index of a five-digit health state (e.g. ``"21321"``) in ``value_set``."""
    if len(profile) != len(DIMENSIONS) or any(c not in "12345" for c in profile):
        raise ValueError(f"'{profile}' is not an EQ-5D-5L health state")
    decrements = VALUE_SETS[value_set][1]
    lost = sum(
        decrements[dimension][int(level) - 2]
        for (dimension, _), level in zip(DIMENSIONS, profile, strict=True)
        if level != "1"
    )
    return round(1.0 - lost, 3)


def _score(questionnaire: Questionnaire, values: Mapping[str, int]) -> Score:
    missing = [d for d, _ in DIMENSIONS if d not in values]
    if missing:
        raise ScoringError(
            "the EQ-5D-5L index needs all five dimensions; unanswered: " + ", ".join(missing),
            "QuestionnaireResponse.item",
        )
    profile = "".join(str(values[d]) for d, _ in DIMENSIONS)
    system = questionnaire.url
    components: list[dict[str, Any]] = [
        {"code": {"coding": [{"system": system, "code": "profile"}]}, "valueString": profile}
    ]
    components += [
        {
            "code": {"coding": [{"system": system, "code": d, "display": text}]},
            "valueInteger": values[d],
        }
        for d, text in DIMENSIONS
    ]
    if VAS in values:
        components.append(
            {
                "code": {"coding": [{"system": system, "code": VAS, "display": "EQ VAS"}]},
                "valueInteger": values[VAS],
            }
        )
    label = VALUE_SETS[VALUE_SET][0]
    return Score(index_value(profile), tuple(components), method=f"EQ-5D-5L value set: {label}")


QUESTIONNAIRE = Questionnaire(
    id="eq-5d-5l",
    prom=PromCode.EQ5D_INDEX,
    name="EQ5D5L",
    title="EQ-5D-5L",
    items=(
        *(Item(d, text, "choice", LEVELS) for d, text in DIMENSIONS),
        Item(
            VAS,
            "EQ VAS: your health today (0 worst - 100 best imaginable)",
            "integer",
            low=0,
            high=100,
        ),
    ),
    scorer=_score,
)
