"""DICOMweb (PS3.18): STOW-RS, QIDO-RS and WADO-RS over what the store holds."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from io import BytesIO
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydicom import dcmread
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy.engine import Engine

from services.common.auth import Principal, require_scope
from services.common.params import bounded_int
from services.imaging.errors import (
    ImagingError,
    InstanceTooLarge,
    InvalidQuery,
    NotAcceptable,
    NotFound,
    UnsupportedMediaType,
)
from services.imaging.intake import catalog
from services.imaging.intake.dicom_io import to_explicit_little_endian
from services.imaging.intake.multipart import (
    MultipartError,
    SpooledBody,
    encode_parts,
    iter_parts,
    new_boundary,
    parse_content_type,
)
from services.imaging.intake.store import InstanceStore, StoreResult
from services.imaging.models import Instance, Series, Study

log = logging.getLogger(__name__)
router = APIRouter(prefix="/dicomweb", tags=["DICOMweb"])

DICOM_JSON = "application/dicom+json"
Reader = Annotated[Principal, require_scope("imaging.read")]
Writer = Annotated[Principal, require_scope("imaging.write")]
PAGING_KEYS = {"limit", "offset", "includefield", "fuzzymatching"}


# -- DICOM JSON helpers ------------------------------------------------------------------
def _el(vr: str, *values: Any) -> dict[str, Any]:
    present = [v for v in values if v is not None and v != ""]
    if not present:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(v)} for v in present]}
    return {"vr": vr, "Value": list(present)}


def public_base_url(request: Request) -> str:
    """The service's address as callers see it (``public_base_url`` behind a proxy)."""
    configured = request.app.state.settings.public_base_url
    return configured.rstrip("/") if configured else str(request.base_url).rstrip("/")


def _base_url(request: Request) -> str:
    return f"{public_base_url(request)}/dicomweb"


def study_json(entry: dict[str, Any], base: str) -> dict[str, Any]:
    s: Study = entry["study"]
    return {
        "00080020": _el("DA", s.study_date),
        "00080030": _el("TM", s.study_time),
        "00080050": _el("SH", s.accession_number),
        "00080061": _el("CS", *entry["modalities"]),
        "00080090": _el("PN", s.referring_physician_name),
        "00081030": _el("LO", s.study_description),
        "00081190": _el("UR", f"{base}/studies/{s.study_instance_uid}"),
        "00100010": _el("PN", s.patient_name),
        "00100020": _el("LO", s.patient_id),
        "00100021": _el("LO", s.issuer_of_patient_id),
        "00100030": _el("DA", s.patient_birth_date),
        "00100040": _el("CS", s.patient_sex),
        "0020000D": _el("UI", s.study_instance_uid),
        "00200010": _el("SH", s.study_id),
        "00201206": _el("IS", entry["series"]),
        "00201208": _el("IS", entry["instances"]),
    }


def series_json(entry: dict[str, Any], base: str) -> dict[str, Any]:
    se: Series = entry["series"]
    return {
        "00080060": _el("CS", se.modality),
        "0008103E": _el("LO", se.series_description),
        "00081190": _el(
            "UR", f"{base}/studies/{se.study_instance_uid}/series/{se.series_instance_uid}"
        ),
        "00180015": _el("CS", se.body_part_examined),
        "0020000D": _el("UI", se.study_instance_uid),
        "0020000E": _el("UI", se.series_instance_uid),
        "00200011": _el("IS", se.series_number),
        "00201209": _el("IS", entry["instances"]),
    }


def instance_json(row: tuple[Instance, Series, Study], base: str) -> dict[str, Any]:
    inst, se, st = row
    url = (
        f"{base}/studies/{inst.study_instance_uid}/series/{inst.series_instance_uid}"
        f"/instances/{inst.sop_instance_uid}"
    )
    return {
        "00080016": _el("UI", inst.sop_class_uid),
        "00080018": _el("UI", inst.sop_instance_uid),
        "00080060": _el("CS", se.modality),
        "00081190": _el("UR", url),
        "00083002": _el("UI", inst.transfer_syntax_uid),
        "00100020": _el("LO", st.patient_id),
        "0020000D": _el("UI", inst.study_instance_uid),
        "0020000E": _el("UI", inst.series_instance_uid),
        "00200013": _el("IS", inst.instance_number),
        "00280008": _el("IS", inst.number_of_frames),
        "00280010": _el("US", inst.rows),
        "00280011": _el("US", inst.columns),
    }


def _dicom_json(
    payload: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(payload, status_code=status_code, media_type=DICOM_JSON, headers=headers)


# -- STOW-RS -------------------------------------------------------------------------------
@router.post("/studies", summary="STOW-RS: store instances")
async def stow(request: Request, _principal: Writer) -> Response:
    """Store the DICOM instances of a multipart/related request (PS3.18 10.5)."""
    return await _stow(request, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study")
async def stow_study(request: Request, study: str, _principal: Writer) -> Response:
    """Store instances; those of another study than the URL's fail with 0xA900."""
    return await _stow(request, study)


async def _stow(request: Request, expected_study: str | None) -> Response:
    settings = request.app.state.settings
    store: InstanceStore = request.app.state.store
    ctype = parse_content_type(request.headers.get("content-type"))
    if ctype.media_type != "multipart/related":
        raise UnsupportedMediaType('STOW-RS needs multipart/related; type="application/dicom"')
    part_type = ctype.params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise UnsupportedMediaType(f"unsupported multipart type '{part_type}'")
    boundary = ctype.params.get("boundary")
    if not boundary:
        raise MultipartError("multipart/related without a boundary parameter")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
        raise InstanceTooLarge(
            f"request body exceeds the limit of {settings.max_upload_bytes} bytes"
        )
    body = await SpooledBody.read(request.stream(), limit=settings.max_upload_bytes)
    try:
        stored, failed = await run_in_threadpool(
            _store_parts, store, body, boundary, expected_study
        )
    finally:
        body.close()
    return _stow_response(request, stored, failed, expected_study)


def _store_parts(
    store: InstanceStore, body: SpooledBody, boundary: str, expected_study: str | None
) -> tuple[list[StoreResult], list[tuple[str | None, str | None, int, str]]]:
    stored: list[StoreResult] = []
    failed: list[tuple[str | None, str | None, int, str]] = []
    for part in iter_parts(body.view(), boundary):
        media = part.content_type.media_type or "application/dicom"
        if media != "application/dicom":
            failed.append((None, None, 0xC000, f"part of type '{media}' is not application/dicom"))
            continue
        try:
            stored.append(store.put(part.body, source="stow", expected_study=expected_study))
        except ImagingError as exc:
            sop_class, sop_instance = _uids_of(part.body)
            failed.append((sop_class, sop_instance, exc.failure_reason, exc.reason))
            log.warning(
                "STOW-RS instance refused",
                extra={"reason": exc.reason, "failure_reason": f"0x{exc.failure_reason:04X}"},
            )
    if not stored and not failed:
        raise MultipartError("multipart body holds no parts")
    return stored, failed


def _uids_of(data: bytes) -> tuple[str | None, str | None]:
    """Best-effort SOP Class/Instance UIDs of a refused part, for the failure item."""
    try:
        ds = dcmread(
            BytesIO(data),
            stop_before_pixels=True,
            force=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID"],
        )
        return (str(ds.get("SOPClassUID", "")) or None, str(ds.get("SOPInstanceUID", "")) or None)
    except Exception:
        return None, None


def _stow_response(
    request: Request,
    stored: list[StoreResult],
    failed: list[tuple[str | None, str | None, int, str]],
    expected_study: str | None,
) -> Response:
    base = _base_url(request)
    payload: dict[str, Any] = {}
    study_uids = {r.study_instance_uid for r in stored}
    study_for_url = expected_study or (next(iter(study_uids)) if len(study_uids) == 1 else None)
    if study_for_url:
        payload["00081190"] = _el("UR", f"{base}/studies/{study_for_url}")
    if stored:
        payload["00081199"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": _el("UI", r.sop_class_uid),
                    "00081155": _el("UI", r.sop_instance_uid),
                    "00081190": _el(
                        "UR",
                        f"{base}/studies/{r.study_instance_uid}/series/"
                        f"{r.series_instance_uid}/instances/{r.sop_instance_uid}",
                    ),
                }
                for r in stored
            ],
        }
    if failed:
        payload["00081198"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": _el("UI", sop_class),
                    "00081155": _el("UI", sop_instance),
                    "00081197": _el("US", reason),
                }
                for sop_class, sop_instance, reason, _text in failed
            ],
        }
    if not failed:
        status = 200
    elif stored:
        status = 202
    else:
        status = 409
    headers = {}
    if failed:
        reasons = "; ".join(sorted({text for *_, text in failed}))[:500]
        headers["Warning"] = f'299 spine-imaging "{reasons}"'
    return _dicom_json(payload, status, headers)


# -- QIDO-RS -------------------------------------------------------------------------------
def _filters(request: Request) -> tuple[dict[str, str], catalog.Page, list[str]]:
    filters: dict[str, str] = {}
    ignored: list[str] = []
    known = set(catalog.supported_match_keys())
    for key, value in request.query_params.items():
        if key in PAGING_KEYS:
            continue
        keyword = key
        if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
            keyword = keyword_for_tag(int(key, 16)) or key
        if keyword in known:
            filters[keyword] = value
        elif tag_for_keyword(keyword) is not None or keyword != key:
            ignored.append(keyword)
        else:
            raise ImagingError(f"unknown query parameter '{key}'")
    try:
        limit = request.query_params.get("limit")
        offset = bounded_int(request.query_params.get("offset", "0"), "offset")
        page = catalog.Page(bounded_int(limit, "limit") if limit else None, offset)
    except ValueError as exc:
        raise InvalidQuery(str(exc)) from None
    return filters, page, ignored


def _qido_response(payload: list[dict[str, Any]], ignored: list[str]) -> Response:
    headers = {}
    if ignored:
        headers["Warning"] = (
            f'299 spine-imaging "The following attributes were ignored: {", ".join(ignored)}"'
        )
    return _dicom_json(payload, headers=headers)


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


@router.get("/studies", summary="QIDO-RS: search for studies")
async def search_studies(request: Request, _principal: Reader) -> Response:
    """Studies matching the query (PatientID, StudyDate range, ModalitiesInStudy, ...)."""
    filters, page, ignored = _filters(request)
    rows = await run_in_threadpool(catalog.find_studies, _engine(request), filters, page)
    base = _base_url(request)
    return _qido_response([study_json(r, base) for r in rows], ignored)


@router.get("/series", summary="QIDO-RS: search for series")
@router.get("/studies/{study}/series", summary="QIDO-RS: search for series of a study")
async def search_series(request: Request, _principal: Reader, study: str | None = None) -> Response:
    """Series matching the query, within one study when given."""
    filters, page, ignored = _filters(request)
    rows = await run_in_threadpool(catalog.find_series, _engine(request), filters, page, study)
    base = _base_url(request)
    return _qido_response([series_json(r, base) for r in rows], ignored)


@router.get("/instances", summary="QIDO-RS: search for instances")
@router.get("/studies/{study}/instances", summary="QIDO-RS: search for instances of a study")
@router.get(
    "/studies/{study}/series/{series}/instances",
    summary="QIDO-RS: search for instances of a series",
)
async def search_instances(
    request: Request, _principal: Reader, study: str | None = None, series: str | None = None
) -> Response:
    """Instances matching the query, within the given study and series."""
    filters, page, ignored = _filters(request)
    rows = await run_in_threadpool(
        lambda: catalog.find_instances(
            _engine(request), filters, page, study_instance_uid=study, series_instance_uid=series
        )
    )
    base = _base_url(request)
    return _qido_response([instance_json(r, base) for r in rows], ignored)


# -- WADO-RS -------------------------------------------------------------------------------
def _instances_or_404(
    request: Request, study: str, series: str | None = None, instance: str | None = None
) -> list[Instance]:
    filters = {"SOPInstanceUID": instance} if instance else {}
    rows = catalog.find_instances(
        _engine(request),
        filters,
        catalog.Page(),
        study_instance_uid=study,
        series_instance_uid=series,
    )
    if not rows:
        raise NotFound("no such " + ("instance" if instance else "series" if series else "study"))
    return [r[0] for r in rows]


def _requested_transfer_syntax(accept: str | None) -> str | None:
    """The transfer syntax asked for in Accept, or None for 'as stored'."""
    if not accept:
        return None
    for item in accept.split(","):
        ctype = parse_content_type(item.strip())
        if ctype.media_type in ("multipart/related", "application/dicom", "*/*"):
            ts = ctype.params.get("transfer-syntax")
            if ts and ts != "*":
                return ts
            return None
    raise NotAcceptable(f"cannot serve {accept!r}; use multipart/related; type=application/dicom")


def _instance_bytes(store: InstanceStore, inst: Instance, wanted: str | None) -> tuple[str, bytes]:
    """The stored bytes, or a native Explicit VR Little Endian rendition when asked for."""
    data = store.path_of(inst).read_bytes()
    if wanted is None or wanted == inst.transfer_syntax_uid:
        return inst.transfer_syntax_uid, data
    # Intake checked that this conversion works (dicom_io.read_part10), so a retrieve
    # never breaks midway.
    return ExplicitVRLittleEndian, to_explicit_little_endian(data, inst.transfer_syntax_uid)


def _multipart_instances(request: Request, instances: list[Instance]) -> Response:
    store: InstanceStore = request.app.state.store
    wanted = _requested_transfer_syntax(request.headers.get("accept"))
    if wanted not in (None, ExplicitVRLittleEndian) and any(
        inst.transfer_syntax_uid != wanted for inst in instances
    ):
        # Decided before the first byte is streamed: a 406 cannot follow a 200.
        raise NotAcceptable(
            f"cannot transcode to {wanted}; ask for {ExplicitVRLittleEndian} or '*'"
        )
    boundary = new_boundary()

    def parts() -> Iterator[tuple[str, bytes]]:
        for inst in instances:
            ts, data = _instance_bytes(store, inst, wanted)
            yield f"application/dicom; transfer-syntax={ts}", data

    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return StreamingResponse(encode_parts(parts(), boundary), media_type=media)


@router.get("/studies/{study}", summary="WADO-RS: retrieve a study")
async def retrieve_study(request: Request, study: str, _principal: Reader) -> Response:
    """Every instance of the study as multipart/related application/dicom."""
    instances = await run_in_threadpool(_instances_or_404, request, study)
    return _multipart_instances(request, instances)


@router.get("/studies/{study}/series/{series}", summary="WADO-RS: retrieve a series")
async def retrieve_series(
    request: Request, study: str, series: str, _principal: Reader
) -> Response:
    """Every instance of the series as multipart/related application/dicom."""
    instances = await run_in_threadpool(_instances_or_404, request, study, series)
    return _multipart_instances(request, instances)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}", summary="WADO-RS: retrieve an instance"
)
async def retrieve_instance(
    request: Request, study: str, series: str, instance: str, _principal: Reader
) -> Response:
    """One instance as multipart/related application/dicom."""
    instances = await run_in_threadpool(_instances_or_404, request, study, series, instance)
    return _multipart_instances(request, instances)


def _metadata(request: Request, instances: list[Instance]) -> list[dict[str, Any]]:
    store: InstanceStore = request.app.state.store
    out = []
    for inst in instances:
        ds = dcmread(store.path_of(inst), stop_before_pixels=True)
        out.append(ds.to_json_dict(bulk_data_threshold=65536, bulk_data_element_handler=None))
    return out


@router.get("/studies/{study}/metadata", summary="WADO-RS: study metadata")
async def study_metadata(request: Request, study: str, _principal: Reader) -> Response:
    """The DICOM JSON of every instance of the study, without pixel data."""
    instances = await run_in_threadpool(_instances_or_404, request, study)
    return _dicom_json(await run_in_threadpool(_metadata, request, instances))


@router.get("/studies/{study}/series/{series}/metadata", summary="WADO-RS: series metadata")
async def series_metadata(
    request: Request, study: str, series: str, _principal: Reader
) -> Response:
    """The DICOM JSON of every instance of the series, without pixel data."""
    instances = await run_in_threadpool(_instances_or_404, request, study, series)
    return _dicom_json(await run_in_threadpool(_metadata, request, instances))


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/metadata",
    summary="WADO-RS: instance metadata",
)
async def instance_metadata(
    request: Request, study: str, series: str, instance: str, _principal: Reader
) -> Response:
    """The DICOM JSON of one instance, without pixel data."""
    instances = await run_in_threadpool(_instances_or_404, request, study, series, instance)
    return _dicom_json(await run_in_threadpool(_metadata, request, instances))


__all__ = ["Query", "router"]
