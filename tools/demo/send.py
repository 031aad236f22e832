"""Sending studies the way a PACS does: DICOM C-STORE (pynetdicom) or DICOMweb STOW-RS
(dicomweb-client). Used by the demo; the tests use dcmtk's storescu as the real peer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pynetdicom import AE, StoragePresentationContexts


class SendError(RuntimeError):
    """The receiver refused the association or an instance."""


def c_store(host: str, port: int, called_aet: str, files: Sequence[Path]) -> int:
    """Send files over one association; returns how many were stored (status 0x0000)."""
    ae = AE(ae_title="SPINEDEMO")
    ae.requested_contexts = StoragePresentationContexts[:120]
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        raise SendError(f"association to {called_aet}@{host}:{port} was not established")
    stored = 0
    try:
        for path in files:
            status = assoc.send_c_store(dcmread(path))
            code = getattr(status, "Status", None)
            if code != 0x0000:
                raise SendError(f"{path.name}: C-STORE status {code!r}")
            stored += 1
    finally:
        assoc.release()
    return stored


def stow(dicomweb_url: str, token: str | None, files: Sequence[Path]) -> int:
    """Send files in one STOW-RS request to a DICOMweb root; returns how many were sent."""
    session = requests.Session()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    client = DICOMwebClient(url=dicomweb_url.rstrip("/"), session=session)
    datasets = [dcmread(path) for path in files]
    client.store_instances(datasets)
    return len(datasets)
