"""The embedded queue engine (``IMAGING_QUEUE=embedded``, the default): worker threads of
the service process claim queued rows with a conditional UPDATE; a job a crash left
``running`` is queued again at start-up. No server is needed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from services.imaging.jobs.table import Claim, JobTable

if TYPE_CHECKING:
    from services.imaging.jobs.runner import AnalysisRunner
    from services.imaging.settings import ImagingSettings

log = logging.getLogger(__name__)


class EmbeddedEngine:
    name = "embedded"

    def __init__(
        self,
        jobs: JobTable,
        runner: AnalysisRunner | None,
        *,
        workers: int,
        max_attempts: int,
        poll_seconds: float,
    ) -> None:
        self.jobs = jobs
        self.runner = runner
        self.workers = workers if runner is not None else 0
        self.max_attempts = max_attempts
        self.poll_seconds = poll_seconds
        self._threads: list[threading.Thread] = []
        self._wake = threading.Event()
        self._inflight: dict[int, Claim] = {}
        self._lock = threading.Lock()

    @classmethod
    def build(
        cls, settings: ImagingSettings, jobs: JobTable, runner: AnalysisRunner | None
    ) -> EmbeddedEngine:
        return cls(
            jobs,
            runner,
            workers=settings.analysis_workers if settings.analysis_enabled else 0,
            max_attempts=settings.analysis_max_attempts,
            poll_seconds=settings.analysis_poll_seconds,
        )

    def hand_over(self, job_id: int) -> None:
        self._wake.set()

    def run_one(self) -> bool:
        """Claim and run one job; False when the queue is empty."""
        assert self.runner is not None
        claim = self.jobs.claim_next()
        if claim is None:
            return False
        key = threading.get_ident()
        with self._lock:
            self._inflight[key] = claim
        try:
            self.runner.run(claim)
        except Exception as exc:
            self.jobs.fail(claim, exc, self.max_attempts)
        finally:
            with self._lock:
                self._inflight.pop(key, None)
        return True

    def start(self, stop: threading.Event) -> None:
        if self.runner is None:
            return  # a producer only (the back-fill command): the service runs the jobs
        recovered = self.jobs.recover()
        if recovered:
            log.warning("analysis jobs requeued after restart", extra={"count": recovered})
        for n in range(len(self._threads), self.workers):
            thread = threading.Thread(
                target=self._loop, args=(stop,), daemon=True, name=f"analysis-{n}"
            )
            thread.start()
            self._threads.append(thread)

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                busy = self.run_one()
            except Exception:  # the database went away: wait and try again
                log.exception("analysis worker error")
                busy = False
            if not busy:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

    def join(self, timeout: float) -> int:
        """Wait for the running jobs; those still running after ``timeout`` go back to the
        queue (their late results are fenced out). Returns how many were given back."""
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            unfinished = list(self._inflight.values())
        returned = 0
        for claim in unfinished:
            if self.jobs.release(claim, "interrupted by shutdown", final=False) is not None:
                returned += 1
        if returned:
            log.warning("analysis jobs returned to the queue at shutdown", extra={"n": returned})
        return returned

    def readiness(self) -> dict[str, str]:
        return {}

    def run_worker(self, concurrency: int | None) -> None:
        raise ValueError(
            "the embedded engine runs analyses inside the service; "
            "set IMAGING_QUEUE=celery to run separate workers"
        )
