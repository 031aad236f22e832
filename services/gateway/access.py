"""Who may see what. Every gateway route needs the ``gateway.read`` scope and a role:

- ``researcher``: read-only and pseudonymised (pseudonyms, shifted dates, no UIDs, no SR);
- ``clinician``: read-only and identified;
- ``integration``: the services' and scripts' own calls; identified, no dashboard login.

The role is the token's ``role`` claim (or the basic user's ``role``); a token without a
gateway role is refused, never given a default view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request

from services.common.auth import Principal, require_scope
from services.gateway.cases import View
from services.gateway.errors import Forbidden
from services.gateway.privacy import Pseudonymizer

Role = Literal["researcher", "clinician", "integration"]
ROLES: tuple[Role, ...] = ("researcher", "clinician", "integration")
READ_SCOPE = "gateway.read"
# Who may open images in the viewer (identified pixels and headers): never researchers.
VIEWER_ROLES: tuple[Role, ...] = ("clinician",)
AUDIT_SCOPE = "gateway.audit"


@dataclass(frozen=True)
class Viewer:
    principal: Principal
    role: Role
    view: View

    @property
    def identified(self) -> bool:
        return self.view.identified


@dataclass(frozen=True)
class KeyImageLinker:
    """Key images are served through the gateway, under the case and study slot."""

    base: str

    def __call__(self, case_id: str, slot: str, name: str) -> str:
        return f"{self.base}/api/cases/{case_id}/studies/{slot}/key-images/{name}.png"


def public_base_url(request: Request) -> str:
    configured: str | None = request.app.state.settings.public_base_url
    return (configured or str(request.base_url)).rstrip("/")


def viewer_for(principal: Principal, request: Request) -> Viewer:
    role = principal.role
    if role not in ROLES:
        raise Forbidden("the token has no gateway role (researcher, clinician or integration)")
    settings = request.app.state.settings
    pseudonymizer: Pseudonymizer = request.app.state.pseudonymizer
    view = View(
        identified=role != "researcher",
        pseudonymizer=pseudonymizer,
        mrn_system=settings.mrn_system,
        key_image_url=KeyImageLinker(public_base_url(request)),
    )
    request.state.role = role
    return Viewer(principal, role, view)


def _viewer(request: Request, principal: Annotated[Principal, require_scope(READ_SCOPE)]) -> Viewer:
    return viewer_for(principal, request)


ViewerDep = Annotated[Viewer, Depends(_viewer)]
Auditor = Annotated[Principal, require_scope(AUDIT_SCOPE)]
