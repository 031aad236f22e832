"""Follow-up tracking: which PROM time points and imaging each case has, lacks or is
overdue for (identified roles only: the coordinator and the clinical team)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from services.gateway.access import Viewer, ViewerDep
from services.gateway.api.cases import FilterDep, source_of
from services.gateway.errors import Forbidden
from services.gateway.export import csv_lines
from services.gateway.followup import HEADER, STATUSES, FollowUp, Status, follow_up, row
from services.gateway.sources import CaseFilter

router = APIRouter(prefix="/api", tags=["Follow-up"])


class FollowUpPage(BaseModel):
    as_of: date  # the day the statuses are computed for
    snapshot_as_of: datetime  # when the data were read
    totals: dict[str, int]  # items per status over the listed cases
    items: list[FollowUp]
    warnings: list[str]


def _identified(viewer: Viewer) -> None:
    if not viewer.identified:
        raise Forbidden(
            "follow-up tracking is for identified roles (clinician, integration): its "
            "due dates would undo the researcher view's date shift"
        )


async def follow_up_page(
    request: Request, viewer: Viewer, keep: CaseFilter, on: date | None, status: Status | None
) -> FollowUpPage:
    _identified(viewer)
    cases, snapshot = await source_of(request).cases(viewer.view, keep)
    today = on or date.today()  # the hospital's day: the server's local time zone

    def build() -> list[FollowUp]:
        entries = [follow_up(c, today) for c in cases]
        entries.sort(key=lambda e: (e.surgery_date or date.min, e.case_id))
        return [e for e in entries if status is None or e.counts[status]]

    entries = await run_in_threadpool(build)
    totals = {s: sum(e.counts[s] for e in entries) for s in STATUSES}
    return FollowUpPage(
        as_of=today,
        snapshot_as_of=snapshot.as_of,
        totals=totals,
        items=entries,
        warnings=snapshot.warnings,
    )


OnDay = Annotated[
    date | None, Query(alias="as_of", description="the day to compute for (default today)")
]
StatusFilter = Annotated[
    Status | None, Query(description="only cases with at least one item in this status")
]


@router.get("/follow-up", response_model=FollowUpPage)
async def list_follow_up(
    request: Request,
    viewer: ViewerDep,
    keep: FilterDep,
    on: OnDay = None,
    status: StatusFilter = None,
) -> FollowUpPage:
    """Per case (oldest surgery first): every PROM time point and imaging the study's
    schedule expects, present / upcoming / due / overdue / missing, with due dates."""
    return await follow_up_page(request, viewer, keep, on, status)


@router.get(
    "/export/follow-up.csv",
    response_class=StreamingResponse,
    tags=["Exports"],
    responses={200: {"content": {"text/csv": {}}}},
)
async def export_follow_up(
    request: Request,
    viewer: ViewerDep,
    keep: FilterDep,
    on: OnDay = None,
    status: StatusFilter = None,
) -> StreamingResponse:
    """One row per case: status counts, then one column per expected item (e.g.
    ``odi_month-3``, ``imaging-post``) holding its status."""
    page = await follow_up_page(request, viewer, keep, on, status)
    rows = [HEADER, *(row(e) for e in page.items)]
    return StreamingResponse(
        iter(list(csv_lines(rows))),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="spine-follow-up-{page.as_of:%Y%m%d}.csv"'
        },
    )
