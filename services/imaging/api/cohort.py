"""The retrospective cohort's imaging: where each operated patient's pre- and
post-operative studies stand, and starting a retrieval from the PACS."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.common.auth import Principal, require_scope
from services.common.vocabulary import GroupCode
from services.imaging.intake.cohort import CohortEntry, statuses

router = APIRouter(prefix="/api/cohort", tags=["Cohort retrieval"])
Reader = Annotated[Principal, require_scope("imaging.read")]
Writer = Annotated[Principal, require_scope("imaging.write")]


class PatientIn(BaseModel):
    patient_id: str = Field(min_length=1, max_length=64)
    surgery_date: date
    group: GroupCode | None = None


class RetrieveIn(BaseModel):
    patients: list[PatientIn] | None = Field(
        default=None, description="omit to retrieve for every index surgery of the FHIR store"
    )


@router.get("")
def cohort_status(
    request: Request,
    _: Reader,
    patient_id: Annotated[str | None, Query(alias="PatientID", min_length=1, max_length=64)] = None,
) -> list[dict[str, Any]]:
    """Per patient (or the one ``PatientID``): the chosen pre- and post-operative studies
    and their state (missing, ambiguous with the candidates, retrieving, retrieved,
    analysed, failed)."""
    return statuses(request.app.state.engine, patient_id)


@router.post("/retrieve", status_code=202)
async def cohort_retrieve(request: Request, body: RetrieveIn, _: Writer) -> JSONResponse:
    """Start a paced, resumable retrieval of the cohort's studies (one run at a time)."""
    entries = (
        None
        if body.patients is None
        else [CohortEntry(p.patient_id, p.surgery_date, p.group) for p in body.patients]
    )
    count = await run_in_threadpool(request.app.state.runtime.start_cohort_run, entries)
    return JSONResponse({"started": True, "patients": count}, status_code=202)
