"""Pulling from the hospital PACS, by either protocol a PACS offers:

* **DICOMweb** (dicomweb-client): QIDO-RS searches, WADO-RS retrieval instance by instance;
* **DIMSE** (pynetdicom as SCU): C-FIND at study and series level, then **C-GET** (the
  PACS sends the instances back on our association) or **C-MOVE** (the PACS opens an
  association to our SCP, whose AE title it must know).

Both answer searches in DICOM JSON (the QIDO-RS shape), so the callers — the operator's
pull, the prior fetcher, the cohort retrieval — do not care which is configured. Every
failure becomes a :class:`~services.imaging.errors.PacsError` (the PACS failed or is
unreachable), :class:`~services.imaging.errors.PacsRefused` (it refused the request) or
:class:`~services.imaging.errors.NotFound` (it does not hold the study), with the DIMSE
status or HTTP status in the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Protocol

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmwrite
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    EnhancedSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association

from services.imaging.errors import ImagingError, NotFound, PacsError, PacsRefused
from services.imaging.intake.dimse import TRANSFER_SYNTAXES
from services.imaging.intake.store import InstanceStore
from services.imaging.settings import ImagingSettings

log = logging.getLogger(__name__)
PULL_SOURCE = "pull"
# PS3.4 Annex C, Study Root Query/Retrieve Information Model.
StudyRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.2.1")
StudyRootQueryRetrieveInformationModelMove = UID("1.2.840.10008.5.1.4.1.2.2.2")
StudyRootQueryRetrieveInformationModelGet = UID("1.2.840.10008.5.1.4.1.2.2.3")
# What a C-GET brings back on our association: the study's images and what describes them.
RETRIEVED_CLASSES = (
    CTImageStorage,
    EnhancedCTImageStorage,
    MRImageStorage,
    EnhancedMRImageStorage,
    SecondaryCaptureImageStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    BasicTextSRStorage,
    KeyObjectSelectionDocumentStorage,
    GrayscaleSoftcopyPresentationStateStorage,
)
STUDY_KEYS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "PatientID",
    "IssuerOfPatientID",
    "ModalitiesInStudy",
    "AccessionNumber",
    "NumberOfStudyRelatedInstances",
)
SERIES_KEYS = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesDescription",
    "BodyPartExamined",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
)


@dataclass(frozen=True)
class RetrieveReport:
    study_instance_uid: str
    stored: int
    duplicates: int
    conflicts: int
    failed: int

    @property
    def received(self) -> int:
        return self.stored + self.duplicates + self.conflicts


class Pacs(Protocol):
    """What we need of a PACS."""

    name: str

    def search_studies(
        self, filters: dict[str, str], fields: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Studies matching C-FIND/QIDO ``filters``, as DICOM JSON."""
        ...

    def search_series(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """The series of one study, as DICOM JSON."""
        ...

    def retrieve(self, study_instance_uid: str, store: InstanceStore) -> RetrieveReport:
        """Bring one study into the store."""
        ...


def study_json_value(entry: dict[str, Any], tag: str) -> str | None:
    values = entry.get(tag, {}).get("Value")
    if not values:
        return None
    value = values[0]
    if isinstance(value, dict):
        return str(value.get("Alphabetic", "")) or None
    return str(value)


def _to_part10(ds: Dataset) -> bytes:
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


class _Counts:
    def __init__(self) -> None:
        self.values = {"stored": 0, "duplicate": 0, "conflict": 0, "failed": 0}

    def put(self, store: InstanceStore, data: bytes) -> int:
        try:
            result = store.put(data, source=PULL_SOURCE)
        except ImagingError as exc:
            self.values["failed"] += 1
            log.warning("pulled instance refused", extra={"reason": exc.reason})
            return exc.dimse_status
        self.values[result.outcome] += 1
        return 0x0000

    def report(self, study_instance_uid: str) -> RetrieveReport:
        v = self.values
        return RetrieveReport(
            study_instance_uid, v["stored"], v["duplicate"], v["conflict"], v["failed"]
        )


# -- DICOMweb ------------------------------------------------------------------------------
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


def _http_failure(exc: requests.RequestException, what: str) -> ImagingError:
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status is not None and 400 <= status < 500:
            return PacsRefused(f"the PACS refused the {what} (HTTP {status})")
        return PacsError(f"PACS {what} failed (HTTP {status})")
    return PacsError(f"PACS {what} failed ({type(exc).__name__})")


class DicomwebPacs:
    """A PACS reached over DICOMweb; the HTTP session is created by the caller."""

    name = "dicomweb"

    def __init__(self, url: str, session: requests.Session) -> None:
        self._client = DICOMwebClient(url=url, session=session)

    def search_studies(
        self, filters: dict[str, str], fields: list[str] | None = None
    ) -> list[dict[str, Any]]:
        try:
            result: list[dict[str, Any]] = self._client.search_for_studies(
                search_filters=filters, fields=fields, get_remaining=True
            )
        except requests.RequestException as exc:
            raise _http_failure(exc, "search") from None
        return result

    def search_series(self, study_instance_uid: str) -> list[dict[str, Any]]:
        try:
            result: list[dict[str, Any]] = self._client.search_for_series(
                study_instance_uid, fields=list(SERIES_KEYS), get_remaining=True
            )
        except requests.RequestException as exc:
            raise _http_failure(exc, "series search") from None
        return result

    def retrieve(self, study_instance_uid: str, store: InstanceStore) -> RetrieveReport:
        counts = _Counts()
        try:
            for ds in self._client.iter_study(study_instance_uid):
                counts.put(store, _to_part10(ds))
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status == 404 and not any(counts.values.values()):
                raise NotFound("the PACS does not hold that study") from None
            raise _http_failure(exc, "retrieve") from None
        except requests.RequestException as exc:
            raise _http_failure(exc, "retrieve") from None
        return counts.report(study_instance_uid)


# -- DIMSE ---------------------------------------------------------------------------------
_PENDING = (0xFF00, 0xFF01)
_SUCCESS = (0x0000,)
_WARNING = (0xB000,)


class DimsePacs:
    """A PACS reached by DIMSE: C-FIND, then C-GET or C-MOVE (``mode``)."""

    name = "dimse"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        called_aet: str,
        calling_aet: str,
        mode: str,
        move_destination: str,
        timeout: float,
    ) -> None:
        if mode not in ("get", "move"):
            raise ValueError(f"the DIMSE retrieve mode is 'get' or 'move', not '{mode}'")
        self.host, self.port = host, port
        self.called_aet, self.calling_aet = called_aet, calling_aet
        self.mode, self.move_destination, self.timeout = mode, move_destination, timeout

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        return ae

    def _associate(self, ae: AE, **kwargs: Any) -> Association:
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet, **kwargs)
        if not assoc.is_established:
            what = "rejected" if assoc.is_rejected else "could not be established"
            raise PacsError(f"the association with the PACS was {what}")
        return assoc

    def _find(self, identifier: Dataset) -> list[dict[str, Any]]:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = self._associate(ae)
        found: list[dict[str, Any]] = []
        try:
            for status, answer in assoc.send_c_find(
                identifier, StudyRootQueryRetrieveInformationModelFind
            ):
                code = getattr(status, "Status", None)
                if code is None:
                    raise PacsError("the PACS stopped answering the C-FIND (timeout)")
                if code in _PENDING:
                    if answer is not None:
                        found.append(answer.to_json_dict())
                    continue
                if code == 0xFE00:
                    raise PacsError("the PACS cancelled the C-FIND")
                if code not in _SUCCESS:
                    raise PacsRefused(f"the PACS refused the C-FIND (status 0x{code:04X})")
        finally:
            assoc.release()
        return found

    def search_studies(
        self, filters: dict[str, str], fields: list[str] | None = None
    ) -> list[dict[str, Any]]:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        for keyword in (*STUDY_KEYS, *(fields or ())):
            setattr(query, keyword, "")
        for keyword, value in filters.items():
            setattr(query, keyword, value)
        return self._find(query)

    def search_series(self, study_instance_uid: str) -> list[dict[str, Any]]:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        for keyword in SERIES_KEYS:
            setattr(query, keyword, "")
        query.StudyInstanceUID = study_instance_uid
        return self._find(query)

    def retrieve(self, study_instance_uid: str, store: InstanceStore) -> RetrieveReport:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_instance_uid
        counts = _Counts()
        final = self._c_get(query, store, counts) if self.mode == "get" else self._c_move(query)
        completed = int(final.get("NumberOfCompletedSuboperations", 0) or 0)
        failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
        code = int(final.Status)
        if code in _SUCCESS + _WARNING and completed == 0 and failed == 0:
            raise NotFound("the PACS does not hold that study")
        if code not in _SUCCESS + _WARNING:
            raise PacsError(
                f"the PACS ended the C-{self.mode.upper()} with status 0x{code:04X} after "
                f"{completed} instances ({failed} failed)"
            )
        report = counts.report(study_instance_uid)
        if self.mode == "move":  # the instances arrived through our SCP
            report = RetrieveReport(study_instance_uid, completed, 0, 0, failed)
        return report

    def _c_get(self, query: Dataset, store: InstanceStore, counts: _Counts) -> Dataset:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        roles = []
        for sop_class in RETRIEVED_CLASSES:
            ae.add_requested_context(sop_class, TRANSFER_SYNTAXES)
            roles.append(build_role(sop_class, scp_role=True))

        def on_store(event: Any) -> int:
            try:
                data = event.encoded_dataset(include_meta=True)
            except Exception:
                return 0xC000
            return counts.put(store, data)

        assoc = self._associate(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            return self._final(
                assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet), "C-GET"
            )
        finally:
            assoc.release()

    def _c_move(self, query: Dataset) -> Dataset:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = self._associate(ae)
        try:
            return self._final(
                assoc.send_c_move(
                    query, self.move_destination, StudyRootQueryRetrieveInformationModelMove
                ),
                "C-MOVE",
            )
        finally:
            assoc.release()

    @staticmethod
    def _final(responses: Iterator[tuple[Dataset, Dataset | None]], what: str) -> Dataset:
        final: Dataset | None = None
        for status, _ in responses:
            if getattr(status, "Status", None) is None:
                raise PacsError(f"the PACS stopped answering the {what} (timeout)")
            final = status
        if final is None:
            raise PacsError(f"the PACS sent no {what} response")
        return final


def build_pacs(settings: ImagingSettings) -> Pacs | None:
    """The PACS the settings configure, or None."""
    if settings.pacs_protocol == "dimse":
        if not settings.pacs_dicom_host:
            raise ValueError("IMAGING_PACS_PROTOCOL=dimse needs IMAGING_PACS_DICOM_HOST")
        return DimsePacs(
            settings.pacs_dicom_host,
            settings.pacs_dicom_port,
            called_aet=settings.pacs_called_aet,
            calling_aet=settings.ae_title,
            mode=settings.pacs_retrieve,
            move_destination=settings.ae_title,
            timeout=settings.pacs_timeout_seconds,
        )
    if settings.pacs_dicomweb_url:
        return DicomwebPacs(settings.pacs_dicomweb_url, make_session(settings))
    return None
