"""Errors of the imaging service.

Each carries the DICOM status a DIMSE SCP answers with and the HTTP status (and
PS3.18 failure reason) a DICOMweb endpoint answers with; they are mapped in one
place for each protocol (``dimse.handle_store`` and ``api.errors``)::

    ImagingError
    ├── InvalidInstance        cannot be parsed, not Part 10, truncated   0xC000 / 400
    │   ├── MissingAttribute   a required UID is missing or malformed     0xC000 / 400
    │   └── SOPClassMismatch   meta and dataset disagree                  0xA900 / 400
    ├── UnsupportedSOPClass    not a storage SOP class                    0x0122 / 415
    ├── StudyMismatch          STOW study UID in the URL differs          0xA900 / 409
    ├── SeriesInOtherStudy     the series UID is another study's          0xC000 / 409
    ├── InstanceTooLarge       above the configured limit                 0xA700 / 413
    ├── OutOfResources         disk full or the index unavailable         0xA700 / 503
    ├── InvalidQuery           a matching key or paging value we cannot   400
    │                          use (not an integer, not a date, too big)
    ├── NotFound               no such study, series or instance          404
    ├── NotAcceptable          a transfer syntax we cannot produce        406
    ├── UnsupportedMediaType   a body that is not multipart/related DICOM 415
    ├── PacsNotConfigured      no PACS is configured for this service     409
    ├── Conflict               the request conflicts with what is running 409
    ├── PacsRefused            the PACS refused the request (its 4xx)     400
    ├── PacsError              the configured PACS failed or is down      502
    ├── StaleResult            a stored result outside this version's     409
    │                          result contract (analyse the study again)
    └── InvalidRead            a reader's read that does not fit the      422
                               result it reviews (no such value, wrong
                               construction, value outside its range)
"""

from __future__ import annotations


class ImagingError(Exception):
    """Base of every error the imaging service reports to a caller."""

    dimse_status: int = 0xC000
    http_status: int = 400
    failure_reason: int = 0xC000

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidInstance(ImagingError):
    pass


class MissingAttribute(InvalidInstance):
    pass


class SOPClassMismatch(InvalidInstance):
    dimse_status = 0xA900
    failure_reason = 0xA900


class UnsupportedSOPClass(ImagingError):
    dimse_status = 0x0122
    http_status = 415
    failure_reason = 0x0122


class StudyMismatch(ImagingError):
    dimse_status = 0xA900
    http_status = 409
    failure_reason = 0xA900


class SeriesInOtherStudy(ImagingError):
    http_status = 409
    failure_reason = 0xC000


class InstanceTooLarge(ImagingError):
    dimse_status = 0xA700
    http_status = 413
    failure_reason = 0xA700


class OutOfResources(ImagingError):
    dimse_status = 0xA700
    http_status = 503
    failure_reason = 0xA700


class InvalidQuery(ImagingError):
    pass


class NotFound(ImagingError):
    http_status = 404


class NotAcceptable(ImagingError):
    http_status = 406


class UnsupportedMediaType(ImagingError):
    http_status = 415


class StaleResult(ImagingError):
    http_status = 409


class InvalidRead(ImagingError):
    http_status = 422


class Conflict(ImagingError):
    http_status = 409


class PacsNotConfigured(ImagingError):
    http_status = 409


class PacsRefused(ImagingError):
    http_status = 400


class PacsError(ImagingError):
    http_status = 502


class DeliveryError(ImagingError):
    """A destination (the PACS, the FHIR store) refused or was unreachable; retried later."""

    http_status = 502
