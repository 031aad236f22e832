"""Sending our results to the PACS: the SR, and optionally the key images as Secondary
Capture, by DICOMweb STOW-RS (dicomweb-client) or DIMSE C-STORE (pynetdicom).

Both senders are idempotent from the PACS's point of view (the same SOP Instance UIDs
are sent again on a retry) and raise :class:`DeliveryError` with a reason that names no
patient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from services.imaging.errors import DeliveryError
from services.imaging.models import MeasurementSet
from services.imaging.results.folder import ResultsFolder


class PacsSender(Protocol):
    def send(self, datasets: Sequence[Dataset]) -> str: ...


class StowSender:
    """STOW-RS to a DICOMweb endpoint (the session carries credentials and timeout)."""

    def __init__(self, url: str, session: requests.Session) -> None:
        self.url = url
        self._client = DICOMwebClient(url=url, session=session)

    def send(self, datasets: Sequence[Dataset]) -> str:
        try:
            response = self._client.store_instances(datasets=list(datasets))
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise DeliveryError(f"STOW-RS refused (HTTP {status})") from None
        except requests.RequestException as exc:
            raise DeliveryError(f"STOW-RS failed ({type(exc).__name__})") from None
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            raise DeliveryError(f"STOW-RS refused {len(failed)} of {len(datasets)} instances")
        return f"stow:{len(datasets)}"


class CStoreSender:
    """C-STORE over one association per delivery."""

    def __init__(
        self, host: str, port: int, called_aet: str, calling_aet: str, timeout: float
    ) -> None:
        self.host, self.port, self.called_aet = host, port, called_aet
        self.calling_aet, self.timeout = calling_aet, timeout

    def send(self, datasets: Sequence[Dataset]) -> str:
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet)
        if not assoc.is_established:
            raise DeliveryError("C-STORE association was not accepted")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code is None:
                    raise DeliveryError("C-STORE got no response")
                if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                    raise DeliveryError(f"C-STORE refused with status 0x{code:04X}")
        finally:
            assoc.release()
        return f"c-store:{len(datasets)}"


class PacsTarget:
    """The outbox target ``pacs``: the SR, and optionally the key images as Secondary
    Capture, sent back to the PACS."""

    name = "pacs"

    def __init__(self, sender: PacsSender, results: ResultsFolder, *, key_images: bool) -> None:
        self.sender = sender
        self.results = results
        self.key_images = key_images

    def deliver(self, measurement_set: MeasurementSet) -> dict[str, str | int]:
        sr = self.results.sr(measurement_set)
        if sr is None:
            return {"skipped": "no measured value, so no SR"}
        datasets: list[Dataset] = [sr]
        if self.key_images:  # the Secondary Captures the SR references, as stored
            datasets += self.results.captures(measurement_set)
        how = self.sender.send(datasets)
        return {"sent": how, "sr": str(sr.SOPInstanceUID), "instances": len(datasets)}
