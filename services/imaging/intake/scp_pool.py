"""Several SCP processes behind the one DICOM port.

One Python process receives what one core runs: pynetdicom's per-PDU work and the store's
parse, hash and index all hold its interpreter lock, so four parallel senders were no
faster than one. The service's own process listens on the port and starts
``processes - 1`` helpers (``python -m services.imaging scp-helper``), each a whole
C-STORE SCP with its own store writer on the same folder and database:

* each accepted connection goes to the process holding the fewest associations (helpers
  first on a tie): its descriptor is passed on a Unix socket (``SCM_RIGHTS``), and the
  helper serves it with pynetdicom's own server. (``SO_REUSEPORT`` was tried first: the
  kernel spreads connections by a hash of their addresses, and four senders often
  landed on one process, no faster than before.)
* the association limit and the AE title rules are the service's: the helpers build the
  same application entity from the same settings, and :class:`AssociationSlots` counts
  every process's associations against one limit;
* durability is unchanged: a helper acknowledges an instance only after
  :meth:`InstanceStore.put` has made it durable and indexed, and the store's locks are
  shared by the processes (one writer per SOP Instance UID, SQLite's one writer);
* a helper reads its configuration from its standard input and exits as soon as its
  hand-over socket closes, i.e. when the service ends, even by ``kill -9``; ``SIGTERM``
  stops it gracefully; one that dies is started again;
* what a helper receives reaches the service's Prometheus counter: the helper writes
  its counts' increments on its standard output, one JSON line at a time.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pynetdicom.transport import ThreadedAssociationServer

from services.imaging.intake.dimse import (
    AssociationSlots,
    PooledServer,
    ServiceAE,
    detached_server,
    hand_over,
    start_scp,
)
from services.imaging.intake.store import InstanceStore
from services.imaging.metrics import INSTANCES_RECEIVED
from services.imaging.settings import ImagingSettings

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[3]
HELPER_COMMAND = [sys.executable, "-m", "services.imaging", "scp-helper"]
PUBLISH_SECONDS = 0.2
READY_SECONDS = 15.0  # start() waits this long for the helpers, then serves without them
RESTART_SECONDS = 1.0
DRAIN_SECONDS = 10.0  # a stopping helper lets its open associations finish this long


@dataclass(frozen=True)
class HelperConfig:
    """What a helper is told on its standard input."""

    settings: ImagingSettings
    slots_fd: int
    channel_fd: int
    processes: int
    index: int


def _write_config(stream: IO[bytes], config: HelperConfig) -> None:
    payload = pickle.dumps(config)
    stream.write(struct.pack(">Q", len(payload)) + payload)
    stream.flush()


def read_config(stream: IO[bytes]) -> HelperConfig:
    """The helper's side: its configuration, framed by its length."""
    (size,) = struct.unpack(">Q", stream.read(8))
    config = pickle.loads(stream.read(size))  # noqa: S301 - written by our parent process
    if not isinstance(config, HelperConfig):
        raise TypeError("not an SCP helper configuration")
    return config


@dataclass
class _Helper:
    index: int
    process: subprocess.Popen[bytes]
    channel: socket.socket
    restarts: int
    ready: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)

    def serving(self) -> bool:
        return self.ready.is_set() and not self.stopping.is_set() and self.process.poll() is None


class ScpPool:
    """The DICOM port of one service: its own SCP, and the helper processes'."""

    def __init__(self, settings: ImagingSettings, store: InstanceStore) -> None:
        self.settings = settings
        self.store = store
        self.server: ThreadedAssociationServer | None = None
        self.slots: AssociationSlots | None = None
        self._helpers: dict[int, _Helper] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._turn = 0

    @property
    def processes(self) -> int:
        return self.settings.dicom_processes

    def start(self) -> ThreadedAssociationServer:
        """Listen; with more than one process, start the helpers and wait until they
        listen too (a helper that cannot start is logged; the port stays served)."""
        if self.processes == 1:
            self.server = start_scp(self.settings, self.store)
            return self.server
        self.slots = AssociationSlots.create(self.processes)
        self.server = start_scp(self.settings, self.store, slots=self.slots)
        assert isinstance(self.server, PooledServer)
        for index in range(1, self.processes):
            if not self._start_helper(index):
                self._retry_later(index, 1)
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            with self._lock:
                pending = [
                    h
                    for h in self._helpers.values()
                    if not h.ready.is_set() and h.process.poll() is None
                ]
            if not pending:
                break
            time.sleep(0.05)
        else:
            log.error("SCP helper processes did not start in time; serving without them")
        threading.Thread(target=self._publish, name="scp-slots", daemon=True).start()
        self.server.handoff = self._hand_over
        return self.server

    def _hand_over(self, connection: socket.socket, address: Any) -> bool:
        """Pass the connection to the least busy helper; False: serve it here."""
        assert self.slots is not None and self.server is not None
        with self._lock:
            # Slots as last published, plus what was handed out since: an association
            # is counted from its hand-over, not from when its thread starts.
            load = {0: self.slots.count(0)}
            load.update(
                (h.index, self.slots.count(h.index))
                for h in self._helpers.values()
                if h.serving() and self.slots.alive(h.index)
            )
            self._turn += 1
            target = min(load, key=lambda i: (load[i], i == 0, (i - self._turn) % self.processes))
            if target == 0:
                self.slots.add(0, 1)
                return False
            helper = self._helpers[target]
            try:
                # Never blocks the port: a helper that does not take it at once (its
                # queue full, frozen, stopping) leaves the connection to us.
                hand_over(helper.channel, connection, address)
            except OSError:
                log.warning("hand-over to an SCP helper failed", extra={"index": target})
                self.slots.add(0, 1)
                return False
            self.slots.add(target, 1)
            return True

    def _start_helper(self, index: int, restarts: int = 0) -> bool:
        """Start (or start again) helper ``index``; False if it could not be started
        (logged: the port stays served by the others)."""
        try:
            self._spawn(index, restarts)
        except (OSError, ValueError, subprocess.SubprocessError):
            log.exception("cannot start an SCP helper process", extra={"index": index})
            return False
        return True

    def _spawn(self, index: int, restarts: int) -> None:
        assert self.slots is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        channel_fd = theirs.fileno()  # the same number in the helper (pass_fds)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
        )
        with self._lock:
            if self._stopping.is_set():  # shutdown() has begun: start nothing more
                ours.close()
                theirs.close()
                return
            # The service's working folder: relative paths in the settings (the default
            # data folder, a SQLite URL) name the same files in the helper.
            process = subprocess.Popen(
                HELPER_COMMAND,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=(self.slots.fd, channel_fd),
                cwd=os.getcwd(),
                env=env,
            )
            theirs.close()
            helper = _Helper(index, process, ours, restarts)
            self._helpers[index] = helper
        assert process.stdin is not None
        try:
            _write_config(
                process.stdin,
                HelperConfig(self.settings, self.slots.fd, channel_fd, self.processes, index),
            )
        except OSError:  # it died at once: reap it, then let the caller retry
            process.kill()
            process.wait()
            ours.close()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()
            with self._lock:
                if self._helpers.get(index) is helper:
                    del self._helpers[index]
            raise
        threading.Thread(
            target=self._follow, args=(helper,), name=f"scp-helper-{index}", daemon=True
        ).start()

    def _follow(self, helper: _Helper) -> None:
        """Read a helper's reports until it exits; start it again unless we stop."""
        assert helper.process.stdout is not None
        try:
            for line in helper.process.stdout:
                self._read_report(helper, line)
        except (OSError, ValueError):  # its pipe closed by shutdown()
            pass
        code = helper.process.wait()
        assert self.slots is not None
        self.slots.reset(helper.index)  # its associations ended with it
        if self._stopping.is_set():
            return
        helper.channel.close()
        # A helper that ran a while is started again at once; one that keeps failing,
        # after longer and longer waits (at most a minute).
        restarts = 0 if helper.ready.is_set() else helper.restarts + 1
        log.error(
            "SCP helper process exited; starting it again",
            extra={"code": code, "index": helper.index, "restarts": restarts},
        )
        self._retry_later(helper.index, restarts)

    def _retry_later(self, index: int, restarts: int) -> None:
        """Keep trying to start helper ``index``, after RESTART_SECONDS * 2**restarts
        (at most a minute), longer after each failure."""

        def retry() -> None:
            attempt = restarts
            while not self._stopping.wait(min(60.0, RESTART_SECONDS * 2**attempt)):
                if self._start_helper(index, attempt):
                    return
                attempt += 1

        threading.Thread(target=retry, name=f"scp-helper-{index}-retry", daemon=True).start()

    @staticmethod
    def _read_report(helper: _Helper, line: bytes) -> None:
        try:
            report = json.loads(line)
        except ValueError:
            return
        if not isinstance(report, dict):
            return
        if report.get("ready"):
            helper.ready.set()
        if report.get("stopping"):
            helper.stopping.set()
        received = report.get("received", [])
        for item in received if isinstance(received, list) else []:
            try:
                protocol, outcome, count = item
                INSTANCES_RECEIVED.labels(protocol=protocol, outcome=outcome).inc(float(count))
            except (TypeError, ValueError):
                continue

    def _publish(self) -> None:
        assert self.server is not None
        ae = self.server.ae
        while not self._stopping.wait(PUBLISH_SECONDS):
            if isinstance(ae, ServiceAE):
                ae.publish_held()

    def status(self) -> str:
        """'ok' while the port is served. A helper that is down (and being started
        again) is logged, not a reason to take the service out of rotation: the
        listening process serves every connection the helpers cannot."""
        return "ok" if self.server is not None else "not listening"

    def shutdown(self) -> None:
        """Stop accepting associations (the open ones finish), then stop the helpers
        (each lets its open associations finish for DRAIN_SECONDS, then aborts them)."""
        with self._lock:
            self._stopping.set()
        if self.server is not None:
            self.server.shutdown()
        with self._lock:
            helpers = list(self._helpers.values())
        for helper in helpers:
            if helper.process.poll() is None:
                helper.process.send_signal(signal.SIGTERM)
        for helper in helpers:
            try:
                helper.process.wait(timeout=DRAIN_SECONDS + 10)
            except subprocess.TimeoutExpired:
                helper.process.kill()
                helper.process.wait()
            if helper.process.stdin is not None:
                helper.process.stdin.close()
            if helper.process.stdout is not None:
                helper.process.stdout.close()
            helper.channel.close()
        if self.slots is not None:
            os.close(self.slots.fd)


def run_helper() -> int:
    """``python -m services.imaging scp-helper``: the configuration from the service on
    standard input, a store writer of its own on the service's folder and database (the
    service owns the schema). Deliberately light: it imports the intake, not the
    analysis (an SCP process is ~120 MB, the service ~300)."""
    from services.common.db import make_engine
    from services.common.logging import configure_logging

    config = read_config(sys.stdin.buffer)
    configure_logging(config.settings.log_level)
    store = InstanceStore(
        make_engine(config.settings.resolved_database_url, pool_size=4),
        config.settings.storage_dir,
        max_instance_bytes=config.settings.max_instance_bytes,
    )
    return serve_helper(config, store)


def serve_helper(config: HelperConfig, store: InstanceStore) -> int:
    """A helper's life: serve the connections handed over until SIGTERM; exit at once
    when the hand-over socket closes (the service is gone: nothing unacknowledged is
    lost, and the connections it holds must not outlive it)."""
    slots = AssociationSlots(config.slots_fd, config.processes, config.index)
    channel = socket.socket(fileno=config.channel_fd)
    server = start_scp(
        config.settings,
        store,
        slots=slots,
        server_class=detached_server(channel, lambda: os._exit(0)),
    )
    ae = server.ae
    assert isinstance(ae, ServiceAE)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C in a terminal reaches the whole process group: the service stops us (SIGTERM)
    # after its own associations, not the keyboard.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout
    reported: dict[tuple[str, str], float] = {}
    ae.publish_held()  # alive before the service hands us anything
    _report(out, {"ready": os.getpid()})
    while not stop.wait(PUBLISH_SECONDS):
        ae.publish_held()
        _report_received(out, reported)
    # Stopping: take no more connections (the service serves them itself), let the open
    # associations finish for a while, then abort what is left.
    _report(out, {"stopping": os.getpid()})
    time.sleep(2 * PUBLISH_SECONDS)  # the service reads it and hands us nothing more
    server.shutdown()
    _serve_queued(server, channel)
    deadline = time.monotonic() + DRAIN_SECONDS
    while ae.held() and time.monotonic() < deadline:
        ae.publish_held()
        _report_received(out, reported)
        time.sleep(PUBLISH_SECONDS)
    for assoc in ae.active_associations:
        assoc.abort()
    slots.publish(0)
    _report_received(out, reported)
    return 0


def _serve_queued(server: ThreadedAssociationServer, channel: socket.socket) -> None:
    """Connections handed over before the service read that we stop: served, not
    dropped."""
    channel.setblocking(False)
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(channel, 512, 1)
        except OSError:
            return
        if not fds:
            return
        host, port = json.loads(message)
        server.process_request(socket.socket(fileno=fds[0]), (str(host), int(port)))


def _report(out: IO[str], report: dict[str, Any]) -> None:
    out.write(json.dumps(report) + "\n")
    out.flush()


def _report_received(out: IO[str], reported: dict[tuple[str, str], float]) -> None:
    """The counter's increments since the last report."""
    received = []
    for metric in INSTANCES_RECEIVED.collect():
        for sample in metric.samples:
            if not sample.name.endswith("_total"):
                continue
            key = (sample.labels["protocol"], sample.labels["outcome"])
            delta = sample.value - reported.get(key, 0.0)
            if delta:
                received.append([*key, delta])
                reported[key] = sample.value
    if received:
        _report(out, {"received": received})
