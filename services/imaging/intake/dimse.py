"""The DICOM upper-layer door: a C-STORE and C-ECHO SCP (pynetdicom).

Accepts every storage SOP class in the common transfer syntaxes, requires our
called AE title, optionally an allow-list of calling AE titles, and answers
C-STORE only after :meth:`InstanceStore.put` has made the instance durable.

One DICOM port may be served by several SCP processes (:mod:`.scp_pool`): the service's
own process listens and hands each connection to the least busy one; the association
limit then counts every process's associations (:class:`AssociationSlots`).
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import socket
import tempfile
import threading
import time
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


class AssociationSlots:
    """How many inbound associations each SCP process of one port holds, and when it
    last said so, in a small memory map they all share: slot *i* is written by process
    *i* (and by the listening process when it hands one over). A process silent for
    STALE_SECONDS (frozen, stopped) counts for nothing and is handed nothing."""

    STALE_SECONDS = 1.0

    def __init__(self, fd: int, processes: int, index: int) -> None:
        self.fd = fd
        self.processes = processes
        self.index = index
        self._map = mmap.mmap(fd, 16 * processes)
        view = memoryview(self._map)
        self._counts = view[: 8 * processes].cast("q")
        self._beats = view[8 * processes :].cast("d")  # CLOCK_MONOTONIC: system-wide

    def count(self, index: int) -> int:
        return int(self._counts[index])

    def alive(self, index: int) -> bool:
        return time.monotonic() - self._beats[index] < self.STALE_SECONDS

    def reset(self, index: int) -> None:
        """A process that ended holds nothing."""
        self._counts[index] = 0
        self._beats[index] = 0.0

    def add(self, index: int, count: int) -> None:
        """Count an association handed to another process until it publishes."""
        self._counts[index] += count

    @classmethod
    def create(cls, processes: int) -> AssociationSlots:
        """The first process's slots, in an unnamed file its helpers inherit by fd."""
        with tempfile.TemporaryFile() as file:
            fd = os.dup(file.fileno())
        os.ftruncate(fd, 16 * processes)
        return cls(fd, processes, 0)

    def publish(self, held: int) -> None:
        self._counts[self.index] = held
        self._beats[self.index] = time.monotonic()

    def elsewhere(self) -> int:
        """The associations the other live processes hold (as they last published)."""
        return sum(
            self._counts[i] for i in range(self.processes) if i != self.index and self.alive(i)
        )


class ServiceAE(AE):
    """Our application entity: with :class:`AssociationSlots`, its association limit is
    the service's, shared with the other SCP processes of the port; without, pynetdicom's
    own per-process limit. ``server_class`` is the kind of server it starts."""

    def __init__(
        self,
        ae_title: str,
        slots: AssociationSlots | None = None,
        server_class: type[ThreadedAssociationServer] = ThreadedAssociationServer,
    ) -> None:
        super().__init__(ae_title=ae_title)
        self.slots = slots
        self.server_class = server_class
        self._limit = 10
        self._starting = 0
        self._starting_lock = threading.Lock()

    def starting(self, change: int) -> None:
        """A connection received whose association thread has not started yet (+1), or
        has now (-1): counted, so that a busy process does not look idle meanwhile."""
        with self._starting_lock:
            self._starting += change

    def held(self) -> int:
        """The inbound associations this process holds (or is starting)."""
        return self._starting + sum(1 for a in self.active_associations if a.is_acceptor)

    def publish_held(self) -> None:
        """Associations end without telling anyone: the pool calls this periodically."""
        if self.slots is not None:
            self.slots.publish(self.held())

    @property
    def maximum_associations(self) -> int:
        """What this process may hold now (pynetdicom reads it for every request, the
        new association already counted among ours)."""
        if self.slots is None:
            return self._limit
        self.slots.publish(self.held())
        return self._limit - self.slots.elsewhere()

    @maximum_associations.setter
    def maximum_associations(self, value: int) -> None:
        self._limit = max(1, int(value))

    def make_server(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("server_class") is ThreadedAssociationServer:
            kwargs["server_class"] = self.server_class
        return super().make_server(*args, **kwargs)


Handoff = Callable[[socket.socket, Any], bool]


class CountingServer(ThreadedAssociationServer):
    """Counts each connection from its arrival until its association thread runs
    (:meth:`ServiceAE.starting`)."""

    def _starting(self, change: int) -> None:
        if isinstance(self.ae, ServiceAE):
            self.ae.starting(change)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._starting(+1)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._starting(-1)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:  # pynetdicom's handler returns once the association's thread runs
            self._starting(-1)


class PooledServer(CountingServer):
    """The port's one listening server: each connection it accepts goes to the SCP
    process ``handoff`` chooses (True: handed over) or is served here."""

    handoff: Handoff | None = None

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.handoff is not None and self.handoff(request, client_address):
            request.close()  # our descriptor only: the helper holds its own
            return
        super().process_request(request, client_address)


class DetachedServer(CountingServer):
    """A helper process's server: it neither binds nor listens. Its "accept" is a
    receive on ``channel``, a Unix socket on which the listening process passes each
    connection's descriptor (``SCM_RIGHTS``) with the peer's address; the rest is
    pynetdicom's own server. ``orphaned`` is called when the channel closes (the
    listening process is gone)."""

    channel: socket.socket
    orphaned: Callable[[], None]

    def server_bind(self) -> None:
        return None

    def server_activate(self) -> None:
        return None

    def fileno(self) -> int:
        return self.channel.fileno()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        message, fds, _flags, _address = socket.recv_fds(self.channel, 512, 1)
        if not fds:
            if not message:
                type(self).orphaned()
            raise ConnectionAbortedError("no connection in the hand-over")
        host, port = json.loads(message)
        return socket.socket(fileno=fds[0]), (str(host), int(port))


def detached_server(channel: socket.socket, orphaned: Callable[[], None]) -> type[DetachedServer]:
    """A :class:`DetachedServer` class bound to its hand-over channel (pynetdicom starts
    serving as soon as it has built the server, so the class carries the channel)."""
    return type(
        "HandedOverServer",
        (DetachedServer,),
        {"channel": channel, "orphaned": staticmethod(orphaned)},
    )


def hand_over(channel: socket.socket, connection: socket.socket, address: Any) -> None:
    """The listening side of :meth:`DetachedServer.get_request`."""
    message = json.dumps([str(address[0]), int(address[1])]).encode()
    socket.send_fds(channel, [message], [connection.fileno()], socket.MSG_DONTWAIT)


def build_ae(
    settings: ImagingSettings,
    slots: AssociationSlots | None = None,
    server_class: type[ThreadedAssociationServer] = ThreadedAssociationServer,
) -> AE:
    """The application entity with our title, limits and presentation contexts."""
    ae = ServiceAE(settings.ae_title, slots, server_class)
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
    settings: ImagingSettings,
    store: InstanceStore,
    on_stored: OnStored | None = None,
    *,
    slots: AssociationSlots | None = None,
    server_class: type[ThreadedAssociationServer] | None = None,
) -> ThreadedAssociationServer:
    """Start the SCP in background threads; the caller shuts it down. With ``slots``
    it is one of several processes serving the port: the listening one (a
    :class:`PooledServer`, the default), or a helper's (a :func:`detached_server`)."""
    if server_class is None:
        server_class = ThreadedAssociationServer if slots is None else PooledServer
    ae = build_ae(settings, slots, server_class)
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
