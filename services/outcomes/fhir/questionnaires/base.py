"""What a scored questionnaire is: its items (published as a FHIR Questionnaire) and the
function that turns a QuestionnaireResponse into the value of one PROM of the
vocabulary. Pure: FHIR JSON in, a :class:`Score` out; no database, no web framework.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from services.common.vocabulary import PROMS, Prom, PromCode

_SD = "http://hl7.org/fhir/StructureDefinition"


class ScoringError(ValueError):
    """The response cannot be scored; ``expression`` points at the offending item."""

    def __init__(self, message: str, expression: str) -> None:
        super().__init__(message)
        self.expression = expression


@dataclass(frozen=True)
class Item:
    """One question: ``choice`` among coded options, or an ``integer`` in a range."""

    link_id: str
    text: str
    type: Literal["choice", "integer"]
    options: tuple[tuple[str, str], ...] = ()  # (code, display) of a choice
    low: int = 0
    high: int = 0  # integer items: the accepted range

    def accepts(self, value: int) -> bool:
        if self.type == "choice":
            return str(value) in {code for code, _ in self.options}
        return self.low <= value <= self.high

    def as_fhir(self) -> dict[str, Any]:
        item: dict[str, Any] = {"linkId": self.link_id, "text": self.text, "type": self.type}
        if self.type == "choice":
            item["answerOption"] = [
                {"valueCoding": {"code": code, "display": display}}
                for code, display in self.options
            ]
        else:
            item["extension"] = [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/minValue",
                    "valueInteger": self.low,
                },
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/maxValue",
                    "valueInteger": self.high,
                },
            ]
        return item


@dataclass(frozen=True)
class Score:
    """The scored value with what the derived Observation says about it."""

    value: float
    components: tuple[dict[str, Any], ...] = ()  # Observation.component entries
    notes: tuple[str, ...] = ()
    method: str | None = None  # Observation.method.text (e.g. the value set used)


@dataclass(frozen=True)
class Questionnaire:
    """A questionnaire the server publishes and scores into the PROM ``prom``."""

    id: str
    prom: PromCode  # the vocabulary's PROM the score is
    name: str
    title: str
    items: tuple[Item, ...]
    scorer: Callable[[Questionnaire, Mapping[str, int]], Score]

    @property
    def outcome(self) -> Prom:
        return PROMS[self.prom]

    @property
    def url(self) -> str:
        url = self.outcome.questionnaire
        if url is None:
            raise ValueError(f"the PROM {self.prom} names no questionnaire")
        return url

    def resource(self) -> dict[str, Any]:
        """The FHIR Questionnaire."""
        return {
            "resourceType": "Questionnaire",
            "id": self.id,
            "url": self.url,
            "name": self.name,
            "title": self.title,
            "status": "active",
            "item": [item.as_fhir() for item in self.items],
        }

    def answers(self, response: Mapping[str, Any]) -> dict[str, int]:
        """The integer answer of each answered item.

        Raises
        ------
        ScoringError
            An unknown item, an item answered twice, or an answer outside the item's
            options or range.
        """
        by_link = {item.link_id: item for item in self.items}
        values: dict[str, int] = {}
        seen: set[str] = set()
        raw_items = response.get("item", [])
        if not isinstance(raw_items, list):
            raise ScoringError(
                "QuestionnaireResponse.item must be a list", "QuestionnaireResponse.item"
            )
        for index, entry in enumerate(raw_items):
            where = f"QuestionnaireResponse.item[{index}]"
            link = entry.get("linkId") if isinstance(entry, dict) else None
            item = by_link.get(str(link))
            if item is None:
                raise ScoringError(f"unknown {self.title} item '{link}'", where)
            if item.link_id in seen:
                raise ScoringError(f"{self.title} item '{link}' appears twice", where)
            seen.add(item.link_id)
            answers = entry.get("answer") or []
            if not answers:
                continue
            if not isinstance(answers, list) or len(answers) > 1:
                raise ScoringError(f"{self.title} item '{link}' takes one answer", where)
            value = _answer_value(answers[0], item.type)
            if value is None or not item.accepts(value):
                expected = (
                    ", ".join(code for code, _ in item.options)
                    if item.type == "choice"
                    else f"{item.low}-{item.high}"
                )
                raise ScoringError(
                    f"{self.title} item '{link}' needs an answer in {expected}",
                    f"{where}.answer[0]",
                )
            values[item.link_id] = value
        return values

    def score(self, response: Mapping[str, Any]) -> Score:
        """Score a QuestionnaireResponse (FHIR JSON) of this questionnaire."""
        return self.scorer(self, self.answers(response))


def _answer_value(answer: Any, kind: str) -> int | None:
    """The answer as an integer: ``valueInteger``, or for a choice the code of its
    ``valueCoding``; anything else (a decimal, a string, a coding of a number) is None."""
    if not isinstance(answer, dict):
        return None
    value = answer.get("valueInteger")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind != "choice":
        return None
    coding = answer.get("valueCoding")
    if isinstance(coding, dict) and str(coding.get("code", "")).lstrip("-").isdigit():
        return int(coding["code"])
    return None
