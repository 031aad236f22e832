"""Cases: the list (paged, filtered), one case, its FHIR Bundle, key images and plots."""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from services.common.vocabulary import GroupCode as Group
from services.common.vocabulary import Level
from services.gateway import plots
from services.gateway.access import ViewerDep
from services.gateway.cases import Case, View
from services.gateway.cohort import patient_pair
from services.gateway.errors import NotFound
from services.gateway.export import case_bundle
from services.gateway.sources import CaseFilter, CaseSource

router = APIRouter(prefix="/api", tags=["Cases"])
KEY_IMAGE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,120}$")
SLOT = re.compile(r"^(pre|post-\d{1,3}|other-\d{1,3})$")


def case_filter(
    group: Annotated[Group | None, Query(description="study group")] = None,
    level: Annotated[Level | None, Query(description="an operated level")] = None,
    surgeon: Annotated[str | None, Query(description="surgeon id or pseudonym")] = None,
    date_from: Annotated[
        date | None, Query(alias="from", description="surgery on or after")
    ] = None,
    date_to: Annotated[date | None, Query(alias="to", description="surgery on or before")] = None,
) -> CaseFilter:
    return CaseFilter(group, level, surgeon, date_from, date_to)


FilterDep = Annotated[CaseFilter, Depends(case_filter)]


class CaseListItem(BaseModel):
    case_id: str
    patient: str
    group: str | None
    surgery_date: date | None
    levels: list[str]
    surgeon: str | None
    pre_study_date: date | None
    post_studies: int
    primary_quantity: str | None
    primary_change: float | None  # first post - pre, mean at the operated levels
    complications: int
    missing: str | None  # why the primary comparison is not possible
    # The change rests on one side only (a per-side quantity measured on one side at both
    # times): a one-sided value, not the patient's mean of both sides.
    one_sided: bool = False
    retrieval: str | None  # where the PACS retrieval of the patient's studies stands


class CasePage(BaseModel):
    items: list[CaseListItem]
    total: int
    limit: int
    offset: int
    as_of: datetime
    warnings: list[str]


def list_item(case: Case) -> CaseListItem:
    quantity, reason = case.primary_pair()
    change = None
    one_sided = False
    if reason is None:
        pre, post = patient_pair(case, quantity)
        change = round(post - pre, 3) if pre is not None and post is not None else None
        sides = {
            r.side
            for r in case.imaging.metrics
            if r.quantity == quantity
            and r.operated
            and r.pre.value is not None
            and r.post
            and r.post[0].value.value is not None
        }
        one_sided = change is not None and None not in sides and len(sides) == 1
    return CaseListItem(
        case_id=case.case_id,
        patient=case.patient.id,
        group=case.surgery.group,
        surgery_date=case.surgery.date,
        levels=case.surgery.levels,
        surgeon=case.surgery.surgeon.display if case.surgery.surgeon else None,
        pre_study_date=case.imaging.pre.study_date if case.imaging.pre else None,
        post_studies=len(case.imaging.post),
        primary_quantity=quantity or None,
        primary_change=change,
        complications=len(case.complications),
        missing=reason,
        retrieval=case.imaging.retrieval,
        one_sided=one_sided,
    )


def source_of(request: Request) -> CaseSource:
    source: CaseSource = request.app.state.source
    return source


async def resolve_case(request: Request, case: str, view: View) -> str:
    """The Procedure id of the case the viewer names (a pseudonym for researchers); the
    audit trail records that id, whoever asked."""
    procedure_id = await source_of(request).resolve(case, view)
    request.state.case_id = procedure_id
    return procedure_id


@router.get("/cases", response_model=CasePage)
async def list_cases(
    request: Request,
    viewer: ViewerDep,
    keep: FilterDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    refresh: bool = False,
) -> CasePage:
    """Cases (index surgeries), newest surgery first, filtered; from the cohort snapshot."""
    cases, snapshot = await source_of(request).cases(viewer.view, keep, refresh=refresh)
    cases.sort(key=lambda c: (c.surgery.date or date.min, c.case_id), reverse=True)
    return CasePage(
        items=[list_item(c) for c in cases[offset : offset + limit]],
        total=len(cases),
        limit=limit,
        offset=offset,
        as_of=snapshot.as_of,
        warnings=snapshot.warnings,
    )


@router.get("/cases/{case}", response_model=Case)
async def get_case(request: Request, case: str, viewer: ViewerDep) -> Case:
    """One case, live: surgery, paired imaging with changes, complications, early results, PROMs."""
    return await source_of(request).case(
        await resolve_case(request, case, viewer.view), viewer.view
    )


@router.get(
    "/cases/{case}/bundle",
    response_class=Response,
    responses={200: {"content": {"application/fhir+json": {}}}},
)
async def get_case_bundle(request: Request, case: str, viewer: ViewerDep) -> Response:
    """The case as a FHIR R4 ``collection`` Bundle (pseudonymised for researchers)."""
    source = source_of(request)
    real = await resolve_case(request, case, viewer.view)
    gathered = await source.gather(real, viewer.view.mrn_system)
    built = gathered.build(viewer.view)
    bundle = case_bundle(gathered.record, built, viewer.view)
    return Response(json.dumps(bundle), media_type="application/fhir+json")


@router.get(
    "/cases/{case}/studies/{slot}/key-images/{name}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
async def get_key_image(
    request: Request, case: str, slot: str, name: str, viewer: ViewerDep
) -> Response:
    """A key image (overlay PNG) of one of the case's paired studies, from the imaging service."""
    if not KEY_IMAGE_NAME.fullmatch(name) or not SLOT.fullmatch(slot):
        raise NotFound("no such key image")
    source = source_of(request)
    real = await resolve_case(request, case, viewer.view)
    gathered = await source.gather(real, viewer.view.mrn_system, observations=False)
    internal = View(True, None, viewer.view.mrn_system, viewer.view.key_image_url)
    built = gathered.build(internal)  # identified only to find the study; never returned
    refs = [built.imaging.pre, *built.imaging.post, *built.imaging.other]
    ref = next((r for r in refs if r is not None and r.slot == slot), None)
    if ref is None or name not in {k.name for k in ref.key_images}:
        raise NotFound("no such key image")
    png = await source.imaging.key_image(ref.study, name)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.get(
    "/cases/{case}/plots/{kind}.{fmt}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}}},
)
async def get_case_plot(
    request: Request,
    case: str,
    kind: Literal["metrics", "proms"],
    fmt: Literal["png", "svg"],
    viewer: ViewerDep,
) -> Response:
    """A plot of one case: ``metrics`` (each level across its studies) or ``proms``."""
    real = await resolve_case(request, case, viewer.view)
    built = await source_of(request).case(real, viewer.view)
    draw = plots.case_metrics if kind == "metrics" else plots.case_proms
    content = await run_in_threadpool(draw, built, fmt)
    return Response(content, media_type=plots.MEDIA_TYPES[fmt])
