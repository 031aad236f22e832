"""The durable, idempotent instance store.

An instance is acknowledged only after :meth:`InstanceStore.put` returns: its bytes
are written to a temporary file, fsync'ed, renamed into place (and the folder
fsync'ed), and it is indexed in the database. Re-sending identical content is a
``duplicate`` (no new file, no new row). Different content under a known SOP
Instance UID is kept as a further version in the audit trail and flagged as a
``conflict``; the first version stays the one served.

Layout: ``storage/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>[.vN].dcm``
(UIDs are checked against the UID grammar before they become path components).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydicom import Dataset
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from services.imaging.errors import (
    ImagingError,
    InstanceTooLarge,
    OutOfResources,
    SeriesInOtherStudy,
    StudyMismatch,
)
from services.imaging.intake.dicom_io import InstanceHeader, read_part10
from services.imaging.metrics import INSTANCES_RECEIVED
from services.imaging.models import (
    CohortStudy,
    ImagingModel,
    Instance,
    InstanceVersion,
    Series,
    Study,
    StudyState,
    utcnow,
)

log = logging.getLogger(__name__)

# The hot path runs prebuilt Core statements with bound parameters: building ORM
# statements per instance cost more than the SQL itself.
_STUDY: Table = ImagingModel.metadata.tables[Study.__tablename__]
_SERIES: Table = ImagingModel.metadata.tables[Series.__tablename__]
_INSTANCE: Table = ImagingModel.metadata.tables[Instance.__tablename__]
_VERSION: Table = ImagingModel.metadata.tables[InstanceVersion.__tablename__]
_SELECT_VERSIONS = select(
    _VERSION.c.version, _VERSION.c.sha256, _VERSION.c.path, _VERSION.c.is_current
).where(_VERSION.c.sop_instance_uid == bindparam("sop"))
_SELECT_STUDY_VERSION = select(_INSTANCE.c.study_version).where(
    _INSTANCE.c.sop_instance_uid == bindparam("sop")
)
_SELECT_STUDY = select(_STUDY.c.state, _STUDY.c.version).where(
    _STUDY.c.study_instance_uid == bindparam("uid")
)
_SELECT_SERIES = select(_SERIES.c.series_instance_uid, _SERIES.c.study_instance_uid).where(
    _SERIES.c.series_instance_uid == bindparam("uid")
)
_COHORT_STUDY: Table = ImagingModel.metadata.tables[CohortStudy.__tablename__]
_SELECT_ASKED = select(_COHORT_STUDY.c.study_instance_uid).where(
    _COHORT_STUDY.c.study_instance_uid == bindparam("uid"),
    _COHORT_STUDY.c.state.in_(["queued", "retrieving"]),
)
_TOUCH_STUDY = (
    update(_STUDY)
    .where(_STUDY.c.study_instance_uid == bindparam("uid"))
    .values(
        last_received_at=bindparam("now"),
        state=StudyState.RECEIVING,
        version=bindparam("new_version"),
        state_reason=None,
    )
)
_FLAG_CONFLICT = (
    update(_INSTANCE).where(_INSTANCE.c.sop_instance_uid == bindparam("sop")).values(conflict=True)
)

Outcome = Literal["stored", "duplicate", "conflict"]


@dataclass(frozen=True)
class StoreResult:
    """What happened to one received instance."""

    outcome: Outcome
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    study_version: int
    new_study: bool = False


DERIVED_SOURCE = "analysis"  # instances we made from a study: they never reopen it


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_STRIPES = 16
_INDEX_BYTE = _STRIPES  # the lock file's byte after the stripes': SQLite's one writer
_INDEX_ATTEMPTS = 3


class _SharedLock:
    """A lock held by one thread of one process at a time: a thread lock, then an open
    file description lock (``F_OFD_SETLKW``) on one byte of a file every process of the
    service opens. Each lock has its own descriptor: classic POSIX record locks belong
    to the process, and the kernel then reports a "deadlock" between two processes whose
    different threads merely wait for each other's different stripes."""

    def __init__(self, path: Path, offset: int) -> None:
        self._path = path
        self._offset = offset
        self._thread = threading.Lock()
        self._fd: int | None = None
        self._closed = False

    def _set(self, kind: int) -> None:
        if self._closed:
            raise OutOfResources("the store is shut down")
        if self._fd is None:
            # The service's own file (0600, never a link): a lock anyone else could take
            # would stop every write.
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            self._fd = os.open(self._path, flags, 0o600)
        # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)
        fcntl.fcntl(
            self._fd,
            fcntl.F_OFD_SETLKW,
            struct.pack("hhqqi4x", kind, os.SEEK_SET, self._offset, 1, 0),
        )

    def __enter__(self) -> None:
        self._thread.acquire()
        try:
            self._set(fcntl.F_WRLCK)
        except BaseException:
            self._thread.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self._set(fcntl.F_UNLCK)
        finally:
            self._thread.release()

    def close(self) -> None:
        with self._thread:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class InstanceStore:
    """Files on disk plus their index; safe to call from many association threads and
    from several processes sharing the folder and the database (the SCP processes of
    one DICOM port, a worker, the cohort tool)."""

    def __init__(self, engine: Engine, root: Path, *, max_instance_bytes: int) -> None:
        self.engine = engine
        self.root = root
        self.max_instance_bytes = max_instance_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        # One SOP Instance UID is written by one thread of one process at a time (two
        # writers of one UID would rename over each other's file), whichever process
        # received it.
        locks = self.root / ".locks"
        self._stripes = [_SharedLock(locks, i) for i in range(_STRIPES)]
        # SQLite has one writer: handing its lock over ourselves avoids SQLite's
        # sleeping retries (1, 2, 5 ... 100 ms) when several processes index at once.
        self._index_lock: _SharedLock | _NullLock = (
            _SharedLock(locks, _INDEX_BYTE) if engine.dialect.name == "sqlite" else _NullLock()
        )
        self._known_dirs: set[Path] = set()
        self._known_series: dict[str, str] = {}  # series -> its study

    def close(self) -> None:
        """Release the lock file's descriptors (the store is not used afterwards)."""
        for lock in (*self._stripes, self._index_lock):
            if isinstance(lock, _SharedLock):
                lock.close()

    # -- writing ---------------------------------------------------------------------
    def put(self, data: bytes, *, source: str, expected_study: str | None = None) -> StoreResult:
        """Check, persist and index one DICOM Part 10 instance.

        Raises
        ------
        ImagingError
            The instance is refused (see ``services.imaging.errors``); nothing is kept.
        """
        protocol = source.split(":")[0]
        try:
            result = self._put(data, source=source, expected_study=expected_study)
        except ImagingError:
            INSTANCES_RECEIVED.labels(protocol=protocol, outcome="refused").inc()
            raise
        INSTANCES_RECEIVED.labels(protocol=protocol, outcome=result.outcome).inc()
        return result

    def _put(self, data: bytes, *, source: str, expected_study: str | None) -> StoreResult:
        if len(data) > self.max_instance_bytes:
            raise InstanceTooLarge(
                f"instance of {len(data)} bytes exceeds the limit of {self.max_instance_bytes}"
            )
        dataset, header = read_part10(data, max_bytes=self.max_instance_bytes)
        if expected_study is not None and header.study_instance_uid != expected_study:
            raise StudyMismatch("instance belongs to another study than the request URL names")
        # The content is the data set: the same instance re-framed with another File Meta
        # (another sender, a DICOMweb round trip) is a duplicate, not a conflict.
        digest = hashlib.sha256(memoryview(data)[header.dataset_offset :]).hexdigest()
        stripe = self._stripes[zlib.crc32(header.sop_instance_uid.encode()) % len(self._stripes)]
        with stripe:
            return self._put_locked(data, dataset, header, digest, source)

    def _put_locked(
        self, data: bytes, dataset: Dataset, header: InstanceHeader, digest: str, source: str
    ) -> StoreResult:
        sop = header.sop_instance_uid
        with self.engine.connect() as conn:
            known = conn.execute(_SELECT_VERSIONS, {"sop": sop}).all()
            if any(v.sha256 == digest for v in known):
                study_version = conn.execute(_SELECT_STUDY_VERSION, {"sop": sop}).scalar()
                log.info(
                    "duplicate instance ignored", extra={"sop_instance_uid": sop, "source": source}
                )
                return self._result("duplicate", header, study_version or 1)

        version = len(known) + 1
        if version == 1:
            self._check_series(header)
        current_path = next((v.path for v in known if v.is_current), None)
        reencoded = current_path is not None and self._is_reencoding(dataset, header, current_path)
        series_dir = self.root / header.study_instance_uid / header.series_instance_uid
        name = header.sop_instance_uid + (".dcm" if version == 1 else f".v{version}.dcm")
        path = series_dir / name
        self._write_durably(path, data)
        relpath = str(path.relative_to(self.root))
        for attempt in range(_INDEX_ATTEMPTS):
            try:
                with self._index_lock, self.engine.begin() as conn:
                    if version > 1:
                        return self._index_version(
                            conn, header, digest, relpath, len(data), version, source, reencoded
                        )
                    return self._index_new(conn, header, digest, relpath, len(data), source)
            except ImagingError:
                if version == 1:
                    path.unlink(missing_ok=True)
                raise
            except (IntegrityError, OperationalError) as exc:
                if isinstance(exc, IntegrityError) and attempt + 1 < _INDEX_ATTEMPTS:
                    # Without an index lock (PostgreSQL) another writer may have created
                    # this new study or series between our read and our insert: the
                    # transaction is rolled back whole, read again.
                    continue
                if version == 1:
                    path.unlink(missing_ok=True)
                log.exception("index write failed", extra={"error": type(exc).__name__})
                raise OutOfResources("the index could not record the instance") from None
        raise AssertionError("unreachable")  # every attempt returns or raises

    def _check_series(self, header: InstanceHeader) -> None:
        """A SeriesInstanceUID names one series of one study: a new study that reuses
        another study's series UID is refused, never counted into that study."""
        study = self._known_series.get(header.series_instance_uid)
        if study is None:
            with self.engine.connect() as conn:
                row = conn.execute(_SELECT_SERIES, {"uid": header.series_instance_uid}).first()
            study = row.study_instance_uid if row is not None else None
        if study is not None and study != header.study_instance_uid:
            raise SeriesInOtherStudy(
                f"series {header.series_instance_uid} already belongs to another study"
            )

    def _is_reencoding(self, dataset: Dataset, header: InstanceHeader, current_path: str) -> bool:
        """Whether new content is the current version in another transfer syntax."""
        stored, stored_header = read_part10((self.root / current_path).read_bytes())
        return stored_header.transfer_syntax_uid != header.transfer_syntax_uid and (
            attribute_fingerprint(stored) == attribute_fingerprint(dataset)
        )

    def _write_durably(self, path: Path, data: bytes) -> None:
        directory = path.parent
        tmp = directory / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            if directory not in self._known_dirs:
                directory.mkdir(parents=True, exist_ok=True)
                _fsync_dir(directory.parent)
                self._known_dirs.add(directory)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            _fsync_dir(directory)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            reason = "storage full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "write failed"
            log.error("cannot write instance", extra={"error": reason})
            raise OutOfResources(f"cannot store the instance: {reason}") from None

    def _index_version(
        self,
        conn: Connection,
        header: InstanceHeader,
        digest: str,
        relpath: str,
        size: int,
        version: int,
        source: str,
        reencoded: bool,
    ) -> StoreResult:
        """Another content for a known SOP Instance UID: keep it, flag it, serve the first."""
        note = (
            f"same attributes, transfer syntax {header.transfer_syntax_uid}"
            if reencoded
            else "content differs from the stored version"
        )
        conn.execute(
            insert(_VERSION),
            {
                "sop_instance_uid": header.sop_instance_uid,
                "version": version,
                "sha256": digest,
                "path": relpath,
                "size": size,
                "source": source,
                "received_at": utcnow(),
                "is_current": False,
                "note": note,
            },
        )
        study_version = conn.execute(
            _SELECT_STUDY_VERSION, {"sop": header.sop_instance_uid}
        ).scalar_one()
        if reencoded:
            return self._result("duplicate", header, study_version)
        conn.execute(_FLAG_CONFLICT, {"sop": header.sop_instance_uid})
        log.warning(
            "conflicting content for a stored instance kept as a new version",
            extra={"sop_instance_uid": header.sop_instance_uid, "version": version},
        )
        return self._result("conflict", header, study_version)

    def _index_new(
        self,
        conn: Connection,
        header: InstanceHeader,
        digest: str,
        relpath: str,
        size: int,
        source: str,
    ) -> StoreResult:
        """A new SOP instance: create or reopen its study, its series, and index it."""
        now = utcnow()
        study = conn.execute(_SELECT_STUDY, {"uid": header.study_instance_uid}).first()
        new_study = study is None
        if study is None:
            study_version = 1
            conn.execute(
                insert(_STUDY),
                {
                    "study_instance_uid": header.study_instance_uid,
                    "first_received_at": now,
                    "last_received_at": now,
                    "state": StudyState.RECEIVING,
                    "version": 1,
                    "source": self._study_source(conn, header.study_instance_uid, source),
                    "state_reason": None,
                    "completed_at": None,
                    **header.patient,
                    **header.study,
                },
            )
        elif source == DERIVED_SOURCE:
            # Our own results (SR, key images) join the study without reopening it: they
            # describe this version, they do not make a new one.
            study_version = study.version
        else:
            # A late instance reopens a completed study as its next version.
            study_version = study.version + (1 if study.state is StudyState.COMPLETE else 0)
            conn.execute(
                _TOUCH_STUDY,
                {"uid": header.study_instance_uid, "now": now, "new_version": study_version},
            )
        known_study = self._known_series.get(header.series_instance_uid)
        if known_study is None:
            exists = conn.execute(_SELECT_SERIES, {"uid": header.series_instance_uid}).first()
            known_study = exists.study_instance_uid if exists is not None else None
            if exists is None:
                conn.execute(
                    insert(_SERIES),
                    {
                        "series_instance_uid": header.series_instance_uid,
                        "study_instance_uid": header.study_instance_uid,
                        **header.series,
                    },
                )
        if known_study is not None and known_study != header.study_instance_uid:
            raise SeriesInOtherStudy(
                f"series {header.series_instance_uid} already belongs to another study"
            )
        conn.execute(
            insert(_INSTANCE),
            {
                "sop_instance_uid": header.sop_instance_uid,
                "series_instance_uid": header.series_instance_uid,
                "study_instance_uid": header.study_instance_uid,
                "sop_class_uid": header.sop_class_uid,
                "transfer_syntax_uid": header.transfer_syntax_uid,
                "path": relpath,
                "sha256": digest,
                "size": size,
                "received_at": now,
                "study_version": study_version,
                "conflict": False,
                **header.instance,
            },
        )
        conn.execute(
            insert(_VERSION),
            {
                "sop_instance_uid": header.sop_instance_uid,
                "version": 1,
                "sha256": digest,
                "path": relpath,
                "size": size,
                "source": source,
                "received_at": now,
                "is_current": True,
                "note": None,
            },
        )
        self._known_series[header.series_instance_uid] = header.study_instance_uid
        return self._result("stored", header, study_version, new_study=new_study)

    @staticmethod
    def _study_source(conn: Connection, study_instance_uid: str, source: str) -> str:
        """``pull`` for what we asked the PACS for — retrieved by DICOMweb or C-GET, or
        sent by the PACS on our C-MOVE request (its C-STOREs look like any push) —
        ``push`` for what was routed to us."""
        if source == "pull":
            return "pull"
        if source.startswith("dimse:"):
            asked = conn.execute(_SELECT_ASKED, {"uid": study_instance_uid}).first()
            if asked is not None:
                return "pull"
        return "push"

    @staticmethod
    def _result(
        outcome: Outcome, header: InstanceHeader, study_version: int, *, new_study: bool = False
    ) -> StoreResult:
        return StoreResult(
            outcome=outcome,
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            study_version=study_version,
            new_study=new_study,
        )

    # -- reading ---------------------------------------------------------------------
    def path_of(self, instance: Instance) -> Path:
        return self.root / instance.path

    def remove_orphan_temporaries(self) -> int:
        """Delete temporary files left by a crash mid-write (never acknowledged)."""
        count = 0
        for tmp in self.root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            count += 1
        return count

    def remove_unindexed(self, older_than: float) -> int:
        """Delete instance files that no index row names: a crash between the rename and
        the index commit leaves one, and its sender was never acknowledged. Only files
        older than ``older_than`` (a time stamp taken before the SCP listens) are
        considered, so a write in progress is never touched."""
        removed = 0
        for study_dir in (p for p in self.root.iterdir() if p.is_dir()):
            files = [
                f
                for f in study_dir.glob("*/*.dcm")
                if f.is_file() and f.stat().st_mtime < older_than
            ]
            if not files:
                continue
            with self.engine.connect() as conn:
                known = {
                    row.path
                    for row in conn.execute(
                        select(_VERSION.c.path).where(_VERSION.c.path.like(f"{study_dir.name}/%"))
                    )
                }
            for path in files:
                if str(path.relative_to(self.root)) not in known:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed


# Attributes that legitimately change when an instance is re-encoded (PS3.5 8.2).
_ENCODING_TAGS = frozenset(
    {
        0x00280002,
        0x00280004,
        0x00280006,
        0x00282110,
        0x00282112,
        0x00282114,
        0x7FE00010,
        0x00080005,
        0xFFFCFFFC,
    }
)


def attribute_fingerprint(dataset: Dataset) -> str:
    """A hash of a data set's attributes, without pixel data and encoding details."""
    digest = hashlib.sha256()
    for element in dataset:
        if element.tag in _ENCODING_TAGS or element.tag.group == 0x0002:
            continue
        # No VR: implicit VR files carry private elements as UN.
        digest.update(f"{element.tag}:{element.value!s}".encode(errors="replace"))
    return digest.hexdigest()


class _NullLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
