"""Pulling from the hospital PACS over DICOMweb (dicomweb-client), and the prior
fetcher: when a routed study completes, retrieve the same patient's earlier CT/MR
studies that we do not hold, so the pre-operative comparison is here for analysis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from io import BytesIO
from typing import Any, Protocol

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmwrite
from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.imaging.completion.lifecycle import StudyCompleted
from services.imaging.errors import ImagingError, NotFound, PacsError, PacsRefused
from services.imaging.intake.store import InstanceStore
from services.imaging.models import Study
from services.imaging.settings import ImagingSettings

log = logging.getLogger(__name__)


class Pacs(Protocol):
    """What we need of a PACS: search studies, iterate a study's instances."""

    def search_studies(
        self, filters: dict[str, str], fields: list[str] | None = None
    ) -> list[dict[str, Any]]: ...

    def iter_study(self, study_instance_uid: str) -> Any: ...


class DicomwebPacs:
    """A PACS reached over DICOMweb; the HTTP session is created by the caller."""

    def __init__(self, url: str, session: requests.Session) -> None:
        self._client = DICOMwebClient(url=url, session=session)

    def search_studies(
        self, filters: dict[str, str], fields: list[str] | None = None
    ) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._client.search_for_studies(
            search_filters=filters, fields=fields, get_remaining=True
        )
        return result

    def iter_study(self, study_instance_uid: str) -> Any:
        return self._client.iter_study(study_instance_uid)


def make_session(settings: ImagingSettings) -> requests.Session:
    """The HTTP session for the PACS, with its credentials and timeout."""
    session = requests.Session()
    if settings.pacs_bearer_token is not None:
        token = settings.pacs_bearer_token.get_secret_value()
        session.headers["Authorization"] = f"Bearer {token}"
    elif settings.pacs_username and settings.pacs_password is not None:
        session.auth = (settings.pacs_username, settings.pacs_password.get_secret_value())
    timeout = settings.pacs_timeout_seconds
    original = session.request

    def request_with_timeout(method: str, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", timeout)
        return original(method, url, **kwargs)

    session.request = request_with_timeout  # type: ignore[method-assign,assignment]
    return session


@dataclass(frozen=True)
class RetrieveReport:
    study_instance_uid: str
    stored: int
    duplicates: int
    conflicts: int
    failed: int


def _to_part10(ds: Dataset) -> bytes:
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def study_json_value(entry: dict[str, Any], tag: str) -> str | None:
    values = entry.get(tag, {}).get("Value")
    if not values:
        return None
    value = values[0]
    if isinstance(value, dict):
        return str(value.get("Alphabetic", "")) or None
    return str(value)


def search(
    pacs: Pacs, filters: dict[str, str], fields: list[str] | None = None
) -> list[dict[str, Any]]:
    try:
        return pacs.search_studies(filters, fields)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status is not None and 400 <= status < 500:
            raise PacsRefused(f"the PACS refused the query (HTTP {status})") from None
        raise PacsError(f"PACS search failed (HTTP {status})") from None
    except requests.RequestException as exc:
        raise PacsError(f"PACS search failed ({type(exc).__name__})") from None


def retrieve(pacs: Pacs, store: InstanceStore, study_instance_uid: str) -> RetrieveReport:
    """Retrieve one study from the PACS into the store, instance by instance."""
    counts = {"stored": 0, "duplicate": 0, "conflict": 0, "failed": 0}
    try:
        for ds in pacs.iter_study(study_instance_uid):
            try:
                result = store.put(_to_part10(ds), source="pull")
                counts[result.outcome] += 1
            except ImagingError as exc:
                counts["failed"] += 1
                log.warning("pulled instance refused", extra={"reason": exc.reason})
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 404 and not any(counts.values()):
            raise NotFound("the PACS does not hold that study") from None
        raise PacsError(f"PACS retrieve failed (HTTP {status})") from None
    except requests.RequestException as exc:
        raise PacsError(f"PACS retrieve failed ({type(exc).__name__})") from None
    log.info(
        "study retrieved from the PACS", extra={"study_instance_uid": study_instance_uid, **counts}
    )
    return RetrieveReport(
        study_instance_uid,
        counts["stored"],
        counts["duplicate"],
        counts["conflict"],
        counts["failed"],
    )


class PriorFetcher:
    """Subscriber to ``study.complete``: fetch the patient's prior CT/MR studies."""

    def __init__(
        self,
        engine: Engine,
        store: InstanceStore,
        pacs: Pacs,
        *,
        lookback_days: int,
        modalities: list[str],
    ) -> None:
        self.engine = engine
        self.store = store
        self.pacs = pacs
        self.lookback_days = lookback_days
        self.modalities = modalities

    def __call__(self, event: StudyCompleted) -> None:
        if event.source == "pull":
            return  # priors of a retrieved prior would cascade through the archive
        with Session(self.engine) as session:
            study = session.get(Study, event.study_instance_uid)
            if study is None or not study.patient_id:
                return
            patient_id, issuer, study_date = (
                study.patient_id,
                study.issuer_of_patient_id,
                study.study_date,
            )
        # Modalities are filtered here: PACSs differ on multi-valued ModalitiesInStudy.
        filters: dict[str, str] = {"PatientID": patient_id}
        if issuer:
            filters["IssuerOfPatientID"] = issuer
        if study_date:
            end = date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:8]))
            start = end - timedelta(days=self.lookback_days)
            filters["StudyDate"] = f"{start:%Y%m%d}-{end:%Y%m%d}"
        fields = ["IssuerOfPatientID", "ModalitiesInStudy", "StudyDate"]
        for entry in search(self.pacs, filters, fields):
            uid = study_json_value(entry, "0020000D")
            if uid is None or uid == event.study_instance_uid:
                continue
            if issuer and study_json_value(entry, "00100021") not in (None, issuer):
                continue  # same PatientID from another issuer: another patient
            modalities = set(entry.get("00080061", {}).get("Value", []))
            if modalities and not modalities & set(self.modalities):
                continue
            with Session(self.engine) as session:
                if session.get(Study, uid) is not None:
                    continue
            retrieve(self.pacs, self.store, uid)
