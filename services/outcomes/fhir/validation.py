"""Validation of incoming resources: FHIR R4 structure (fhir.resources' R4B models,
which validate the R4 resources used here) and the study's own rules.

Every problem is an :class:`Issue` with a FHIRPath-like ``expression``, so the
caller can point the EHR integration at the offending element.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from services.common import vocabulary
from services.common.fhir import codes

if TYPE_CHECKING:
    from services.outcomes.fhir.resource_types import ResourceType

OBSERVATION_STATUSES = {
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
}


@dataclass(frozen=True)
class Issue:
    code: str  # OperationOutcome issue type: structure, value, required, invariant, ...
    diagnostics: str
    expression: str


def _expression(resource_type: str, loc: tuple[Any, ...]) -> str:
    parts = [resource_type]
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]"
        elif isinstance(item, str) and not item.startswith("function-"):
            parts.append(item)
    return ".".join(parts)


def validate_structure(resource: dict[str, Any]) -> list[Issue]:
    """Structural validation against the FHIR model of the resource's type."""
    resource_type = resource.get("resourceType")
    try:
        model = get_fhir_model_class(str(resource_type))
        model.model_validate(resource)
    except ValidationError as exc:
        return [
            Issue("structure", str(err.get("msg")), _expression(str(resource_type), err["loc"]))
            for err in exc.errors()
        ]
    except ValueError as exc:
        return [Issue("structure", str(exc), str(resource_type))]
    return []


def _codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, dict):
        return []
    return [c for c in concept.get("coding", []) if isinstance(c, dict)]


def _has_code(concept: Any, system: str, code: str | None = None) -> bool:
    return any(
        c.get("system") == system and (code is None or c.get("code") == code)
        for c in _codings(concept)
    )


def _project_codes(concept: Any) -> list[str]:
    return [str(c.get("code")) for c in _codings(concept) if c.get("system") == codes.PROJECT]


def observation_rules(obs: dict[str, Any]) -> list[Issue]:
    issues: list[Issue] = []
    if obs.get("status") not in OBSERVATION_STATUSES:
        issues.append(Issue("value", f"unknown status '{obs.get('status')}'", "Observation.status"))
    code = obs.get("code", {})
    for coding in _codings(code):
        measure = codes.MEASURE_BY_CODE.get((str(coding.get("system")), str(coding.get("code"))))
        if measure is None:
            continue
        quantity = obs.get("valueQuantity")
        if quantity is None:
            if obs.get("dataAbsentReason") is None:
                issues.append(
                    Issue(
                        "required",
                        f"{measure.display} needs a valueQuantity",
                        "Observation.valueQuantity",
                    )
                )
            continue
        value = quantity.get("value")
        if not isinstance(value, int | float) or not measure.low <= value <= measure.high:
            issues.append(
                Issue(
                    "value",
                    f"{measure.display} must be within {measure.low:g}-{measure.high:g} "
                    f"{measure.unit}, got {value}",
                    "Observation.valueQuantity.value",
                )
            )
    complication = [c for c in _project_codes(code) if c in vocabulary.COMPLICATION_CODES]
    if complication:
        grades = []
        for index, component in enumerate(obs.get("component", [])):
            if _has_code(component.get("code"), codes.PROJECT, "clavien-dindo-grade"):
                value = component.get("valueCodeableConcept")
                found = _project_codes(value)
                if not found or found[0] not in vocabulary.CLAVIEN_DINDO_GRADES:
                    issues.append(
                        Issue(
                            "value",
                            f"unknown Clavien-Dindo grade {found or value}; expected one of "
                            + ", ".join(vocabulary.CLAVIEN_DINDO_GRADES),
                            f"Observation.component[{index}].valueCodeableConcept",
                        )
                    )
                grades.extend(found)
            if _has_code(component.get("code"), codes.PROJECT, "complication-timing"):
                timing = _project_codes(component.get("valueCodeableConcept"))
                if not timing or timing[0] not in ("early", "late"):
                    issues.append(
                        Issue(
                            "value",
                            "complication timing must be early or late",
                            f"Observation.component[{index}].valueCodeableConcept",
                        )
                    )
        if not grades and not any(i.expression.startswith("Observation.component") for i in issues):
            issues.append(
                Issue(
                    "required",
                    "a complication needs its Clavien-Dindo grade",
                    "Observation.component",
                )
            )
    for index, extension in enumerate(obs.get("extension", [])):
        if extension.get("url") == codes.TIME_POINT_EXTENSION:
            coding = extension.get("valueCoding", {})
            if coding.get("code") not in vocabulary.TIME_POINT_CODES:
                issues.append(
                    Issue(
                        "value",
                        f"unknown time point '{coding.get('code')}'; expected one of "
                        + ", ".join(vocabulary.TIME_POINT_CODES),
                        f"Observation.extension[{index}].valueCoding",
                    )
                )
    return issues


def procedure_rules(proc: dict[str, Any]) -> list[Issue]:
    issues: list[Issue] = []
    for index, reason in enumerate(proc.get("reasonCode", [])):
        found = _project_codes(reason)
        if found and not set(found) & set(vocabulary.GROUP_CODES) and not _codings(reason)[1:]:
            issues.append(
                Issue("value", f"unknown study group {found}", f"Procedure.reasonCode[{index}]")
            )
    for index, site in enumerate(proc.get("bodySite", [])):
        found = _project_codes(site)
        if found and found[0] not in vocabulary.LEVELS:
            issues.append(
                Issue("value", f"unknown level '{found[0]}'", f"Procedure.bodySite[{index}]")
            )
    return issues


def validate(resource: dict[str, Any], kind: ResourceType) -> list[Issue]:
    """All problems of a resource of type ``kind`` about to be stored (empty when it is
    acceptable)."""
    issues = validate_structure(resource)
    if issues:
        return issues
    resource_type = resource["resourceType"]
    if kind.subject_required:
        subject = resource.get("subject") or {}
        if not subject.get("reference") and not subject.get("identifier"):
            issues.append(
                Issue(
                    "required", f"{resource_type}.subject is required", f"{resource_type}.subject"
                )
            )
    if kind.rules is not None:
        issues.extend(kind.rules(resource))
    return issues
