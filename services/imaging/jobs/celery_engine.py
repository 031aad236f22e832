"""The Celery queue engine (``IMAGING_QUEUE=celery``).

``python -m services.imaging worker`` runs a Celery worker that executes ``imaging.analyse``
tasks. A message carries only the job id; the job row in the shared database is the
truth (see :mod:`services.imaging.jobs.runner`). Reliability settings:

* ``acks_late`` + ``reject_on_worker_lost``: a message is acknowledged after the task
  ends, so a worker process killed mid-analysis puts it back on the queue, and another
  worker takes the job over (the dead attempt is fenced out);
* a worker process killed alone (out of memory) is noticed by its parent at once; a whole
  worker (machine) that dies leaves its message unacknowledged, and a live worker puts it
  back after the Redis visibility timeout (``IMAGING_BROKER_VISIBILITY_TIMEOUT_SECONDS``)
  plus at most 10 s. The timeout must be longer than the slowest analysis, or a running
  job would be handed out twice (harmless thanks to the fence, but wasted work);
* a failing analysis is retried with exponential backoff up to ``analysis_max_attempts``,
  then the job is ``failed``; ``prefetch_multiplier=1`` so a long job never holds others.

Workers need the same database and storage folder as the API process (a shared volume);
the API process migrates the schema.
"""

from __future__ import annotations

import logging
import threading
from functools import cache
from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from celery.signals import worker_process_init

from services.imaging.jobs.table import JobTable
from services.imaging.models import JobState

if TYPE_CHECKING:
    from services.imaging.jobs.runner import AnalysisRunner
    from services.imaging.runtime import WorkerParts
    from services.imaging.settings import ImagingSettings

log = logging.getLogger(__name__)

TASK = "imaging.analyse"
QUEUE = "analysis"


def make_celery(settings: ImagingSettings) -> Celery:
    app = Celery("imaging", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_seconds,
            # Sweep for messages of dead workers every 10 s (kombu's default is ~100 s).
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
        },
        worker_hijack_root_logger=False,
        task_ignore_result=True,
    )
    return app


class CeleryEngine:
    """Publishes job ids to the broker; ``run_worker`` consumes them in this process."""

    name = "celery"

    def __init__(self, settings: ImagingSettings, jobs: JobTable) -> None:
        self.settings = settings
        self.jobs = jobs
        self.app = make_celery(settings)
        self._threads: list[threading.Thread] = []

    @classmethod
    def build(
        cls, settings: ImagingSettings, jobs: JobTable, runner: AnalysisRunner | None
    ) -> CeleryEngine:
        return cls(settings, jobs)  # workers build their own runner (worker_context)

    def hand_over(self, job_id: int) -> None:
        try:
            self.app.send_task(TASK, args=[job_id], queue=QUEUE)
        except Exception as exc:  # the broker is down: the publisher sweep retries
            log.warning("broker unavailable", extra={"job": job_id, "error": type(exc).__name__})
            return
        self.jobs.mark_published(job_id)

    def publish_pending(self) -> int:
        """Hand jobs whose publication failed to the broker again."""
        count = 0
        for job_id in self.jobs.unpublished():
            self.hand_over(job_id)
            count += 1
        return count

    def start(self, stop: threading.Event) -> None:
        thread = threading.Thread(
            target=self._publisher, args=(stop,), daemon=True, name="analysis-publisher"
        )
        thread.start()
        self._threads.append(thread)

    def _publisher(self, stop: threading.Event) -> None:
        while not stop.wait(max(self.settings.analysis_poll_seconds, 1.0) * 5):
            try:
                self.publish_pending()
            except Exception:
                log.exception("analysis publisher error")

    def join(self, timeout: float) -> int:
        for thread in self._threads:
            thread.join(timeout=timeout)
        return 0  # running jobs belong to the workers (warm shutdown, acks-late)

    def readiness(self) -> dict[str, str]:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return {"queue": "ok"}
        except Exception as exc:
            return {"queue": f"broker unreachable ({type(exc).__name__})"}

    def run_worker(self, concurrency: int | None) -> None:
        from services.common.logging import configure_logging

        configure_logging(self.settings.log_level)
        self.app.task(bind=True, name=TASK, acks_late=True, reject_on_worker_lost=True)(analyse)
        self.app.worker_main(
            [
                "worker",
                f"--concurrency={concurrency or self.settings.worker_concurrency}",
                "--pool=prefork",
                f"--queues={QUEUE}",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )


@cache
def worker_context() -> WorkerParts:
    """The worker process's parts, built once per process by the composition root."""
    from services.imaging.runtime import build_worker
    from services.imaging.settings import ImagingSettings

    return build_worker(ImagingSettings())


def analyse(task: Task, job_id: int) -> str:
    """The Celery task: claim the job row, run it, retry with backoff on failure."""
    ctx = worker_context()
    claim = ctx.jobs.claim(job_id)
    if claim is None:
        return "not queued"  # done, failed, or a duplicate message
    log.info("analysis started", extra={"job": job_id, "attempt": claim.attempt})
    try:
        committed = ctx.runner.run(claim)
    except Exception as exc:
        state = ctx.jobs.fail(claim, exc, ctx.settings.analysis_max_attempts)
        if state == JobState.QUEUED:
            countdown = ctx.settings.retry_backoff_seconds * 2 ** (claim.attempt - 1)
            raise task.retry(countdown=countdown, max_retries=None) from None
        return "failed"
    return "done" if committed else "taken over"


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _start_metrics(**_: Any) -> None:
    from services.imaging.settings import ImagingSettings

    settings = ImagingSettings()
    if settings.worker_metrics_port and settings.worker_concurrency == 1:
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port)
