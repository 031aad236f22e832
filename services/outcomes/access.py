"""The FHIR server's one authorization decision point: what a caller's SMART scopes let
it do **to the resources actually read or written** — never to the type named in a URL.

Scopes are ``context/Type.permissions`` (SMART App Launch v1 and v2):

* ``system/`` and ``user/`` scopes grant the permissions on every resource of the type;
* ``patient/`` scopes grant them only inside the token's patient compartment (the
  ``patient`` launch-context claim): the Patient itself and the resources whose
  ``subject``/``patient`` is that Patient. Without a patient claim they grant nothing;
* the type may be ``*``; v2 permissions are letters of ``cruds``, v1 ones ``read``
  (= ``rs``), ``write`` (= ``cud``) or ``*``;
* a v2 scope with constraints (``system/Observation.rs?category=...``) is **refused**: it
  grants nothing, because this server does not evaluate scope constraints, and granting
  the unconstrained permission would be wider than what was consented to.

The API asks :meth:`Access.require` before doing work (a cheap 403 for a type the token
cannot touch at all), then every resource read, written, matched or included is checked
with :meth:`Access.check`; searches by a patient-scoped caller are narrowed to the
compartment (:meth:`Access.narrowing`), as HAPI's search-narrowing interceptor does.
The published definitional resources (CodeSystem, Questionnaire) hold no patient data
and are readable by any authenticated caller, like ``/metadata`` by anyone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from services.outcomes.errors import Forbidden
from services.outcomes.fhir import search_params as sp
from services.outcomes.fhir.resource_types import search_params

_SCOPE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([a-z*]+)(\?.*)?$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
PERMISSIONS = frozenset("cruds")


@dataclass(frozen=True)
class Grant:
    context: str  # patient | user | system
    resource_type: str  # a type or "*"
    permissions: frozenset[str]

    def covers(self, resource_type: str, permission: str) -> bool:
        return self.resource_type in ("*", resource_type) and permission in self.permissions


def parse_scopes(scopes: Iterable[str]) -> tuple[list[Grant], list[str]]:
    """(the grants, the scopes refused) of a token's scopes; non-SMART scopes are ignored."""
    grants: list[Grant] = []
    refused: list[str] = []
    for scope in scopes:
        match = _SCOPE.fullmatch(scope)
        if not match:
            continue
        context, resource_type, perms, constraint = match.groups()
        letters = _V1.get(perms, perms)
        if constraint or not set(letters) <= PERMISSIONS:
            refused.append(scope)
            continue
        grants.append(Grant(context, resource_type, frozenset(letters)))
    return grants, refused


class Access:
    """What one caller may do. ``Access.internal()`` is the server acting on its own
    behalf (the derived Observations it writes)."""

    def __init__(self, scopes: Iterable[str], patient: str | None = None) -> None:
        self.grants, self.refused = parse_scopes(scopes)
        self.patient = patient

    @classmethod
    def internal(cls) -> Access:
        return cls(["system/*.cruds"])

    def _wide(self, resource_type: str, permission: str) -> bool:
        return any(
            g.context != "patient" and g.covers(resource_type, permission) for g in self.grants
        )

    def _compartment(self, resource_type: str, permission: str) -> bool:
        return self.patient is not None and any(
            g.context == "patient" and g.covers(resource_type, permission) for g in self.grants
        )

    def may(self, resource_type: str, permission: str) -> bool:
        """Whether some resource of the type could be allowed."""
        return self._wide(resource_type, permission) or self._compartment(resource_type, permission)

    def require(self, resource_type: str, permission: str) -> None:
        """403 unless some scope could allow ``permission`` on the type."""
        if not self.may(resource_type, permission):
            raise Forbidden(self._why(resource_type, permission))

    def require_wide(self, resource_type: str, permission: str) -> None:
        """403 unless a system/ or user/ scope allows it (no patient compartment applies:
        the audit trail, type-level history)."""
        if not self._wide(resource_type, permission):
            raise Forbidden(self._why(resource_type, permission))

    def check(self, resource: dict[str, Any], permission: str) -> None:
        """403 unless ``permission`` is allowed on this very resource."""
        resource_type = str(resource.get("resourceType"))
        if self._wide(resource_type, permission):
            return
        if self._compartment(resource_type, permission) and self.in_compartment(resource):
            return
        raise Forbidden(self._why(resource_type, permission, compartment=True))

    def in_compartment(self, resource: dict[str, Any]) -> bool:
        """Whether the resource belongs to the caller's patient."""
        if self.patient is None:
            return False
        resource_type = str(resource.get("resourceType"))
        if resource_type == "Patient":
            return resource.get("id") == self.patient
        param = search_params(resource_type).get("patient")
        if param is None:
            return False
        target = f"Patient/{self.patient}"
        return any(entry.value == target for entry in sp.extract(resource, [param]))

    def narrowing(self, resource_type: str) -> list[tuple[str, str]]:
        """Extra search parameters that keep a patient-scoped search in the compartment
        (none for a caller with a wide scope)."""
        if self._wide(resource_type, "s"):
            return []
        if not self._compartment(resource_type, "s"):
            raise Forbidden(self._why(resource_type, "s"))
        if resource_type == "Patient":
            return [("_id", str(self.patient))]
        if "patient" not in search_params(resource_type):
            raise Forbidden(f"{resource_type} is outside the patient compartment")
        return [("patient", f"Patient/{self.patient}")]

    def _why(self, resource_type: str, permission: str, *, compartment: bool = False) -> str:
        if compartment:
            return (
                f"{resource_type}.{permission} is granted for the patient in context only; "
                "this resource belongs to another patient (or to none)"
            )
        hint = f"scope for {resource_type}.{permission} required (e.g. system/{resource_type}."
        hint += f"{permission})"
        if self.refused:
            hint += "; constrained scopes are not supported and grant nothing: "
            hint += ", ".join(sorted(self.refused))
        elif any(g.context == "patient" for g in self.grants) and self.patient is None:
            hint += "; patient/ scopes need a patient launch context in the token"
        return hint
