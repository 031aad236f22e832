"""An ASGI app served by uvicorn in a thread on a loopback port (real HTTP, real lifespan)."""

from __future__ import annotations

import threading
from typing import Any

import uvicorn

from tests.harness.net import wait_until


class UvicornThread:
    def __init__(self, app: Any, port: int) -> None:
        self.app = app
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        if not wait_until(lambda: self._server is not None and self._server.started, 30):
            raise RuntimeError(f"the service on port {self.port} did not start")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._server = None
