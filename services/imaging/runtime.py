"""The composition root: the one place where the imaging service's parts are built from
the settings and wired together, for each kind of process —

* :func:`build_service` (``serve``, the app's lifespan): the whole flow

      C-STORE / STOW-RS → InstanceStore (fsync + index) → StudyLifecycle (quiet + whole)
      → study.complete → PriorFetcher (the PACS's earlier studies of the patient)
                       → AnalysisQueue → queue engine (embedded threads | Celery)
      → AnalysisRunner: measurements + SR + key images (ResultsFolder), committed with
        their deliveries → Dispatcher → targets (PACS: SR + key images; FHIR: metrics)

* :func:`build_worker` (``worker``, a Celery worker process): store, runner and targets;
* :func:`build_producer` (``backfill``): the job table and the engine's hand-over only.

Nothing is created at import time, and nothing is patched: the SCP's transfer-syntax
policy is an event handler of its association (:mod:`services.imaging.intake.dimse`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy.engine import Engine

from services.common.auth import Authenticator, ServiceBearer
from services.common.db import make_engine, upgrade_schema
from services.common.operations import database_status
from services.imaging.completion.lifecycle import StudyLifecycle
from services.imaging.errors import Conflict, PacsNotConfigured
from services.imaging.intake import pacs
from services.imaging.intake.cohort import CohortEntry, CohortRetrieval, entries_from_fhir
from services.imaging.intake.priors import PriorFetcher
from services.imaging.intake.scp_pool import ScpPool
from services.imaging.intake.store import InstanceStore
from services.imaging.jobs.queue import AnalysisQueue, QueueEngine, engine_class
from services.imaging.jobs.runner import AnalysisRunner
from services.imaging.jobs.table import JobTable
from services.imaging.metrics import QUEUE_DEPTH
from services.imaging.models import JobState
from services.imaging.results.folder import ResultsFolder
from services.imaging.results.outbox import DeliveryTarget, Dispatcher
from services.imaging.results.sections import Sections
from services.imaging.results.to_fhir import FhirPublisher, FhirTarget
from services.imaging.results.to_pacs import CStoreSender, PacsSender, PacsTarget, StowSender
from services.imaging.settings import ImagingSettings

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
FHIR_SCOPE = "system/Patient.crs system/ImagingStudy.crs system/Observation.crus"
COHORT_SCOPE = "system/Procedure.rs system/Patient.rs"


def _store(settings: ImagingSettings, engine: Engine) -> InstanceStore:
    return InstanceStore(
        engine, settings.storage_dir, max_instance_bytes=settings.max_instance_bytes
    )


def _targets(
    settings: ImagingSettings, engine: Engine, results: ResultsFolder
) -> list[DeliveryTarget]:
    """The delivery targets the settings name (none by default)."""
    targets: list[DeliveryTarget] = []
    sender: PacsSender | None = None
    if settings.results_destination == "stow":
        if not settings.stow_url:
            raise ValueError("IMAGING_RESULTS_DESTINATION=stow needs IMAGING_RESULTS_STOW_URL")
        sender = StowSender(settings.stow_url, pacs.make_session(settings))
    elif settings.results_destination == "cstore":
        if not settings.results_dicom_host:
            raise ValueError("IMAGING_RESULTS_DESTINATION=cstore needs IMAGING_RESULTS_DICOM_HOST")
        sender = CStoreSender(
            settings.results_dicom_host,
            settings.results_dicom_port,
            settings.results_called_aet,
            settings.ae_title,
            settings.pacs_timeout_seconds,
        )
    if sender is not None:
        targets.append(PacsTarget(sender, results, key_images=settings.results_key_images))
    client = fhir_client(settings, FHIR_SCOPE)
    if client is not None:
        targets.append(FhirTarget(engine, FhirPublisher(client, mrn_system=settings.mrn_system)))
    return targets


def fhir_client(settings: ImagingSettings, scope: str) -> httpx.Client | None:
    """The outcomes FHIR store, with a service token of ``scope`` (None when unset)."""
    if not settings.fhir_url:
        return None
    return httpx.Client(
        base_url=settings.fhir_url.rstrip("/") + "/",
        auth=ServiceBearer(Authenticator(settings.auth), "imaging", scope, settings.fhir_token),
        timeout=settings.fhir_timeout_seconds,
        headers={"Accept": "application/fhir+json"},
    )


def build_cohort_retrieval(
    settings: ImagingSettings, engine: Engine, store: InstanceStore, client: pacs.Pacs
) -> CohortRetrieval:
    return CohortRetrieval(
        engine,
        store,
        client,
        pre_days=settings.cohort_pre_days,
        post_days=settings.cohort_post_days,
        min_instances=settings.cohort_min_instances,
        concurrency=settings.cohort_concurrency,
        per_minute=settings.cohort_per_minute,
    )


def build_cohort_tool(settings: ImagingSettings) -> tuple[CohortRetrieval, httpx.Client | None]:
    """The cohort retrieval of the command line (its own store writer on the shared
    database and storage), and the FHIR client that lists the cohort."""
    client = pacs.build_pacs(settings)
    if client is None:
        raise ValueError("no PACS is configured (IMAGING_PACS_DICOMWEB_URL or IMAGING_PACS_*)")
    engine = make_engine(settings.resolved_database_url)
    upgrade_schema(engine, MIGRATIONS)
    retrieval = build_cohort_retrieval(settings, engine, _store(settings, engine), client)
    return retrieval, fhir_client(settings, COHORT_SCOPE)


def build_dispatcher(
    settings: ImagingSettings, engine: Engine, results: ResultsFolder
) -> Dispatcher:
    """The outbox with the targets the settings name."""
    return Dispatcher(
        engine,
        _targets(settings, engine, results),
        max_attempts=settings.delivery_max_attempts,
        backoff_seconds=settings.delivery_backoff_seconds,
    )


@dataclass
class WorkerParts:
    """What a process that runs analyses needs."""

    settings: ImagingSettings
    engine: Engine
    store: InstanceStore
    results: ResultsFolder
    dispatcher: Dispatcher
    jobs: JobTable
    runner: AnalysisRunner


def build_worker(settings: ImagingSettings) -> WorkerParts:
    """A worker process: the API process owns the schema, so no migration here."""
    engine = make_engine(settings.resolved_database_url)
    store = _store(settings, engine)
    results = ResultsFolder(settings.key_images_dir)
    dispatcher = build_dispatcher(settings, engine, results)
    runner = AnalysisRunner(engine, store, results, dispatcher)
    jobs = JobTable(engine, max_attempts=settings.analysis_max_attempts)
    return WorkerParts(settings, engine, store, results, dispatcher, jobs, runner)


def build_producer(settings: ImagingSettings) -> tuple[Engine, AnalysisQueue]:
    """A process that only queues jobs (the back-fill), or a Celery worker's parent: the
    running service's threads or the workers' processes do the analyses."""
    engine = make_engine(settings.resolved_database_url)
    jobs = JobTable(engine, max_attempts=settings.analysis_max_attempts)
    return engine, AnalysisQueue(jobs, engine_class(settings.queue).build(settings, jobs, None))


@dataclass
class ImagingRuntime:
    """The running parts of one imaging service instance."""

    settings: ImagingSettings
    engine: Engine
    store: InstanceStore
    lifecycle: StudyLifecycle
    pacs: pacs.Pacs | None
    results: ResultsFolder
    dispatcher: Dispatcher
    jobs: JobTable
    runner: AnalysisRunner
    queue_engine: QueueEngine
    analysis: AnalysisQueue
    sections: Sections
    cohort: CohortRetrieval | None = None
    scp: ScpPool | None = None
    cohort_run: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        removed = self.store.remove_orphan_temporaries()
        if removed:
            log.warning("removed unacknowledged partial writes", extra={"count": removed})
        started = time.time()
        sweep = threading.Thread(target=self._sweep, args=(started,), name="store-sweep")
        sweep.daemon = True
        sweep.start()
        self.scp = ScpPool(self.settings, self.store)
        self.scp.start()
        for name, target in (("study-lifecycle", self._lifecycle), ("delivery", self._deliver)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)
        self.queue_engine.start(self.stop)

    def _sweep(self, started: float) -> None:
        try:
            removed = self.store.remove_unindexed(older_than=started)
        except Exception:
            log.exception("store sweep failed")
            return
        if removed:
            log.warning("removed unindexed, unacknowledged instances", extra={"count": removed})

    def _lifecycle(self) -> None:
        self.lifecycle.run(self.stop, self.settings.completion_poll_seconds)

    def _deliver(self) -> None:
        """Retries of deliveries (first attempts are made by the worker that analysed)."""
        while not self.stop.wait(max(1.0, self.settings.completion_poll_seconds * 5)):
            try:
                self.dispatcher.deliver_due()
            except Exception:
                log.exception("delivery sweep error")

    def shutdown(self) -> None:
        """Graceful: the SCP stops accepting associations and lets the open ones finish,
        the completion and delivery loops stop, running analyses get 30 s to finish and
        are otherwise returned to the queue."""
        if self.scp is not None:
            self.scp.shutdown()
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)
        self.queue_engine.join(timeout=30)
        self.store.close()
        self.engine.dispose()

    def readiness(self) -> dict[str, str]:
        """What the service needs to do its work, each 'ok' or why not."""
        checks = {"database": database_status(self.engine)}
        checks["storage"] = "ok" if os.access(self.store.root, os.W_OK) else "not writable"
        checks["dicom"] = self.scp.status() if self.scp is not None else "not listening"
        checks.update(self.queue_engine.readiness())
        return checks

    def start_cohort_run(self, entries: list[CohortEntry] | None) -> int:
        """Retrieve the cohort in the background (the list, or every index surgery of
        the FHIR store); returns the number of patients. One run at a time."""
        if self.cohort is None:
            raise PacsNotConfigured("no PACS is configured for this service")
        if self.cohort_run is not None and self.cohort_run.is_alive():
            raise Conflict("a cohort retrieval is already running")
        if entries is None:
            client = fhir_client(self.settings, COHORT_SCOPE)
            if client is None:
                raise Conflict("no FHIR store is configured (IMAGING_FHIR_URL) to list the cohort")
            with client:
                entries = entries_from_fhir(client, mrn_system=self.settings.mrn_system)
        retrieval = self.cohort

        def run() -> None:
            try:
                retrieval.run(entries)
            except Exception:
                log.exception("cohort retrieval failed")

        self.cohort_run = threading.Thread(target=run, name="cohort-retrieval", daemon=True)
        self.cohort_run.start()
        return len(entries)

    def refresh_gauges(self) -> None:
        counts = self.jobs.counts()
        for state in JobState:
            QUEUE_DEPTH.labels(state=state.value).set(counts.get(str(state), 0))

    @property
    def dicom_port(self) -> int:
        assert self.scp is not None and self.scp.server is not None
        port: int = self.scp.server.server_address[1]
        return port


def build_service(settings: ImagingSettings) -> ImagingRuntime:
    """The whole service: migrates the schema, builds and subscribes every part."""
    engine = make_engine(settings.resolved_database_url)
    upgrade_schema(engine, MIGRATIONS)
    store = _store(settings, engine)
    lifecycle = StudyLifecycle(
        engine,
        quiet_seconds=settings.study_quiet_seconds,
        gap_tolerance=settings.slice_gap_tolerance,
    )
    client = pacs.build_pacs(settings)
    if client is not None and settings.prior_fetch_enabled:
        lifecycle.subscribe(
            PriorFetcher(
                engine,
                store,
                client,
                lookback_days=settings.prior_lookback_days,
                modalities=settings.prior_modalities,
            )
        )
    results = ResultsFolder(settings.key_images_dir)
    dispatcher = build_dispatcher(settings, engine, results)
    jobs = JobTable(engine, max_attempts=settings.analysis_max_attempts)
    runner = AnalysisRunner(engine, store, results, dispatcher)
    queue_engine = engine_class(settings.queue).build(settings, jobs, runner)
    analysis = AnalysisQueue(jobs, queue_engine)
    if settings.analysis_enabled:
        lifecycle.subscribe(analysis)
    return ImagingRuntime(
        settings,
        engine,
        store,
        lifecycle,
        client,
        results,
        dispatcher,
        jobs,
        runner,
        queue_engine,
        analysis,
        Sections(engine, store.path_of),
        cohort=build_cohort_retrieval(settings, engine, store, client) if client else None,
    )
