"""An ASGI app served by uvicorn in a thread on a loopback port (real HTTP, real lifespan)."""

from __future__ import annotations

import threading
from typing import Any, Self

import httpx
import uvicorn

from services.common.auth import Authenticator
from tests.harness.net import wait_until


class ServiceHarness:
    """A service built from its settings, served on loopback, with tokens for its API.

    Subclasses set ``settings``, ``app`` and ``authenticator``, then call ``_serve()``.
    """

    settings: Any
    app: Any
    authenticator: Authenticator
    default_scope = ""
    default_subject = "test-operator"
    api_path = ""
    extra_headers: dict[str, str] = {}

    def _serve(self) -> None:
        self._http = UvicornThread(self.app, self.settings.http_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    def token(
        self, scope: str | None = None, subject: str | None = None, role: str | None = None
    ) -> str:
        return self.authenticator.issue_token(
            subject or self.default_subject, scope or self.default_scope, role=role
        )

    def client(
        self, scope: str | None = None, subject: str | None = None, role: str | None = None
    ) -> httpx.Client:
        token = self.token(scope, subject, role)
        return httpx.Client(
            base_url=self.url + self.api_path,
            headers={"Authorization": f"Bearer {token}", **self.extra_headers},
            timeout=60,
        )

    def start(self) -> Self:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
