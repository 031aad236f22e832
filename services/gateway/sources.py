"""Where cases come from: one case live from both upstreams, the cohort from a snapshot.

A case is read live (four upstream calls: the Procedure with its Patient and surgeon,
then the patient's Observations, imaging results and PACS retrieval status in parallel).
When the imaging or the outcomes Observations cannot be had, the case is answered with
what is available and says so in ``warnings``; without the Procedure there is no case (503).

The cohort needs every case at once, which is a bulk read of both upstreams (a few
seconds for a thousand cases). It is held as a snapshot, refreshed in the background
once older than ``cohort_max_age_seconds`` while the previous one keeps answering
(stale-while-revalidate); every cohort answer carries its ``as_of`` time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from services.common.contracts import StudyResult
from services.gateway.cases import (
    Case,
    ClinicalRecord,
    View,
    build_case,
    mrn_of,
    surgery_time,
)
from services.gateway.errors import NotFound, UpstreamError, UpstreamNotFound
from services.gateway.privacy import Pseudonymizer
from services.gateway.upstream import ImagingClient, OutcomesClient

log = logging.getLogger(__name__)
T = TypeVar("T")
MEMO_ENTRIES = 128  # plots and reports kept per snapshot


def _or_warn(service: str, result: list[T] | BaseException, warnings: list[str]) -> list[T]:
    """An upstream's answer, or nothing with a warning when it could not answer."""
    if isinstance(result, UpstreamError):
        warnings.append(f"{service} unavailable ({result.reason}): no {service} shown")
        return []
    if isinstance(result, BaseException):
        raise result
    return result


def _surgeon_of(record: ClinicalRecord) -> str:
    performers = record.procedure.get("performer") or []
    actor = (performers[0].get("actor") or {}) if performers else {}
    return str(actor.get("reference") or "")


def retrieval_key(record: ClinicalRecord, mrn: str) -> tuple[str, str]:
    """How the imaging service's cohort retrieval names a case's surgery."""
    when = surgery_time(record)
    return mrn, f"{when:%Y%m%d}" if when else ""


@dataclass
class Snapshot:
    records: list[ClinicalRecord]
    studies_by_patient: dict[str, list[StudyResult]]
    as_of: datetime
    load_seconds: float
    warnings: list[str] = field(default_factory=list)
    # (PatientID, surgery date YYYYMMDD) -> where the PACS retrieval stands
    retrieval: dict[tuple[str, str], str] = field(default_factory=dict)
    _built: dict[tuple[bool, str], list[Case]] = field(default_factory=dict, repr=False)
    _case_ids: dict[int, dict[str, str]] = field(default_factory=dict, repr=False)
    _memo: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)

    def memo(self, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
        """A value computed once per snapshot (plots, the report): the data do not change
        until the next snapshot, so neither do they."""
        if key not in self._memo:
            computed = compute()
            while len(self._memo) >= MEMO_ENTRIES:  # bounded, whatever filters are asked
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = computed
        value: T = self._memo[key]
        return value

    def case_numbers(self, view: View) -> dict[str, int]:
        """Each case's chronological number among its surgeon's cases (by the real surgery
        dates: a researcher's shifted dates would reorder them), keyed by the case id the
        viewer sees."""
        ordered = sorted(
            self.records,
            key=lambda r: (
                _surgeon_of(r),
                surgery_time(r) or datetime.max,
                str(r.procedure.get("id")),
            ),
        )
        counters: dict[str, int] = {}
        numbers: dict[str, int] = {}
        for record in ordered:
            surgeon = _surgeon_of(record)
            counters[surgeon] = counters.get(surgeon, 0) + 1
            procedure = str(record.procedure.get("id"))
            if view.identified or view.pseudonymizer is None:
                shown = procedure
            else:
                shown = view.pseudonymizer.case(procedure)
            numbers[shown] = counters[surgeon]
        return numbers

    def procedure_id(self, case: str, pseudonymizer: Pseudonymizer) -> str | None:
        """The Procedure a researcher's case pseudonym names (None when none does)."""
        key = id(pseudonymizer)
        if key not in self._case_ids:
            self._case_ids[key] = {
                pseudonymizer.case(str(r.procedure.get("id"))): str(r.procedure.get("id"))
                for r in self.records
            }
        return self._case_ids[key].get(case)

    def cases(self, view: View) -> list[Case]:
        """Every case in the viewer's frame; built once per kind of view and snapshot."""
        key = (view.identified, repr(view.key_image_url))
        if key not in self._built:
            built = []
            for record in self.records:
                mrn = mrn_of(record, view.mrn_system) or ""
                studies = self.studies_by_patient.get(mrn, [])
                pulled = self.retrieval.get(retrieval_key(record, mrn))
                built.append(build_case(record, studies, view, pulled))
            self._built[key] = built
        return self._built[key]


@dataclass
class Gathered:
    """One case's sources as fetched, and what could not be fetched."""

    record: ClinicalRecord
    studies: list[StudyResult]
    warnings: list[str]
    retrieval: str | None = None

    def build(self, view: View) -> Case:
        case = build_case(self.record, self.studies, view, self.retrieval)
        case.warnings.extend(self.warnings)
        return case


@dataclass(frozen=True)
class CaseFilter:
    group: str | None = None
    level: str | None = None
    surgeon: str | None = None
    date_from: date | None = None
    date_to: date | None = None

    def __call__(self, case: Case) -> bool:
        surgery = case.surgery
        if self.group and surgery.group != self.group:
            return False
        if self.level and self.level not in surgery.levels:
            return False
        if self.surgeon and (surgery.surgeon is None or self.surgeon != surgery.surgeon.id):
            return False
        if self.date_from and (surgery.date is None or surgery.date < self.date_from):
            return False
        return not (self.date_to and (surgery.date is None or surgery.date > self.date_to))


class CaseSource:
    """Builds cases from the two upstream services."""

    def __init__(
        self, outcomes: OutcomesClient, imaging: ImagingClient, *, max_age_seconds: float
    ) -> None:
        self.outcomes, self.imaging = outcomes, imaging
        self.max_age_seconds = max_age_seconds
        self._snapshot: Snapshot | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()
        self._refresh: asyncio.Task[None] | None = None

    async def gather(self, case_id: str, mrn_system: str, *, observations: bool = True) -> Gathered:
        """The raw sources of one case, live (without the Observations when the caller
        needs only the studies). Raises NotFound, or UpstreamUnavailable when the
        outcomes service cannot give the Procedure."""
        try:
            record = await self.outcomes.procedure(case_id)
        except UpstreamNotFound:
            raise NotFound(f"no case {case_id}") from None
        warnings: list[str] = []
        mrn = mrn_of(record, mrn_system)
        patient_ref = (record.procedure.get("subject") or {}).get("reference", "")

        async def clinical() -> list[dict[str, Any]]:
            return await self.outcomes.observations(patient_ref) if observations else []

        async def imaging() -> list[StudyResult]:
            if not mrn:
                warnings.append("the patient has no MRN: imaging cannot be matched")
                return []
            return await self.imaging.results(mrn)

        async def retrieval() -> str | None:
            if not mrn or not observations:
                return None
            try:
                return (await self.imaging.retrieval(mrn)).get(retrieval_key(record, mrn))
            except UpstreamError:  # the studies' own call reports an unavailable imaging
                return None

        found, studies, pulled = await asyncio.gather(
            clinical(), imaging(), retrieval(), return_exceptions=True
        )
        if isinstance(pulled, BaseException):
            raise pulled
        record.observations = _or_warn("outcomes", found, warnings)
        status = pulled
        return Gathered(record, _or_warn("imaging", studies, warnings), warnings, status)

    async def resolve(self, case: str, view: View) -> str:
        """The Procedure id of a case as the viewer names it: itself for identified
        viewers, the snapshot's pseudonym table for researchers (a researcher never
        reaches a case by its EHR id)."""
        if view.identified:
            return case
        assert view.pseudonymizer is not None
        real = (await self.snapshot()).procedure_id(case, view.pseudonymizer)
        if real is None:
            raise NotFound(f"no case {case}")
        return real

    async def case(self, procedure_id: str, view: View) -> Case:
        """One case (by its Procedure id, see :meth:`resolve`), live, with a warning for
        each upstream that could not answer."""
        return (await self.gather(procedure_id, view.mrn_system)).build(view)

    async def _load(self) -> Snapshot:
        started = time.perf_counter()
        cohort_task = asyncio.create_task(self.outcomes.cohort())
        studies_task = asyncio.create_task(self.imaging.results())
        retrieval_task = asyncio.create_task(self.imaging.retrieval())
        warnings: list[str] = []
        try:
            records, observations = await cohort_task
            try:
                studies = await studies_task
            except UpstreamError as exc:
                warnings.append(f"imaging unavailable ({exc.reason}): no imaging in this snapshot")
                studies = []
            try:
                retrieval = await retrieval_task
            except UpstreamError:  # no retrieval status is no warning: the studies say enough
                retrieval = {}
        finally:
            for task in (studies_task, retrieval_task):
                task.cancel()
        by_patient: dict[str, list[StudyResult]] = {}
        for study in studies:
            if study.patient_id:
                by_patient.setdefault(study.patient_id, []).append(study)
        for record in records:
            subject = (record.procedure.get("subject") or {}).get("reference", "")
            record.observations = observations.get(subject, [])
        elapsed = time.perf_counter() - started
        log.info("cohort snapshot loaded", extra={"cases": len(records), "seconds": elapsed})
        return Snapshot(records, by_patient, datetime.now(UTC), elapsed, warnings, retrieval)

    async def _reload(self) -> Snapshot:
        async with self._lock:
            if self._snapshot is not None and not self._stale():
                return self._snapshot
            snapshot = await self._load()
            self._snapshot, self._loaded_at = snapshot, time.monotonic()
            return snapshot

    def _stale(self) -> bool:
        return time.monotonic() - self._loaded_at > self.max_age_seconds

    async def snapshot(self, *, refresh: bool = False) -> Snapshot:
        """The cohort snapshot; the first call (or ``refresh``) waits for a load."""
        if self._snapshot is None or refresh:
            if refresh:
                self._loaded_at = 0.0
            return await self._reload()
        if self._stale() and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.create_task(self._background())
        return self._snapshot

    async def _background(self) -> None:
        try:
            await self._reload()
        except UpstreamError as exc:  # keep serving the previous snapshot
            log.warning("cohort refresh failed", extra={"reason": exc.reason})
            if self._snapshot is not None:
                as_of = f"{self._snapshot.as_of:%Y-%m-%d %H:%M} UTC"
                self._snapshot.warnings.append(f"refresh failed ({exc.reason}); data as of {as_of}")

    async def cases(
        self, view: View, keep: Callable[[Case], bool], *, refresh: bool = False
    ) -> tuple[list[Case], Snapshot]:
        snapshot = await self.snapshot(refresh=refresh)
        built = await asyncio.to_thread(snapshot.cases, view)
        return [c for c in built if keep(c)], snapshot

    def warm_up(self) -> None:
        """Start loading the first snapshot in the background (errors are logged)."""
        if self._refresh is None:
            self._refresh = asyncio.create_task(self._background())

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
