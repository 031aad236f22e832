"""The gateway's errors, mapped to HTTP in one place (``api/errors.py``)::

GatewayError
├── NotFound                 404  no such case
├── Forbidden                403  the caller's role may not do this
├── InvalidRequest           400  a bad filter or parameter
├── Unprocessable            422  a reader's read that does not fit the value it reviews
└── UpstreamError            the imaging or outcomes service
    ├── UpstreamUnavailable  503  down, timed out, or answering 5xx
    ├── UpstreamNotFound     404  the upstream says the resource does not exist
    └── UpstreamRejected     502  the upstream refused our request (4xx other than 404)
"""

from __future__ import annotations


class GatewayError(Exception):
    status_code = 500

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFound(GatewayError):
    status_code = 404


class Forbidden(GatewayError):
    status_code = 403


class InvalidRequest(GatewayError):
    status_code = 400


class Unprocessable(GatewayError):
    status_code = 422


class UpstreamError(GatewayError):
    status_code = 502

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"{service}: {reason}")
        self.service = service


class UpstreamUnavailable(UpstreamError):
    status_code = 503


class UpstreamNotFound(UpstreamError):
    status_code = 404


class UpstreamRejected(UpstreamError):
    status_code = 502
