"""The study coordinator's upload of a registry export: ``POST /registry/import``.

The body is the file as exported (CSV or XLSX), its name in ``filename``; the answer is the
import report (rows loaded, rejected, every bad cell with its row and column). Requires the
scope ``registry.import``; the import then writes through the FHIR server's write door on
the server's behalf, each patient in its own transaction.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from services.common.auth import Principal, require_scope
from services.outcomes.errors import InvalidRequest, UnsupportedMedia
from services.outcomes.registry.importer import RegistryImporter
from services.outcomes.registry.mapping import load_mapping
from services.outcomes.registry.table import TableError

router = APIRouter(prefix="/registry", tags=["Registry"])
Importer = Annotated[Principal, require_scope("registry.import")]
MEDIA = {
    "text/csv",
    "text/plain",
    "application/csv",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/octet-stream",
}
LIMIT = 50 * 1024**2


@router.post("/import", summary="Import a registry export (CSV or XLSX)")
async def import_registry(
    request: Request,
    _: Importer,
    filename: Annotated[str, Query(min_length=1, max_length=200)] = "export.csv",
    dry_run: bool = False,
) -> Any:
    """Load every valid patient of the export; report every bad cell (row, column, value,
    reason). ``dry_run`` checks and reports without writing."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in MEDIA:
        raise UnsupportedMedia(f"send the export as text/csv or XLSX, not '{media}'")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > LIMIT:
            raise InvalidRequest(f"an export is limited to {LIMIT} bytes")
        chunks.append(chunk)
    settings = request.app.state.settings
    importer = RegistryImporter(
        request.app.state.engine,
        load_mapping(settings.registry_mapping),
        mrn_system=settings.mrn_system,
    )
    try:
        report = await run_in_threadpool(importer.run, filename, b"".join(chunks), dry_run=dry_run)
    except TableError as exc:
        raise InvalidRequest(f"{filename}: {exc}; nothing was written") from None
    return JSONResponse(report.as_json())
