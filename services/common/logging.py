"""Structured JSON logging without patient identifiers.

Log records carry UIDs, counts, AE titles and status codes only. As a second line of
defence, :class:`PhiFilter` drops the values of attributes that must never reach a log
(patient name, ID, birth date...) if some library formats a dataset into a message, and
the quoted values in the messages of DICOM libraries and Python warnings (pydicom's
"Invalid value for VR IS: '...'" quotes what it read). Exceptions are logged as their type
and the code locations of their traceback, never their message, which can carry what a
caller sent (a query value, a patient name).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import Any

_PHI_PATTERN = re.compile(
    r"\(0010,[0-9A-Fa-f]{4}\)[^\n]*|"
    r"(Patient(?:Name|ID|BirthDate|Address|TelephoneNumbers)|OtherPatientIDs|"
    r"IssuerOfPatientID|ReferringPhysicianName|AccessionNumber)\s*[:=][^\n,]*"
)


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_QUOTING_LOGGERS = ("py.warnings", "pydicom", "pynetdicom")


class PhiFilter(logging.Filter):
    """Redact dataset dumps that would carry patient attributes, and the quoted values of
    library messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _PHI_PATTERN.sub("[redacted]", message)
        if (record.name or "").startswith(_QUOTING_LOGGERS):
            redacted = _QUOTED.sub("'[value]'", redacted)
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True


def safe_traceback(exc_info: Any) -> str:
    """An exception as its type and the code locations it passed through, without its
    message or any local value."""
    kind, _, tb = exc_info
    frames = traceback.extract_tb(tb)
    where = " <- ".join(
        f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} {frame.name}"
        for frame in reversed(frames[-8:])
    )
    return f"{getattr(kind, '__name__', kind)} at {where}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and structured extras."""

    _RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = safe_traceback(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Send JSON logs to stderr, with the PHI filter on every record."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(PhiFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library warnings (pydicom's about malformed values) go through the same filter.
    logging.captureWarnings(True)
    # pynetdicom's debug output dumps whole datasets; keep it at warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def recording_status(send: Any) -> tuple[Any, dict[str, int]]:
    """Wrap an ASGI ``send`` so that the response status is kept (500 if none is sent)."""
    status = {"code": 500}

    async def wrapper(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status["code"] = message["status"]
        await send(message)

    return wrapper, status


class AccessLogMiddleware:
    """ASGI access log without query strings (they carry PatientID and names in QIDO).

    Replaces uvicorn's access log, which prints the full URL.
    """

    def __init__(self, app: Any, logger_name: str) -> None:
        self.app = app
        self.log = logging.getLogger(logger_name)
        logging.getLogger("uvicorn.access").disabled = True

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        send_wrapper, status = recording_status(send)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.log.info(
                "http request",
                extra={
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status["code"],
                    "duration_ms": round((time.perf_counter() - start) * 1000, 1),
                },
            )
