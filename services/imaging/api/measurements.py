"""Measurements of a study: the automatic result, its key images and SR, readers' own values."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlmodel import Session, col, select

from services.common import reading
from services.common.auth import Principal, require_scope
from services.common.contracts import (
    AnalysisResult,
    ContractError,
    GeometryPoint,
    KeyImageLink,
    ResultsPage,
    SrLink,
    StudyMeasurements,
    StudyResult,
    key_image_name,
)
from services.common.contracts import (
    ManualMeasurement as ManualPublic,
)
from services.common.vocabulary import (
    QUANTITIES,
    Level,
    QuantityName,
    ReadAction,
    ReadPurpose,
    RejectReason,
    Side,
)
from services.imaging.analysis.plane import Plane
from services.imaging.api.dicomweb import public_base_url
from services.imaging.errors import InvalidRead, NotFound, StaleResult
from services.imaging.intake.dicom_io import part10_bytes
from services.imaging.intake.store import DERIVED_SOURCE
from services.imaging.models import (
    AnalysisJob,
    DeliveryState,
    ManualMeasurement,
    MeasurementSet,
    ResultDelivery,
    Series,
    Study,
    current_measurement_set,
    read_contract,
    reads_of,
    utcnow,
)
from services.imaging.results import review
from services.imaging.results.sections import MAX_OFFSET_MM

router = APIRouter(prefix="/api/studies/{study}", tags=["Measurements"])
Reader = Annotated[Principal, require_scope("imaging.read")]
Writer = Annotated[Principal, require_scope("imaging.write")]
# Readers' reads: the gateway's review workstation holds this, not the right to write images.
Reviewer = Annotated[Principal, require_scope("imaging.review")]


class JobPublic(BaseModel):
    id: int
    study_version: int
    algorithm_version: str
    state: str
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_error: str | None


class ManualIn(BaseModel):
    """A reader's read of one measurement: accept, reject (with a reason), correct (move the
    construction or type a value), or measure (no automatic value to review)."""

    model_config = ConfigDict(extra="forbid")

    reader_id: str | None = Field(
        default=None, max_length=64, description="defaults to the caller's identity"
    )
    level: Level
    side: Side | None = None
    quantity: QuantityName
    action: ReadAction = "measured"
    purpose: ReadPurpose = "review"
    value: float | None = Field(
        default=None, gt=0, lt=1e6, description="a typed value, within the accepted range"
    )
    geometry: list[GeometryPoint] | None = Field(
        default=None,
        min_length=2,
        max_length=1024,
        description="the construction on the review image (column, row); its value is computed",
    )
    reason: RejectReason | None = Field(default=None, description="why it is rejected")
    unit: str | None = None
    note: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _consistent(self) -> ManualIn:
        quantity = QUANTITIES[self.quantity]
        if self.unit is not None and self.unit != quantity.unit:
            raise ValueError(f"{self.quantity} is measured in {quantity.unit}, not {self.unit}")
        if quantity.per_side != (self.side is not None):
            raise ValueError(
                f"side is required for {self.quantity} and only for it"
                if quantity.per_side
                else f"{self.quantity} has no side"
            )
        if (self.action == "rejected") != (self.reason is not None):
            raise ValueError("a reason is given with a rejection, and only with it")
        if self.action in ("accepted", "rejected") and (
            self.value is not None or self.geometry is not None
        ):
            raise ValueError(f"an {self.action} read carries no value and no construction")
        if self.action in ("corrected", "measured") and (self.value is None) == (
            self.geometry is None
        ):
            raise ValueError(f"a {self.action} read has a value or a construction (one of them)")
        if self.value is not None:
            low, high = quantity.accepted
            if not low <= self.value <= high:
                raise ValueError(f"{self.quantity} must be within {low:g}-{high:g} {quantity.unit}")
        self.unit = quantity.unit
        return self


def _study(session: Session, study: str) -> Study:
    row = session.get(Study, study)
    if row is None:
        raise NotFound(f"study {study} is not known here")
    return row


def _manual(session: Session, study: str) -> list[ManualPublic]:
    return reads_of(session, study)


def _present(
    request: Request, current: MeasurementSet, manual: list[ManualPublic]
) -> StudyMeasurements:
    """The stored result with its version, SR, key-image links and readers' values."""
    study = current.study_instance_uid
    try:
        result = AnalysisResult.from_json(current.result)
    except ContractError as exc:
        raise StaleResult(
            f"the stored result of {study} cannot be read ({exc})"
        ) from None  # ContractError: see _present_or_none
    base = f"{public_base_url(request)}/api/studies/{study}"
    names = request.app.state.runtime.results.key_image_names(current)
    return StudyMeasurements(
        **dict(result),
        study_version=current.study_version,
        computed_at=current.created_at,
        sr=None
        if current.sr_sop_instance_uid is None
        else SrLink(
            sop_instance_uid=current.sr_sop_instance_uid,
            wado=f"{public_base_url(request)}/dicomweb/studies/{study}",
        ),
        key_images=[KeyImageLink(name=n, url=f"{base}/key-images/{n}.png") for n in names],
        manual_measurements=manual,
        measurement_set_id=current.id,
        review_images=request.app.state.runtime.results.review_image_names(current),
    )


@router.get(
    "/measurements",
    response_model=StudyMeasurements,
    responses={
        202: {"description": "analysis queued or running"},
        422: {"description": "the analysis failed"},
    },
)
def get_measurements(study: str, request: Request, _: Reader) -> Any:
    """The current automatic measurements (the CLI's schema), SR, key images, manual values."""
    with Session(request.app.state.engine) as session:
        _study(session, study)
        current = current_measurement_set(session, study)
        manual = _manual(session, study)
        if current is None:
            job = session.exec(
                select(AnalysisJob)
                .where(AnalysisJob.study_instance_uid == study)
                .order_by(col(AnalysisJob.id).desc())
            ).first()
            if job is None:
                raise NotFound(f"study {study} has not been analysed (is it complete?)")
            if job.state == "failed":
                return JSONResponse(
                    status_code=422,
                    content={
                        "detail": "the analysis failed",
                        "job": JobPublic.model_validate(job, from_attributes=True).model_dump(
                            mode="json"
                        ),
                    },
                )
            return JSONResponse(
                status_code=202,
                content={
                    "detail": f"analysis {job.state}",
                    "job": JobPublic.model_validate(job, from_attributes=True).model_dump(
                        mode="json"
                    ),
                },
            )
    return _present(request, current, manual)


@router.get(
    "/key-images/{name}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def get_key_image(study: str, name: str, request: Request, _: Reader) -> Response:
    """One key image (PNG overlay) of the current analysis."""
    with Session(request.app.state.engine) as session:
        current = current_measurement_set(session, study)
    if current is None or current.key_images_dir is None:
        raise NotFound(f"study {study} has no key images")
    png = request.app.state.runtime.results.key_image(current, name)
    if png is None:
        raise NotFound("no such key image")
    return Response(png, media_type="image/png")


def _current(request: Request, study: str) -> MeasurementSet | None:
    with Session(request.app.state.engine) as session:
        return current_measurement_set(session, study)


def _review_geometry(request: Request, study: str, name: str) -> dict[str, Any] | None:
    """The geometry of a review image of the study's current result (None: there is none)."""
    current = _current(request, study)
    if current is None:
        return None
    geometry: dict[str, Any] | None = request.app.state.runtime.results.review_geometry(
        current, name
    )
    return geometry


@router.get(
    "/review-images/{name}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def get_review_image(study: str, name: str, request: Request, _: Reader) -> Response:
    """A key image's section without the construction and value (for a reader to measure)."""
    current = _current(request, study)
    png = None if current is None else request.app.state.runtime.results.review_image(current, name)
    if png is None:
        raise NotFound("no such review image")
    return Response(png, media_type="image/png")


@router.get("/review-images/{name}.json")
def get_review_geometry(study: str, name: str, request: Request, _: Reader) -> dict[str, Any]:
    """The automatic construction on a review image: kind (line or contour), points
    (column, row), pixel size (mm), orientation of its rows and columns."""
    geometry = _review_geometry(request, study, name)
    if geometry is None:
        raise NotFound("no such review image")
    return geometry


@router.get(
    "/review-images/{name}/section.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def get_section(
    study: str,
    name: str,
    request: Request,
    _: Reader,
    offset: Annotated[float, Query(ge=-MAX_OFFSET_MM, le=MAX_OFFSET_MM)] = 0.0,
    window: Annotated[Literal["auto", "bone", "soft"], Query()] = "auto",
) -> Response:
    """A section parallel to the key image's, ``offset`` mm along its normal, on the same
    pixel grid (the construction fits it), windowed for bone or soft tissue on CT."""
    geometry = _review_geometry(request, study, name)
    if geometry is None or not geometry.get("plane"):
        raise NotFound("no such review image (or one kept before sections were)")
    plane = Plane.from_json(geometry["plane"])
    png = request.app.state.runtime.sections.render(plane, offset, window)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


def _fhir_pending(session: Session, current: MeasurementSet) -> bool:
    """Whether a FHIR delivery of this result is still waiting (it will send every read)."""
    waiting = session.exec(
        select(ResultDelivery.id).where(
            ResultDelivery.measurement_set_id == current.id,
            ResultDelivery.target == "fhir",
            col(ResultDelivery.state) == DeliveryState.PENDING,
        )
    ).first()
    return waiting is not None


def _automatic(current: MeasurementSet | None, body: ManualIn) -> Any:
    if current is None:
        return None
    try:
        result = AnalysisResult.from_json(current.result)
    except ContractError:
        raise StaleResult("the stored result cannot be read (analyse the study again)") from None
    return next(
        (
            m
            for m in result.measurements
            if m.quantity == body.quantity and m.level == body.level and m.side == body.side
        ),
        None,
    )


@router.post(
    "/manual-measurements",
    status_code=201,
    response_model=ManualPublic,
    responses={422: {"description": "the read does not fit the result it reviews"}},
)
def add_manual(study: str, body: ManualIn, request: Request, who: Reviewer) -> ManualPublic:
    """Record a reader's read next to the automatic value (both are kept; a reader's later
    read of the same measurement supersedes their earlier one, which stays)."""
    with Session(request.app.state.engine) as session:
        _study(session, study)
        current = current_measurement_set(session, study)
        name = key_image_name(body.quantity.value, body.level, body.side)
        checked = review.check(
            action=body.action,
            quantity=body.quantity,
            level=body.level,
            side=body.side,
            value=body.value,
            points=body.geometry,
            automatic=_automatic(current, body),
            geometry=None
            if current is None or body.geometry is None
            else request.app.state.runtime.results.review_geometry(current, name),
        )
        row = ManualMeasurement(
            study_instance_uid=study,
            reader_id=body.reader_id or who.subject,
            level=body.level,
            side=body.side,
            quantity=body.quantity,
            value=checked.value,
            unit=body.unit or "",
            note=body.note,
            created_at=utcnow(),
            action=body.action,
            purpose=body.purpose,
            reason=body.reason,
            automatic_value=checked.automatic_value,
            key_image=checked.key_image,
            geometry=None if body.geometry is None else json.dumps(body.geometry),
            measurement_set_id=current.id if current is not None else None,
        )
        session.add(row)
        if body.purpose == "review" and current is not None and not _fhir_pending(session, current):
            # The primary review changes what the FHIR store should hold: send it again
            # (once: a delivery still waiting sends the reads made meanwhile too).
            request.app.state.runtime.dispatcher.plan(session, current, only=("fhir",))
        session.commit()
        session.refresh(row)
        return read_contract(row)


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reader_id: str | None = Field(
        default=None, min_length=1, max_length=64, description="defaults to the caller"
    )


class Signed(BaseModel):
    sop_instance_uid: str
    series_instance_uid: str
    values: int  # values in the reviewed report


@router.post(
    "/review-sign",
    status_code=201,
    response_model=Signed,
    responses={422: {"description": "values of the study are not reviewed yet"}},
)
def sign_review(study: str, body: SignIn, request: Request, who: Reviewer) -> Signed:
    """The reader signs the study's review: a verified SR of the reviewed values (the
    reader as person and verifying observer) supersedes the automatic SR in the study and
    is sent to the PACS. Every value to review must have a primary read."""
    reader = body.reader_id or who.subject
    runtime = request.app.state.runtime
    with Session(request.app.state.engine) as session:
        _study(session, study)
        current = current_measurement_set(session, study)
        if current is None:
            raise NotFound(f"study {study} has no result to sign")
        try:
            result = AnalysisResult.from_json(current.result)
        except ContractError:
            raise StaleResult("the stored result cannot be read (analyse it again)") from None
        # The signer's own reads: a verified report names its reader, never another's values.
        mine = [r for r in reads_of(session, study) if r.reader_id == reader]
        decided = reading.decide(result.measurements, mine, current.id)
    open_items = [
        key
        for key, value in decided.items()
        if value.automatic is not None
        and value.automatic.status in ("ok", "needs_review")
        and value.read is None
    ]
    if open_items:
        raise InvalidRead(f"you have not read {len(open_items)} value(s) of the study yet")
    results = runtime.results
    names = results.key_image_names(current)
    automatic_points = {
        name: geometry["points"]
        for name in names
        if (geometry := results.review_geometry(current, name)) is not None
    }
    from services.imaging.analysis.sr import build_reviewed_sr  # loaded by the first signing

    try:
        sr = build_reviewed_sr(
            result,
            decided,
            results.captures(current),
            automatic_points,
            reader=reader,
            predecessor=results.sr(current),
        )
    except ValueError as exc:
        raise InvalidRead(str(exc)) from None
    results.write_reviewed_sr(current, sr)
    runtime.store.put(part10_bytes(sr), source=DERIVED_SOURCE)
    with Session(request.app.state.engine) as session:
        runtime.dispatcher.plan(session, current, only=("pacs",))
        session.commit()
    values = sum(1 for v in decided.values() if v.value is not None and v.state != "rejected")
    return Signed(
        sop_instance_uid=str(sr.SOPInstanceUID),
        series_instance_uid=str(sr.SeriesInstanceUID),
        values=values,
    )


@router.get("/manual-measurements", response_model=list[ManualPublic])
def list_manual(study: str, request: Request, _: Reader) -> list[ManualPublic]:
    """Readers' measurements of the study, oldest first."""
    with Session(request.app.state.engine) as session:
        _study(session, study)
        return _manual(session, study)


@router.get("/analysis-jobs", response_model=list[JobPublic])
def list_jobs(study: str, request: Request, _: Reader) -> list[JobPublic]:
    """The study's analysis jobs, newest first."""
    with Session(request.app.state.engine) as session:
        rows = session.exec(
            select(AnalysisJob)
            .where(AnalysisJob.study_instance_uid == study)
            .order_by(col(AnalysisJob.id).desc())
        ).all()
        return [JobPublic.model_validate(r, from_attributes=True) for r in rows]


@router.post("/analyze", status_code=202, response_model=JobPublic)
def analyze(study: str, request: Request, _: Writer) -> JobPublic:
    """Queue the analysis of the study's current version again."""
    with Session(request.app.state.engine) as session:
        row = _study(session, study)
        version = row.version
    job_id = request.app.state.runtime.analysis.rerun(study, version)
    with Session(request.app.state.engine) as session:
        job = session.get(AnalysisJob, job_id)
        return JobPublic.model_validate(job, from_attributes=True)


results_router = APIRouter(prefix="/api", tags=["Measurements"])


@results_router.get("/results", response_model=ResultsPage)
def list_results(
    request: Request,
    _: Reader,
    PatientID: str | None = None,
    after: str | None = None,
    limit: int = Query(default=200, ge=1, le=1000),
) -> ResultsPage:
    """Studies with their current measurements, in StudyInstanceUID order (keyset paging)."""
    with Session(request.app.state.engine) as session:
        query = select(Study).order_by(col(Study.study_instance_uid))
        if PatientID is not None:
            query = query.where(Study.patient_id == PatientID)
        if after:
            query = query.where(col(Study.study_instance_uid) > after)
        studies = session.exec(query.limit(limit)).all()
        uids = [s.study_instance_uid for s in studies]
        current = {
            m.study_instance_uid: m
            for m in session.exec(
                select(MeasurementSet).where(
                    col(MeasurementSet.study_instance_uid).in_(uids),
                    col(MeasurementSet.is_current).is_(True),
                )
            ).all()
        }
        jobs: dict[str, AnalysisJob] = {}
        for row_job in session.exec(
            select(AnalysisJob)
            .where(col(AnalysisJob.study_instance_uid).in_(uids))
            .order_by(col(AnalysisJob.id))
        ).all():
            jobs[row_job.study_instance_uid] = row_job  # the latest wins
        manual: dict[str, list[ManualPublic]] = {}
        for row in session.exec(
            select(ManualMeasurement)
            .where(col(ManualMeasurement.study_instance_uid).in_(uids))
            .order_by(col(ManualMeasurement.id))
        ).all():
            manual.setdefault(row.study_instance_uid, []).append(read_contract(row))
        modalities: dict[str, set[str]] = {}
        for uid, modality in session.exec(
            select(Series.study_instance_uid, Series.modality).where(
                col(Series.study_instance_uid).in_(uids)
            )
        ).all():
            if modality:
                modalities.setdefault(uid, set()).add(modality)
    items = []
    for study in studies:
        uid = study.study_instance_uid
        latest = jobs.get(uid)
        measured = current.get(uid)
        # The latest job's state: a re-analysis may be queued while the previous result stands.
        state = latest.state if latest else ("done" if measured is not None else "none")
        error = latest.last_error if latest and state == "failed" else None
        result = None
        if measured is not None:
            try:
                result = _present(request, measured, manual.get(uid, []))
            except StaleResult as exc:  # one unreadable result never hides the others
                error = exc.reason
        items.append(
            StudyResult(
                study_instance_uid=uid,
                patient_id=study.patient_id,
                issuer_of_patient_id=study.issuer_of_patient_id,
                study_date=study.study_date,
                study_time=study.study_time,
                modalities=sorted(modalities.get(uid, ())),
                state=study.state,
                version=study.version,
                analysis_state=state,
                analysis_error=error,
                result=result,
                manual_measurements=manual.get(uid, []),
            )
        )
    return ResultsPage(items=items, next_after=uids[-1] if len(uids) == limit else None)
