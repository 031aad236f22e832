"""Operator and integration API: study states, the audit trail, events, PACS pulls."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy import case
from sqlmodel import Session, col, func, select

from services.common.auth import Principal, require_scope
from services.common.params import After, Offset
from services.imaging.errors import NotFound, PacsNotConfigured
from services.imaging.intake import pacs
from services.imaging.intake.dicom_io import UID_PATTERN
from services.imaging.models import Instance, InstanceVersion, Series, Study, StudyEvent

router = APIRouter(prefix="/api", tags=["Studies"])
Reader = Annotated[Principal, require_scope("imaging.read")]
Writer = Annotated[Principal, require_scope("imaging.write")]
Admin = Annotated[Principal, require_scope("imaging.admin")]


class StudyStatus(BaseModel):
    study_instance_uid: str
    state: str
    version: int
    state_reason: str | None
    source: str
    study_date: str | None
    modalities: list[str]
    series: int
    instances: int
    conflicts: int
    first_received_at: datetime
    last_received_at: datetime
    completed_at: datetime | None


class InstanceVersionPublic(BaseModel):
    version: int
    sha256: str
    size: int
    source: str
    received_at: datetime
    is_current: bool
    note: str | None


class EventPublic(BaseModel):
    id: int
    kind: str
    study_instance_uid: str
    study_version: int
    created_at: datetime
    delivered_at: datetime | None
    attempts: int
    last_error: str | None


UidText = Annotated[str, Field(pattern=UID_PATTERN.pattern, max_length=64)]
MatchText = Annotated[str, Field(max_length=64, pattern=r"^[^\\\x00-\x1f]*$")]


class RetrieveRequest(BaseModel):
    study_instance_uid: UidText


class PacsQuery(BaseModel):
    """QIDO-RS matching keys sent to the PACS, checked before they leave (PS3.4 C-FIND
    matching: wildcards in text, ranges in dates)."""

    PatientID: MatchText | None = None
    IssuerOfPatientID: MatchText | None = None
    StudyDate: Annotated[str, Field(pattern=r"^(\d{8})?(-(\d{8})?)?$")] | None = None
    ModalitiesInStudy: Annotated[str, Field(pattern=r"^[A-Z]{2,16}(\\[A-Z]{2,16})*$")] | None = None
    AccessionNumber: Annotated[str, Field(max_length=16, pattern=r"^[^\\\x00-\x1f]*$")] | None = (
        None
    )
    StudyInstanceUID: UidText | None = None


def _status(session: Session, study: Study) -> StudyStatus:
    uid = study.study_instance_uid
    modalities = session.exec(
        select(Series.modality).where(Series.study_instance_uid == uid).distinct()
    ).all()
    series = session.exec(
        select(func.count()).select_from(Series).where(Series.study_instance_uid == uid)
    ).one()
    instances, conflicts = session.exec(
        select(
            func.count(), func.coalesce(func.sum(case((col(Instance.conflict), 1), else_=0)), 0)
        ).where(Instance.study_instance_uid == uid)
    ).one()
    return StudyStatus(
        study_instance_uid=uid,
        state=study.state,
        version=study.version,
        state_reason=study.state_reason,
        source=study.source,
        study_date=study.study_date,
        modalities=sorted(m for m in modalities if m),
        series=series,
        instances=instances,
        conflicts=int(conflicts),
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        completed_at=study.completed_at,
    )


@router.get("/studies", response_model=list[StudyStatus])
def list_studies(
    request: Request,
    _principal: Reader,
    state: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> list[StudyStatus]:
    """Studies we hold, newest first, with their completion state and version."""
    with Session(request.app.state.engine) as session:
        query = select(Study).order_by(col(Study.last_received_at).desc())
        if state:
            query = query.where(Study.state == state)
        studies = session.exec(query.offset(offset).limit(limit)).all()
        return [_status(session, s) for s in studies]


@router.get("/studies/{study}", response_model=StudyStatus)
def get_study(request: Request, study: str, _principal: Reader) -> StudyStatus:
    """One study's completion state, version and counts."""
    with Session(request.app.state.engine) as session:
        row = session.get(Study, study)
        if row is None:
            raise NotFound("no such study")
        return _status(session, row)


@router.post("/studies/{study}/complete", response_model=StudyStatus)
def force_complete(request: Request, study: str, _principal: Admin) -> StudyStatus:
    """Declare a study complete now, overriding the quiet period and the content check."""
    request.app.state.runtime.lifecycle.force_complete(study)
    return get_study(request, study, _principal)


@router.get("/instances/{instance}/versions", response_model=list[InstanceVersionPublic])
def instance_versions(request: Request, instance: str, _principal: Reader) -> list[Any]:
    """The audit trail of an SOP instance: every distinct content received."""
    with Session(request.app.state.engine) as session:
        rows = session.exec(
            select(InstanceVersion)
            .where(InstanceVersion.sop_instance_uid == instance)
            .order_by(col(InstanceVersion.version))
        ).all()
    if not rows:
        raise NotFound("no such instance")
    return list(rows)


@router.get("/events", response_model=list[EventPublic])
def list_events(
    request: Request,
    _principal: Reader,
    after: After = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Any]:
    """Study events (``study.complete``) in order, for subscribers that poll."""
    with Session(request.app.state.engine) as session:
        return list(
            session.exec(
                select(StudyEvent)
                .where(col(StudyEvent.id) > after)
                .order_by(col(StudyEvent.id))
                .limit(limit)
            ).all()
        )


def _pacs(request: Request) -> pacs.Pacs:
    client: pacs.Pacs | None = request.app.state.runtime.pacs
    if client is None:
        raise PacsNotConfigured(
            "no PACS is configured for this service (IMAGING_PACS_DICOMWEB_URL)"
        )
    return client


@router.post("/pacs/query")
async def query_pacs(request: Request, query: PacsQuery, _principal: Reader) -> list[Any]:
    """Search the configured PACS for studies (QIDO-RS); returns DICOM JSON."""
    filters = {k: v for k, v in query.model_dump().items() if v}
    return await run_in_threadpool(_pacs(request).search_studies, filters)


@router.post("/pacs/retrieve")
async def retrieve_from_pacs(
    request: Request, body: RetrieveRequest, _principal: Writer
) -> dict[str, Any]:
    """Retrieve a study from the configured PACS (WADO-RS) into our store."""
    report = await run_in_threadpool(
        _pacs(request).retrieve, body.study_instance_uid, request.app.state.store
    )
    return report.__dict__
