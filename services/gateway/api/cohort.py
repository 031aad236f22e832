"""The cohort: the summary that answers the protocol's questions, and its plots."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from services.common.vocabulary import PromCode, QuantityName
from services.gateway import plots
from services.gateway.access import ViewerDep
from services.gateway.api.cases import FilterDep, source_of
from services.gateway.cohort import summarize
from services.gateway.errors import InvalidRequest

router = APIRouter(prefix="/api/cohort", tags=["Cohort"])


class SummaryResponse(BaseModel):
    as_of: datetime
    snapshot_seconds: float
    filters: dict[str, Any]
    summary: dict[str, Any]  # services.gateway.cohort.CohortSummary, as JSON
    warnings: list[str]


@router.get("/summary", response_model=SummaryResponse)
async def cohort_summary(
    request: Request,
    viewer: ViewerDep,
    keep: FilterDep,
    refresh: bool = False,
    reviewed: Annotated[
        bool, Query(description="compare only the values a reader accepted, corrected or made")
    ] = False,
) -> SummaryResponse:
    """Counts; pre/post metrics at the operated levels with paired tests; complication
    rates with Wilson CIs; early results; PROM changes and MCID rates per time point; the
    compared values by review state (automatic unreviewed, accepted, corrected, rejected)."""
    cases, snapshot = await source_of(request).cases(viewer.view, keep, refresh=refresh)
    summary = await run_in_threadpool(summarize, cases, keep.group, reviewed)
    return SummaryResponse(
        as_of=snapshot.as_of,
        snapshot_seconds=round(snapshot.load_seconds, 3),
        filters={
            **{k: v for k, v in asdict(keep).items() if v is not None},
            **({"reviewed": True} if reviewed else {}),
        },
        summary=asdict(summary),
        warnings=snapshot.warnings + summary.warnings,
    )


@router.get(
    "/plots/{kind}.{fmt}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}}},
)
async def cohort_plot(
    request: Request,
    kind: Literal["paired", "changes", "complications", "proms"],
    fmt: Literal["png", "svg"],
    viewer: ViewerDep,
    keep: FilterDep,
    quantity: Annotated[QuantityName | None, Query(description="for paired")] = None,
    prom: Annotated[PromCode, Query(description="for proms")] = PromCode.ODI,
) -> Response:
    """``paired`` pre/post lines per patient (``quantity``), ``changes`` by group,
    ``complications`` with Wilson CIs, ``proms`` trajectories with 95 % bands."""
    cases, snapshot = await source_of(request).cases(viewer.view, keep)
    if kind == "paired" and quantity is None:
        raise InvalidRequest("the paired plot needs ?quantity=")

    def draw() -> bytes:
        if kind == "paired":
            assert quantity is not None
            return plots.paired(cases, quantity, fmt)
        if kind == "changes":
            return plots.changes(cases, fmt)
        if kind == "complications":
            summary = summarize(cases, keep.group)
            return plots.complications(summary.complications, len(cases), fmt)
        return plots.proms(cases, prom, fmt)

    # Drawn once per snapshot: the cohort page asks for nine of them on every visit.
    filters = tuple(sorted((k, str(v)) for k, v in asdict(keep).items() if v is not None))
    key = (
        "plot",
        kind,
        fmt,
        quantity,
        prom if kind == "proms" else None,
        viewer.identified,
        filters,
    )
    content = await run_in_threadpool(snapshot.memo, key, draw)
    return Response(content, media_type=plots.MEDIA_TYPES[fmt])
