"""The DICOM upper-layer door: a C-STORE and C-ECHO SCP (pynetdicom).

Accepts every storage SOP class in the common transfer syntaxes, requires our
called AE title, optionally an allow-list of calling AE titles, and answers
C-STORE only after :meth:`InstanceStore.put` has made the instance durable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import _STORAGE_CLASSES
from pynetdicom.transport import ThreadedAssociationServer

from services.imaging.errors import ImagingError
from services.imaging.intake.dicom_io import is_storage_sop_class
from services.imaging.intake.store import InstanceStore, StoreResult
from services.imaging.settings import ImagingSettings

log = logging.getLogger(__name__)

TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
assert set(TRANSFER_SYNTAXES) <= set(ALL_TRANSFER_SYNTAXES)

VERIFICATION = "1.2.840.10008.1.1"
STATUS_SUCCESS = 0x0000
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122

OnStored = Callable[[StoreResult], None]


def keep_senders_encoding(event: Any) -> None:
    """EVT_REQUESTED: accept, per proposed context, the first transfer syntax *the sender*
    lists.

    pynetdicom picks in the acceptor's order, so a sender proposing [JPEG Baseline,
    Explicit VR LE] for a JPEG image would be made to decompress it, which most cannot.
    Like DCMTK's storescp with ``+xa`` and dcm4chee, we keep the sender's own encoding:
    the stored instance is then byte-identical to the sender's. The request has arrived
    and negotiation has not begun, so this association's supported contexts (a copy of
    the AE's) are reordered to the sender's preference, abstract syntax by abstract
    syntax; no library code is patched.
    """
    acceptor = event.assoc.acceptor
    proposed = event.assoc.requestor.primitive.presentation_context_definition_list
    preference: dict[str, list[str]] = {}
    for rq in proposed:
        order = preference.setdefault(str(rq.abstract_syntax), [])
        order.extend(ts for ts in rq.transfer_syntax if ts not in order)
    contexts: list[PresentationContext] = []
    for ac in acceptor.supported_contexts:
        wanted = preference.get(str(ac.abstract_syntax))
        if wanted is None:
            continue  # not proposed: irrelevant to this association
        ordered = PresentationContext()
        ordered.abstract_syntax = ac.abstract_syntax
        ordered.scu_role, ordered.scp_role = ac.scu_role, ac.scp_role
        ordered.transfer_syntax = [ts for ts in wanted if ts in ac.transfer_syntax] + [
            ts for ts in ac.transfer_syntax if ts not in wanted
        ]
        contexts.append(ordered)
    acceptor.supported_contexts = contexts


def build_ae(settings: ImagingSettings) -> AE:
    """The application entity with our title, limits and presentation contexts."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.dimse_timeout = settings.dimse_timeout_seconds
    ae.network_timeout = settings.network_timeout_seconds
    ae.acse_timeout = 30
    ae.require_called_aet = True
    ae.require_calling_aet = list(settings.allowed_calling_aets)
    ae.add_supported_context(VERIFICATION, ALL_TRANSFER_SYNTAXES)
    for uid in sorted(set(_STORAGE_CLASSES.values())):
        ae.add_supported_context(uid, TRANSFER_SYNTAXES)
    return ae


def handle_store(event: Any, store: InstanceStore, on_stored: OnStored | None) -> int:
    """EVT_C_STORE: persist the data set exactly as received, then answer its status."""
    calling = event.assoc.requestor.ae_title
    context = str(event.context.abstract_syntax)
    affected = str(event.request.AffectedSOPClassUID or "")
    if context != affected or not is_storage_sop_class(context):
        # e.g. a C-STORE sent on the Verification context: refused, never half-accepted.
        log.warning(
            "C-STORE on a context that is not its storage SOP class",
            extra={"calling_ae": calling, "context": context},
        )
        return STATUS_SOP_CLASS_NOT_SUPPORTED
    try:
        data = event.encoded_dataset(include_meta=True)
    except Exception:  # the request's data set could not be framed as a Part 10 file
        log.warning("C-STORE data set unreadable", extra={"calling_ae": calling})
        return STATUS_CANNOT_UNDERSTAND
    try:
        result = store.put(data, source=f"dimse:{calling}")
    except ImagingError as exc:
        log.warning(
            "C-STORE refused",
            extra={
                "calling_ae": calling,
                "status": f"0x{exc.dimse_status:04X}",
                "reason": exc.reason,
            },
        )
        return exc.dimse_status
    except Exception:
        log.exception("C-STORE failed", extra={"calling_ae": calling})
        return STATUS_OUT_OF_RESOURCES
    if on_stored is not None:
        try:
            on_stored(result)
        except Exception:
            log.exception("post-store hook failed", extra={"calling_ae": calling})
    return STATUS_SUCCESS


def start_scp(
    settings: ImagingSettings, store: InstanceStore, on_stored: OnStored | None = None
) -> ThreadedAssociationServer:
    """Start the SCP in background threads; the caller shuts it down."""
    ae = build_ae(settings)
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, keep_senders_encoding),
        (evt.EVT_C_ECHO, lambda _event: STATUS_SUCCESS),
        (evt.EVT_C_STORE, handle_store, [store, on_stored]),
    ]
    server = ae.start_server(
        (settings.dicom_host, settings.dicom_port), block=False, evt_handlers=handlers
    )
    assert server is not None  # block=False returns the running server
    log.info(
        "DICOM SCP listening",
        extra={"ae_title": settings.ae_title, "port": server.server_address[1]},
    )
    return server
