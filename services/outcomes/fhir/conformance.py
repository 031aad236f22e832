"""Resources the server publishes about itself: the CapabilityStatement (built from the
resource-type registry that drives routing, validation and search, so it tells the
truth), the project CodeSystem and the scored questionnaires of the registry."""

from __future__ import annotations

from typing import Any

from services.common.fhir import codes
from services.outcomes.fhir import questionnaires
from services.outcomes.fhir.resource_types import PUBLISHED, RESOURCE_TYPES

INTERACTIONS = (
    "read",
    "vread",
    "update",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)


def capability_statement(base: str, version: str) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for rtype, kind in RESOURCE_TYPES.items():
        params = [
            {"name": p.name, "type": p.type, "documentation": p.description} for p in kind.search
        ] + [
            {"name": "_id", "type": "token"},
            {"name": "_lastUpdated", "type": "date"},
        ]
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": [{"code": code} for code in INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "searchParam": params,
        }
        if kind.includes:
            entry["searchInclude"] = list(kind.includes)
        resources.append(entry)
    for rtype in PUBLISHED:
        resources.append(
            {"type": rtype, "interaction": [{"code": "read"}, {"code": "search-type"}]}
        )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-21",
        "kind": "instance",
        "software": {"name": "spine-outcomes FHIR server", "version": version},
        "implementation": {"description": "Outcomes of the lumbar fusion study", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": "Bearer JWT with SMART scopes (system/Observation.cruds, "
                    "user/*.rs, v1 read/write), checked on every resource actually read, "
                    "written, matched or included. patient/ scopes need the token's "
                    "patient launch context and stay in that patient's compartment; "
                    "constrained scopes (?...) are refused. CodeSystem and Questionnaire "
                    "are readable by any authenticated caller. 401 without a token, 403 "
                    "when a scope does not allow the resource.",
                },
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }
        ],
    }


def project_code_system() -> dict[str, Any]:
    return {
        "resourceType": "CodeSystem",
        "id": codes.PROJECT_CODESYSTEM_ID,
        "url": codes.PROJECT,
        "name": "SpineOutcomes",
        "title": "Spine-surgery outcomes study codes",
        "status": "active",
        "content": "complete",
        "caseSensitive": True,
        "count": len(codes.PROJECT_CONCEPTS),
        "property": [{"code": "group", "type": "string"}],
        "concept": [
            {
                "code": c.code,
                "display": c.display,
                "definition": c.definition,
                "property": [{"code": "group", "valueString": c.group}],
            }
            for c in codes.PROJECT_CONCEPTS
        ],
    }


def published_questionnaires() -> list[dict[str, Any]]:
    """Every scored questionnaire of the registry, as FHIR Questionnaires."""
    return [q.resource() for q in questionnaires.REGISTRY.values()]
