"""Exports: the cohort as CSV (streamed) with its data dictionary."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from services.gateway.access import ViewerDep
from services.gateway.api.cases import FilterDep, source_of
from services.gateway.cases import Case
from services.gateway.export import HEADER, case_rows, csv_lines, data_dictionary_rows

router = APIRouter(prefix="/api/export", tags=["Exports"])
CSV = "text/csv; charset=utf-8"
CHUNK_CASES = 50


async def _stream(cases: list[Case]) -> AsyncIterator[str]:
    yield "".join(csv_lines([HEADER]))
    for start in range(0, len(cases), CHUNK_CASES):
        rows: Iterable[list[str]] = (
            row for case in cases[start : start + CHUNK_CASES] for row in case_rows(case)
        )
        yield "".join(csv_lines(rows))


@router.get(
    "/cases.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
async def export_cases(request: Request, viewer: ViewerDep, keep: FilterDep) -> StreamingResponse:
    """One row per case x level x side (see the data dictionary), streamed."""
    cases, snapshot = await source_of(request).cases(viewer.view, keep)
    cases.sort(key=lambda c: c.case_id)
    stamp = snapshot.as_of.strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        _stream(cases),
        media_type=CSV,
        headers={"Content-Disposition": f'attachment; filename="spine-cases-{stamp}.csv"'},
    )


@router.get(
    "/data-dictionary.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
async def data_dictionary(viewer: ViewerDep) -> StreamingResponse:
    """Every column of cases.csv: name, type, unit, description."""
    return StreamingResponse(
        iter(list(csv_lines(data_dictionary_rows()))),
        media_type=CSV,
        headers={"Content-Disposition": 'attachment; filename="spine-cases-dictionary.csv"'},
    )
