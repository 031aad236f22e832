"""The readers' review workstation API (role ``reader``) and the blinded assignments
(scope ``gateway.assign``). Reads are relayed to the imaging service, which keeps them next
to the automatic values and computes a moved construction's value itself."""

from __future__ import annotations

import math
import random
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from services.common import vocabulary
from services.common.contracts import GeometryPoint, StudyMeasurements, StudyResult
from services.common.vocabulary import GroupCode, Level
from services.gateway import review
from services.gateway.access import (
    Assigner,
    KeyImageLinker,
    ReaderDep,
    Viewer,
    public_base_url,
)
from services.gateway.api.cases import KEY_IMAGE_NAME, source_of
from services.gateway.cases import View
from services.gateway.errors import NotFound, Unprocessable, UpstreamNotFound, UpstreamRejected
from services.gateway.models import ReadingAssignment
from services.gateway.sources import CaseFilter

router = APIRouter(prefix="/api/review", tags=["Review"])
STUDY_UID = r"^[0-9.]{1,64}$"


# ------------------------------------------------------------------------- where studies are


async def _studies(request: Request, view: View) -> dict[str, tuple[StudyResult, dict[str, Any]]]:
    """Every study of the cohort's cases with its case context (from the snapshot): a reader
    reads the cohort's studies, nothing else the imaging service holds."""
    cases, snapshot = await source_of(request).cases(view, CaseFilter())
    results = {
        s.study_instance_uid: s for group in snapshot.studies_by_patient.values() for s in group
    }
    found: dict[str, tuple[StudyResult, dict[str, Any]]] = {}
    for case in cases:
        refs = [case.imaging.pre, *case.imaging.post, *case.imaging.other]
        for ref in refs:
            if ref is None or ref.study not in results:
                continue
            found[ref.study] = (
                results[ref.study],
                {
                    "case_id": case.case_id,
                    "patient": case.patient.id,
                    "patient_name": case.patient.name,
                    "group": case.surgery.group,
                    "levels": case.surgery.levels,
                    "slot": ref.slot,
                    "label": ref.label,
                    "study_date": ref.study_date,
                    "modality": ref.modality,
                    # The pre / first-post pair: (study, slot, label) of each.
                    "pair": [
                        (r.study, r.slot, r.label)
                        for r in (case.imaging.pre, *case.imaging.post[:1])
                        if r
                    ],
                },
            )
    return found


def _assignments(request: Request, reader: str) -> dict[str, review.Assignment]:
    with Session(request.app.state.engine) as session:
        rows = session.exec(
            select(ReadingAssignment).where(ReadingAssignment.reader == reader)
        ).all()
    # A re-read, when assigned, is what the reader does next with the study.
    rank = {"second": 0, "reread": 1}
    out: dict[str, review.Assignment] = {}
    for row in sorted(rows, key=lambda r: rank.get(r.purpose, 0)):
        out[row.study_instance_uid] = review.Assignment(
            row.study_instance_uid,
            row.reader,
            row.purpose,  # type: ignore[arg-type]  # written from ReadPurpose
            row.blind_automatic,
        )
    return out


async def _reading(
    request: Request, viewer: Viewer, study: str
) -> tuple[review.Reading, dict[str, Any]]:
    """How the reader reads a study of the cohort (NotFound for any other), with its case."""
    found = await _studies(request, viewer.view)
    if study not in found:
        raise NotFound("no such study in the cohort")
    assignment = (await run_in_threadpool(_assignments, request, viewer.principal.subject)).get(
        study
    )
    return review.Reading.of(viewer.principal.subject, assignment), found[study][1]


async def _live(request: Request, study: str) -> StudyMeasurements:
    """The study's current result with its reads, from the imaging service."""
    try:
        measured = await source_of(request).imaging.measurements(study)
    except (UpstreamNotFound, UpstreamRejected):  # 404, or 422: the analysis failed
        measured = None
    if measured is None:
        raise NotFound("the study has no result to review (not analysed yet, or it failed)")
    return measured


# ---------------------------------------------------------------------------- the worklist


@router.get("/worklist", response_model=review.Worklist)
async def worklist(
    request: Request,
    viewer: ReaderDep,
    group: Annotated[GroupCode | None, Query()] = None,
    level: Annotated[Level | None, Query(description="an operated level")] = None,
    purpose: Annotated[vocabulary.ReadPurpose | None, Query()] = None,
) -> review.Worklist:
    """The reader's studies to review: assigned blinded reads and ``needs_review`` first,
    then the unreviewed; the reader's own progress (reads / review items)."""
    found = await _studies(request, viewer.view)
    assigned = await run_in_threadpool(_assignments, request, viewer.principal.subject)
    live = {
        s.study_instance_uid: s
        for s in await source_of(request).imaging.results()  # the reader's latest reads
        if s.study_instance_uid in found
    }
    out = []
    for uid, (cached, context) in found.items():
        if group is not None and context["group"] != group:
            continue
        if level is not None and level not in context["levels"]:
            continue
        reading = review.Reading.of(viewer.principal.subject, assigned.get(uid))
        if purpose is not None and reading.purpose != purpose:
            continue
        shown = {k: v for k, v in context.items() if k != "pair"}
        item = review.worklist_item(live.get(uid, cached), reading, context=shown)
        if item is not None:
            out.append(item)
    ordered = review.order(out)
    return review.Worklist(
        items=ordered,
        reviewed=sum(min(i.reviewed, i.items) for i in ordered),
        total=sum(i.items for i in ordered),
    )


# ------------------------------------------------------------------------------ one study


class Counterpart(BaseModel):
    study_instance_uid: str
    slot: str
    label: str
    review_images: list[str]


class ReviewStudy(BaseModel):
    study_instance_uid: str
    case_id: str
    patient: str
    patient_name: str | None
    group: str | None
    levels: list[str]
    slot: str
    label: str
    study_date: date | None
    modality: str | None
    purpose: vocabulary.ReadPurpose
    blind_automatic: bool
    warnings: list[str]  # the analysis's study warnings (none when blinded)
    items: list[review.ReviewItem]
    counterparts: list[Counterpart]  # the other time point of the pre / first-post pair
    reject_reasons: dict[str, str]


@router.get("/studies/{study}", response_model=ReviewStudy)
async def study_for_review(request: Request, study: str, viewer: ReaderDep) -> ReviewStudy:
    """One study as the reader reviews it: the review items (the automatic value, status
    and reason unless blinded to them), the reader's own latest reads, nobody else's."""
    reading, context = await _reading(request, viewer, study)
    imaging = source_of(request).imaging
    measured = await _live(request, study)  # the reader's latest reads
    counterparts = []
    for other, slot, label in context["pair"]:
        if other == study:
            continue
        try:
            other_measured = await imaging.measurements(other)
        except (UpstreamNotFound, UpstreamRejected):  # not analysed, or its analysis failed
            continue
        if other_measured is not None:
            counterparts.append(
                Counterpart(
                    study_instance_uid=other,
                    slot=slot,
                    label=label,
                    review_images=other_measured.review_images,
                )
            )
    return ReviewStudy(
        study_instance_uid=study,
        **{k: v for k, v in context.items() if k != "pair"},
        purpose=reading.purpose,
        blind_automatic=reading.blind_automatic,
        warnings=[] if reading.blind_automatic else list(measured.warnings),
        items=review.items(measured, reading),
        counterparts=counterparts,
        reject_reasons=vocabulary.REJECT_REASONS,
    )


async def _pair_study(request: Request, viewer: Viewer, study: str, of: str | None) -> str:
    """The study whose image is asked: the one under review, or its counterpart."""
    found = await _studies(request, viewer.view)
    if study not in found:
        raise NotFound("no such study in the cohort")
    if of is None or of == study:
        return study
    if of not in {pair[0] for pair in found[study][1]["pair"]}:
        raise NotFound("no such counterpart")
    return of


@router.get(
    "/studies/{study}/images/{name}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
async def review_image(
    request: Request,
    study: str,
    name: str,
    viewer: ReaderDep,
    of: Annotated[str | None, Query(pattern=STUDY_UID, description="a counterpart")] = None,
) -> Response:
    """The section a measurement was made on, without the construction or the value."""
    if not KEY_IMAGE_NAME.fullmatch(name):
        raise NotFound("no such review image")
    target = await _pair_study(request, viewer, study, of)
    png = await source_of(request).imaging.review_image(target, name)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.get(
    "/studies/{study}/images/{name}/section.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
async def review_section(
    request: Request,
    study: str,
    name: str,
    viewer: ReaderDep,
    offset: Annotated[float, Query(ge=-20, le=20, description="mm along the normal")] = 0.0,
    window: Annotated[Literal["auto", "bone", "soft"], Query()] = "auto",
) -> Response:
    """A section parallel to the review image, ``offset`` mm away (to check the plane),
    windowed for bone or soft tissue on CT; the construction's pixel grid is kept."""
    if not KEY_IMAGE_NAME.fullmatch(name):
        raise NotFound("no such review image")
    await _reading(request, viewer, study)
    png = await source_of(request).imaging.section(study, name, offset, window)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.get("/studies/{study}/images/{name}.json")
async def review_geometry(
    request: Request, study: str, name: str, viewer: ReaderDep
) -> dict[str, Any]:
    """The review image's geometry: kind, pixel size, orientation, and the automatic
    construction's points (none when the reading is blinded to the automatic value)."""
    if not KEY_IMAGE_NAME.fullmatch(name):
        raise NotFound("no such review image")
    reading, _ = await _reading(request, viewer, study)
    geometry = await source_of(request).imaging.review_geometry(study, name)
    if reading.blind_automatic:
        geometry = {**geometry, "points": []}
    return geometry


class ReadIn(BaseModel):
    """What the reader did with one review item."""

    model_config = ConfigDict(extra="forbid")

    quantity: vocabulary.QuantityName
    level: Level
    side: vocabulary.Side | None = None
    action: vocabulary.ReadAction
    value: float | None = Field(default=None, gt=0, lt=1e6)
    geometry: list[GeometryPoint] | None = Field(default=None, min_length=2, max_length=1024)
    reason: vocabulary.RejectReason | None = None
    note: str | None = Field(default=None, max_length=256)


@router.post("/studies/{study}/reads", status_code=201, response_model=review.OwnRead)
async def post_read(
    request: Request, study: str, body: ReadIn, viewer: ReaderDep
) -> review.OwnRead:
    """Accept, reject (with a reason) or correct (move the construction, or type a value)
    one review item; a blinded reading measures (``measured``) without the automatic value.
    Stored by the imaging service as the reader's read (append-only; the latest counts)."""
    reading, _ = await _reading(request, viewer, study)
    measured = (await _live(request, study)).measurements  # as the imaging service has it now
    items = {(m.quantity, m.level, m.side) for m in review.reviewable(measured)}
    if (body.quantity, body.level, body.side) not in items:
        raise NotFound("no such review item in this study")
    allowed = ("measured",) if reading.blind_automatic else ("accepted", "corrected", "rejected")
    if body.action not in allowed:
        raise Unprocessable(
            f"this reading is {'blinded to' if reading.blind_automatic else 'a review of'} the "
            f"automatic value: the action is one of {', '.join(allowed)}"
        )
    read = await source_of(request).imaging.post_read(
        study,
        {
            **body.model_dump(exclude_none=True, mode="json"),
            "reader_id": viewer.principal.subject,
            "purpose": reading.purpose,
        },
    )
    return review.OwnRead.of(read)


class SignedOut(BaseModel):
    sop_instance_uid: str
    values: int


@router.post("/studies/{study}/sign", status_code=201, response_model=SignedOut)
async def sign(request: Request, study: str, viewer: ReaderDep) -> SignedOut:
    """Sign the study's review once every value has a primary read: the imaging service
    writes the verified SR (this reader as observer) that supersedes the automatic one
    and sends it to the PACS. Blinded readings are never signed (agreement data only)."""
    reading, _ = await _reading(request, viewer, study)
    if reading.purpose != "review":
        raise Unprocessable("a blinded read is not signed: it serves the agreement statistics")
    signed = await source_of(request).imaging.sign_review(study, viewer.principal.subject)
    return SignedOut(sop_instance_uid=signed["sop_instance_uid"], values=signed["values"])


# --------------------------------------------------------------------- blinded assignments


class SampleIn(BaseModel):
    """Draw a seeded random sample of the analysed studies for a blinded read."""

    model_config = ConfigDict(extra="forbid")

    reader: str = Field(min_length=1, max_length=120, description="the reader's user name")
    purpose: Literal["second", "reread"]
    fraction: float = Field(gt=0, le=1, description="of the eligible studies")
    seed: int = Field(ge=0, le=2**31)
    blind_automatic: bool = Field(default=True, description="hide the automatic values too")
    group: GroupCode | None = None


class AssignmentOut(BaseModel):
    study_instance_uid: str
    reader: str
    purpose: str
    blind_automatic: bool
    sample: str
    created: datetime


@router.post("/assignments", status_code=201, response_model=list[AssignmentOut])
async def draw_sample(request: Request, body: SampleIn, who: Assigner) -> list[AssignmentOut]:
    """Assign a seeded random sample of studies to a reader: a ``second`` read (studies
    another reader reviewed, never the reader's own) or a ``reread`` (studies the reader
    reviewed). Already assigned studies are not drawn again."""
    settings = request.app.state.settings
    identified = View(True, None, settings.mrn_system, KeyImageLinker(public_base_url(request)))
    cohort = await _studies(request, identified)  # the cohort's studies, nothing else
    studies = [
        s for s in await source_of(request).imaging.results() if s.study_instance_uid in cohort
    ]
    eligible = []
    for study in studies:
        if study.result is None or not review.reviewable(study.result.measurements):
            continue
        if body.group is not None:
            modality = vocabulary.GROUPS[body.group].modality
            if study.result.modality != modality:
                continue
        reviewers = {m.reader_id for m in study.manual_measurements if m.purpose == "review"}
        if body.purpose == "reread" and body.reader not in reviewers:
            continue
        if body.purpose == "second" and (not reviewers - {body.reader} or body.reader in reviewers):
            continue
        eligible.append(study.study_instance_uid)
    eligible.sort()
    count = math.ceil(body.fraction * len(eligible))
    drawn = random.Random(body.seed).sample(eligible, count)
    note = f"{body.fraction:g} of {len(eligible)}, seed {body.seed}, by {who.subject}"[:120]

    def store() -> list[AssignmentOut]:
        created = []
        with Session(request.app.state.engine) as session:
            for uid in sorted(drawn):
                row = ReadingAssignment(
                    study_instance_uid=uid,
                    reader=body.reader,
                    purpose=body.purpose,
                    blind_automatic=body.blind_automatic,
                    sample=note,
                    created=datetime.now(UTC).replace(tzinfo=None),
                )
                session.add(row)
                try:
                    session.commit()
                except IntegrityError:  # already assigned: kept as it was
                    session.rollback()
                    continue
                session.refresh(row)
                created.append(AssignmentOut.model_validate(row, from_attributes=True))
        return created

    return await run_in_threadpool(store)


@router.get("/assignments", response_model=list[AssignmentOut])
def list_assignments(
    request: Request,
    _: Assigner,
    reader: Annotated[str | None, Query(max_length=120)] = None,
) -> list[AssignmentOut]:
    """The blinded assignments, oldest first (one reader's, or all)."""
    with Session(request.app.state.engine) as session:
        query = select(ReadingAssignment).order_by(col(ReadingAssignment.id))
        if reader is not None:
            query = query.where(ReadingAssignment.reader == reader)
        return [AssignmentOut.model_validate(r, from_attributes=True) for r in session.exec(query)]
