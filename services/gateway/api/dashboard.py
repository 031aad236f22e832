"""The research dashboard: server-rendered HTML (Jinja2), no JavaScript framework.

The browser signs in once (a basic user, or a bearer token from the hospital's identity
provider); the gateway keeps the token in an HttpOnly, SameSite=Strict cookie that the
same ``current_principal`` dependency reads, so pages, plots and images share one access
check and one audit trail with the JSON API.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from services.common import vocabulary
from services.common.auth import Authenticator, Principal, current_principal
from services.gateway.access import (
    BLINDED,
    DASHBOARD_ROLES,
    READ_SCOPE,
    READER_ROLES,
    VIEWER_ROLES,
    Viewer,
    viewer_for,
)
from services.gateway.agreement import MIN_PAIRS
from services.gateway.api import review as review_api
from services.gateway.api.agreement import agreement_table
from services.gateway.api.cases import FilterDep, list_cases, resolve_case, source_of
from services.gateway.api.followup import follow_up_page
from services.gateway.cohort import summarize
from services.gateway.errors import Forbidden
from services.gateway.followup import STATUSES, Status, columns
from services.gateway.formatting import DASH, num, pval
from services.gateway.plots import GROUP_LABELS
from services.gateway.sources import CaseFilter

router = APIRouter(prefix="/dashboard", tags=["Dashboard"], include_in_schema=True)
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent.parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}%"


def _status_class(status: str) -> str:
    return {"ok": "ok", "manual": "manual", "needs_review": "review"}.get(status, "")


LABELS: dict[str, str] = {
    **GROUP_LABELS,
    **{c.code: c.display for c in (*vocabulary.TECHNIQUES, *vocabulary.COMPLICATIONS)},
    **{q.name.value: q.display for q in vocabulary.QUANTITIES.values()},
}


def _label(code: str | None) -> str:
    """The study's label of a code (the code itself when it has none)."""
    return "" if code is None else LABELS.get(code, code)


TEMPLATES.filters.update(num=num, pct=_pct, pval=pval, status_class=_status_class, label=_label)


def _page(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("viewer", None)
    context.setdefault("warnings", [])
    context.setdefault("error", None)
    html = TEMPLATES.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status_code)


TITLES = {
    400: "The request was not understood",
    403: "Not allowed",
    404: "Not found",
    422: "The request was not understood",
    502: "An upstream service refused the request",
    503: "A service is unavailable",
}


def error_page(status: int, reason: str) -> HTMLResponse:
    """An error as a page of the dashboard (the API answers the same error in JSON)."""
    title = TITLES.get(status, "Something went wrong")
    return _page("error.html", status_code=status, status=status, title=title, reason=reason)


def _signed_in(request: Request) -> Viewer | None:
    try:
        principal = current_principal(request)
    except HTTPException:
        return None
    if not principal.allows(READ_SCOPE):
        return None
    try:
        return viewer_for(principal, request)
    except Forbidden:
        return None


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/dashboard/login?{urlencode({'next': target})}", status_code=303)


def _reader_elsewhere(request: Request) -> Response:
    """A reader's home is the workstation; the other pages would unblind them."""
    if request.url.path.rstrip("/") == "/dashboard":
        return RedirectResponse("/dashboard/review", status_code=303)
    return error_page(403, BLINDED)


def _query(request: Request, drop: tuple[str, ...] = ("offset",)) -> str:
    kept = [(k, v) for k, v in request.query_params.multi_items() if v and k not in drop]
    return urlencode(kept)


async def _surgeons(request: Request, viewer: Viewer) -> list[tuple[str, str]]:
    """The surgeons the filter offers: (id, display) as the viewer sees them (pseudonyms
    for researchers), from the cohort snapshot."""
    cases, _ = await source_of(request).cases(viewer.view, lambda _case: True)
    seen = {c.surgery.surgeon.id: c.surgery.surgeon.display for c in cases if c.surgery.surgeon}
    return sorted(seen.items(), key=lambda kv: kv[1])


async def _filtered(
    name: str, request: Request, viewer: Viewer, keep: CaseFilter, **context: Any
) -> HTMLResponse:
    """A page of cases under the filter form."""
    return _page(
        name,
        viewer=viewer,
        filters=keep,
        groups=vocabulary.GROUP_CODES,
        levels=vocabulary.LEVELS,
        query=_query(request),
        surgeons=await _surgeons(request, viewer),
        max_shift_days=request.app.state.settings.max_date_shift_days,
        **context,
    )


def _next_page(target: str) -> str:
    """Where to go after signing in: a page of this gateway, never another site."""
    local = (
        target.startswith(("/dashboard", "/viewer/")) and "//" not in target and "\\" not in target
    )
    return target if local else "/dashboard/"


@router.get("/login", response_class=HTMLResponse)
def login_form(next: str = "/dashboard/") -> HTMLResponse:
    """The sign-in page."""
    return _page("login.html", next=_next_page(next))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """Sign in with a user and password, or a bearer token; sets the session cookie."""
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
    target = _next_page(form.get("next", "/dashboard/"))
    authenticator: Authenticator = request.app.state.authenticator
    settings = request.app.state.settings
    principal: Principal | None = None
    token = form.get("token", "").strip()
    if token:
        try:
            principal = authenticator.authenticate(f"Bearer {token}")
        except HTTPException:
            principal = None
    elif form.get("username"):
        principal = authenticator.verify_basic(form["username"], form.get("password", ""))
    if (
        principal is None
        or not principal.allows(READ_SCOPE)
        or principal.role not in DASHBOARD_ROLES
    ):
        request.state.login_failed = True
        return _page(
            "login.html",
            status_code=401,
            next=target,
            error="Sign-in failed: unknown user, wrong password, or no dashboard role.",
        )
    session = token or authenticator.issue_token(
        principal.subject,
        " ".join(sorted(principal.scopes)),
        role=principal.role,
        ttl_seconds=settings.session_ttl_seconds,
    )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        settings.session_cookie,
        session,
        max_age=settings.session_ttl_seconds,
        httponly=True,
        samesite="strict",
        secure=settings.secure_cookies,
        path="/",
    )
    return response


@router.post("/logout")
def logout(request: Request) -> RedirectResponse:
    """Sign out: forget the session cookie."""
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(request.app.state.settings.session_cookie, path="/")
    return response


@router.get("/", response_class=HTMLResponse)
async def cohort_page(request: Request, keep: FilterDep, reviewed: bool = False) -> Response:
    """Cohort overview: counts, metrics with paired tests, complications, early results, PROMs."""
    viewer = _signed_in(request)
    if viewer is None:
        return _to_login(request)
    if viewer.role in READER_ROLES:
        return _reader_elsewhere(request)
    cases, snapshot = await source_of(request).cases(viewer.view, keep)
    summary = await run_in_threadpool(summarize, cases, keep.group, reviewed)
    groups = [keep.group] if keep.group else list(vocabulary.GROUPS)
    # PROM tables by group, like the plots (the summary pools the groups).
    prom_groups = [
        (
            g,
            (
                await run_in_threadpool(summarize, [c for c in cases if c.surgery.group == g], g)
            ).proms,
        )
        for g in groups
    ]
    quantities = [q.value for g in groups for q in vocabulary.GROUPS[g].quantities]
    prom_codes = [p.code for p in summary.proms if p.code in vocabulary.PROMS]
    return _page(
        "cohort.html",
        viewer=viewer,
        s=summary,
        as_of=snapshot.as_of,
        snapshot_seconds=snapshot.load_seconds,
        warnings=snapshot.warnings + summary.warnings,
        filters=keep,
        groups=vocabulary.GROUP_CODES,
        levels=vocabulary.LEVELS,
        query=_query(request),
        paired_quantities=quantities,
        surgeons=await _surgeons(request, viewer),
        max_shift_days=request.app.state.settings.max_date_shift_days,
        prom_codes=prom_codes,
        prom_groups=prom_groups,
        group_labels=GROUP_LABELS,
    )


@router.get("/cases", response_class=HTMLResponse)
async def cases_page(
    request: Request,
    keep: FilterDep,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    """The case list with filters."""
    viewer = _signed_in(request)
    if viewer is None:
        return _to_login(request)
    if viewer.role in READER_ROLES:
        return _reader_elsewhere(request)
    page = await list_cases(request, viewer, keep, limit=50, offset=offset, refresh=False)
    return await _filtered("cases.html", request, viewer, keep, page=page, warnings=page.warnings)


@router.get("/cases/{case}", response_class=HTMLResponse)
async def case_page(request: Request, case: str) -> Response:
    """One case: surgery, studies with key images, metrics, complications, PROM timeline."""
    viewer = _signed_in(request)
    if viewer is None:
        return _to_login(request)
    if viewer.role in READER_ROLES:
        return _reader_elsewhere(request)
    real = await resolve_case(request, case, viewer.view)
    built = await source_of(request).case(real, viewer.view)
    prom_rows = [
        (
            s,
            [
                next((p for p in s.points if p.time_point == tp), None)
                for tp in vocabulary.TIME_POINT_CODES
            ],
        )
        for s in built.proms
    ]
    return _page(
        "case.html",
        viewer=viewer,
        c=built,
        time_points=vocabulary.TIME_POINT_CODES,
        prom_rows=prom_rows,
        viewer_link=_viewer_link(request) if viewer.role in VIEWER_ROLES else None,
    )


def _viewer_link(request: Request) -> Callable[[str], str]:
    template: str = request.app.state.settings.viewer_url_template

    def link(study_instance_uid: str) -> str:
        return template.format(study_instance_uid=quote(study_instance_uid, safe=""))

    return link


@router.get("/agreement", response_class=HTMLResponse)
async def agreement_page(request: Request) -> Response:
    """Agreement of the automatic values with the readers' and between readers."""
    viewer = _signed_in(request)
    if viewer is None:
        return _to_login(request)
    if viewer.role in READER_ROLES:
        return _reader_elsewhere(request)
    answer = await agreement_table(request, viewer)
    tables: dict[str, list[Any]] = {}
    for row in answer.agreement:
        tables.setdefault(row["quantity"], []).append(row)
    return _page(
        "agreement.html",
        viewer=viewer,
        as_of=answer.as_of,
        reads=answer.reads,
        actions=answer.actions,
        tables=sorted(tables.items()),
        min_pairs=MIN_PAIRS,
    )


@router.get("/follow-up", response_class=HTMLResponse)
async def follow_up_view(
    request: Request,
    keep: FilterDep,
    status: Status | None = None,
    on: Annotated[date | None, Query(alias="as_of")] = None,
) -> Response:
    """The coordinator's follow-up grid: each case's PROM time points and imaging."""
    viewer = _signed_in(request)
    if viewer is None:
        return _to_login(request)
    if viewer.role in READER_ROLES:
        return _reader_elsewhere(request)
    if not viewer.identified:
        return _page(
            "followup.html",
            status_code=403,
            viewer=viewer,
            page=None,
            error="Follow-up tracking is for the clinical team and the study coordinator: "
            "its due dates would undo the pseudonymised view's date shift.",
        )
    page = await follow_up_page(request, viewer, keep, on, status)
    return await _filtered(
        "followup.html",
        request,
        viewer,
        keep,
        page=page,
        warnings=page.warnings,
        columns=columns(),
        statuses=STATUSES,
        status=status,
        unfiltered=_query(request, drop=("offset", "status")),
        items={e.item: e.display for e in vocabulary.FOLLOW_UP},
    )


def _reader_only(request: Request) -> Viewer | Response:
    viewer = _signed_in(request)
    if viewer is None:
        return _to_login(request)
    if viewer.role not in READER_ROLES:
        return error_page(403, "the review workstation is for readers (the reader role)")
    return viewer


@router.get("/review", response_class=HTMLResponse)
async def review_worklist_page(
    request: Request,
    group: Annotated[vocabulary.GroupCode | None, Query()] = None,
    level: Annotated[vocabulary.Level | None, Query()] = None,
    purpose: Annotated[vocabulary.ReadPurpose | None, Query()] = None,
) -> Response:
    """The reader's worklist: assigned blinded reads and flagged values first, progress."""
    viewer = _reader_only(request)
    if not isinstance(viewer, Viewer):
        return viewer
    worklist = await review_api.worklist(request, viewer, group, level, purpose)
    return _page(
        "review_list.html",
        viewer=viewer,
        worklist=worklist,
        groups=vocabulary.GROUP_CODES,
        levels=vocabulary.LEVELS,
        purposes=vocabulary.READ_PURPOSES,
        group=group,
        level=level,
        purpose=purpose,
    )


@router.get("/review/{study}", response_class=HTMLResponse)
async def review_page(request: Request, study: str) -> Response:
    """The workstation: each value on its section, to accept, reject or correct."""
    viewer = _reader_only(request)
    if not isinstance(viewer, Viewer):
        return viewer
    shown = await review_api.study_for_review(request, study, viewer)  # 404 when not ours
    title = f"{shown.patient_name or shown.patient} · {shown.modality or ''} {shown.slot}"
    subtitle = (
        f"MRN {shown.patient} · {_label(shown.group)} · operated {', '.join(shown.levels)} · "
        f"study of {shown.study_date or 'unknown date'} ({shown.label}) · reading: "
        f"{shown.purpose}{' (blinded to the automatic values)' if shown.blind_automatic else ''}"
    )
    return _page(
        "review.html",
        viewer=viewer,
        study=study,
        title=title,
        subtitle=subtitle,
    )
