"""Measurements of a study: the automatic result, its key images and SR, readers' own values."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator
from sqlmodel import Session, col, select

from services.common.auth import Principal, require_scope
from services.common.contracts import (
    AnalysisResult,
    ContractError,
    KeyImageLink,
    ResultsPage,
    SrLink,
    StudyMeasurements,
    StudyResult,
)
from services.common.contracts import (
    ManualMeasurement as ManualPublic,
)
from services.common.vocabulary import QUANTITIES, Level, QuantityName, Side
from services.imaging.api.dicomweb import public_base_url
from services.imaging.errors import NotFound, StaleResult
from services.imaging.models import (
    AnalysisJob,
    ManualMeasurement,
    MeasurementSet,
    Series,
    Study,
    current_measurement_set,
    utcnow,
)

router = APIRouter(prefix="/api/studies/{study}", tags=["Measurements"])
Reader = Annotated[Principal, require_scope("imaging.read")]
Writer = Annotated[Principal, require_scope("imaging.write")]


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
    reader_id: str | None = Field(
        default=None, max_length=64, description="defaults to the caller's identity"
    )
    level: Level
    side: Side | None = None
    quantity: QuantityName
    value: float = Field(gt=0, lt=1e6, description="within the quantity's accepted range")
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
    rows = session.exec(
        select(ManualMeasurement)
        .where(ManualMeasurement.study_instance_uid == study)
        .order_by(col(ManualMeasurement.id))
    ).all()
    return [ManualPublic.model_validate(r, from_attributes=True) for r in rows]


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


@router.post("/manual-measurements", status_code=201, response_model=ManualPublic)
def add_manual(study: str, body: ManualIn, request: Request, who: Writer) -> ManualPublic:
    """Record a reader's own measurement next to the automatic one (both are kept)."""
    with Session(request.app.state.engine) as session:
        _study(session, study)
        row = ManualMeasurement(
            study_instance_uid=study,
            reader_id=body.reader_id or who.subject,
            level=body.level,
            side=body.side,
            quantity=body.quantity,
            value=body.value,
            unit=body.unit or "",
            note=body.note,
            created_at=utcnow(),
        )
        session.add(row)
        session.commit()
        session.refresh(row)
        return ManualPublic.model_validate(row, from_attributes=True)


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
            manual.setdefault(row.study_instance_uid, []).append(
                ManualPublic.model_validate(row, from_attributes=True)
            )
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
