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
import hashlib
import logging
import os
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydicom import Dataset
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, select

from services.common.db import session_scope
from services.imaging.dicom_io import InstanceHeader, read_part10
from services.imaging.errors import InstanceTooLarge, OutOfResources, StudyMismatch
from services.imaging.models import Instance, InstanceVersion, Series, Study, StudyState

log = logging.getLogger(__name__)

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


def utcnow() -> datetime:
    return datetime.now(UTC)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InstanceStore:
    """Files on disk plus their index; safe to call from many association threads."""

    def __init__(self, engine: Engine, root: Path, *, max_instance_bytes: int) -> None:
        self.engine = engine
        self.root = root
        self.max_instance_bytes = max_instance_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._stripes = [threading.Lock() for _ in range(64)]
        # SQLite has one writer; serialising index writes in-process avoids lock retries.
        self._index_lock = threading.Lock() if engine.dialect.name == "sqlite" else _NullLock()
        self._known_dirs: set[Path] = set()

    # -- writing ---------------------------------------------------------------------
    def put(self, data: bytes, *, source: str, expected_study: str | None = None) -> StoreResult:
        """Check, persist and index one DICOM Part 10 instance.

        Raises
        ------
        ImagingError
            The instance is refused (see ``services.imaging.errors``); nothing is kept.
        """
        if len(data) > self.max_instance_bytes:
            raise InstanceTooLarge(
                f"instance of {len(data)} bytes exceeds the limit of {self.max_instance_bytes}"
            )
        dataset, header = read_part10(data)
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
        with Session(self.engine) as session:
            known = session.exec(
                select(InstanceVersion).where(
                    InstanceVersion.sop_instance_uid == header.sop_instance_uid
                )
            ).all()
        if any(v.sha256 == digest for v in known):
            current = next(v for v in known if v.is_current)
            with Session(self.engine) as session:
                instance = session.get(Instance, header.sop_instance_uid)
                study_version = instance.study_version if instance else 1
            log.info(
                "duplicate instance ignored",
                extra={"sop_instance_uid": header.sop_instance_uid, "source": source},
            )
            return self._result("duplicate", header, study_version, current.path)

        version = len(known) + 1
        reencoded = version > 1 and self._is_reencoding(dataset, header, known)
        series_dir = self.root / header.study_instance_uid / header.series_instance_uid
        name = header.sop_instance_uid + (".dcm" if version == 1 else f".v{version}.dcm")
        path = series_dir / name
        self._write_durably(path, data)
        relpath = str(path.relative_to(self.root))
        try:
            return self._index(header, digest, relpath, len(data), version, source, reencoded)
        except (IntegrityError, OperationalError) as exc:
            if version == 1:
                path.unlink(missing_ok=True)
            log.exception("index write failed", extra={"error": type(exc).__name__})
            raise OutOfResources("the index could not record the instance") from None

    def _is_reencoding(
        self, dataset: Dataset, header: InstanceHeader, known: Sequence[InstanceVersion]
    ) -> bool:
        """Whether new content is the current version in another transfer syntax."""
        current = next(v for v in known if v.is_current)
        stored, stored_header = read_part10((self.root / current.path).read_bytes())
        return stored_header.transfer_syntax_uid != header.transfer_syntax_uid and (
            attribute_fingerprint(stored) == attribute_fingerprint(dataset)
        )

    def _write_durably(self, path: Path, data: bytes) -> None:
        directory = path.parent
        tmp = directory / f".{path.name}.{threading.get_ident()}.tmp"
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

    def _index(
        self,
        header: InstanceHeader,
        digest: str,
        relpath: str,
        size: int,
        version: int,
        source: str,
        reencoded: bool = False,
    ) -> StoreResult:
        now = utcnow()
        with self._index_lock, session_scope(self.engine) as session:
            if version > 1:
                # Another content for a known SOP Instance UID: keep it, flag it, serve the first.
                session.add(
                    InstanceVersion(
                        sop_instance_uid=header.sop_instance_uid,
                        version=version,
                        sha256=digest,
                        path=relpath,
                        size=size,
                        source=source,
                        received_at=now,
                        is_current=False,
                        note=(
                            f"same attributes, transfer syntax {header.transfer_syntax_uid}"
                            if reencoded
                            else "content differs from the stored version"
                        ),
                    )
                )
                instance = session.get(Instance, header.sop_instance_uid)
                assert instance is not None
                if reencoded:
                    return self._result("duplicate", header, instance.study_version, relpath)
                instance.conflict = True
                session.add(instance)
                log.warning(
                    "conflicting content for a stored instance kept as a new version",
                    extra={"sop_instance_uid": header.sop_instance_uid, "version": version},
                )
                return self._result("conflict", header, instance.study_version, relpath)

            study = session.get(Study, header.study_instance_uid)
            new_study = study is None
            if study is None:
                study = Study(
                    study_instance_uid=header.study_instance_uid,
                    first_received_at=now,
                    last_received_at=now,
                    source="pull" if source == "pull" else "push",
                    **header.patient,
                    **header.study,
                )
            elif study.state is not StudyState.RECEIVING:
                if study.state is StudyState.COMPLETE:
                    study.version += 1  # a late instance reopens a completed study
                study.state = StudyState.RECEIVING
                study.state_reason = None
            study.last_received_at = now
            session.add(study)
            session.flush()  # parents before children: the tables carry foreign keys
            if session.get(Series, header.series_instance_uid) is None:
                session.add(
                    Series(
                        series_instance_uid=header.series_instance_uid,
                        study_instance_uid=header.study_instance_uid,
                        **header.series,
                    )
                )
                session.flush()
            session.add(
                Instance(
                    sop_instance_uid=header.sop_instance_uid,
                    series_instance_uid=header.series_instance_uid,
                    study_instance_uid=header.study_instance_uid,
                    sop_class_uid=header.sop_class_uid,
                    transfer_syntax_uid=header.transfer_syntax_uid,
                    path=relpath,
                    sha256=digest,
                    size=size,
                    received_at=now,
                    study_version=study.version,
                    **header.instance,
                )
            )
            session.add(
                InstanceVersion(
                    sop_instance_uid=header.sop_instance_uid,
                    version=1,
                    sha256=digest,
                    path=relpath,
                    size=size,
                    source=source,
                    received_at=now,
                    is_current=True,
                )
            )
            return self._result("stored", header, study.version, relpath, new_study=new_study)

    @staticmethod
    def _result(
        outcome: Outcome,
        header: InstanceHeader,
        study_version: int,
        _path: str,
        *,
        new_study: bool = False,
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
