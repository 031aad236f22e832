"""Sending studies the way a PACS does: DICOM C-STORE (pynetdicom) or DICOMweb STOW-RS
(dicomweb-client). Used by the demo; the tests use dcmtk's storescu as the real peer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pynetdicom import AE, StoragePresentationContexts


class SendError(RuntimeError):
    """The receiver refused the association or an instance."""


ATTEMPTS = 4


def c_store(host: str, port: int, called_aet: str, files: Sequence[Path]) -> int:
    """Send files, retrying with backoff what a busy receiver drops (no association, no
    response); returns how many were stored (success 0x0000, or a warning 0xB000/B006/B007:
    stored with coercion). Any other status is a refusal, not retried."""
    pending = list(files)
    stored = 0
    for attempt in range(1, ATTEMPTS + 1):
        try:
            stored += _c_store_once(host, port, called_aet, pending)
            return stored
        except SendError as exc:
            done = exc.args[1] if len(exc.args) > 1 else 0
            stored += done
            pending = pending[done:]
            if attempt == ATTEMPTS or exc.args[0].startswith("refused"):
                raise SendError(
                    f"{called_aet}@{host}:{port}: {exc.args[0]} after {attempt} attempts; "
                    "check that the receiver runs and has room (disk, associations)"
                ) from None
            time.sleep(2**attempt)
    return stored


def _c_store_once(host: str, port: int, called_aet: str, files: Sequence[Path]) -> int:
    ae = AE(ae_title="SPINEDEMO")
    ae.requested_contexts = StoragePresentationContexts[:120]
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        raise SendError("the association was not established", 0)
    stored = 0
    try:
        for path in files:
            status = assoc.send_c_store(dcmread(path))
            code = getattr(status, "Status", None)
            if code is None:
                raise SendError(f"no C-STORE response for {path.name}", stored)
            if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                raise SendError(f"refused {path.name} with status 0x{code:04X}", stored)
            stored += 1
    finally:
        if assoc.is_established:
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
