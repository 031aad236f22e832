"""The retrospective cohort's imaging: for each operated patient, find the pre- and
post-operative studies the PACS holds, choose one of each, retrieve them, and keep a
per-patient status that survives interruptions.

The rules (also in the README):

* the **modality** follows the study group: foraminal stenosis → CT, central stenosis → MR
  (a patient without a group: both);
* a **candidate** is a study of the patient (PatientID) dated within ``pre_days`` before to
  ``post_days`` after the surgery, holding at least one series of that modality with at least
  ``min_instances`` images whose BodyPartExamined is lumbar or not given;
* **pre** is the latest candidate dated before the surgery day; **post** the earliest one on
  or after it (day 0 included). Two candidates on that same date make the slot
  ``ambiguous``: nothing is retrieved for it and the candidates are listed, for a person to
  decide;
* a chosen study we already hold whole is not retrieved again, so a second run fetches
  nothing and an interrupted run continues where it stopped; retrieval is paced
  (``concurrency`` studies at a time, at most ``per_minute`` per minute).

A slot's state is one of ``pending``, ``missing``, ``ambiguous``, ``retrieving``,
``retrieved``, ``failed``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from services.common import vocabulary
from services.imaging.errors import ImagingError
from services.imaging.intake.pacs import Pacs, study_json_value
from services.imaging.intake.store import InstanceStore
from services.imaging.models import CohortPatient, CohortStudy, Instance, utcnow

log = logging.getLogger(__name__)
LUMBAR_PARTS = ("LSPINE", "L-SPINE", "LUMBAR", "LUMBOSACRAL", "SPINE", "RACHIS", "LOMBAIRE")
SLOTS = ("pre", "post")


@dataclass(frozen=True)
class CohortEntry:
    """An operated patient, as the registry (through the FHIR store) knows them."""

    patient_id: str
    surgery_date: date
    group: str | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        group = vocabulary.GROUPS.get(self.group or "")
        return (group.modality,) if group else ("CT", "MR")


@dataclass(frozen=True)
class Candidate:
    study_instance_uid: str
    study_date: str
    description: str | None
    instances: int | None

    def as_json(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "study_date": self.study_date,
            "description": self.description,
            "instances": self.instances,
        }


@dataclass
class CohortReport:
    patients: int = 0
    retrieved: int = 0  # studies brought in by this run
    already_held: int = 0
    missing: int = 0
    ambiguous: int = 0
    failed: int = 0
    instances: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def text(self) -> str:
        lines = [
            f"cohort retrieval: {self.patients} patients in {self.seconds:.0f} s — "
            f"{self.retrieved} studies retrieved ({self.instances} instances), "
            f"{self.already_held} already held, {self.missing} slots missing, "
            f"{self.ambiguous} ambiguous, {self.failed} failed"
        ]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


Progress = Callable[[str, int], None]  # (what happened, instances) after each study


class CohortRetrieval:
    """Finds, chooses and retrieves the cohort's studies; the rows are the truth."""

    def __init__(
        self,
        engine: Engine,
        store: InstanceStore,
        pacs: Pacs,
        *,
        pre_days: int = 180,
        post_days: int = 365,
        min_instances: int = 20,
        concurrency: int = 1,
        per_minute: float = 0.0,
    ) -> None:
        self.engine, self.store, self.pacs = engine, store, pacs
        self.pre_days, self.post_days = pre_days, post_days
        self.min_instances = min_instances
        self.concurrency = max(1, concurrency)
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._pace = threading.Lock()
        self._last_start = 0.0
        self._report_lock = threading.Lock()

    # -- finding and choosing ----------------------------------------------------------
    def _qualifies(self, uid: str, modalities: tuple[str, ...]) -> int | None:
        """The number of images of the study's best qualifying series, None if none."""
        best: int | None = None
        for series in self.pacs.search_series(uid):
            modality = study_json_value(series, "00080060")
            if modality not in modalities:
                continue
            part = (study_json_value(series, "00180015") or "").upper()
            if part and not any(p in part for p in LUMBAR_PARTS):
                continue
            count = study_json_value(series, "00201209")
            images = int(count) if count and count.isdigit() else None
            if images is not None and images < self.min_instances:
                continue
            best = max(best or 0, images or 0)
        return best

    def candidates(self, entry: CohortEntry) -> list[Candidate]:
        start = entry.surgery_date - timedelta(days=self.pre_days)
        end = entry.surgery_date + timedelta(days=self.post_days)
        filters = {"PatientID": entry.patient_id, "StudyDate": f"{start:%Y%m%d}-{end:%Y%m%d}"}
        found = []
        for study in self.pacs.search_studies(filters):
            uid = study_json_value(study, "0020000D")
            day = study_json_value(study, "00080020")
            if uid is None or day is None or len(day) != 8:
                continue
            listed = set(study.get("00080061", {}).get("Value", []))
            if listed and not listed & set(entry.modalities):
                continue
            images = self._qualifies(uid, entry.modalities)
            if images is None:
                continue
            found.append(Candidate(uid, day, study_json_value(study, "00081030"), images))
        return sorted(found, key=lambda c: (c.study_date, c.study_instance_uid))

    @staticmethod
    def choose(
        entry: CohortEntry, candidates: list[Candidate]
    ) -> dict[str, tuple[str, list[Candidate]]]:
        """Per slot: (state, the chosen candidate or the tied ones)."""
        surgery = f"{entry.surgery_date:%Y%m%d}"
        before = [c for c in candidates if c.study_date < surgery]
        after = [c for c in candidates if c.study_date >= surgery]
        out: dict[str, tuple[str, list[Candidate]]] = {}
        for slot, pool, pick in (("pre", before, max), ("post", after, min)):
            if not pool:
                out[slot] = ("missing", [])
                continue
            day = pick(c.study_date for c in pool)
            tied = [c for c in pool if c.study_date == day]
            out[slot] = ("ambiguous", tied) if len(tied) > 1 else ("found", tied)
        return out

    # -- retrieving ----------------------------------------------------------------------
    def _held(self, uid: str, expected: int | None) -> bool:
        with Session(self.engine) as session:
            count = session.exec(
                select(func.count()).select_from(Instance).where(Instance.study_instance_uid == uid)
            ).one()
            row = session.get(CohortStudy, uid)
        if row is not None and row.state == "retrieved":
            return True
        return count > 0 and (expected is None or count >= expected)

    def _wait_turn(self) -> None:
        if not self.interval:
            return
        with self._pace:
            delay = self._last_start + self.interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._last_start = time.monotonic()

    def _mark_study(self, uid: str, patient_id: str, **values: Any) -> None:
        with Session(self.engine) as session:
            row = session.get(CohortStudy, uid) or CohortStudy(
                study_instance_uid=uid, patient_id=patient_id, updated_at=utcnow()
            )
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
            session.add(row)
            session.commit()

    def _retrieve(self, patient_id: str, candidate: Candidate) -> tuple[str, int]:
        """Bring one chosen study in; ('retrieved'|'held'|'failed', instances)."""
        uid = candidate.study_instance_uid
        if self._held(uid, candidate.instances if candidate.instances else None):
            self._mark_study(uid, patient_id, state="retrieved")
            return "held", 0
        self._wait_turn()
        with Session(self.engine) as session:
            attempts = (
                session.get(CohortStudy, uid)
                or CohortStudy(study_instance_uid=uid, patient_id=patient_id, updated_at=utcnow())
            ).attempts
        self._mark_study(
            uid, patient_id, state="retrieving", attempts=attempts + 1, last_error=None
        )
        try:
            report = self.pacs.retrieve(uid, self.store)
        except ImagingError as exc:
            self._mark_study(uid, patient_id, state="failed", last_error=exc.reason[:500])
            log.warning("cohort study not retrieved", extra={"reason": exc.reason})
            return "failed", 0
        state = "retrieved" if report.failed == 0 else "failed"
        error = None if report.failed == 0 else f"{report.failed} instances refused"
        self._mark_study(
            uid,
            patient_id,
            state=state,
            received=report.received,
            expected=candidate.instances,
            last_error=error,
        )
        return ("retrieved" if state == "retrieved" else "failed"), report.received

    def _patient_row(self, session: Session, entry: CohortEntry) -> CohortPatient:
        day = f"{entry.surgery_date:%Y%m%d}"
        row = session.exec(
            select(CohortPatient).where(
                CohortPatient.patient_id == entry.patient_id, CohortPatient.surgery_date == day
            )
        ).first()
        if row is None:
            row = CohortPatient(
                patient_id=entry.patient_id,
                surgery_date=day,
                modality="/".join(entry.modalities),
                group=entry.group,
                updated_at=utcnow(),
            )
        return row

    def _one(self, entry: CohortEntry, report: CohortReport, progress: Progress | None) -> None:
        try:
            candidates = self.candidates(entry)
        except ImagingError as exc:
            with self._report_lock:
                report.failed += 1
                report.problems.append(f"{entry.patient_id}: search failed ({exc.reason})")
            self._save(entry, {"pre": ("failed", []), "post": ("failed", [])}, exc.reason)
            return
        choice = self.choose(entry, candidates)
        self._save(entry, choice, None, all_candidates=candidates)
        states: dict[str, str] = {}
        for slot in SLOTS:
            state, chosen = choice[slot]
            if state == "missing":
                with self._report_lock:
                    report.missing += 1
                states[slot] = "missing"
                continue
            if state == "ambiguous":
                with self._report_lock:
                    report.ambiguous += 1
                    dates = ", ".join(f"{c.study_instance_uid} ({c.study_date})" for c in chosen)
                    report.problems.append(f"{entry.patient_id}: {slot} ambiguous between {dates}")
                states[slot] = "ambiguous"
                continue
            outcome, instances = self._retrieve(entry.patient_id, chosen[0])
            with self._report_lock:
                report.instances += instances
                if outcome == "retrieved":
                    report.retrieved += 1
                elif outcome == "held":
                    report.already_held += 1
                else:
                    report.failed += 1
                    report.problems.append(f"{entry.patient_id}: {slot} study failed")
            states[slot] = "failed" if outcome == "failed" else "retrieved"
            if progress is not None:
                progress(f"{entry.patient_id} {slot}: {outcome}", instances)
        with Session(self.engine) as session:
            row = self._patient_row(session, entry)
            row.pre_state, row.post_state = states["pre"], states["post"]
            row.updated_at = utcnow()
            session.add(row)
            session.commit()

    def _save(
        self,
        entry: CohortEntry,
        choice: dict[str, tuple[str, list[Candidate]]],
        reason: str | None,
        *,
        all_candidates: list[Candidate] | None = None,
    ) -> None:
        with Session(self.engine) as session:
            row = self._patient_row(session, entry)
            for slot in SLOTS:
                state, chosen = choice[slot]
                setattr(row, f"{slot}_state", "retrieving" if state == "found" else state)
                setattr(
                    row,
                    f"{slot}_study_uid",
                    chosen[0].study_instance_uid if state == "found" else None,
                )
                chosen_one = chosen[0] if state == "found" else None
                if chosen_one and not self._held(
                    chosen_one.study_instance_uid, chosen_one.instances
                ):
                    # Marked before it is asked for: its C-MOVE arrivals are pulls.
                    self._mark_study(
                        chosen_one.study_instance_uid,
                        entry.patient_id,
                        state="queued",
                        expected=chosen_one.instances,
                    )
            row.candidates = json.dumps([c.as_json() for c in all_candidates or []])
            row.reason = reason[:500] if reason else None
            row.updated_at = utcnow()
            session.add(row)
            session.commit()

    def run(self, entries: Iterable[CohortEntry], progress: Progress | None = None) -> CohortReport:
        """Search, choose and retrieve for every entry; safe to run again."""
        started = time.perf_counter()
        report = CohortReport()
        todo = list(entries)
        report.patients = len(todo)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            for future in [pool.submit(self._one, e, report, progress) for e in todo]:
                future.result()
        report.seconds = time.perf_counter() - started
        log.info(
            "cohort retrieval", extra={k: v for k, v in report.as_json().items() if k != "problems"}
        )
        return report


def statuses(engine: Engine, patient_id: str | None = None) -> list[dict[str, Any]]:
    """Every cohort patient's status (or one patient's), with the analysis state of the
    chosen studies."""
    from services.imaging.models import AnalysisJob

    query = select(CohortPatient).order_by(
        col(CohortPatient.patient_id), col(CohortPatient.surgery_date)
    )
    if patient_id is not None:
        query = query.where(CohortPatient.patient_id == patient_id)
    with Session(engine) as session:
        rows = session.exec(query).all()
        uids = [u for r in rows for u in (r.pre_study_uid, r.post_study_uid) if u]
        jobs: dict[str, str] = {}
        for job in session.exec(
            select(AnalysisJob)
            .where(col(AnalysisJob.study_instance_uid).in_(uids))
            .order_by(col(AnalysisJob.id))
        ).all():
            jobs[job.study_instance_uid] = str(job.state)
    out = []
    for row in rows:
        item: dict[str, Any] = {
            "patient_id": row.patient_id,
            "surgery_date": row.surgery_date,
            "group": row.group,
            "modality": row.modality,
            "reason": row.reason,
            "candidates": json.loads(row.candidates or "[]"),
            "updated_at": row.updated_at.isoformat(),
        }
        for slot in SLOTS:
            uid = getattr(row, f"{slot}_study_uid")
            state = getattr(row, f"{slot}_state")
            if state == "retrieved" and uid and jobs.get(uid) == "done":
                state = "analysed"
            item[slot] = {"state": state, "study_instance_uid": uid}
        item["status"] = _overall(item["pre"]["state"], item["post"]["state"])
        out.append(item)
    return out


def _overall(pre: str, post: str) -> str:
    """One word for the case list: what a researcher needs to know first."""
    for state in ("failed", "ambiguous"):
        if state in (pre, post):
            return state
    if pre == "missing" and post == "missing":
        return "missing"
    if pre == "missing":
        return "missing pre-op"
    if post == "missing":
        return "missing post-op"
    if pre == post == "analysed":
        return "analysed"
    if {pre, post} <= {"retrieved", "analysed"}:
        return "retrieved"
    return "retrieving" if "retrieving" in (pre, post) else "found"


# -- who the cohort is ---------------------------------------------------------------------
def entries_from_fhir(client: httpx.Client, *, mrn_system: str) -> list[CohortEntry]:
    """Every index surgery in the outcomes FHIR store: its patient's MRN, date and group."""
    from services.common.fhir import codes

    found: dict[str, dict[str, Any]] = {}
    url: str | None = "Procedure"
    params: dict[str, Any] | None = {
        "code": f"{codes.PROJECT}|mis-lumbar-fusion",
        "_include": "Procedure:subject",
        "_count": 1000,
    }
    while url:
        response = client.get(url, params=params)
        response.raise_for_status()
        bundle = response.json()
        for item in bundle.get("entry", []):
            resource = item["resource"]
            found[f"{resource['resourceType']}/{resource['id']}"] = resource
        url = next((x["url"] for x in bundle.get("link", []) if x["relation"] == "next"), None)
        params = None
    entries = []
    for procedure in (r for r in found.values() if r["resourceType"] == "Procedure"):
        patient = found.get((procedure.get("subject") or {}).get("reference", ""), {})
        mrn = next(
            (
                i.get("value")
                for i in patient.get("identifier", [])
                if i.get("system") == mrn_system
            ),
            None,
        )
        performed = procedure.get("performedDateTime") or (
            procedure.get("performedPeriod") or {}
        ).get("start")
        if not mrn or not performed:
            continue
        group = next(
            (
                c.get("code")
                for concept in procedure.get("reasonCode", [])
                for c in concept.get("coding", [])
                if c.get("system") == codes.PROJECT and c.get("code") in vocabulary.GROUPS
            ),
            None,
        )
        entries.append(CohortEntry(str(mrn), date.fromisoformat(str(performed)[:10]), group))
    return sorted(set(entries), key=lambda e: (e.patient_id, e.surgery_date))


def entries_from_csv(text: str) -> list[CohortEntry]:
    """A list of patients: columns PatientID, SurgeryDate (YYYY-MM-DD) and, optionally,
    Group (foraminal-stenosis | central-stenosis)."""
    import csv
    import io

    entries = []
    for number, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        try:
            entries.append(
                CohortEntry(
                    row["PatientID"].strip(),
                    date.fromisoformat(row["SurgeryDate"].strip()),
                    (row.get("Group") or "").strip() or None,
                )
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"row {number}: needs PatientID and SurgeryDate (YYYY-MM-DD): {exc}"
            ) from None
    return entries
