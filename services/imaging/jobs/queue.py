"""The analysis queue: complete study versions become jobs; a *queue engine* decides who
runs them.

:class:`AnalysisQueue` is the producer every process uses (the service on each
``study.complete`` event, ``POST /analyze``, the back-fill): it writes the job row
(:mod:`~services.imaging.jobs.table`), then hands the job id to the engine. Engines are
named in :data:`ENGINES` and picked by ``IMAGING_QUEUE``:

* ``embedded`` (default, :mod:`~services.imaging.jobs.embedded`): threads of the service
  claim queued rows with a conditional UPDATE;
* ``celery`` (:mod:`~services.imaging.jobs.celery_engine`): the id is published to a
  broker and ``python -m services.imaging worker`` processes run it.

A new engine is one module with a class that follows :class:`QueueEngine` and one line
in :data:`ENGINES`.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import TYPE_CHECKING, Protocol

from services.imaging.completion.lifecycle import StudyCompleted
from services.imaging.jobs.table import JobTable

if TYPE_CHECKING:
    from services.imaging.jobs.runner import AnalysisRunner
    from services.imaging.settings import ImagingSettings

log = logging.getLogger(__name__)

# name -> "module:class" (imported only when chosen, so Celery is not loaded by default)
ENGINES: dict[str, str] = {
    "embedded": "services.imaging.jobs.embedded:EmbeddedEngine",
    "celery": "services.imaging.jobs.celery_engine:CeleryEngine",
}


class QueueEngine(Protocol):
    """Where analysis jobs run. The job row stays the truth; an engine only decides who
    claims it, and every engine runs a claim through the same
    :class:`~services.imaging.jobs.runner.AnalysisRunner`."""

    name: str

    @classmethod
    def build(
        cls, settings: ImagingSettings, jobs: JobTable, runner: AnalysisRunner | None
    ) -> QueueEngine:
        """The engine for these settings; ``runner`` is None in a producer-only process."""
        ...

    def hand_over(self, job_id: int) -> None:
        """A job was queued (or queued again): make it run. Must not raise."""
        ...

    def start(self, stop: threading.Event) -> None:
        """The background work of the service process (worker threads, publication
        sweeps), until ``stop`` is set."""
        ...

    def join(self, timeout: float) -> int:
        """Stop gracefully; return how many running jobs went back to the queue."""
        ...

    def readiness(self) -> dict[str, str]:
        """What the engine needs, each 'ok' or why not (empty when nothing)."""
        ...

    def run_worker(self, concurrency: int | None) -> None:
        """Run jobs in this process until stopped (``python -m services.imaging worker``)."""
        ...


def engine_class(name: str) -> type[QueueEngine]:
    """The engine class registered under ``name``."""
    try:
        module, _, attribute = ENGINES[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown queue engine '{name}' (known: {', '.join(ENGINES)})") from None
    engine: type[QueueEngine] = getattr(importlib.import_module(module), attribute)
    return engine


class AnalysisQueue:
    """The producer of jobs, whatever the engine."""

    def __init__(self, jobs: JobTable, engine: QueueEngine) -> None:
        self.jobs = jobs
        self.engine = engine

    def enqueue(self, study_instance_uid: str, study_version: int) -> int:
        """Queue the analysis of a study version; returns the job id (existing or new)."""
        job_id, created = self.jobs.create(study_instance_uid, study_version)
        if created:
            log.info(
                "analysis queued",
                extra={"study_instance_uid": study_instance_uid, "study_version": study_version},
            )
            self.engine.hand_over(job_id)
        return job_id

    def __call__(self, event: StudyCompleted) -> None:
        """Lifecycle subscriber: every completed study version is analysed."""
        self.enqueue(event.study_instance_uid, event.study_version)

    def rerun(self, study_instance_uid: str, study_version: int) -> int:
        """Queue the version again even if it was analysed."""
        job_id, created = self.jobs.create(study_instance_uid, study_version)
        if created or self.jobs.requeue(job_id):
            self.engine.hand_over(job_id)
        return job_id
