"""Queries over the index (QIDO-RS matching and the operator's listings).

Matching follows PS3.4 C-FIND rules for the attributes we index: single value,
UID list (comma or backslash separated), wildcard (``*``, ``?``) for text, and
ranges (``20200101-20201231``) for dates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from services.common.params import MAX_INT, bounded_int
from services.imaging.errors import InvalidQuery
from services.imaging.models import Instance, Series, Study

STUDY_MATCH = {
    "StudyInstanceUID": Study.study_instance_uid,
    "PatientID": Study.patient_id,
    "IssuerOfPatientID": Study.issuer_of_patient_id,
    "PatientName": Study.patient_name,
    "PatientBirthDate": Study.patient_birth_date,
    "StudyDate": Study.study_date,
    "AccessionNumber": Study.accession_number,
    "StudyID": Study.study_id,
    "StudyDescription": Study.study_description,
    "ReferringPhysicianName": Study.referring_physician_name,
}
SERIES_MATCH = {
    "SeriesInstanceUID": Series.series_instance_uid,
    "Modality": Series.modality,
    "SeriesNumber": Series.series_number,
    "SeriesDescription": Series.series_description,
    "BodyPartExamined": Series.body_part_examined,
}
INSTANCE_MATCH = {
    "SOPInstanceUID": Instance.sop_instance_uid,
    "SOPClassUID": Instance.sop_class_uid,
    "InstanceNumber": Instance.instance_number,
}
UID_KEYWORDS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"}
DATE_KEYWORDS = {"StudyDate", "PatientBirthDate"}


def _condition(keyword: str, column: Any, value: str) -> ColumnElement[bool] | None:
    value = value.strip()
    if not value or value == "*":
        return None
    if keyword in UID_KEYWORDS:
        uids = [v for v in value.replace("\\", ",").split(",") if v]
        return col(column).in_(uids)
    if keyword in DATE_KEYWORDS:
        low, dash, high = value.partition("-")
        for part in (low, high):
            if part and not (len(part) == 8 and part.isascii() and part.isdigit()):
                raise ValueError(f"{keyword} must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
        if not dash:
            return col(column) == value
        conds = []
        if low:
            conds.append(col(column) >= low)
        if high:
            conds.append(col(column) <= high)
        if not conds:
            return None  # "-": every date
        return conds[0] if len(conds) == 1 else conds[0] & conds[1]
    if keyword in ("SeriesNumber", "InstanceNumber"):
        return col(column) == bounded_int(value, keyword, low=-MAX_INT, high=MAX_INT)
    if "*" in value or "?" in value:
        pattern = value.replace("%", r"\%").replace("_", r"\_").replace("*", "%").replace("?", "_")
        return func.upper(col(column)).like(pattern.upper(), escape="\\")
    return col(column) == value


def _conditions(table: dict[str, Any], filters: dict[str, str]) -> list[ColumnElement[bool]]:
    out = []
    for keyword, column in table.items():
        if keyword in filters:
            try:
                cond = _condition(keyword, column, filters[keyword])
            except ValueError as exc:
                raise InvalidQuery(str(exc)) from None
            if cond is not None:
                out.append(cond)
    return out


@dataclass(frozen=True)
class Page:
    limit: int | None = None
    offset: int = 0


def find_studies(engine: Engine, filters: dict[str, str], page: Page) -> list[dict[str, Any]]:
    """Studies matching ``filters`` with their modality list and counts."""
    with Session(engine) as session:
        query = select(Study).where(*_conditions(STUDY_MATCH, filters))
        if "ModalitiesInStudy" in filters and filters["ModalitiesInStudy"].strip():
            wanted = [m for m in filters["ModalitiesInStudy"].replace("\\", ",").split(",") if m]
            query = query.where(
                col(Study.study_instance_uid).in_(
                    select(Series.study_instance_uid).where(col(Series.modality).in_(wanted))
                )
            )
        query = query.order_by(col(Study.study_date), col(Study.study_instance_uid))
        query = query.offset(page.offset)
        if page.limit is not None:
            query = query.limit(page.limit)
        studies = session.exec(query).all()
        uids = [s.study_instance_uid for s in studies]
        modalities: dict[str, set[str]] = {u: set() for u in uids}
        series_count: dict[str, int] = dict.fromkeys(uids, 0)
        for study_uid, modality in session.exec(
            select(Series.study_instance_uid, Series.modality).where(
                col(Series.study_instance_uid).in_(uids)
            )
        ).all():
            series_count[study_uid] += 1
            if modality:
                modalities[study_uid].add(modality)
        instance_count = dict(
            session.exec(
                select(Instance.study_instance_uid, func.count())
                .where(col(Instance.study_instance_uid).in_(uids))
                .group_by(col(Instance.study_instance_uid))
            ).all()
        )
    return [
        {
            "study": s,
            "modalities": sorted(modalities[s.study_instance_uid]),
            "series": series_count[s.study_instance_uid],
            "instances": instance_count.get(s.study_instance_uid, 0),
        }
        for s in studies
    ]


def find_series(
    engine: Engine, filters: dict[str, str], page: Page, study_instance_uid: str | None = None
) -> list[dict[str, Any]]:
    """Series matching ``filters`` (within one study when given) with their study."""
    with Session(engine) as session:
        query = (
            select(Series, Study)
            .join(Study, col(Study.study_instance_uid) == Series.study_instance_uid)
            .where(*_conditions(SERIES_MATCH, filters), *_conditions(STUDY_MATCH, filters))
        )
        if study_instance_uid is not None:
            query = query.where(Series.study_instance_uid == study_instance_uid)
        query = query.order_by(col(Series.series_number), col(Series.series_instance_uid))
        query = query.offset(page.offset)
        if page.limit is not None:
            query = query.limit(page.limit)
        rows = session.exec(query).all()
        uids = [series.series_instance_uid for series, _ in rows]
        counts = dict(
            session.exec(
                select(Instance.series_instance_uid, func.count())
                .where(col(Instance.series_instance_uid).in_(uids))
                .group_by(col(Instance.series_instance_uid))
            ).all()
        )
    return [
        {"series": series, "study": study, "instances": counts.get(series.series_instance_uid, 0)}
        for series, study in rows
    ]


def find_instances(
    engine: Engine,
    filters: dict[str, str],
    page: Page,
    *,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
) -> list[tuple[Instance, Series, Study]]:
    """Instances matching ``filters`` within the given study and series."""
    with Session(engine) as session:
        query = (
            select(Instance, Series, Study)
            .join(Series, col(Series.series_instance_uid) == Instance.series_instance_uid)
            .join(Study, col(Study.study_instance_uid) == Instance.study_instance_uid)
            .where(
                *_conditions(INSTANCE_MATCH, filters),
                *_conditions(SERIES_MATCH, filters),
                *_conditions(STUDY_MATCH, filters),
            )
        )
        if study_instance_uid is not None:
            query = query.where(Instance.study_instance_uid == study_instance_uid)
        if series_instance_uid is not None:
            query = query.where(Instance.series_instance_uid == series_instance_uid)
        query = query.order_by(
            col(Instance.series_instance_uid),
            col(Instance.instance_number),
            col(Instance.sop_instance_uid),
        )
        query = query.offset(page.offset)
        if page.limit is not None:
            query = query.limit(page.limit)
        return list(session.exec(query).all())


def supported_match_keys() -> Sequence[str]:
    return [*STUDY_MATCH, *SERIES_MATCH, *INSTANCE_MATCH, "ModalitiesInStudy"]
