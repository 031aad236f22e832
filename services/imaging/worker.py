"""The Celery engine of the analysis queue (``IMAGING_QUEUE=celery``).

``python -m services.imaging worker`` runs a Celery worker that executes ``imaging.analyse``
tasks. A message carries only the job id; the job row in the shared database is the
truth (see :mod:`services.imaging.jobs`). Reliability settings:

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
from dataclasses import dataclass
from functools import cache
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init

from services.common.db import make_engine
from services.imaging.delivery import build_dispatcher
from services.imaging.jobs import AnalysisRunner, JobTable
from services.imaging.models import JobState
from services.imaging.settings import ImagingSettings
from services.imaging.store import InstanceStore

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


def publisher(app: Celery) -> Any:
    """The AnalysisQueue's ``publish``: one message per job id."""

    def publish(job_id: int) -> None:
        app.send_task(TASK, args=[job_id], queue=QUEUE)

    return publish


@dataclass
class WorkerContext:
    settings: ImagingSettings
    jobs: JobTable
    runner: AnalysisRunner


@cache
def context() -> WorkerContext:
    """Built once per worker process, from the environment."""
    settings = ImagingSettings()
    engine = make_engine(settings.resolved_database_url)
    store = InstanceStore(
        engine, settings.storage_dir, max_instance_bytes=settings.max_instance_bytes
    )
    runner = AnalysisRunner(
        engine, store, settings.key_images_dir, build_dispatcher(settings, engine)
    )
    return WorkerContext(settings, JobTable(engine), runner)


def analyse(task: Task, job_id: int) -> str:
    ctx = context()
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


def register(app: Celery) -> None:
    app.task(bind=True, name=TASK, acks_late=True, reject_on_worker_lost=True)(analyse)


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _start_metrics(**_: Any) -> None:
    settings = ImagingSettings()
    if settings.worker_metrics_port and settings.worker_concurrency == 1:
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port)


def run_worker(settings: ImagingSettings, *, concurrency: int | None = None) -> None:
    from services.common.logging import configure_logging

    configure_logging(settings.log_level)
    app = make_celery(settings)
    register(app)
    app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency or settings.worker_concurrency}",
            "--pool=prefork",
            f"--queues={QUEUE}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
