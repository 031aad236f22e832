"""The study report (HTML, PDF) and the analysis-ready export, over the viewer's cases
(pseudonymised for researchers), computed once per cohort snapshot and filter."""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from services.gateway.access import ViewerDep
from services.gateway.analysis import report
from services.gateway.api.cases import FilterDep, source_of

router = APIRouter(tags=["Report"])
MEDIA = {
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
    "zip": "application/zip",
}


async def _artefact(
    request: Request, viewer: ViewerDep, keep: FilterDep, kind: Literal["html", "pdf", "zip"]
) -> Response:
    cases, snapshot = await source_of(request).cases(viewer.view, keep)
    filters = {k: str(v) for k, v in asdict(keep).items() if v is not None}
    numbers = snapshot.case_numbers(viewer.view)

    def make() -> bytes:
        built, data = report.build(cases, numbers, as_of=snapshot.as_of, filters=filters)
        if kind == "html":
            return report.html(built).encode()
        if kind == "pdf":
            return report.pdf(built)
        return report.export_zip(data, as_of=snapshot.as_of, pseudonymised=not viewer.identified)

    key = ("report", kind, viewer.identified, tuple(sorted(filters.items())))
    content = await run_in_threadpool(snapshot.memo, key, make)
    stamp = snapshot.as_of.strftime("%Y%m%dT%H%M%SZ")
    names = {"html": "report.html", "pdf": "report.pdf", "zip": "analysis.zip"}
    disposition = "inline" if kind != "zip" else "attachment"
    return Response(
        content,
        media_type=MEDIA[kind],
        headers={"Content-Disposition": f'{disposition}; filename="spine-{stamp}-{names[kind]}"'},
    )


@router.get(
    "/api/report.html",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}}},
)
async def report_html(request: Request, viewer: ViewerDep, keep: FilterDep) -> Response:
    """The study report: flow of the series, Table 1, primary and secondary endpoints,
    PROM models, surgeons and learning curves, figures, methods and software versions."""
    return await _artefact(request, viewer, keep, "html")


@router.get(
    "/api/report.pdf",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}},
)
async def report_pdf(request: Request, viewer: ViewerDep, keep: FilterDep) -> Response:
    """The same report as an A4 PDF (WeasyPrint)."""
    return await _artefact(request, viewer, keep, "pdf")


@router.get(
    "/api/export/analysis.zip",
    response_class=Response,
    tags=["Exports"],
    responses={200: {"content": {"application/zip": {}}}},
)
async def analysis_export(request: Request, viewer: ViewerDep, keep: FilterDep) -> Response:
    """Analysis-ready long tables (patients, levels, proms, complications) as CSV and
    Parquet, with a data dictionary and a REDCap-style dictionary."""
    return await _artefact(request, viewer, keep, "zip")
