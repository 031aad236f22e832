"""An ASGI app served by uvicorn in a thread on a loopback port (real HTTP, real lifespan)."""

from __future__ import annotations

from typing import Any, Self

import httpx

from services.common.auth import Authenticator
from services.common.threads import UvicornThread


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
