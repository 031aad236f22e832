"""Errors of the FHIR server; each becomes an OperationOutcome in one place
(``api.errors``)::

    FhirError                          OperationOutcome issue code / HTTP status
    ├── InvalidRequest       400  invalid      unparseable JSON, bad parameters, wrong type
    ├── Unauthorized         401  login
    ├── Forbidden            403  forbidden    the token lacks the SMART scope
    ├── ResourceNotFound     404  not-found
    ├── UnsupportedType      404  not-supported
    ├── MethodNotAllowed     405  not-supported
    ├── Conflict             409  conflict
    ├── Gone                 410  deleted
    ├── PreconditionFailed   412  conflict     stale If-Match, ambiguous conditional create
    ├── UnsupportedMedia     415  not-supported
    └── Unprocessable        422  processing   a resource that fails validation

The repository's persistence errors (:class:`services.outcomes.repository.RepositoryError`)
become FhirErrors through :func:`from_repository`: not found 404, deleted 410, version
conflict and ambiguous criteria 412, invalid query 400.
"""

from __future__ import annotations

from services.outcomes.fhir.validation import Issue
from services.outcomes.repository import (
    Deleted,
    InvalidQuery,
    MultipleMatches,
    NotFound,
    RepositoryError,
    VersionConflict,
)


class FhirError(Exception):
    status: int = 400
    code: str = "invalid"

    def __init__(self, diagnostics: str, issues: list[Issue] | None = None) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.issues = issues or []
        self.position: int | None = None  # which item of a bulk write failed


class InvalidRequest(FhirError):
    pass


class Unauthorized(FhirError):
    status, code = 401, "login"


class Forbidden(FhirError):
    status, code = 403, "forbidden"


class ResourceNotFound(FhirError):
    status, code = 404, "not-found"


class UnsupportedType(FhirError):
    status, code = 404, "not-supported"


class MethodNotAllowed(FhirError):
    status, code = 405, "not-supported"


class Conflict(FhirError):
    status, code = 409, "conflict"


class Gone(FhirError):
    status, code = 410, "deleted"


class PreconditionFailed(FhirError):
    status, code = 412, "conflict"


class UnsupportedMedia(FhirError):
    status, code = 415, "not-supported"


class Unprocessable(FhirError):
    status, code = 422, "processing"


def operation_outcome(error: FhirError) -> dict[str, object]:
    """The OperationOutcome of an error (one issue per validation problem)."""
    if error.issues:
        issues = [
            {
                "severity": "error",
                "code": issue.code,
                "diagnostics": issue.diagnostics,
                "expression": [issue.expression],
            }
            for issue in error.issues
        ]
    else:
        issues = [{"severity": "error", "code": error.code, "diagnostics": error.diagnostics}]
    return {"resourceType": "OperationOutcome", "issue": issues}


_FROM_REPOSITORY: dict[type[RepositoryError], type[FhirError]] = {
    NotFound: ResourceNotFound,
    Deleted: Gone,
    VersionConflict: PreconditionFailed,
    MultipleMatches: PreconditionFailed,
    InvalidQuery: InvalidRequest,
}


def from_repository(error: RepositoryError) -> FhirError:
    """The FHIR error of a persistence error (the edge's one mapping)."""
    kind = next(
        (fhir for repo, fhir in _FROM_REPOSITORY.items() if isinstance(error, repo)), FhirError
    )
    return kind(str(error))


def as_fhir_error(error: FhirError | RepositoryError) -> FhirError:
    return error if isinstance(error, FhirError) else from_repository(error)
