"""Serving an ASGI app with uvicorn in a background thread (the demo's embedded stack, and
the tests' harness): real HTTP on a real port, real lifespan, stopped on request."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn


class UvicornThread:
    def __init__(self, app: Any, port: int, host: str = "127.0.0.1") -> None:
        self.app, self.port, self.host = app, port, host
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the service on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._server = None
