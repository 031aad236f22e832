"""Running a service's ASGI app under uvicorn: one way, for every ``__main__``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import uvicorn

from services.common.logging import configure_logging


def serve(
    factory: Callable[[Any], Any],
    settings: Any,
    *,
    factory_path: str | None = None,
    workers: int = 1,
) -> None:
    """Serve ``factory(settings)`` on the settings' host and port, with JSON logs.

    With several workers, uvicorn imports ``factory_path`` in each worker process,
    which builds its app from the same environment.
    """
    configure_logging(settings.log_level)
    options: dict[str, Any] = {
        "host": settings.http_host,
        "port": settings.http_port,
        "log_config": None,
        "access_log": False,  # the services log requests without query strings
        # SIGTERM: stop accepting, finish open requests, then the lifespan shutdown.
        "timeout_graceful_shutdown": 30,
    }
    if workers > 1 and factory_path:
        uvicorn.run(factory_path, factory=True, workers=workers, **options)
    else:
        uvicorn.run(factory(settings), **options)
