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
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
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
from services.imaging.intake.dicom_io import meta_extent, to_explicit_little_endian
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
from services.imaging.retrieve import frames as frames_mod
from services.imaging.retrieve.media import (
    OCTET_STREAM,
    accepted,
    frame_rendition,
    rendered_media,
)
from services.imaging.retrieve.rendered import RenderOptions, render
from services.imaging.retrieve.rendered import parse_options as parse_render_options

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
    """Best-effort SOP Class/Instance UIDs of a refused part, for the failure item. A
    deflated data set is not inflated (it may be a bomb: that may be why it was refused):
    its File Meta names them. A File Meta that cannot be walked names nothing."""
    try:
        end, syntax = meta_extent(data)
        if syntax == DeflatedExplicitVRLittleEndian:
            meta = dcmread(BytesIO(data[:end])).file_meta
            return (
                str(meta.get("MediaStorageSOPClassUID", "")) or None,
                str(meta.get("MediaStorageSOPInstanceUID", "")) or None,
            )
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

    base = _base_url(request)

    def parts() -> Iterator[tuple[str, bytes, str]]:
        for inst in instances:
            ts, data = _instance_bytes(store, inst, wanted)
            yield f"application/dicom; transfer-syntax={ts}", data, _instance_url(base, inst)

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


def _instance_url(base: str, inst: Instance) -> str:
    return (
        f"{base}/studies/{inst.study_instance_uid}/series/{inst.series_instance_uid}"
        f"/instances/{inst.sop_instance_uid}"
    )


BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
BULK_THRESHOLD = 1024  # top-level binary values above this many bytes go by BulkDataURI


def _metadata(request: Request, instances: list[Instance]) -> list[dict[str, Any]]:
    """DICOM JSON of each instance; Pixel Data and large top-level binary values as a
    BulkDataURI (``.../bulk/{tag}``), as PS3.18 F.2.6 describes, nested ones inline."""
    store: InstanceStore = request.app.state.store
    base = _base_url(request)
    out = []
    for inst in instances:
        ds = dcmread(store.path_of(inst), stop_before_pixels=True)
        url = _instance_url(base, inst)
        bulk: dict[str, dict[str, Any]] = {}
        for element in ds:
            if element.VR in BULK_VRS and len(element.value or b"") > BULK_THRESHOLD:
                tag = f"{element.tag:08X}"
                bulk[tag] = {"vr": element.VR, "BulkDataURI": f"{url}/bulk/{tag}"}
        if inst.rows:
            compressed = UID(inst.transfer_syntax_uid).is_compressed
            vr = "OB" if compressed or int(ds.get("BitsAllocated", 16)) <= 8 else "OW"
            bulk["7FE00010"] = {"vr": vr, "BulkDataURI": f"{url}/bulk/7FE00010"}
        for tag in bulk:
            if int(tag, 16) in ds:
                del ds[int(tag, 16)]
        payload = ds.to_json_dict(bulk_data_threshold=1 << 30, bulk_data_element_handler=None)
        payload.update(bulk)
        out.append(dict(sorted(payload.items())))
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


# -- WADO-RS frames, bulk data, rendered and thumbnail ---------------------------------------
INSTANCE_PATH = "/studies/{study}/series/{series}/instances/{instance}"


def _one_instance(request: Request, study: str, series: str, instance: str) -> Instance:
    return _instances_or_404(request, study, series, instance)[0]


def _frames_response(
    request: Request, inst: Instance, numbers: list[int] | None, location: str
) -> Response:
    """Frames as multipart/related, negotiated before the first byte (406 cannot follow 200)."""
    store: InstanceStore = request.app.state.store
    rendition = frame_rendition(request.headers.get("accept"), inst.transfer_syntax_uid)
    ds = frames_mod.read_instance(store.path_of(inst).read_bytes())
    wanted = numbers or list(range(1, frames_mod.number_of_frames(ds) + 1))
    chunks = frames_mod.frame_bytes(ds, wanted, rendition)
    if rendition.as_stored is False and UID(inst.transfer_syntax_uid).is_compressed:
        content_type = f"{OCTET_STREAM}; transfer-syntax={ExplicitVRLittleEndian}"
    else:
        content_type = rendition.content_type
    boundary = new_boundary()
    parts = (
        (content_type, chunk, f"{location}/frames/{n}" if numbers else location)
        for n, chunk in zip(wanted, chunks, strict=True)
    )
    media = f'multipart/related; type="{content_type.split(";")[0]}"; boundary={boundary}'
    return StreamingResponse(encode_parts(parts, boundary), media_type=media)


@router.get(INSTANCE_PATH + "/frames/{frame_list}", summary="WADO-RS: retrieve frames")
async def retrieve_frames(
    request: Request, study: str, series: str, instance: str, frame_list: str, _principal: Reader
) -> Response:
    """Frames (1-based, comma-separated) as multipart/related: native
    (``application/octet-stream``, Explicit VR Little Endian) or, when the client accepts
    it, in the stored compressed syntax."""
    numbers = frames_mod.parse_frame_list(frame_list)
    inst = await run_in_threadpool(_one_instance, request, study, series, instance)
    location = _instance_url(_base_url(request), inst)
    return await run_in_threadpool(_frames_response, request, inst, numbers, location)


@router.get(INSTANCE_PATH + "/bulk/{tag}", summary="WADO-RS: retrieve bulk data")
async def retrieve_bulk(
    request: Request, study: str, series: str, instance: str, tag: str, _principal: Reader
) -> Response:
    """A top-level binary value named by a metadata BulkDataURI; Pixel Data goes out as
    its frames (negotiated like ``frames``)."""
    if len(tag) != 8 or any(c not in "0123456789abcdefABCDEF" for c in tag):
        raise InvalidQuery("the bulk data tag is eight hexadecimal digits")
    inst = await run_in_threadpool(_one_instance, request, study, series, instance)
    location = f"{_instance_url(_base_url(request), inst)}/bulk/{tag.upper()}"
    if int(tag, 16) == 0x7FE00010:
        return await run_in_threadpool(_frames_response, request, inst, None, location)
    store: InstanceStore = request.app.state.store
    ds = await run_in_threadpool(dcmread, store.path_of(inst), stop_before_pixels=True)
    element = ds.get(int(tag, 16))
    if element is None or element.VR not in BULK_VRS:
        raise NotFound(f"the instance has no binary value at {tag.upper()}")
    accept = request.headers.get("accept")
    if accept and not any(
        c.media_type in ("*/*", "multipart/*")
        or (
            c.media_type == "multipart/related"
            and c.params.get("type", OCTET_STREAM).lower() in (OCTET_STREAM, "*/*")
        )
        for c in accepted(accept)
    ):
        raise NotAcceptable(
            'bulk data is served as multipart/related; type="application/octet-stream"'
        )
    boundary = new_boundary()
    body = encode_parts([(OCTET_STREAM, bytes(element.value), location)], boundary)
    return StreamingResponse(
        body, media_type=f'multipart/related; type="{OCTET_STREAM}"; boundary={boundary}'
    )


def _render_options(request: Request, *, thumbnail: bool) -> tuple[RenderOptions, str]:
    q = request.query_params
    options = parse_render_options(
        q.get("window"), q.get("viewport"), q.get("quality"), thumbnail=thumbnail
    )
    return options, rendered_media(request.headers.get("accept"))


def _render_one(
    request: Request, inst: Instance, frame: int, options: RenderOptions, media: str
) -> bytes:
    store: InstanceStore = request.app.state.store
    ds = dcmread(store.path_of(inst))
    if frame > frames_mod.number_of_frames(ds):
        raise NotFound(f"frame {frame} does not exist")
    return render(ds, frame, options, media)


def _image(payload: bytes, media: str) -> Response:
    return Response(payload, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


def _one_frame(frame_list: str | None) -> int:
    """The one frame a rendering or thumbnail is of (the first when none is named)."""
    numbers = frames_mod.parse_frame_list(frame_list) if frame_list else [1]
    if len(numbers) != 1:
        raise InvalidQuery("a rendering or thumbnail is of one frame")
    return numbers[0]


def _images(instances: list[Instance]) -> list[Instance]:
    """The instances with pixels (an SR has none); 406 when there is none to render."""
    images = [i for i in instances if i.rows]
    if not images:
        raise NotAcceptable("no image in this study or series to render")
    return images


def _representative(instances: list[Instance]) -> Instance:
    """The middle image of the first image series (by series then instance number)."""
    images = _images(instances)
    first_series = images[0].series_instance_uid
    series = [i for i in images if i.series_instance_uid == first_series]
    return series[len(series) // 2]


@router.get(INSTANCE_PATH + "/rendered", summary="WADO-RS: rendered instance")
@router.get(INSTANCE_PATH + "/frames/{frame_list}/rendered", summary="WADO-RS: rendered frame")
async def rendered_instance(
    request: Request,
    study: str,
    series: str,
    instance: str,
    _principal: Reader,
    frame_list: str | None = None,
) -> Response:
    """The instance's first frame (or the one frame named) as JPEG or PNG, windowed by
    ``window=center,width[,linear|linear-exact|sigmoid]`` or the data set's own window,
    scaled to ``viewport=width,height``."""
    options, media = _render_options(request, thumbnail=False)
    frame = _one_frame(frame_list)
    inst = await run_in_threadpool(_one_instance, request, study, series, instance)
    payload = await run_in_threadpool(_render_one, request, inst, frame, options, media)
    return _image(payload, media)


@router.get("/studies/{study}/rendered", summary="WADO-RS: rendered study")
@router.get("/studies/{study}/series/{series}/rendered", summary="WADO-RS: rendered series")
async def rendered_many(
    request: Request, study: str, _principal: Reader, series: str | None = None
) -> Response:
    """Every image of the study or series rendered (first frame each), as
    multipart/related parts with their Content-Location."""
    options, media = _render_options(request, thumbnail=False)
    instances = await run_in_threadpool(_instances_or_404, request, study, series)
    images = _images(instances)
    base = _base_url(request)

    def render_all() -> list[tuple[str, bytes, str]]:
        # Every image rendered before the first byte: a failure is a status, not a cut.
        return [
            (media, _render_one(request, inst, 1, options, media), _instance_url(base, inst))
            for inst in images
        ]

    parts = await run_in_threadpool(render_all)
    boundary = new_boundary()
    return StreamingResponse(
        encode_parts(parts, boundary),
        media_type=f'multipart/related; type="{media}"; boundary={boundary}',
    )


@router.get("/studies/{study}/thumbnail", summary="WADO-RS: study thumbnail")
@router.get("/studies/{study}/series/{series}/thumbnail", summary="WADO-RS: series thumbnail")
@router.get(INSTANCE_PATH + "/thumbnail", summary="WADO-RS: instance thumbnail")
@router.get(INSTANCE_PATH + "/frames/{frame_list}/thumbnail", summary="WADO-RS: frame thumbnail")
async def thumbnail(
    request: Request,
    study: str,
    _principal: Reader,
    series: str | None = None,
    instance: str | None = None,
    frame_list: str | None = None,
) -> Response:
    """A small rendering (128 pixels, or ``viewport``) of the frame, the instance, or the
    middle image of the series or of the study's first image series."""
    options, media = _render_options(request, thumbnail=True)
    frame = _one_frame(frame_list)
    instances = await run_in_threadpool(_instances_or_404, request, study, series, instance)
    inst = instances[0] if instance else _representative(instances)
    payload = await run_in_threadpool(_render_one, request, inst, frame, options, media)
    return _image(payload, media)


__all__ = ["Query", "router"]
