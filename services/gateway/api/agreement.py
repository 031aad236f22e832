"""Agreement of the automatic measurements with the readers', and between readers."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from services.common.vocabulary import QuantityName
from services.gateway import agreement, plots
from services.gateway.access import Viewer, ViewerDep
from services.gateway.api.cases import source_of
from services.gateway.errors import InvalidRequest, NotFound
from services.gateway.sources import CaseFilter

router = APIRouter(prefix="/api/agreement", tags=["Agreement"])


class AgreementResponse(BaseModel):
    as_of: datetime
    reads: dict[str, int]  # values per rater (automatic and each reader)
    actions: dict[str, dict[str, int]]  # per reader: accepted, corrected, rejected, measured
    agreement: list[dict[str, Any]]  # services.gateway.agreement.Agreement, as JSON


async def _reads(request: Request, viewer: Viewer, refresh: bool = False) -> tuple[Any, datetime]:
    _, snapshot = await source_of(request).cases(viewer.view, CaseFilter(), refresh=refresh)
    studies = [s for group in snapshot.studies_by_patient.values() for s in group]

    def compute() -> Any:
        values = agreement.reads(studies)
        if not viewer.identified and viewer.view.pseudonymizer is not None:
            rename = viewer.view.pseudonymizer.reader
            values["rater"] = [
                r if r == agreement.AUTOMATIC else rename(r) for r in values["rater"]
            ]
        return values

    def count() -> dict[str, dict[str, int]]:
        counted = agreement.actions(studies)
        if not viewer.identified and viewer.view.pseudonymizer is not None:
            rename = viewer.view.pseudonymizer.reader
            return {rename(reader): n for reader, n in counted.items()}
        return counted

    values = await run_in_threadpool(
        lambda: snapshot.memo(("agreement-reads", viewer.identified), compute)
    )
    counted = await run_in_threadpool(
        lambda: snapshot.memo(("agreement-actions", viewer.identified), count)
    )
    return (values, counted), snapshot.as_of


@router.get("", response_model=AgreementResponse)
async def agreement_table(
    request: Request,
    viewer: ViewerDep,
    quantity: Annotated[QuantityName | None, Query()] = None,
    refresh: bool = False,
) -> AgreementResponse:
    """Per quantity: automatic vs each reader, reader vs reader, and each reader's first vs
    latest read: ICC(2,1) and ICC(3,1) with 95 % CIs, Bland-Altman bias and limits of
    agreement with their CIs, Lin's CCC, mean absolute difference (readers pseudonymised
    for researchers)."""
    (values, counted), as_of = await _reads(request, viewer, refresh)
    if quantity is not None:
        values = values[values["quantity"] == quantity.value]
    rows = await run_in_threadpool(agreement.table, values)
    return AgreementResponse(
        as_of=as_of,
        reads={str(k): int(v) for k, v in values.groupby("rater").size().items()},
        actions=counted,
        agreement=[asdict(r) for r in rows],
    )


@router.get(
    "/plots/bland-altman.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
async def bland_altman_plot(
    request: Request,
    viewer: ViewerDep,
    quantity: QuantityName,
    a: Annotated[str, Query(max_length=128)] = agreement.AUTOMATIC,
    b: Annotated[str | None, Query(max_length=128, description="a reader")] = None,
) -> Response:
    """The Bland-Altman plot of raters ``a`` and ``b`` (default: automatic vs the first
    reader) for one quantity (statsmodels' ``mean_diff_plot``)."""
    (values, _), _ = await _reads(request, viewer)
    latest = values[values["quantity"] == quantity.value]
    latest = latest.sort_values("read").groupby([*agreement.KEY, "rater"], as_index=False).last()
    raters = sorted(set(latest["rater"]) - {agreement.AUTOMATIC})
    second = b or (raters[0] if raters else None)
    if second is None or a not in set(latest["rater"]) or second not in set(latest["rater"]):
        raise NotFound("no such rater with values of this quantity")
    wide = latest.pivot_table(index=agreement.KEY, columns="rater", values="value").dropna(
        subset=[a, second]
    )
    if len(wide) < agreement.MIN_PAIRS:
        raise InvalidRequest(f"fewer than {agreement.MIN_PAIRS} measurements read by both")

    image = await run_in_threadpool(
        plots.bland_altman,
        wide[a].to_numpy(),
        wide[second].to_numpy(),
        rater_a=a,
        rater_b=second,
        quantity=quantity.value,
        fmt="png",
    )
    return Response(image, media_type="image/png")
