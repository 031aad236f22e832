"""The resource types the server stores, each declared once: its search parameters, the
``_include`` values it publishes, whether it needs a subject, and the study's own rules.
Routing, validation, indexing, search and the CapabilityStatement all read this table,
so a new resource type is its entry here (with its search parameters).

AuditEvent, CodeSystem and Questionnaire are *published* by the server itself (the audit
trail, the project CodeSystem, the scored questionnaires): readable, never written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.outcomes.fhir.search_params import IDENTIFIER, PATIENT, SUBJECT, SearchParam, param
from services.outcomes.fhir.validation import Issue, observation_rules, procedure_rules

Rules = Callable[[dict[str, Any]], list[Issue]]


@dataclass(frozen=True)
class ResourceType:
    name: str
    search: tuple[SearchParam, ...]
    includes: tuple[str, ...] = ()  # published _include values, "Type:param"
    subject_required: bool = False
    rules: Rules | None = None
    params: dict[str, SearchParam] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", {p.name: p for p in self.search})


RESOURCE_TYPES: dict[str, ResourceType] = {
    t.name: t
    for t in (
        ResourceType(
            "Patient",
            (
                IDENTIFIER,
                param(
                    "name", "string", "name.family", "name.given", "name.text", doc="Any name part"
                ),
                param("family", "string", "name.family"),
                param("birthdate", "date", "birthDate"),
                param("gender", "token", "gender"),
            ),
        ),
        ResourceType(
            "Practitioner",
            (IDENTIFIER, param("name", "string", "name.family", "name.given", "name.text")),
        ),
        ResourceType(
            "Procedure",
            (
                IDENTIFIER,
                SUBJECT,
                PATIENT,
                param(
                    "date",
                    "date",
                    "performedDateTime",
                    "performedPeriod",
                    doc="When it was performed",
                ),
                param("performer", "reference", "performer.actor", doc="The surgeon"),
                param("code", "token", "code"),
                param("status", "token", "status"),
                param("reason-code", "token", "reasonCode", doc="Indication: the study group"),
                param("body-site", "token", "bodySite", doc="Operated levels"),
                param("encounter", "reference", "encounter"),
            ),
            includes=("Procedure:patient", "Procedure:subject", "Procedure:performer"),
            subject_required=True,
            rules=procedure_rules,
        ),
        ResourceType(
            "Encounter",
            (
                IDENTIFIER,
                SUBJECT,
                PATIENT,
                param("date", "date", "period"),
                param("status", "token", "status"),
            ),
            subject_required=True,
        ),
        ResourceType(
            "Observation",
            (
                IDENTIFIER,
                SUBJECT,
                PATIENT,
                param("code", "token", "code"),
                param("category", "token", "category"),
                param("status", "token", "status"),
                param("date", "date", "effectiveDateTime", "effectivePeriod", "effectiveInstant"),
                param("derived-from", "reference", "derivedFrom"),
                param("part-of", "reference", "partOf"),
                param("focus", "reference", "focus"),
                param("encounter", "reference", "encounter"),
                param(
                    "time-point",
                    "token",
                    "extension:time-point",
                    doc="Time point relative to surgery",
                ),
            ),
            includes=("Observation:patient", "Observation:subject"),
            subject_required=True,
            rules=observation_rules,
        ),
        ResourceType(
            "QuestionnaireResponse",
            (
                IDENTIFIER,
                SUBJECT,
                PATIENT,
                param("authored", "date", "authored"),
                param("status", "token", "status"),
                param("questionnaire", "token", "questionnaire"),
            ),
            subject_required=True,
        ),
        ResourceType(
            "ImagingStudy",
            (
                IDENTIFIER,
                SUBJECT,
                PATIENT,
                param("started", "date", "started"),
                param("modality", "token", "modality", "series.modality"),
                param("status", "token", "status"),
            ),
            subject_required=True,
        ),
    )
}
PUBLISHED = ("AuditEvent", "CodeSystem", "Questionnaire")


def search_params(resource_type: str) -> dict[str, SearchParam]:
    """The search parameters of a stored type (empty for any other)."""
    kind = RESOURCE_TYPES.get(resource_type)
    return kind.params if kind else {}
