"""Exports: the cohort as CSV (streamed) with its data dictionary."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from services.gateway.access import ViewerDep
from services.gateway.api.agreement import agreement_table
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


AGREEMENT_COLUMNS = (
    "quantity",
    "kind",
    "rater_a",
    "rater_b",
    "n",
    "icc2",
    "icc2_ci_low",
    "icc2_ci_high",
    "icc3",
    "icc3_ci_low",
    "icc3_ci_high",
    "bias",
    "bias_ci_low",
    "bias_ci_high",
    "sd",
    "loa_low",
    "loa_high",
    "loa_low_ci_low",
    "loa_low_ci_high",
    "loa_high_ci_low",
    "loa_high_ci_high",
    "ccc",
    "ccc_ci_low",
    "ccc_ci_high",
    "mean_absolute_difference",
)


def _agreement_row(row: dict[str, Any]) -> list[str]:
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, (list, tuple)):  # an interval: two columns
            target = {"loa_lower_ci": "loa_low_ci", "loa_upper_ci": "loa_high_ci"}.get(key, key)
            flat[f"{target}_low"], flat[f"{target}_high"] = value
        else:
            flat[key] = value
    return ["" if flat.get(c) is None else str(flat[c]) for c in AGREEMENT_COLUMNS]


@router.get(
    "/agreement.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
async def agreement_export(request: Request, viewer: ViewerDep) -> StreamingResponse:
    """The agreement table (see ``GET /api/agreement``), one row per quantity and pair of
    raters; readers pseudonymised for researchers; empty cells where a statistic is
    undefined (fewer than 3 pairs, no variance)."""
    answer = await agreement_table(request, viewer)
    rows = [list(AGREEMENT_COLUMNS), *(_agreement_row(r) for r in answer.agreement)]
    stamp = answer.as_of.strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        iter(list(csv_lines(rows))),
        media_type=CSV,
        headers={"Content-Disposition": f'attachment; filename="spine-agreement-{stamp}.csv"'},
    )
