"""Who may see what. Every gateway route needs the ``gateway.read`` scope and a role:

- ``researcher``: read-only and pseudonymised (pseudonyms, shifted dates, no UIDs, no SR);
- ``clinician``: read-only and identified;
- ``reader``: a clinician who checks the automatic measurements in the review workstation
  (identified). A reader is blinded to every other reader's values, so the views that show
  them (cases, cohort, exports, agreement, report, follow-up) are closed to this role;
- ``integration``: the services' and scripts' own calls; identified, no dashboard login.

Assigning blinded reads (a second reader's sample, a re-read) needs the ``gateway.assign``
scope (the study coordinator).

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

Role = Literal["researcher", "clinician", "reader", "integration"]
ROLES: tuple[Role, ...] = ("researcher", "clinician", "reader", "integration")
DASHBOARD_ROLES: tuple[Role, ...] = ("researcher", "clinician", "reader")
READ_SCOPE = "gateway.read"
# Who may open images in the viewer (identified pixels and headers): never researchers, and
# never readers: the study holds the automatic SR, the key images with their values burned
# in and other readers' signed SRs, which would unblind them.
VIEWER_ROLES: tuple[Role, ...] = ("clinician",)
READER_ROLES: tuple[Role, ...] = ("reader",)
AUDIT_SCOPE = "gateway.audit"
ASSIGN_SCOPE = "gateway.assign"
BLINDED = (
    "a reader works in the review workstation, blinded to the other readers' values that "
    "this view shows"
)


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
        raise Forbidden(
            "the token has no gateway role (researcher, clinician, reader or integration)"
        )
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
    viewer = viewer_for(principal, request)
    if viewer.role in READER_ROLES:
        raise Forbidden(BLINDED)
    return viewer


def _reader(request: Request, principal: Annotated[Principal, require_scope(READ_SCOPE)]) -> Viewer:
    viewer = viewer_for(principal, request)
    if viewer.role not in READER_ROLES:
        raise Forbidden("the review workstation is for readers (the reader role)")
    return viewer


ViewerDep = Annotated[Viewer, Depends(_viewer)]  # every view but the workstation
ReaderDep = Annotated[Viewer, Depends(_reader)]  # the workstation
Auditor = Annotated[Principal, require_scope(AUDIT_SCOPE)]
Assigner = Annotated[Principal, require_scope(ASSIGN_SCOPE)]
